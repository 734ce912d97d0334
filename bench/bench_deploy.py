"""A round on Flower's deployment runtime (``fedmi deploy-local``) against the same round simulated (``fedmi run``).

Both run one experiment with the same seed, one after the other, each as a fresh
``fedmi`` process. A round's time is its record's ``timings.round``: from the
strategy's ``configure_fit`` to the end of its ``aggregate_fit``, the clients' work
included and the start-up of the SuperLink, the SuperNodes or Ray excluded. The script
prints each round both ways, the median ratio deploy-local / simulation (issue 17's
target: <= 1.3), the whole runs' wall times, and what a ClientApp process pays
before its first message: Flower 1.41's SuperNode starts a new ``flwr-clientapp``
process for every message, so that cost is paid by every client in every round.

    python bench/bench_deploy.py                 # quickstart, 2 rounds (~4 minutes)
    python bench/bench_deploy.py --quick         # 2 small rounds (~2 minutes)
    python bench/bench_deploy.py --set rounds=3  # more overrides of the experiment
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procmem import timed

REPO = Path(__file__).resolve().parent.parent
SMALL = ["data.max_per_client=2000", "train.batch_size=64", "discovery.steps=30", "data.eval_per_class=100"]

CLIENTAPP_START = """
import sys, time
began = time.perf_counter()
import fedmi_flower.apps.client_app as client_app
imported = time.perf_counter()
run_config = {"experiment": sys.argv[1], "data-root": sys.argv[2]}
client_app.build_client(run_config, {"partition-id": 0, "num-partitions": int(sys.argv[3])})
built = time.perf_counter()
print(imported - began, built - imported)
"""


def round_seconds(run_dir: Path) -> list[tuple[float, float, float]]:
    """Per round: its time, the slowest client's own ``fit`` time, and the server's time in ``aggregate_fit``."""
    records = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line.strip()]
    return [
        (
            float(r["timings"]["round"]),
            max(float(c["timings"]["t_total"]) for c in r["clients"].values()),
            float(r["timings"]["server"]),
        )
        for r in records
    ]


TIMING_KEYS = {"timings", "t_train", "t_discovery", "t_floor", "t_evaluate", "t_total"}


def without_timings(value: object) -> object:
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def same_records(a: Path, b: Path) -> bool:
    """Whether two runs wrote the same round records, every field but timings."""
    read = lambda run: [without_timings(json.loads(line)) for line in (run / "rounds.jsonl").read_text().splitlines()]
    return read(a) == read(b)


def clientapp_start(experiment: str, data_root: str, clients: int) -> tuple[float, float]:
    """Seconds a fresh process spends importing the ClientApp, then building its client (data loaded)."""
    out = subprocess.run(
        [sys.executable, "-c", CLIENTAPP_START, experiment, data_root, str(clients)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--set", action="append", default=[], help="override, as for fedmi run")
    parser.add_argument("--data-root", default=os.environ.get("FEDMI_DATA_ROOT", "data"))
    parser.add_argument("--quick", action="store_true", help="2 small rounds")
    parser.add_argument("--keep", metavar="DIR", help="write the runs and the deployment's logs here and keep them")
    args = parser.parse_args()

    from fedmi_flower.config import load_experiment, parse_override
    from fedmi_flower.records.results import config_to_toml

    overrides = ["rounds=2", *(SMALL if args.quick else []), *args.set]
    config = load_experiment(args.experiment, dict(parse_override(o) for o in overrides))
    data_root = str(Path(args.data_root).resolve())
    fedmi = [sys.executable, "-m", "fedmi_flower.cli"]
    with tempfile.TemporaryDirectory(prefix="fedmi-bench-deploy-") as tmp:
        work = Path(args.keep or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        experiment = work / "experiment.toml"
        experiment.write_text(config_to_toml(config))
        starts = [clientapp_start(str(experiment), data_root, config.clients) for _ in range(3)]
        imports, builds = statistics.median(s[0] for s in starts), statistics.median(s[1] for s in starts)
        print(f"a fresh ClientApp process: import {imports:.2f} s, build_client {builds:.2f} s (medians of 3)")

        common = [str(experiment), "--data-root", data_root]
        sim_wall = timed([*fedmi, "run", *common, "--out", str(work / "sim")], work / "sim.log", REPO)
        sim = round_seconds(work / "sim")
        dep_wall = timed(
            [*fedmi, "deploy-local", *common, "--out", str(work / "deploy"), "--workdir", str(work / "deploy-work")],
            work / "deploy.log",
            REPO,
        )
        dep = round_seconds(work / "deploy")
        equal = same_records(work / "sim", work / "deploy")

    print(f"{config.name}: {config.clients} clients, {config.rounds} rounds; seconds per round (timings.round)")
    print("  (slowest client's fit / server's aggregate_fit; the rest is messaging, process starts and waiting)")
    print(f"{'round':>5} {'simulation':>22} {'deploy-local':>22} {'ratio':>6}")
    for i, (s, d) in enumerate(zip(sim, dep, strict=True), start=1):
        cells = [f"{t[0]:>7.1f} ({t[1]:>5.1f} /{t[2]:>5.1f})" for t in (s, d)]
        print(f"{i:>5} {cells[0]} {cells[1]} {d[0] / s[0]:>6.2f}")
    sim_round, dep_round = statistics.median(s[0] for s in sim), statistics.median(d[0] for d in dep)
    print(f"median round: simulation {sim_round:.1f} s, deploy-local {dep_round:.1f} s")
    print(f"ratio deploy-local / simulation, median round: {dep_round / sim_round:.2f} (target <= 1.30)")
    print(f"the two runs' records are equal in every field but timings: {equal}")
    print(f"whole runs, start-up and shutdown included: fedmi run {sim_wall:.1f} s, deploy-local {dep_wall:.1f} s")


if __name__ == "__main__":
    main()
