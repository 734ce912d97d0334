"""Wall time and peak memory of a command and every process it starts (Ray's workers included), sampled from /proc."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _kib(pid: int, field: str, source: str) -> int:
    try:
        for line in (Path("/proc") / str(pid) / source).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over the process tree of ``root``.

    RSS counts shared pages (torch's libraries, Ray's object store) once per process;
    PSS splits them among the processes sharing them, so its sum is the tree's real
    footprint.
    """
    pids = tree(root)
    rss = sum(_kib(p, "VmRSS:", "status") for p in pids)
    pss = sum(_kib(p, "Pss:", "smaps_rollup") for p in pids)
    return rss * 1024, pss * 1024


def run_measured(command: list[str], interval: float = 0.5, **popen) -> tuple[int, float, int, int]:
    """Run ``command``; return (exit code, seconds, peak RSS sum, peak PSS sum)."""
    began = time.perf_counter()
    proc = subprocess.Popen(command, **popen)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    done.set()
    sampler.join()
    return code, time.perf_counter() - began, peak[0], peak[1]


def timed(command: list[str], log: Path, cwd: Path) -> float:
    """Seconds ``command`` takes from start to exit, its output in ``log``; a failure names the log and stops."""
    began = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:5])} ... failed (exit {done.returncode}); read {log}")
    return seconds
