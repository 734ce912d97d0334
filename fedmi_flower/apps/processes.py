"""The processes of Flower's runtimes that this package starts on this machine, and how they are stopped.

Shared by :mod:`fedmi_flower.apps.deploy` (a SuperLink and SuperNodes) and
:mod:`fedmi_flower.apps.simulation` (a simulation SuperLink): the environment a Flower
process gets, the ``flwr`` CLI's JSON answers, loopback ports, and stopping a process
with every descendant it started (SuperExec, ServerApp, ClientApps, Ray workers).
Processes are found and stopped through ``/proc``, so this module needs Linux.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

BIN_DIR = Path(sys.executable).parent
"""Where this environment's ``flower-*`` and ``flwr*`` commands live."""

HOST = "127.0.0.1"

ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")
"""A terminal colour code, as Flower's log lines carry them (removed from the run directory's copy)."""


class DeploymentError(RuntimeError):
    """A process of the deployment failed; the message names the log to read."""


def flower_environment(home: Path) -> dict[str, str]:
    """The environment of a Flower process started here: its own ``$FLWR_HOME``, this environment's commands first.

    The SuperLink and SuperNodes launch ``flower-superexec``, ``flwr-serverapp``,
    ``flwr-simulation`` and ``flwr-clientapp`` by name, so this environment's ``bin/``
    comes first on ``PATH``; apps run with the installed dependencies.
    """
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", "")]),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }


def flwr_json(home: Path, *args: str) -> tuple[dict[str, Any], str]:
    """``flwr ARGS --format json`` with ``$FLWR_HOME`` = ``home``: its reply ({} unless a successful one) and output."""
    done = subprocess.run(
        [str(BIN_DIR / "flwr"), *args, "--format", "json"],
        cwd=home,
        env=flower_environment(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        reply = {}
    return (reply if isinstance(reply, dict) and reply.get("success") else {}), (done.stdout + done.stderr).strip()


def wait_until_listening(port: int, timeout: float, check: Callable[[], None]) -> bool:
    """Wait until something listens on loopback ``port``; False after ``timeout`` s. ``check`` raises to stop early."""
    deadline = time.monotonic() + timeout
    while not listening(port):
        check()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class FlowerProcesses:
    """Flower processes started together and stopped together, as a context manager.

    Subclasses start their processes in :meth:`start` and stop every one of them, with
    their descendants, in :meth:`stop`; a failed start stops what it had started.
    """

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on loopback right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:  # held open together, so that the ports differ
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------- process trees


def _stat(pid: int | str) -> tuple[str, int] | None:
    """State (``R``, ``S``, ``Z``, ...) and parent PID of a process; None when there is none."""
    try:
        # The command name in parentheses may hold spaces: split after its closing one.
        state, ppid = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[:2]
    except (OSError, ValueError):
        return None
    return state, int(ppid)


def process_tree(roots: Iterable[int]) -> list[int]:
    """The processes ``roots`` that exist, with all their descendants."""
    children = defaultdict(list)
    existing = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(entry.name)) is not None:
            existing.add(int(entry.name))
            children[stat[1]].append(int(entry.name))
    tree: list[int] = []
    todo = [pid for pid in roots if pid in existing]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.append(pid)
            todo.extend(children[pid])
    return tree


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie has ended."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _send(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_process_trees(roots: Iterable[int]) -> None:
    """SIGKILL the processes ``roots`` and all their descendants at once, as a crashing host would lose them."""
    _send(process_tree(roots), signal.SIGKILL)


def stop_process_trees(roots: Iterable[int], grace: float = 10.0) -> list[int]:
    """Stop the processes ``roots`` and all their descendants; return the PIDs signalled.

    The trees are frozen (SIGSTOP) first, until a walk finds no new process: a process
    that spawned a child between the walk and the signal would otherwise leave it
    orphaned and unseen. Then every process gets SIGTERM, and SIGKILL if it still runs
    after ``grace`` seconds.
    """
    tree: list[int] = []
    found = list(roots)
    try:
        while new := [pid for pid in process_tree(found + tree) if pid not in tree]:
            _send(new, signal.SIGSTOP)
            tree += new
            found = []
    finally:  # never leave a frozen process behind, even when interrupted
        _send(tree, signal.SIGTERM)
        _send(tree, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    _send([pid for pid in tree if _alive(pid)], signal.SIGKILL)
    return tree
