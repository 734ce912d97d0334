"""Run docs/deployment.md's recipes for several hosts on this one machine, as literally as one machine allows.

"Across hosts": ``fedmi credentials`` for the SuperLink's address, a SuperLink that
listens on every interface with TLS and SuperNode authentication, the SuperNodes' public
keys registered from "your machine", two SuperNodes that reach the SuperLink by that
address, and ``flwr run`` of this checkout from "your machine". Each host is a folder
here with its own ``$FLWR_HOME``; the SuperLink's address is ``127.0.0.2``, which is
loopback too but not the ``127.0.0.1`` that every certificate covers anyway, so the
certificate's name is really checked. "The simulation on a Ray cluster": a Ray head
started with ``ray start --head`` and ``fedmi run`` joining it through ``RAY_ADDRESS``.

What one machine cannot check: other hosts' firewalls and DNS, a SuperNode without
this checkout (here every "host" shares one Python environment), and Ray workers on
other nodes. Every process started here is stopped by PID with its descendants.

    python deploy/check_across_hosts.py                # both recipes, about 3 minutes
    python deploy/check_across_hosts.py --only flower  # or --only ray
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fedmi_flower.apps.processes import BIN_DIR, flwr_json, free_ports, listening, stop_process_trees

REPO = Path(__file__).resolve().parent.parent
LINK_HOST = "127.0.0.2"
SMALL = "rounds=1 clients=2 data.max_per_client=2000 train.batch_size=64 discovery.steps=30 data.eval_per_class=100"


class Hosts:
    """The processes of the check, each in its host's folder; stopped together."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.started: list[subprocess.Popen] = []

    def home(self, host: str) -> Path:
        """The host's folder: its working directory and ``$FLWR_HOME``."""
        folder = self.work / host
        folder.mkdir(exist_ok=True)
        return folder

    def env(self, host: str, **extra: str) -> dict[str, str]:
        """What a user's shell on that host would have: its ``$FLWR_HOME``, the environment's commands on ``PATH``."""
        path = f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}"
        return {**os.environ, "FLWR_HOME": str(self.home(host)), "PATH": path, **extra}

    def run(self, host: str, command: str, **extra: str) -> str:
        """Run a documented command on ``host`` to its end; fail loudly with its output."""
        print(f"[{host}] $ {command}", flush=True)
        done = subprocess.run(
            ["bash", "-c", command], cwd=self.home(host), env=self.env(host, **extra), capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"[{host}] failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done.stdout

    def start(self, host: str, command: str, **extra: str) -> subprocess.Popen:
        """Start a documented long-running command on ``host``; its output goes to ``<host>.log``."""
        print(f"[{host}] $ {command} &", flush=True)
        with (self.work / f"{host}.log").open("w") as log:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.home(host),
                env=self.env(host, **extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def stop(self) -> None:
        stop_process_trees([p.pid for p in self.started])


def wait(what: str, ready: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout:g} s")
        time.sleep(1.0)


def check_flower(hosts: Hosts, data_root: str) -> None:
    (port,) = free_ports(1)
    link = f"{LINK_HOST}:{port}"
    hosts.home("laptop")
    hosts.run("laptop", f"{sys.executable} -m fedmi_flower.cli credentials certs --host {LINK_HOST} --supernodes 2")
    certs = hosts.work / "laptop" / "certs"  # copied to each host, as the docs say
    hosts.home("superlink")
    (hosts.work / "superlink" / "state").mkdir()
    hosts.start(
        "superlink",
        f"flower-superlink --ssl-ca-certfile {certs}/ca.crt --ssl-certfile {certs}/server.pem "
        f"--ssl-keyfile {certs}/server.key --host 0.0.0.0 --port {port} --database state/superlink.db "
        "--disable-runtime-dependency-installation --enable-supernode-auth",
    )
    wait("the SuperLink listens", lambda: listening(port))
    (hosts.work / "laptop" / "config.toml").write_text(
        f'[superlink.fedmi-cluster]\naddress = "{link}"\nroot-certificates = "{certs / "ca.crt"}"\n'
    )
    for i in range(2):
        hosts.run("laptop", f"flwr supernode register {certs}/supernode-{i}.pub fedmi-cluster")
    # Two "hosts" on one machine: each SuperNode's own Runtime API needs a port of its own
    # (--port, default 9094), which separate hosts would not.
    for i, runtime_port in enumerate(free_ports(2)):
        hosts.home(f"supernode-{i}")
        node_config = shlex.quote(f'partition-id={i} num-partitions=2 data-root="{data_root}"')
        hosts.start(
            f"supernode-{i}",
            f"flower-supernode --superlink {link} --root-certificates {certs}/ca.crt "
            f"--node-config {node_config} --auth-supernode-private-key {certs}/supernode-{i} --port {runtime_port}",
        )
    laptop = hosts.work / "laptop"

    def online() -> int:
        nodes = flwr_json(laptop, "supernode", "ls", "fedmi-cluster")[0].get("nodes", [])
        return sum(n.get("status") == "online" for n in nodes)

    wait("both SuperNodes online", lambda: online() == 2)
    out = hosts.work / "superlink" / "runs" / "q1"
    run_config = shlex.quote(f'experiment="quickstart" set="{SMALL}" out="{out}" data-root="{data_root}"')
    hosts.run("laptop", f"flwr run {REPO} fedmi-cluster --stream --run-config {run_config}")
    runs = flwr_json(laptop, "ls", "fedmi-cluster")[0].get("runs", [])
    status = [r.get("status") for r in runs]
    records = (out / "rounds.jsonl").read_text().splitlines() if (out / "rounds.jsonl").exists() else []
    clients = sorted(json.loads(records[-1])["clients"]) if records else []
    print(f"flwr ls: {status}; the run wrote {len(records)} round record(s), clients {clients}")
    if status != ["finished:completed"] or clients != ["0", "1"]:
        raise SystemExit("the run across 'hosts' did not complete with both SuperNodes")


def check_ray(hosts: Hosts, data_root: str) -> None:
    (port,) = free_ports(1)
    hosts.home("ray-head")
    # Ray's state in a folder of this check, not /tmp/ray: a head stopped by PID rather than
    # `ray stop` leaves its address in ray_current_cluster, which a later ray.init would try.
    ray_tmp = hosts.work / "rt"
    ray_tmp.mkdir()
    hosts.start(
        "ray-head", f"ray start --head --port {port} --num-cpus {os.cpu_count()} --block", RAY_TMPDIR=str(ray_tmp)
    )
    wait("the Ray head listens", lambda: listening(port))
    latest = ray_tmp / "ray" / "session_latest"
    wait("the Ray head's session", latest.exists)
    head_session = latest.resolve()
    out = hosts.work / "ray-head" / "q1"
    hosts.run(
        "ray-head",
        f"{sys.executable} -m fedmi_flower.cli run quickstart --set rounds=1 --set data.max_per_client=2000 "
        f"--set discovery.steps=30 --out {out} --data-root {data_root} --verbose",
        RAY_ADDRESS=f"127.0.0.1:{port}",
        RAY_TMPDIR=str(ray_tmp),
        PYTHONPATH=str(REPO),
    )
    # Joined: the run's driver (flwr-simulation) logged into the head's session, and no other Ray was started.
    drivers = sorted(p.name for p in (head_session / "logs").glob("python-core-driver-*"))
    joined = latest.resolve() == head_session and bool(drivers)
    print(f"fedmi run joined the cluster started by `ray start --head`: {joined} (drivers there: {drivers})")
    if not joined:
        raise SystemExit(
            f"fedmi run did not join the Ray head (its session: {head_session}); read {out / 'runtime.log'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("flower", "ray"))
    parser.add_argument("--data-root", default=os.environ.get("FEDMI_DATA_ROOT", "data"))
    parser.add_argument("--keep", action="store_true", help="keep the hosts' folders and logs")
    args = parser.parse_args()
    data_root = str(Path(args.data_root).resolve())
    work = Path(tempfile.mkdtemp(prefix="fedmi-hosts-"))
    hosts = Hosts(work)
    checked = False
    try:
        if args.only in (None, "flower"):
            check_flower(hosts, data_root)
        if args.only in (None, "ray"):
            check_ray(hosts, data_root)
        checked = True
    finally:
        hosts.stop()
        if checked and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        print(("checked" if checked else "FAILED") + ("" if checked and not args.keep else f"; logs in {work}"))


if __name__ == "__main__":
    main()
