"""Find and stop exactly the processes a test started, never a process by its name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmi_flower.apps.processes import process_tree, stop_process_trees


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _start_time_and_state(pid: int) -> tuple[int, str] | None:
    """Start time (clock ticks after boot: tells a process from a later one with its PID) and state."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19]), fields[0]


def stop_processes_mentioning(text: str, grace: float = 5.0) -> list[int]:
    """Stop every process whose command line contains ``text``, with all its descendants."""
    roots = [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and int(e.name) != os.getpid() and text in _cmdline(int(e.name))
    ]
    return stop_process_trees(roots, grace)


class DescendantRecorder:
    """Remember every descendant of this process that runs while the ``with`` block does.

    Sampled every ``interval`` seconds from ``/proc``, independently of the code under
    test: :meth:`leftovers` then names those still running.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.seen: dict[tuple[int, int], str] = {}  # (pid, start time) -> command line
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> DescendantRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            for pid in process_tree([os.getpid()]):
                info = _start_time_and_state(pid)
                if pid != os.getpid() and info is not None:
                    # Re-read every time: a child caught between fork and exec still shows its parent's command line.
                    self.seen[(pid, info[0])] = _cmdline(pid) or self.seen.get((pid, info[0]), "")
            if self._done.wait(self.interval):
                return

    def commands(self) -> list[str]:
        """Command lines of every process seen."""
        return list(self.seen.values())

    def leftovers(self) -> list[str]:
        """Stop every process seen that still runs (a zombie has ended); return their command lines."""
        alive = {
            pid: cmd
            for (pid, started), cmd in self.seen.items()
            if (info := _start_time_and_state(pid)) is not None and info[0] == started and info[1] != "Z"
        }
        stop_process_trees(list(alive))
        return [f"{pid}: {cmd}" for pid, cmd in alive.items()]


@dataclass
class Interrupted:
    """What :func:`interrupt_fedmi` saw: the command's exit code and output, every process of its tree."""

    returncode: int
    output: str
    commands: list[str]
    leftovers: list[str]


def interrupt_fedmi(args: list[str], ready: Callable[[], bool], log: Path, timeout: float, cwd: Path) -> Interrupted:
    """Run ``fedmi ARGS``, press Ctrl-C (SIGINT) once ``ready()`` holds, and record what is left running after."""
    with DescendantRecorder() as recorder, log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedmi_flower.cli", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                assert proc.poll() is None, f"fedmi ended before it was interrupted:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"not ready to interrupt within {timeout:g} s"
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        finally:
            proc.kill()
    leftovers = recorder.leftovers()
    return Interrupted(proc.returncode, log.read_text(), recorder.commands(), leftovers)
