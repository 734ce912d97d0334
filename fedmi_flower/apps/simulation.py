"""Run experiments on Flower's simulation runtime, the one behind ``flwr run``: Ray virtual clients on this machine.

``fedmi run`` starts a SuperLink in simulation mode of its own (its own ``$FLWR_HOME`` in
a temporary folder, its Control API on a free loopback port), submits each run with
``flwr run <app> --stream``, and stops the SuperLink with everything it started when the
last run ends, fails or is interrupted. The SuperLink builds the app into a FAB and
starts a ``flwr-simulation`` process per run, which runs the ServerApp and the Ray
engine; Flower 1.41 deprecates the in-process ``flwr.simulation.run_simulation`` this
module used before in favour of exactly this path.

The run's console: the ServerApp's process output is streamed back to ``flwr run``,
and the run config's ``console`` key makes the ServerApp write its full log to
``run.log`` and only fedmi's lines (plus one line per warning) to that output
(:func:`fedmi_flower.apps.console.install_console`). What the runtime says before the
ServerApp starts (the SuperLink connection, the federation's size) is not the
experiment's: it goes to ``runtime.log`` in the run directory, with the rest of the
stream, and to the console only with ``--verbose``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from fedmi_flower.analysis.progress import decode
from fedmi_flower.apps.app_folder import write_app_folder
from fedmi_flower.apps.live_line import StreamEcho
from fedmi_flower.apps.memory import return_large_blocks_to_os
from fedmi_flower.apps.processes import (
    ANSI_CODE,
    BIN_DIR,
    HOST,
    DeploymentError,
    FlowerProcesses,
    flower_environment,
    flwr_json,
    free_ports,
    stop_process_trees,
    wait_until_listening,
)
from fedmi_flower.config import ConfigError, ExperimentConfig, make_model
from fedmi_flower.records.results import RunDirectory, config_to_toml, default_run_dir
from fedmi_flower.science.data import load_labels

CONNECTION = "fedmi-simulation"
"""Name of the SuperLink connection in the runtime's own ``$FLWR_HOME/config.toml``."""

RUNTIME_LOG = "runtime.log"
"""What ``flwr run --stream`` printed for a run, colour codes removed, in the run directory."""

SERVERAPP_STARTED = "fedmi: experiment "
"""The ServerApp's first line (``server_app.build_components``): from here on the stream is the run's console."""

STARTED_RUN = re.compile(r"Successfully started run (\d+)")


