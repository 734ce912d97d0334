"""Find and stop exactly the processes a test started, never a process by its name."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fedmi_flower.apps.deploy import process_tree, stop_process_trees


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
