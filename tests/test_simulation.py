"""End to end: the `fedmi` command and `flwr run .` run real simulations through Ray on a slice of MNIST."""

from __future__ import annotations

import itertools
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from processes import stop_processes_mentioning
from runs import REPO, fedmi, flat_summary, rounds_json, sets
from runs import SMALL_IID as SMALL

from fedmi_flower.config import load_experiment, parse_override
from fedmi_flower.records.results import RunDirectory

SIZES = {"conv1": 32, "conv2": 64, "conv3": 128}


@pytest.fixture(scope="module")
def quick_run(iid_run) -> Path:
    """The session's small quickstart run (tests/conftest.py), made once for every test module."""
    return iid_run


def assert_valid_circuit(circuit: dict) -> None:
    assert set(circuit) == set(SIZES)
    for layer, channels in circuit.items():
        assert channels == sorted(set(channels)) and all(isinstance(c, int) and 0 <= c < SIZES[layer] for c in channels)


def assert_iou_rule(value, sets_a: list[list[int]], sets_b: list[list[int]]) -> None:
    """An IoU is in [0, 1]; it is undefined (null) exactly when every compared pair is two empty sets."""
    all_empty = all(not a and not b for a, b in zip(sets_a, sets_b))
    if value is None:
        assert all_empty or not sets_a
    else:
        assert 0.0 <= value <= 1.0 and not all_empty


def test_run_directory_is_complete(quick_run):
    run = RunDirectory(quick_run)
    rounds = rounds_json(run)
    assert [r["round"] for r in rounds] == [1, 2]
    board = f"logging.tensorboard={quick_run.parent / 'tensorboard'}"  # tests/conftest.py's run writes TensorBoard too
    assert run.read_config() == load_experiment("quickstart", dict(parse_override(s) for s in [*SMALL, board]))
    parts = run.read_partitions()["clients"]
    trains = [set(p["train"]) | set(p["holdout"]) for p in parts.values()]
    assert len(trains) == 3 and all(len(t) == 2000 for t in trains) and not (trains[0] & trains[1])
    weights, last = run.read_weights()
    assert last == 2 and len(weights) == 8 and all(np.isfinite(w).all() for w in weights)
    for t in (1, 2):  # every round's global and local weights, for circuit graphs
        assert run.read_round_weights(t) is not None and all(
            run.read_round_weights(t, pid) is not None for pid in range(3)
        )
    assert all(np.array_equal(a, b) for a, b in zip(run.read_round_weights(2), weights))
    assert len((quick_run / "summary.csv").read_text().splitlines()) == 3


def test_the_console_has_one_line_per_round_and_the_run_directory_keeps_the_rest(quick_run):
    console = (quick_run / "console.log").read_text()
    lines = console.splitlines()
    rounds = [line.split(" | ")[:2] for line in lines if line.startswith("[round ")]
    assert [head for head, _ in rounds] == ["[round 1/2] 3/3 clients", "[round 2/2] 3/3 clients"]
    assert all(acc.startswith("acc 0.") for _, acc in rounds)
    # Nothing else but fedmi's own lines: no deprecation notice (fedmi run is on the runtime behind `flwr run`),
    # none of the runtime's start-up lines, no Ray notice.
    others = [line for line in lines if not line.startswith(("fedmi: ", "[round ", "  next: "))]
    assert others == []
    runtime = (quick_run / "runtime.log").read_text()  # what the runtime said before the ServerApp started
    assert "Successfully started run" in runtime and "Federation" in runtime and "(3 simulated SuperNodes)" in runtime
    assert "DEPRECATED" not in console + runtime
    assert "fedmi: quickstart finished 2 rounds" in console and f"`fedmi report {quick_run}`" in console
    assert "\x1b[" not in console  # no colour codes in output that is not a terminal
    log = (quick_run / "run.log").read_text()
    assert "configure_fit" in log and "Run finished 2 round(s)" in log and "[round 2/2] 3/3 clients" in log
    assert "\x1b[" not in log and "configure_fit" not in console
    history = (quick_run / "flower-history.log").read_text()
    assert history.startswith("History") and "'inter_client_iou': [(1," in history


