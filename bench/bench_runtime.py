"""``fedmi run`` (Flower's simulation runtime behind ``flwr run``) against the deprecated in-process ``run_simulation``.

``fedmi run`` starts a simulation SuperLink of its own, submits the run with ``flwr run
--stream``, and the SuperLink starts a ``flwr-simulation`` process that runs the ServerApp
and the Ray engine. Until issue 17 it called ``flwr.simulation.run_simulation`` in its
own process, which Flower 1.41 deprecates; the move had to keep that speed within 10%.
This script runs one experiment both ways, one after the other, each as a fresh process
timed from start to exit, and prints the wall times and their ratio. The in-process
variant lives here only, as the yardstick.

    python bench/bench_runtime.py                         # quickstart, 2 small rounds (~3 minutes)
    python bench/bench_runtime.py --set rounds=3          # more overrides of the experiment
    python bench/bench_runtime.py --full                  # the quickstart as it is (~4 minutes)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procmem import timed

from fedmi_flower.config import load_experiment, parse_override
from fedmi_flower.records.results import config_to_toml

REPO = Path(__file__).resolve().parent.parent
SMALL = ["rounds=2", "data.max_per_client=2000", "train.batch_size=64", "discovery.steps=30", "data.eval_per_class=100"]

IN_PROCESS = """
import os, sys, warnings
from flwr.client import ClientApp
from flwr.server import ServerApp
from flwr.simulation import run_simulation
from fedmi_flower.apps.client_app import build_client
from fedmi_flower.apps.server_app import build_components

run_config = {"experiment": sys.argv[1], "out": sys.argv[2], "data-root": sys.argv[3], "console": "quiet"}
warnings.simplefilter("ignore")
run_simulation(
    server_app=ServerApp(server_fn=lambda context: build_components(run_config)),
    client_app=ClientApp(client_fn=lambda context: build_client(run_config, context.node_config).to_client()),
    num_supernodes=int(sys.argv[4]),
    backend_config={
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count(), "include_dashboard": False, "log_to_driver": False},
    },
)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--set", action="append", default=[], help="override, as for fedmi run")
    parser.add_argument("--data-root", default=os.environ.get("FEDMI_DATA_ROOT", "data"))
    parser.add_argument("--full", action="store_true", help="the experiment as it is, not 2 small rounds")
    args = parser.parse_args()
    overrides = [*([] if args.full else SMALL), *args.set]
    config = load_experiment(args.experiment, dict(parse_override(o) for o in overrides))
    data_root = str(Path(args.data_root).resolve())
    with tempfile.TemporaryDirectory(prefix="fedmi-runtime-") as tmp:
        work = Path(tmp)
        sets = [arg for o in overrides for arg in ("--set", o)]
        runtime = timed(
            [sys.executable, "-m", "fedmi_flower.cli", "run", args.experiment, *sets]
            + ["--out", str(work / "runtime"), "--data-root", data_root],
            work / "runtime.log",
            REPO,
        )
        print(f"fedmi run (simulation SuperLink, flwr run, flwr-simulation process): {runtime:.1f} s", flush=True)
        experiment = work / "experiment.toml"
        experiment.write_text(config_to_toml(config))
        command = [sys.executable, "-c", IN_PROCESS, str(experiment), str(work / "inprocess"), data_root]
        inprocess = timed([*command, str(config.clients)], work / "inprocess.log", REPO)
        print(f"run_simulation in one process (deprecated; the old fedmi run): {inprocess:.1f} s")
        same = [len((work / name / "rounds.jsonl").read_text().splitlines()) for name in ("runtime", "inprocess")] == [
            config.rounds
        ] * 2
        print(f"ratio fedmi run / run_simulation: {runtime / inprocess:.2f} (target <= 1.10); both finished: {same}")


if __name__ == "__main__":
    main()
