"""``fedmi run`` (Flower's ``run_simulation``, in this process) against the runtime behind ``flwr run``.

Flower 1.41 deprecates ``flwr.simulation.run_simulation``, which ``fedmi run`` calls, in
favour of ``flwr run``: a SuperLink in simulation mode that builds the app into a FAB,
installs it, and starts a ``flwr-simulation`` process per run, which runs the same Ray
engine. This script runs one experiment both ways, one after the other, and prints the
wall times and their ratio (issue 17: moving ``fedmi run`` over must keep its speed within
10%). The SuperLink is this script's own (its own ``$FLWR_HOME`` in a temporary folder),
stopped with everything it started at the end.

    python bench/bench_runtime.py                         # quickstart, 2 small rounds (~3 minutes)
    python bench/bench_runtime.py --set rounds=3          # more overrides of the experiment
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedmi_flower.apps.deploy import BIN_DIR, HOST, free_ports, stop_process_trees

REPO = Path(__file__).resolve().parent.parent
SMALL = ["rounds=2", "data.max_per_client=2000", "train.batch_size=64", "discovery.steps=30", "data.eval_per_class=100"]


def timed_fedmi_run(experiment: str, overrides: list[str], out: Path, data_root: str) -> float:
    sets = [arg for o in overrides for arg in ("--set", o)]
    began = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedmi_flower.cli",
            "run",
            experiment,
            *sets,
            "--out",
            str(out),
            "--data-root",
            data_root,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"fedmi run failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def timed_flwr_run(experiment: str, overrides: list[str], out: Path, data_root: str, clients: int, work: Path) -> float:
    """Start a simulation SuperLink, ``flwr run`` the app on it, wait; the time from SuperLink start to the end."""
    home = work / "flwr-home"
    home.mkdir(parents=True)
    (port,) = free_ports(1)
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", "")])}
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    (home / "config.toml").write_text(
        f'[superlink.bench]\naddress = "{HOST}:{port}"\ninsecure = true\n'
        f"options.num-supernodes = {clients}\n"
        "options.backend.client-resources.num-cpus = 1\noptions.backend.client-resources.num-gpus = 0.0\n"
    )
    config = work / "run-config.toml"
    config.write_text(
        f'experiment = "{experiment}"\nset = {json.dumps(" ".join(overrides))}\n'
        f"out = {json.dumps(str(out))}\ndata-root = {json.dumps(data_root)}\n"
    )
    began = time.perf_counter()
    with (work / "superlink.log").open("wb") as log:
        link = subprocess.Popen(
            ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess", "--host", HOST]
            + ["--port", str(port)]
            + ["--disable-runtime-dependency-installation"],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        done = subprocess.run(
            [str(BIN_DIR / "flwr"), "run", str(REPO), "bench", "--stream", "--run-config", str(config)],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - began
        (work / "flwr-run.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not (out / "rounds.jsonl").is_file():
            raise SystemExit(f"flwr run failed; read {work}/flwr-run.log and {work}/superlink.log")
        return seconds
    finally:
        stop_process_trees([link.pid])
        link.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--set", action="append", default=[], help="override, as for fedmi run")
    parser.add_argument("--data-root", default=os.environ.get("FEDMI_DATA_ROOT", "data"))
    parser.add_argument("--clients", type=int, default=3, help="the experiment's clients (SuperNodes to simulate)")
    args = parser.parse_args()
    overrides = [*SMALL, *args.set]
    data_root = str(Path(args.data_root).resolve())
    with tempfile.TemporaryDirectory(prefix="fedmi-runtime-") as tmp:
        work = Path(tmp)
        inprocess = timed_fedmi_run(args.experiment, overrides, work / "inprocess", data_root)
        print(f"fedmi run (run_simulation, in this process): {inprocess:.1f} s", flush=True)
        flwr = timed_flwr_run(args.experiment, overrides, work / "flwr", data_root, args.clients, work / "flwr-runtime")
        print(f"flwr run (simulation SuperLink, flwr-simulation process): {flwr:.1f} s")
        same = (work / "inprocess" / "rounds.jsonl").read_text().count("\n") == (
            work / "flwr" / "rounds.jsonl"
        ).read_text().count("\n")
        print(f"ratio flwr run / fedmi run: {flwr / inprocess:.2f} (target <= 1.10); same number of rounds: {same}")


if __name__ == "__main__":
    main()
