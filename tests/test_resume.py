"""A run killed after round 1 (a real SIGKILL) resumes to the same records as an uninterrupted run."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import interrupt_fedmi, process_tree
from runs import rounds_json

from fedmi_flower.records.results import RunDirectory

REPO = Path(__file__).resolve().parent.parent
# Partial participation (2 of 3 clients) and a failing client exercise the seeded sampling and the failure path too.
SETTINGS = [
    "rounds=3",
    "data.max_per_client=900",
    "train.batch_size=64",
    "discovery.steps=15",
    "data.eval_per_class=30",
    "strategy.fraction_fit=0.67",
    "strategy.name=fedadam",
    "faults.fail_clients=[2]",
    "faults.fail_rounds=[2]",
    # The random control is a never-trained model drawn from the seed and the round: nothing of it carries
    # over a resume, so it is left to its own tests (the noise floor, which the server draws alike, stays).
    "analysis.random_control=false",
]


def _command(out: Path, data_root: str, *extra: str) -> list[str]:
    sets = list(itertools.chain.from_iterable(("--set", s) for s in SETTINGS))
    return [
        sys.executable,
        "-m",
        "fedmi_flower.cli",
        "run",
        "quickstart",
        *sets,
        "--out",
        str(out),
        "--data-root",
        data_root,
        *extra,
    ]


def _without_timings(record: dict) -> dict:
    """A record without what legitimately differs between runs: timings and the nodes' random ids."""
    record = {k: v for k, v in record.items() if k != "timings"}
    record["clients"] = {
        pid: {k: v for k, v in c.items() if k != "timings"} for pid, c in record.get("clients", {}).items()
    }
    for key in ("failures", "rejected", "silent_clients"):
        record[key] = [{k: v for k, v in entry.items() if k != "client"} for entry in record.get(key, [])]
    return record


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, mnist_root) -> tuple[Path, str]:
    """The run made whole, and what its console showed."""
    out = tmp_path_factory.mktemp("resume") / "whole"
    proc = subprocess.run(_command(out, mnist_root), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run) -> list[dict]:
    return rounds_json(RunDirectory(uninterrupted_run[0]))


def test_an_injected_failure_is_one_line_on_the_console_and_its_tracebacks_are_in_the_log(uninterrupted_run):
    out, console = uninterrupted_run
    said = [line for line in console.splitlines() if "failed, its update is left out" in line]
    assert said == [
        "WARNING: round 2: a client failed, its update is left out: "
        "client 2 fails in round 2, as the experiment's [faults] table asks"
    ]
    assert "[round 2/3] 1/2 clients (1 failed) |" in console or "[round 2/3] 0/2 clients (1 failed) |" in console
    assert "Traceback" not in console and "ClientAppException" not in console
    log = (out / "run.log").read_text()
    assert "Traceback" in log and "InjectedFailure: client 2 fails in round 2" in log


def test_killed_run_resumes_to_the_same_records(tmp_path, mnist_root, uninterrupted):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(out, mnist_root),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    run = RunDirectory(out)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            checkpoint = (out / "checkpoint.npz").exists() and run.read_checkpoint()
            if checkpoint and checkpoint.server_round >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        for pid in process_tree([proc.pid]):  # the driver and its Ray processes, nothing else
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    killed_after = run.read_checkpoint().server_round
    assert 1 <= killed_after < 3
    before = rounds_json(run)
    # The same seed gives the same records in another process: determinism.
    assert [_without_timings(r) for r in before[:killed_after]] == [
        _without_timings(r) for r in uninterrupted[:killed_after]
    ]

    resumed = subprocess.run(
        [sys.executable, "-m", "fedmi_flower.cli", "run", "--resume", str(out), "--data-root", mnist_root],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming quickstart after round {killed_after} of 3" in resumed.stdout
    after = rounds_json(run)
    assert [r["round"] for r in after] == [1, 2, 3]
    assert [_without_timings(r) for r in after] == [_without_timings(r) for r in uninterrupted]
    # Seed 0 samples clients 1 and 2 in round 2; client 2 fails as configured, client 1 carries the round.
    assert sorted(after[1]["clients"]) == ["1"] and [f["error"] for f in after[1]["failures"]] == [
        "client 2 fails in round 2, as the experiment's [faults] table asks"
    ]
    assert after[1]["silent_clients"][0]["partition_id"] == 2
    again = subprocess.run(
        [sys.executable, "-m", "fedmi_flower.cli", "run", "--resume", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "already finished all 3 rounds" in again.stdout


def test_ctrl_c_stops_every_process_of_the_run_and_says_how_to_resume(tmp_path, mnist_root):
    out = tmp_path / "interrupted"
    run = RunDirectory(out)
    # Interrupt in round 2, while Ray's clients work: after round 1's checkpoint.
    seen = interrupt_fedmi(
        _command(out, mnist_root)[3:],
        lambda: (out / "checkpoint.npz").exists() and run.read_checkpoint().server_round >= 1,
        tmp_path / "fedmi.log",
        timeout=600,
        cwd=REPO,
    )
    assert seen.returncode == 130, seen.output[-3000:]
    said = f"interrupted; every process of the run is stopped. Continue it with `fedmi run --resume {out}`"
    assert said in seen.output
    assert "Traceback" not in seen.output
    assert any("flower-superlink" in c for c in seen.commands) and any("flwr-simulation" in c for c in seen.commands)
    assert seen.leftovers == []
    assert run.read_checkpoint().server_round < 3  # stopped mid-run, its finished rounds kept for --resume
