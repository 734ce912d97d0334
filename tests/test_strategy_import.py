"""Swap in a strategy by import path, of either Flower API: a user's FedAvg subclass and Flower's Message-API FedProx.

Both run the smoke experiment from a folder outside the checkout (the user's module is
beside them, not installed and not on PYTHONPATH: ``fedmi`` finds it in the working
directory and ships it to the ServerApp in the run's app bundle), record the class that
ran, and leave records of the same layout.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmi_flower.analysis.progress import PROGRESS_MARK
from fedmi_flower.apps.live_line import CLEAR_LINE
from fedmi_flower.config import ConfigError, load_experiment
from fedmi_flower.records.results import RunDirectory

USER_STRATEGY = '''
from logging import INFO

from flwr.common import log
from flwr.server.strategy import FedAvg


class LoudFedAvg(FedAvg):
    """FedAvg that says so each round, with a tag from its own argument."""

    def __init__(self, *args, tag="none", **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = tag

    def aggregate_fit(self, server_round, results, failures):
        log(INFO, "LoudFedAvg %s aggregates %d results in round %d", self.tag, len(results), server_round)
        return super().aggregate_fit(server_round, results, failures)


class NotAStrategy:
    pass
'''


def fedmi_in(folder: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "fedmi_flower.cli", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fedmi_on_terminal(folder: Path, *args: str, timeout: int = 600) -> tuple[int, str]:
    """``fedmi_in`` with a pseudo-terminal for stdout and stderr, as a user's shell gives it; returns what it drew."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"COLUMNS": "200"}
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmi_flower.cli", *args],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    drawn, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1.0)[0]:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # the terminal closed: the process and everything it started are gone
                break
            if not chunk:
                break
            drawn += chunk
        elif proc.poll() is not None:
            break
    else:
        proc.kill()
    os.close(master)
    return proc.wait(), drawn.decode(errors="replace")


def layout(value: object) -> object:
    """A record's keys, recursively; a table keyed by class or client is one leaf (which classes it holds is data)."""
    if isinstance(value, dict) and not all(str(k).isdigit() for k in value):
        return {k: layout(v) for k, v in value.items() if k != "timings"}
    return None


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_strategies.py").write_text(USER_STRATEGY)
    return folder


@pytest.fixture(scope="module")
def user_run(user_folder, mnist_root) -> Path:
    out = user_folder / "runs" / "loud"
    code, drawn = fedmi_on_terminal(
        user_folder,
        "run",
        "smoke",
        "--set",
        "strategy.name=my_strategies:LoudFedAvg",
        "--set",
        'strategy.args={tag = "blue"}',
        "--out",
        str(out),
        "--data-root",
        mnist_root,
    )
    assert code == 0, drawn[-3000:]
    (user_folder / "terminal.txt").write_bytes(drawn.encode())  # bytes: a text read would turn each \r into \n
    return out


def test_a_terminal_shows_a_live_line_while_the_round_runs_and_no_log_keeps_it(user_folder, user_run):
    drawn = (user_folder / "terminal.txt").read_bytes().decode()
    # Drawn in place (back to the line's start, erased) while clients train, each client counted as it returns,
    # then the server's steps; erased before the round's own line, which stays.
    for live in (
        "round 1/1 | training: 0/2 clients done",
        "round 1/1 | training: 1/2 clients done",
        "round 1/1 | server: global discovery (2 of 2 updates in)",
    ):
        assert CLEAR_LINE + live in drawn, live
    assert drawn.index("training: 1/2 clients done") < drawn.index("server: global discovery")
    assert CLEAR_LINE + "[round 1/1] 2/2 clients" in drawn and PROGRESS_MARK not in drawn
    for log in ("run.log", "runtime.log"):
        text = (user_run / log).read_text()
        assert "clients done" not in text and PROGRESS_MARK not in text, log


def test_a_users_fedavg_subclass_runs_by_import_path(user_run):
    log = (user_run / "run.log").read_text()
    assert "LoudFedAvg blue aggregates 2 results in round 1" in log
    assert RunDirectory(user_run).read_strategy() == {
        "name": "my_strategies:LoudFedAvg",
        "class": "my_strategies.LoudFedAvg",
        "api": "legacy",
    }
    assert 'name = "my_strategies:LoudFedAvg"' in (user_run / "config.toml").read_text()