def test_circuits_and_metrics_follow_the_rules(quick_run):
    for record in rounds_json(RunDirectory(quick_run)):
        assert record["rejected"] == [] and record["failures"] == []
        assert record["global"]["accuracy"] > 0.3  # chance is 0.1
        global_circuits = record["global"]["circuits"]
        assert sorted(global_circuits) == ["0", "1", "2", "7"]
        for circuit in global_circuits.values():
            assert_valid_circuit(circuit)
        clients = record["clients"]
        for client in clients.values():
            assert sorted(client["circuits"]) == ["0", "1", "2", "7"]
            for circuit in client["circuits"].values():
                assert_valid_circuit(circuit)
        for cls, entry in record["inter_client_iou"].items():
            holders = [clients[str(p)]["circuits"][cls] for p in entry["clients"]]
            for layer in SIZES:
                pairs = list(itertools.combinations(holders, 2))
                assert_iou_rule(entry[layer], [a[layer] for a, _ in pairs], [b[layer] for _, b in pairs])
        for pid, per_class in record["local_global_iou"].items():
            for cls, entry in per_class.items():
                for layer in SIZES:
                    assert_iou_rule(entry[layer], [clients[pid]["circuits"][cls][layer]], [global_circuits[cls][layer]])
        for per_class in record["cross_eval"].values():
            for s in per_class.values():
                assert 0 <= s["sufficiency"] <= 1 and 0 <= s["specificity"] <= 1
    last = rounds_json(RunDirectory(quick_run))[-1]
    assert set(last["stability"]) == {"0", "1", "2"}