class SimulationRuntime(FlowerProcesses):
    """A SuperLink in simulation mode on loopback, for ``flwr run`` submissions; stopped with all it started.

    Parameters
    ----------
    verbose : bool
        Flower's own lines (and its debug level) on the console, and the Ray clients' output.
    startup_timeout : float
        Seconds to wait for the SuperLink to listen.
    echo : bool
        Echo the run's console (off where several runs go at once: their lines would interleave; each
        run's ``runtime.log`` still holds its own).

    Examples
    --------
    >>> with SimulationRuntime() as runtime:
    ...     runtime.run(load_experiment("quickstart"), "runs/q")
    """

    def __init__(self, verbose: bool = False, startup_timeout: float = 60.0, echo: bool = True) -> None:
        self.verbose = verbose
        self.echo = echo
        self.startup_timeout = startup_timeout
        self.workdir: Path | None = None
        self._superlink: subprocess.Popen | None = None
        self._running: subprocess.Popen | None = None
        self._kept = False  # a failure keeps the workdir (the SuperLink's log) for the user to read

    def start(self) -> None:
        """Start the SuperLink; return once its Control API listens."""
        if not (BIN_DIR / "flower-superlink").exists():
            raise DeploymentError(
                f"flower-superlink is not installed beside {sys.executable}; install flwr[simulation] here"
            )
        return_large_blocks_to_os()  # before the SuperLink starts, so that every process below inherits it
        self.workdir = Path(tempfile.mkdtemp(prefix="fedmi-run-"))
        (port,) = free_ports(1)
        connection = f'[superlink.{CONNECTION}]\naddress = "{HOST}:{port}"\ninsecure = true\n'
        (self.workdir / "config.toml").write_text(connection)
        with (self.workdir / "superlink.log").open("wb") as log:
            # Loopback only, and nothing but this process submits to it: no TLS needed. In its own
            # session, so that Ctrl-C reaches this process alone, which then stops everything in order.
            self._superlink = subprocess.Popen(
                ["flower-superlink", "--simulation", "--insecure", "--isolation", "subprocess"]
                + ["--host", HOST, "--port", str(port), "--disable-runtime-dependency-installation"],
                cwd=self.workdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        superlink, log_file = self._superlink, self.workdir / "superlink.log"

        def check() -> None:
            if superlink.poll() is not None:
                raise DeploymentError(f"Flower's simulation SuperLink exited; read {log_file}")

        self._kept = True  # until it listens: a failure keeps its log for the user to read
        if not wait_until_listening(port, self.startup_timeout, check):
            raise DeploymentError(f"Flower's simulation SuperLink did not start; read {log_file}")
        self._kept = False

    def stop(self) -> None:
        """Stop the SuperLink, the run in flight and every process they started (flwr-simulation, Ray)."""
        roots = [p.pid for p in (self._running, self._superlink) if p is not None and p.poll() is None]
        stop_process_trees(roots)
        for process in (self._running, self._superlink):
            if process is not None:
                process.wait(timeout=10)
        self._running = self._superlink = None
        if self.workdir is not None and not self._kept:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def run(
        self,
        config: ExperimentConfig,
        out: str | os.PathLike | None = None,
        data_root: str | None = None,
        resume: bool = False,
    ) -> Path:
        """Run ``config`` (``resume``: continue the run in ``out``); return its run directory.

        Raises
        ------
        DeploymentError
            When the run does not finish as completed; the message holds the end of its
            log and names the files to read.
        """
        if self._superlink is None or self.workdir is None:
            raise RuntimeError("the runtime is not started; use it as a context manager or call start()")
        # Fail on a missing dataset here, with the loader's message, before Flower starts anything.
        load_labels(config.data.dataset, True, data_root)
        load_labels(config.data.dataset, False, data_root)
        make_model(config)  # and on a model that cannot be built or lacks the circuit interface
        run_dir = Path(out or default_run_dir(config.name)).resolve()  # the ServerApp runs in another folder
        if not resume:
            RunDirectory(run_dir).check_new()  # here, not in a log after the runtime started (the ServerApp checks too)
        # The resolved config travels as a file: a sweep point or a --set value needs no re-parsing.
        experiment = self.workdir / f"{run_dir.name}.toml"
        experiment.write_text(config_to_toml(config))
        run_config = {
            "experiment": str(experiment),
            "out": str(run_dir),
            "data-root": str(Path(data_root).resolve()) if data_root else "",
            "resume": resume,
            "console": "verbose" if self.verbose else "quiet",
        }
        config_file = self.workdir / "run-config.toml"
        config_file.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in run_config.items()))
        app = write_app_folder(self.workdir / "app", config.import_paths())
        command = [str(BIN_DIR / "flwr"), "run", str(app), CONNECTION, "--stream"]
        command += ["--run-config", str(config_file), "--federation-config", self.federation_config(config)]
        transcript, run_id = self._follow(command)
        if run_dir.is_dir():
            (run_dir / RUNTIME_LOG).write_text("\n".join(transcript) + "\n")
        status = self._status(run_id) if run_id else "never started"
        if status != "finished:completed":
            self._kept = True
            tail = "\n".join(transcript[-15:])
            where = run_dir / RUNTIME_LOG if run_dir.is_dir() else self.workdir
            raise DeploymentError(
                f"the run of {config.name} did not complete (status: {status}); its log ended with:\n{tail}\n"
                f"read {where}, {run_dir / 'run.log'} and {self.workdir / 'superlink.log'}"
            )
        return run_dir

    def federation_config(self, config: ExperimentConfig) -> str:
        """``flwr run --federation-config``: the simulated SuperNodes and each one's Ray resources."""
        cpus = config.resources.client_cpus
        if cpus != int(cpus):
            raise ConfigError(
                f"resources.client_cpus = {cpus}: Flower's simulation runtime gives each virtual client "
                "whole CPUs; set 1 or more"
            )
        options = {
            "num-supernodes": config.clients,
            "client-resources-num-cpus": int(cpus),
            "client-resources-num-gpus": float(config.resources.client_gpus),
            "init-args-log-to-driver": self.verbose,  # the clients' own output, which Ray prefixes with their pid
            "verbose": self.verbose,
        }
        if ray_cluster() is None:  # else Ray joins that cluster, sized by its own nodes
            options["init-args-num-cpus"] = os.cpu_count() or 1
        return " ".join(f"{key}={json.dumps(value)}" for key, value in options.items())

    def _follow(self, command: list[str]) -> tuple[list[str], str | None]:
        """Run ``flwr run --stream``, echoing the run's console; return the stream's lines and the run id.

        The stream is read on a thread of its own, so that the live progress line's elapsed time
        moves on between the run's updates (:class:`~fedmi_flower.apps.console.StreamEcho`).
        """
        terminal = sys.stdout.isatty()
        echo = StreamEcho(sys.stdout, terminal)
        transcript: list[str] = []
        run_id = None
        started = False
        # Held in a local too: stop() (Ctrl-C, from another thread) clears the attribute while this still reads.
        running = self._running = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = running.stdout
        assert stdout is not None

        def read() -> None:
            for raw in stdout:
                lines.put(raw)
            lines.put(None)

        threading.Thread(target=read, daemon=True, name="fedmi-stream").start()
        try:
            while True:
                try:
                    raw = lines.get(timeout=1.0)
                except queue.Empty:
                    echo.tick()
                    continue
                if raw is None:
                    break
                line = ANSI_CODE.sub("", raw.rstrip("\n"))
                if decode(line) is not None:  # a live-line update: for the terminal only, never the transcript
                    if started and self.echo:
                        echo.line(line)
                    continue
                transcript.append(line)
                if run_id is None and (found := STARTED_RUN.search(line)):
                    run_id = found.group(1)
                started = started or SERVERAPP_STARTED in line
                if self.echo and (started or self.verbose):
                    echo.line(raw.rstrip("\n") if terminal else line)
        finally:
            echo.close()
        running.wait()
        self._running = None
        return transcript, run_id

    def _status(self, run_id: str) -> str:
        """The run's status as the SuperLink reports it (``finished:completed`` when it succeeded)."""
        assert self.workdir is not None
        reply, said = flwr_json(self.workdir, "ls", CONNECTION, "--run-id", run_id)
        try:
            (run,) = reply["runs"]
        except (KeyError, TypeError, ValueError):
            return f"unknown (flwr ls said: {said[-300:]})"
        details = run.get("status-details")
        return str(run["status"]) + (f" ({details})" if details and run["status"] != "finished:completed" else "")

    def _env(self) -> dict[str, str]:
        assert self.workdir is not None
        env = flower_environment(self.workdir)
        env["RAY_ADDRESS"] = ray_cluster() or "local"
        return env


def ray_cluster() -> str | None:
    """The Ray cluster the user named (``$RAY_ADDRESS``), else None: the simulation starts a Ray of its own.

    Ray itself, given no address, joins any cluster `ray start` left on this machine, live
    or dead (its address stays in /tmp/ray/ray_current_cluster until `ray stop`), and then
    refuses the CPUs the federation asks for; so None is passed on as ``local``.
    """
    return os.environ.get("RAY_ADDRESS") or None


def simulate(
    config: ExperimentConfig,
    out: str | os.PathLike | None = None,
    data_root: str | None = None,
    verbose: bool = False,
    resume: bool = False,
) -> Path:
    """Run ``config`` on a simulation runtime of its own; return the run directory (see :class:`SimulationRuntime`)."""
    with SimulationRuntime(verbose) as runtime:
        return runtime.run(config, out, data_root, resume)