def test_flowers_message_api_fedprox_runs_by_import_path_with_the_same_layout(user_folder, user_run, mnist_root):
    out = user_folder / "runs" / "fedprox"
    proc = fedmi_in(
        user_folder,
        "run",
        "smoke",
        "--set",
        "strategy.name=flwr.serverapp.strategy:FedProx",
        "--set",
        "strategy.args={proximal_mu = 0.5}",
        "--out",
        str(out),
        "--data-root",
        mnist_root,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[round 1/1] 2/2 clients" in proc.stdout
    # Off a terminal the live line is not drawn at all: a pipe holds the run's lines and nothing else.
    assert "clients done" not in proc.stdout + proc.stderr and CLEAR_LINE not in proc.stdout
    assert PROGRESS_MARK not in proc.stdout + proc.stderr
    log = (out / "run.log").read_text()
    assert "Starting CircuitFedProx strategy" in log and "Proximal mu: 0.5" in log
    assert RunDirectory(out).read_strategy() == {
        "name": "flwr.serverapp.strategy:FedProx",
        "class": "flwr.serverapp.strategy.fedprox.FedProx",
        "api": "message",
    }
    (ours,) = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    (theirs,) = [json.loads(line) for line in (user_run / "rounds.jsonl").read_text().splitlines()]
    assert layout(ours) == layout(theirs)
    assert ours["summary"]["clients"] == 2 and ours["aggregated"] is True


@pytest.mark.parametrize(
    "name,args,message",
    [
        ("no_such_module:Strategy", None, "cannot import 'no_such_module'"),
        ("my_strategies:Missing", None, "has no attribute 'Missing'"),
        ("my_strategies:NotAStrategy", None, "derives from neither FedAvg"),
        ("my_strategies:LoudFedAvg", "{colour = 1}", "does not take the arguments the run gives it"),
    ],
)
def test_a_wrong_strategy_is_one_line_before_anything_starts(user_folder, name, args, message):
    sets = ["--set", f"strategy.name={name}"] + (["--set", f"strategy.args={args}"] if args else [])
    proc = fedmi_in(user_folder, "run", "smoke", *sets, "--out", str(user_folder / "never"), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (user_folder / "never").exists()


def test_per_strategy_tables_and_the_flat_keys_of_earlier_runs():
    config = load_experiment("quickstart", {"strategy.name": "fedprox", "strategy.fedprox.proximal_mu": 0.2})
    assert config.strategy.fedprox.proximal_mu == 0.2
    # A config.toml written before per-strategy tables existed reads as it was meant.
    old = load_experiment("quickstart", {"strategy.proximal_mu": 0.3, "strategy.trim_beta": 0.1, "strategy.eta": 0.5})
    assert old.strategy.fedprox.proximal_mu == 0.3 and old.strategy.fedtrimmedavg.beta == 0.1
    assert old.strategy.fedadam.eta == old.strategy.fedyogi.eta == old.strategy.fedadagrad.eta == 0.5
    with pytest.raises(ConfigError, match="strategy.fedprox.proximal_mu = -1.0 is out of range"):
        load_experiment("quickstart", {"strategy.fedprox.proximal_mu": -1})
    with pytest.raises(ConfigError, match="strategy.args .* is for a strategy named by import path"):
        load_experiment("quickstart", {"strategy.args": {"proximal_mu": 0.1}})


def test_a_run_in_which_no_client_ever_counts_exits_with_an_error(user_folder, mnist_root):
    """The first try the issue describes: every client fails every round, and the run must not end as a success."""
    out = user_folder / "runs" / "all-fail"
    proc = fedmi_in(
        user_folder,
        "run",
        "smoke",
        "--set",
        "faults.fail_clients=[0, 1]",
        "--set",
        "faults.fail_rounds=[1]",
        "--out",
        str(out),
        "--data-root",
        mnist_root,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no round aggregated any client's update" in proc.stderr and "[faults] table asks" in proc.stderr
    assert (out / "rounds.jsonl").is_file()  # the run is kept


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm", "matchedfedavg", "fedtrimmedavg"])
@pytest.mark.parametrize("api", ["legacy", "message"])
def test_every_built_in_strategy_passes_the_check_before_a_run(name, api):
    """The preflight builds each strategy's arguments as the run will (the legacy FedOpt family needs initial
    weights): a strategy that runs must never be refused."""
    from fedmi_flower.strategies import LEGACY, MESSAGE, check_strategy

    config = load_experiment("smoke", {"strategy.name": name, "strategy.api": api})
    assert check_strategy(config) is (MESSAGE if api == "message" else LEGACY)[name]
