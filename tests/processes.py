"""Stop exactly the processes a test started: those whose command line names a test-owned path, and their descendants."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def process_tree(roots: list[int]) -> list[int]:
    seen, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo.extend(_children(pid))
    return seen


def stop_processes_mentioning(text: str, grace: float = 5.0) -> list[int]:
    """SIGTERM every process whose command line contains ``text``, with all its descendants; SIGKILL stragglers."""
    roots = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and int(e.name) != os.getpid() and text in _cmdline(int(e.name))]
    tree = process_tree(roots)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _cmdline(p) for p in tree):
            time.sleep(0.2)
    return tree