def test_cli_reports_bad_input_without_a_traceback():
    proc = fedmi("run", "quickstart", "--set", "train.sparsity=1.5")
    assert (
        proc.returncode == 2
        and "train.sparsity = 1.5 is out of range" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    proc = fedmi("run", "quickstart", env={"FEDMI_DATA_ROOT": "/nonexistent"})
    assert proc.returncode == 2 and "/nonexistent/MNIST/raw" in proc.stderr
    proc = fedmi("list")
    assert proc.returncode == 0 and "noniid-3class-50rounds" in proc.stdout
    assert "sparsity-ablation" in proc.stdout and "a sweep of 4 runs: sparsity=0.95 / sparsity=0.97" in proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flwr_run_dot_runs_the_app_in_the_installed_environment(tmp_path, mnist_root):
    home = tmp_path / "flwr-home"
    out = tmp_path / "flwr-run"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FEDMI_DATA_ROOT": mnist_root,
        # flwr, and the flower-superlink it starts, come from this environment even when it is not activated.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    home.mkdir()
    (home / "config.toml").write_text((REPO / "deploy" / "flower-config.toml").read_text())
    overrides = "rounds=1 data.max_per_client=600 discovery.steps=10 data.eval_per_class=20"
    try:
        proc = subprocess.run(
            ["flwr", "run", ".", "fedmi-local", "--stream", "--run-config", f'set="{overrides}" out="{out}"']
            + ["--federation-config", "num-supernodes=3 client-resources-num-cpus=1"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        # `flwr run` leaves its local SuperLink (and the simulation's Ray processes) running:
        # stop exactly the process tree started for this FLWR_HOME.
        stop_processes_mentioning(str(home))
    assert (REPO / "pyproject.toml").read_text().count("MIGRATION NOTICE") == 0  # flwr must not rewrite our pyproject
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "deprecated" not in (proc.stdout + proc.stderr).lower()  # nor the connection's `options.` fields
    (record,) = rounds_json(RunDirectory(out))
    assert sorted(record["clients"]) == ["0", "1", "2"] and record["global"]["circuits"]


def _independent_iou(a: list[int], b: list[int]):
    """IoU written again, apart from the package: None (undefined) for two empty sets."""
    union = len(set(a) | set(b))
    return None if union == 0 else len(set(a) & set(b)) / union


def _independent_mean(values):
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _independent_chance(a: int, b: int, n: int):
    """Expected IoU of random a- and b-subsets of n channels, written apart from the package (log-space
    hypergeometric); None for two empty sets."""
    if a + b == 0:
        return None

    def log_comb(x: int, y: int) -> float:
        return math.lgamma(x + 1) - math.lgamma(y + 1) - math.lgamma(x - y + 1)

    return sum(
        math.exp(log_comb(a, k) + log_comb(n - a, b - k) - log_comb(n, b)) * k / (a + b - k)
        for k in range(max(0, a + b - n), min(a, b) + 1)
    )


def _chance_per_layer(pairs):
    """Per layer: the mean over circuit pairs of their chance level; 'mean': the mean of those over layers."""
    out = {
        layer: _independent_mean([_independent_chance(len(a[layer]), len(b[layer]), n) for a, b in pairs])
        for layer, n in SIZES.items()
    }
    out["mean"] = _independent_mean([out[layer] for layer in SIZES])
    return out


def _per_layer(pairs):
    """Per layer: the mean over circuit pairs of their IoU; 'mean': the mean of those over layers."""
    out = {layer: _independent_mean([_independent_iou(a[layer], b[layer]) for a, b in pairs]) for layer in SIZES}
    out["mean"] = _independent_mean([out[layer] for layer in SIZES])
    return out


def test_every_iou_in_the_record_recomputes_from_its_saved_circuits(quick_run):
    records = rounds_json(RunDirectory(quick_run))
    for t, record in enumerate(records):
        clients, global_ = record["clients"], record["global"]["circuits"]
        for cls, entry in record["inter_client_iou"].items():
            holders = [clients[str(p)]["circuits"][cls] for p in entry["clients"]]
            expected = _per_layer(list(itertools.combinations(holders, 2)))
            assert {k: entry[k] for k in expected} == pytest.approx(expected, abs=1e-12, nan_ok=True)
            assert entry["pairs"] == sum(
                1 for a, b in itertools.combinations(holders, 2) if _per_layer([(a, b)])["mean"] is not None
            )
        for pid, per_class in record["local_global_iou"].items():
            for cls, entry in per_class.items():
                expected = _per_layer([(clients[pid]["circuits"][cls], global_[cls])])
                assert {k: entry[k] for k in expected} == pytest.approx(expected, abs=1e-12)
        for pid, per_class in record["stability"].items():
            previous = records[t - 1]["clients"][pid]["circuits"]  # round t-1, by construction of this run
            for cls, entry in per_class.items():
                assert entry["previous_round"] == record["round"] - 1
                expected = _per_layer([(clients[pid]["circuits"][cls], previous[cls])])
                assert {k: entry[k] for k in expected} == pytest.approx(expected, abs=1e-12)
        values = [e["mean"] for per in record["stability"].values() for e in per.values() if e["mean"] is not None]
        if values:
            assert flat_summary(record)["stability"] == pytest.approx(sum(values) / len(values), abs=1e-12)
            assert flat_summary(record)["stability_pairs"] == len(values)
        # Every IoU view carries its scale: noise floors of the global model, and floor client 0's own.
        floor = record["noise_floor"]
        assert (
            set(floor["seed"]) == set(global_) and set(floor["source"]) <= set(global_) and floor["source_client"] == 0
        )
        assert set(floor["clients"]) <= {"0"}
        # Each floor recomputes from the floor circuits the record keeps ...
        for kind in ("seed", "source"):
            for cls, entry in floor[kind].items():
                expected = _per_layer([(global_[cls], floor[f"{kind}_circuits"][cls])])
                assert {k: entry[k] for k in expected} == pytest.approx(expected, abs=1e-12, nan_ok=True)
        # ... and each view's floor is the mean of its own non-degenerate classes' floors.
        dead = set(record["global"]["degenerate"])
        inter = [
            c
            for c, e in record["inter_client_iou"].items()
            if c not in dead and sum(1 for p in e["clients"] if c not in clients[str(p)]["degenerate"]) >= 2
        ]
        seed_floors = [floor["seed"][c]["mean"] for c in inter if c in floor["seed"]]
        if seed_floors:
            assert flat_summary(record)["seed_floor"] == pytest.approx(sum(seed_floors) / len(seed_floors), abs=1e-12)
        else:
            assert flat_summary(record)["seed_floor"] is None
        assert flat_summary(record)["seed_floor_covers"] == len(seed_floors)
        # Schema 4 writes the same numbers grouped per view.
        assert record["summary"]["inter_client_iou"]["floor_covers"] == len(seed_floors)
        # Every chance level recomputes from the recorded circuits' sizes.
        for cls, entry in record["inter_client_iou"].items():
            holders = [clients[str(p)]["circuits"][cls] for p in entry["clients"]]
            expected = _chance_per_layer(list(itertools.combinations(holders, 2)))
            assert {k: entry["chance"][k] for k in expected} == pytest.approx(expected, abs=1e-9, nan_ok=True)
        for pid, per_class in record["local_global_iou"].items():
            for cls, entry in per_class.items():
                expected = _chance_per_layer([(clients[pid]["circuits"][cls], global_[cls])])
                assert {k: entry["chance"][k] for k in expected} == pytest.approx(expected, abs=1e-9, nan_ok=True)


def test_a_reused_run_directory_is_refused_before_flower_starts(quick_run):
    log_before = (quick_run / "run.log").read_text()
    proc = fedmi("run", "quickstart", "--out", str(quick_run))
    assert proc.returncode == 2 and "already holds a run; choose another --out (or resume it)" in proc.stderr
    assert "SuperLink" not in proc.stderr + proc.stdout  # Flower's runtime never started
    assert (quick_run / "run.log").read_text() == log_before


def test_fedmi_run_starts_its_own_ray_where_ray_start_left_a_cluster_address(tmp_path, mnist_root):
    """A killed `ray start --head` leaves its address behind; Ray alone would join that dead cluster and fail."""
    import shutil
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths live below it
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # nothing listens there
        out = tmp_path / "run"
        short = ["rounds=1", "data.max_per_client=300", "discovery.steps=5", "data.eval_per_class=10"]
        proc = fedmi(
            "run",
            "quickstart",
            *sets(short),
            "--out",
            str(out),
            "--data-root",
            mnist_root,
            env={"RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": ""},
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert len(rounds_json(out)) == 1
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
