"""End to end on Flower's deployment runtime.

`fedmi deploy-local` runs a real SuperLink and one SuperNode per client on loopback.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from processes import DescendantRecorder, interrupt_fedmi
from runs import rounds_json

from fedmi_flower.apps.credentials import write_key_pair
from fedmi_flower.apps.deploy import DeploymentError, LocalDeployment
from fedmi_flower.records.results import RunDirectory

REPO = Path(__file__).resolve().parent.parent
SMALL = [
    "rounds=2",
    "data.max_per_client=600",
    "discovery.steps=10",
    "data.eval_per_class=20",
    # No test here reads the noise floor or the random control: off, they would be most of each round's time.
    "analysis.noise_floor=false",
    "analysis.random_control=false",
]
STRATEGY = "strategy.name=matchedfedavg"  # a strategy of fedmi's own, through the deployment runtime
LAYERS = {"conv1", "conv2", "conv3"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, mnist_root) -> dict:
    """One secure deployment of 3 SuperNodes: a run that fails, quickstart for 2 rounds, then two SuperNodes the
    SuperLink must refuse (one with a key never registered, one without the CA); what they all left behind."""
    base = tmp_path_factory.mktemp("deploy")
    out, workdir, echo = base / "run", base / "work", io.StringIO()
    with DescendantRecorder() as recorder:
        with LocalDeployment(workdir, num_supernodes=3, data_root=mnist_root) as deployment:
            try:
                deployment.run({"experiment": "no-such-experiment"}, base / "failed", timeout=120)
                failure = ""
            except DeploymentError as err:
                failure = str(err)
            deployment.run(
                {"experiment": "quickstart", "set": " ".join([*SMALL, STRATEGY])}, out, timeout=400, echo=echo
            )
            assert deployment.credentials is not None
            stranger = base / "stranger-key"
            write_key_pair(stranger)  # a well-formed key pair that was never registered
            probes = {
                "unregistered": deployment.start_untrusted_supernode(
                    "unregistered", deployment.supernode_security(0, private_key=stranger)
                ),
                # The registered key of SuperNode 0, but no CA: it cannot verify the SuperLink's certificate.
                "no-ca": deployment.start_untrusted_supernode(
                    "no-ca", ["--auth-supernode-private-key", str(deployment.credentials.supernode_keys[0])]
                ),
            }
            deadline = time.monotonic() + 120
            while any(p.poll() is None for p in probes.values()) and time.monotonic() < deadline:
                time.sleep(1.0)
            refused = {name: p.poll() for name, p in probes.items()}
            online_after = deployment._online_supernodes()
    return {
        "refused": refused,
        "online_after": online_after,
        "out": out,
        "workdir": workdir,
        "echo": echo.getvalue(),
        "failure": failure,
        "leftovers": recorder.leftovers(),
        "commands": recorder.commands(),
    }


def test_a_failed_run_is_an_error_naming_the_log(deployed):
    # `flwr run --stream` exits with 0 when the ServerApp fails: the run's status must be checked.
    assert "finished:failed" in deployed["failure"] and "unknown experiment 'no-such-experiment'" in deployed["failure"]
    assert str(deployed["workdir"] / "logs" / "flwr-run.log") in deployed["failure"]


def test_deployed_run_writes_both_rounds_of_three_clients(deployed):
    assert "[round 2/2] 3/3 clients |" in deployed["echo"]  # the ServerApp's log, streamed through `flwr run`
    assert "strategy matchedfedavg" in deployed["echo"]
    run_log = (deployed["out"] / "run.log").read_text()  # and kept in the run directory, this run's part only
    assert "[round 2/2] 3/3 clients |" in run_log and "no-such-experiment" not in run_log and "\x1b[" not in run_log
    rounds = rounds_json(RunDirectory(deployed["out"]))
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert sorted(record["clients"]) == ["0", "1", "2"] and record["failures"] == [] and record["rejected"] == []
        assert math.isfinite(record["global"]["accuracy"]) and 0.0 <= record["global"]["accuracy"] <= 1.0
        # matchedfedavg ran, and the records carry aligned IoU beside the raw one
        assert sorted(record["aligned_local_global_iou"]) == sorted(record["local_global_iou"]) == ["0", "1", "2"]
        assert all(set(c["channels_moved"]) == LAYERS for c in record["clients"].values())
        for circuits in [record["global"]["circuits"]] + [c["circuits"] for c in record["clients"].values()]:
            assert sorted(circuits) == ["0", "1", "2", "7"]
            assert all(set(circuit) == LAYERS for circuit in circuits.values())


def test_the_deployment_runs_over_tls_with_registered_supernodes_only(deployed):
    logs = deployed["workdir"] / "logs"
    commands = deployed["commands"]
    link = next(c for c in commands if "flower-superlink" in c)
    assert "--ssl-certfile" in link and "--enable-supernode-auth" in link and "--insecure" not in link
    # The deployment's own SuperNodes (the two probes below give up after --max-retries).
    nodes = [c for c in commands if "flower-supernode" in c and "partition-id=" in c and "--max-retries" not in c]
    # (a SuperNode's forked children carry its command line too: count partitions, not processes)
    assert {re.search(r"partition-id=(\d+)", c).group(1) for c in nodes} == {"0", "1", "2"}
    assert not any("--insecure" in c for c in nodes)
    assert all("--root-certificates" in c and "--auth-supernode-private-key" in c for c in nodes)
    assert (logs / "flwr-supernode-register.log").read_text().count("registered successfully") == 3
    # A SuperNode whose key was never registered is refused by the SuperLink, and gives up.
    assert deployed["refused"]["unregistered"] not in (None, 0)
    assert "Attempted to register SuperNode with public key" in (logs / "superlink.log").read_text()
    # A SuperNode without the CA cannot complete the TLS handshake.
    assert deployed["refused"]["no-ca"] not in (None, 0)
    assert "CERTIFICATE_VERIFY_FAILED" in (logs / "no-ca.log").read_text()
    # The run was unaffected, and the federation still has exactly its three SuperNodes.
    assert deployed["online_after"] == 3


def test_every_supernode_trained_on_its_own_partition_only(deployed):
    partitions = RunDirectory(deployed["out"]).read_partitions()["clients"]
    counts = [partitions[pid]["class_counts"] for pid in ("0", "1", "2")]
    assert counts[0] != counts[1] != counts[2] != counts[0]  # else the check below could not tell them apart
    for record in rounds_json(RunDirectory(deployed["out"])):
        for pid, client in record["clients"].items():
            assert client["class_counts"] == partitions[pid]["class_counts"]
            assert client["num_examples"] == len(partitions[pid]["train"])
    # Each SuperNode unpacked the app that `flwr run` shipped and ran its ClientApp itself.
    for i in range(3):
        assert len(list((deployed["workdir"] / f"supernode-{i}" / "apps").iterdir())) == 1
        assert "Start `flwr-clientapp` process" in (deployed["workdir"] / "logs" / f"supernode-{i}.log").read_text()


def test_deployment_leaves_no_process_running(deployed):
    commands = " ".join(deployed["commands"])
    for started in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp"):
        assert started in commands  # the recorder saw the whole tree, so an empty list of leftovers means something
    assert deployed["leftovers"] == []


def test_interrupt_stops_every_process(tmp_path, mnist_root):
    out, workdir = tmp_path / "run", tmp_path / "work"
    first_node_log = workdir / "logs" / "supernode-0.log"
    sets = list(itertools.chain.from_iterable(("--set", s) for s in SMALL))
    command = ["deploy-local", "quickstart", "--clients", "3", *sets]
    command += ["--out", str(out), "--workdir", str(workdir), "--data-root", mnist_root]
    # Interrupt in the middle of a round, while ClientApp processes run.
    seen = interrupt_fedmi(
        command,
        lambda: first_node_log.exists() and "Start `flwr-clientapp` process" in first_node_log.read_text(),
        tmp_path / "fedmi.log",
        timeout=150,
        cwd=REPO,
    )
    assert seen.returncode == 130, seen.output[-3000:]
    assert "interrupted; every process of the deployment is stopped" in seen.output
    # The ServerApp rebuilt the experiment from the run config the command made of --set.
    assert "fedmi: experiment 'quickstart', 3 clients x 2 rounds" in (workdir / "logs" / "flwr-run.log").read_text()
    assert any("flwr-clientapp" in c for c in seen.commands)
    assert seen.leftovers == []


def test_clients_must_match_the_experiment():
    proc = subprocess.run(
        [sys.executable, "-m", "fedmi_flower.cli", "deploy-local", "quickstart", "--clients", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        proc.returncode == 2
        and "--clients 4 but experiment 'quickstart' has clients = 3" in proc.stderr
        and "--set clients=4" in proc.stderr
    )


def test_a_supernode_killed_mid_round_is_named_and_rejoins_the_next_round(tmp_path, mnist_root):
    out, workdir = tmp_path / "run", tmp_path / "work"
    settings = [s for s in SMALL if not s.startswith("rounds=")] + ["rounds=3", "strategy.round_timeout=60"]
    outcome: dict[str, BaseException] = {}
    with DescendantRecorder() as recorder:
        with LocalDeployment(workdir, num_supernodes=3, data_root=mnist_root) as deployment:

            def run() -> None:
                try:
                    deployment.run({"experiment": "quickstart", "set": " ".join(settings)}, out, timeout=900)
                except BaseException as err:
                    outcome["error"] = err

            thread = threading.Thread(target=run)
            thread.start()
            node_log = workdir / "logs" / "supernode-1.log"
            deadline = time.monotonic() + 600

            def wait_until(done: Callable[[], bool], what: str) -> None:
                while not done():
                    assert thread.is_alive() and time.monotonic() < deadline, f"the run ended before {what}"
                    time.sleep(0.3)

            wait_until(lambda: (out / "rounds.jsonl").exists() and len(rounds_json(out)) >= 1, "round 1 finished")
            started = node_log.read_text().count("Start `flwr-clientapp` process")
            # Round 2's ClientApp is at work on SuperNode 1: kill the SuperNode and everything under it.
            wait_until(lambda: node_log.read_text().count("Start `flwr-clientapp` process") > started, "round 2")
            deployment.kill_supernode(1)
            wait_until(lambda: len(rounds_json(out)) >= 2, "round 2 finished without it")
            deployment.restart_supernode(1)
            thread.join(timeout=900)
    assert "error" not in outcome, outcome
    records = rounds_json(out)
    assert [r["round"] for r in records] == [1, 2, 3]
    # Round 2 went on with the other two (by strategy.round_timeout, or sooner once the SuperLink saw the node
    # go silent), and names the one that never answered.
    assert sorted(records[1]["clients"]) == ["0", "2"]
    assert [s["partition_id"] for s in records[1]["silent_clients"]] == [1]
    # The restarted SuperNode (same key: the same node) trains again in round 3.
    assert sorted(records[2]["clients"]) == ["0", "1", "2"] and records[2]["silent_clients"] == []
    assert recorder.leftovers() == []
