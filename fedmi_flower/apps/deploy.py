"""Run the app on Flower's deployment runtime on this machine: a SuperLink, N SuperNodes, ``flwr run``.

Every process is the real Flower component, talking HTTPS over loopback exactly as it
would between hosts, with TLS and SuperNode authentication on (``secure=False`` runs
them with ``--insecure``). SuperNode ``i`` gets the node config ``partition-id=i
num-partitions=N`` (plus ``data-root``), so its ClientApp loads its own partition and
nothing else.

``flwr run`` ships the app folder to the SuperLink as a FAB; the SuperLink and every
SuperNode unpack it under their ``$FLWR_HOME/apps`` and import the app's code from
there, with the dependencies of this Python environment: the SuperLink is started with
``--disable-runtime-dependency-installation`` (by default it would ``uv sync`` a fresh
environment for every run), and a SuperNode installs dependencies only when started
with ``--allow-runtime-dependency-installation``, which is not given here.

Processes are found and stopped through ``/proc``, so this module needs Linux.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from fedmi_flower.apps.app_folder import write_app_folder
from fedmi_flower.apps.credentials import Credentials, make_credentials
from fedmi_flower.apps.processes import (
    ANSI_CODE,
    BIN_DIR,
    HOST,
    DeploymentError,
    FlowerProcesses,
    flower_environment,
    flwr_json,
    free_ports,
    kill_process_trees,
    stop_process_trees,
    wait_until_listening,
)

CONNECTION = "fedmi-deployment"
"""Name of the SuperLink connection written to the deployment's own ``$FLWR_HOME/config.toml``."""


class LocalDeployment(FlowerProcesses):
    """One SuperLink and ``num_supernodes`` SuperNodes on loopback, started and stopped as a unit.

    Parameters
    ----------
    workdir : str | os.PathLike
        Folder for the processes' state (one ``$FLWR_HOME`` each) and their logs (``logs/``).
    num_supernodes : int
        SuperNodes to start; SuperNode ``i`` serves partition ``i`` of ``num_supernodes``.
    data_root : str | os.PathLike | None
        Dataset folder given to every SuperNode (node config) and to the ServerApp (run
        config); None leaves it to ``$FEDMI_DATA_ROOT`` or ``./data``.
    startup_timeout : float
        Seconds to wait for every SuperNode to connect to the SuperLink.
    secure : bool
        TLS on every link to the SuperLink and SuperNode authentication (the default):
        throwaway credentials are written to ``workdir/credentials``
        (:mod:`fedmi_flower.apps.credentials`), every SuperNode's public key is
        registered before it starts, and the SuperLink admits no other. False runs
        everything with ``--insecure``.

    Examples
    --------
    >>> with LocalDeployment("/tmp/fedmi-deploy", num_supernodes=3) as deployment:
    ...     run_dir = deployment.run({"experiment": "quickstart", "set": "rounds=2"}, out="runs/deployed")
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        num_supernodes: int,
        data_root: str | os.PathLike | None = None,
        startup_timeout: float = 120.0,
        secure: bool = True,
    ) -> None:
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes = {num_supernodes}; a deployment needs at least one SuperNode")
        self.workdir = Path(workdir).resolve()
        self.logs = self.workdir / "logs"
        self.num_supernodes = num_supernodes
        self.data_root = Path(data_root).resolve() if data_root else None
        self.startup_timeout = startup_timeout
        self.secure = secure
        self.credentials: Credentials | None = None
        self.address: str | None = None  # host:port of the SuperLink's Fleet, Control and Runtime HTTP API
        self._services: dict[str, subprocess.Popen] = {}  # must stay up while the deployment is in use
        self._processes: list[subprocess.Popen] = []  # every process started, to stop on exit

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the SuperLink and the SuperNodes; return once every SuperNode is online."""
        if not (BIN_DIR / "flower-superlink").exists():
            raise DeploymentError(
                f"flower-superlink is not installed beside {sys.executable}; install flwr in this environment"
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        link_port, *node_ports = free_ports(1 + self.num_supernodes)
        self.address = f"{HOST}:{link_port}"
        if self.secure:
            self.credentials = make_credentials(self.workdir / "credentials", self.num_supernodes)
        # No --database: state in memory, so that a reused workdir cannot hold SuperNodes of an
        # earlier deployment that still count as online.
        self._start_service(
            "superlink",
            self._home("superlink"),
            ["flower-superlink", *self._superlink_security(), "--host", HOST, "--port", str(link_port)]
            + ["--disable-runtime-dependency-installation"],
        )
        deadline = time.monotonic() + self.startup_timeout
        # SuperNodes that find no SuperLink retry with a growing back-off: start them once it listens.
        if not wait_until_listening(link_port, self.startup_timeout, lambda: self._check_services("while starting")):
            raise DeploymentError(
                f"the SuperLink did not listen on {self.address} within "
                f"{self.startup_timeout:g} s; read {self.logs}/superlink.log"
            )
        (self._home("cli") / "config.toml").write_text(
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n'
            + (
                f'root-certificates = "{self.credentials.ca_certificate}"\n'
                if self.credentials is not None
                else "insecure = true\n"
            )
        )
        for i, port in enumerate(node_ports):
            if self.credentials is not None:  # registered before it starts: the SuperLink admits no other
                self.register_supernode(self.credentials.public_key(i))
            name = f"supernode-{i}"
            self._start_service(name, self._home(name), self._supernode_command(i, port, self.supernode_security(i)))
        while (online := self._online_supernodes()) < self.num_supernodes:
            self._check_services("while starting")
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{online} of {self.num_supernodes} SuperNodes connected within {self.startup_timeout:g} s; "
                    f"read {self.logs}/supernode-*.log and superlink.log"
                )
            time.sleep(1.0)

    def run(
        self,
        run_config: Mapping[str, bool | int | float | str],
        out: str | os.PathLike,
        app_dir: str | os.PathLike | None = None,
        import_paths: Sequence[str] = (),
        timeout: float | None = None,
        echo: IO[str] | None = None,
    ) -> Path:
        """Submit the app with ``flwr run`` and wait for the run to finish; return its run directory.

        Parameters
        ----------
        run_config : Mapping
            Run config overrides (keys of ``[tool.flwr.app.config]``); ``out`` and,
            when the deployment has one, ``data-root`` are added.
        out : str | os.PathLike
            The run directory the ServerApp writes.
        app_dir : str | os.PathLike | None
            The Flower app folder (holding ``pyproject.toml``) to ship as a FAB; None writes
            one from this package as installed (:func:`~fedmi_flower.apps.app_folder.write_app_folder`).
        import_paths : Sequence[str]
            With ``app_dir`` None: the run's ``module:attribute`` names (model, strategy) whose
            modules are not installed, to ship in the FAB.
        timeout : float | None
            Seconds the run may take; None waits for as long as it runs.
        echo : IO[str] | None
            Where to copy the run's log stream (the ServerApp's log) as it arrives.

        Raises
        ------
        DeploymentError
            When a SuperLink or SuperNode dies, the run times out, or it does not
            finish as completed; the message names the logs to read.
        """
        if self.address is None:
            raise RuntimeError("the deployment is not started; use it as a context manager or call start()")
        if app_dir is None:
            app_dir = write_app_folder(self.workdir / "app", import_paths)
        app_dir = Path(app_dir).resolve()
        if not (app_dir / "pyproject.toml").is_file():
            raise DeploymentError(
                f"{app_dir} holds no pyproject.toml; pass the folder of a fedmi-flower checkout as app_dir"
            )
        out = Path(out).resolve()  # the ServerApp runs in another working directory
        config = {**run_config, "out": str(out)}
        if self.data_root:
            config.setdefault("data-root", str(self.data_root))
        config_file = self.workdir / "run-config.toml"
        config_file.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in config.items()))

        log = self.logs / "flwr-run.log"
        with log.open("a") as stream:
            stream.write(f"---- run config: {json.dumps(config)}\n")
        this_run = log.stat().st_size
        try:
            self._follow(log, app_dir, config_file, timeout, echo)
        finally:
            if out.is_dir():  # this run's part of the ServerApp's log, where `fedmi run` keeps its own
                with log.open() as stream:
                    stream.seek(this_run)
                    (out / "run.log").write_text(ANSI_CODE.sub("", stream.read()))
        return out

    def _follow(self, log: Path, app_dir: Path, config_file: Path, timeout: float | None, echo: IO[str] | None) -> None:
        """Submit the run with `flwr run --stream`, echo the ServerApp's log, and check that it completed."""
        earlier_runs = set(self._runs())
        with log.open() as stream:
            stream.seek(0, os.SEEK_END)  # echo this run only
            flwr_run = self._start(
                "flwr-run",
                self._home("cli"),
                ["flwr", "run", str(app_dir), CONNECTION, "--stream", "--run-config", str(config_file)],
            )
            deadline = None if timeout is None else time.monotonic() + timeout
            while flwr_run.poll() is None:
                if echo is not None:
                    echo.write(stream.read())
                    echo.flush()
                self._check_services("during the run")
                if deadline is not None and time.monotonic() > deadline:
                    raise DeploymentError(
                        f"the run did not finish within {timeout:g} s; "
                        f"read {log} (ServerApp) and {self.logs}/supernode-*.log (ClientApps)"
                    )
                time.sleep(1.0)
            if echo is not None:
                echo.write(stream.read())

        runs = [run for run_id, run in self._runs().items() if run_id not in earlier_runs]
        if flwr_run.returncode != 0 or [run["status"] for run in runs] != ["finished:completed"]:
            statuses = (
                ", ".join(f"{run['status']} ({run.get('status-details')})" for run in runs) or "no run was created"
            )
            raise DeploymentError(
                f"flwr run exited with code {flwr_run.returncode}, run status: {statuses}; "
                f"read {log} (ServerApp) and {self.logs}/supernode-*.log (ClientApps)"
            )

    def stop(self) -> None:
        """Stop every process this deployment started, with all their descendants (ServerApp, ClientApps)."""
        stop_process_trees(p.pid for p in self._processes if p.poll() is None)
        for process in self._processes:
            process.wait(timeout=10)  # reap, so that no zombie is left either
        self._processes.clear()
        self._services.clear()
        self.address = None

    # ------------------------------------------------------------------ security

    def _superlink_security(self) -> list[str]:
        if self.credentials is None:
            return ["--insecure"]
        c = self.credentials
        return [
            "--ssl-ca-certfile",
            str(c.ca_certificate),
            "--ssl-certfile",
            str(c.server_certificate),
            "--ssl-keyfile",
            str(c.server_key),
            "--enable-supernode-auth",
        ]

    def supernode_security(self, i: int, private_key: Path | None = None) -> list[str]:
        """The SuperNode flags for TLS (the CA to trust) and authentication (node ``i``'s key, or ``private_key``)."""
        if self.credentials is None:
            return ["--insecure"]
        key = private_key if private_key is not None else self.credentials.supernode_keys[i]
        return ["--root-certificates", str(self.credentials.ca_certificate), "--auth-supernode-private-key", str(key)]

    def start_untrusted_supernode(self, name: str, flags: list[str], max_retries: int = 1) -> subprocess.Popen:
        """Start one more SuperNode with ``flags`` in place of the deployment's security flags.

        A probe that the SuperLink refuses what it should: a SuperNode without the CA, or
        with a key that was never registered. Its output goes to ``logs/<name>.log``; it
        gives up after ``max_retries`` failed connections, and :meth:`stop` ends it.
        """
        (port,) = free_ports(1)
        flags = [*flags, "--max-retries", str(max_retries)]
        return self._start(name, self._home(name), self._supernode_command(0, port, flags))

    def _supernode_command(self, partition: int, port: int, flags: list[str]) -> list[str]:
        """``flower-supernode`` for ``partition`` of this deployment, its Runtime API on ``port``, with ``flags``."""
        if self.address is None:
            raise RuntimeError("the deployment is not started")
        node_config = f"partition-id={partition} num-partitions={self.num_supernodes}"
        if self.data_root:
            node_config += f" data-root={json.dumps(str(self.data_root))}"
        return [
            "flower-supernode",
            *flags,
            "--superlink",
            self.address,
            "--host",
            HOST,
            "--port",
            str(port),
            "--node-config",
            node_config,
        ]

    def kill_supernode(self, i: int) -> None:
        """SIGKILL SuperNode ``i`` with its ClientApp processes, as a host that crashes would vanish.

        The deployment stops watching it (a run goes on without it); :meth:`restart_supernode`
        brings it back.
        """
        process = self._services.pop(f"supernode-{i}")
        kill_process_trees([process.pid])
        process.wait(timeout=10)

    def restart_supernode(self, i: int) -> None:
        """Start SuperNode ``i`` again: same partition, same key, so it rejoins as the node it was.

        Waits first until the SuperLink counts the dead node offline (its heartbeats stopped):
        while the SuperLink still counts it online, it refuses to activate a node of that key.
        """
        deadline = time.monotonic() + self.startup_timeout
        while self._online_supernodes() >= self.num_supernodes:
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"the SuperLink still counts SuperNode {i} online {self.startup_timeout:g} s after it died"
                )
            time.sleep(1.0)
        (port,) = free_ports(1)
        name = f"supernode-{i}"
        self._start_service(name, self._home(name), self._supernode_command(i, port, self.supernode_security(i)))

    def register_supernode(self, public_key: Path) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``)."""
        done = subprocess.run(
            [str(BIN_DIR / "flwr"), "supernode", "register", str(public_key), CONNECTION],
            cwd=self._home("cli"),
            env=flower_environment(self._home("cli")),
            capture_output=True,
            text=True,
            timeout=120,
        )
        with (self.logs / "flwr-supernode-register.log").open("a") as log:
            log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise DeploymentError(
                f"flwr supernode register {public_key} failed (exit code {done.returncode}); "
                f"read {self.logs}/flwr-supernode-register.log"
            )

    # ------------------------------------------------------------------ helpers

    def _home(self, name: str) -> Path:
        """The ``$FLWR_HOME`` (and working directory) of one process."""
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        return home

    def _start(self, name: str, home: Path, command: list[str]) -> subprocess.Popen:
        """Start ``command`` with its own ``$FLWR_HOME``; its output is appended to ``logs/<name>.log``."""
        env = flower_environment(home)
        with (self.logs / f"{name}.log").open("ab") as log:
            # A session of its own: Ctrl-C reaches only this process, which then stops the deployment in order.
            process = subprocess.Popen(
                command,
                cwd=home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._processes.append(process)
        return process

    def _start_service(self, name: str, home: Path, command: list[str]) -> None:
        self._services[name] = self._start(name, home, command)

    def _check_services(self, when: str) -> None:
        for name, process in list(self._services.items()):  # a fault test may kill one from another thread
            if process.poll() is not None:
                raise DeploymentError(
                    f"{name} exited with code {process.returncode} {when}; read {self.logs / name}.log"
                )

    def _flwr_json(self, *args: str) -> dict:
        """Output of a ``flwr ... --format json`` command on this deployment's connection; {} when it fails."""
        return flwr_json(self._home("cli"), *args, CONNECTION)[0]

    def _online_supernodes(self) -> int:
        return sum(node.get("status") == "online" for node in self._flwr_json("supernode", "ls").get("nodes", []))

    def _runs(self) -> dict[str, dict]:
        return {run["run-id"]: run for run in self._flwr_json("ls").get("runs", [])}
