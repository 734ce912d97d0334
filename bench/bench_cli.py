"""How long the `fedmi` command takes to answer when it has no run to start.

`fedmi --help`, `--version`, `list` and a config error should answer well under 1.5 s:
none of them needs torch, Flower or Ray, which the command loads only once a run, a
plot or a report begins. Prints the median wall time of each (5 tries), and that of
importing torch alone for scale.

    python bench/bench_cli.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {
    "fedmi --help": ["--help"],
    "fedmi --version": ["--version"],
    "fedmi list": ["list"],
    "fedmi run quickstart --set train.sparsity=1.5 (config error)": [
        "run",
        "quickstart",
        "--set",
        "train.sparsity=1.5",
    ],
}


def median_seconds(argv: list[str], tries: int = 5) -> float:
    times = []
    for _ in range(tries):
        began = time.perf_counter()
        subprocess.run(argv, cwd=REPO, capture_output=True, check=False)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    torch_import = median_seconds([sys.executable, "-c", "import torch"], tries=3)
    for label, args in COMMANDS.items():
        seconds = median_seconds([sys.executable, "-m", "fedmi_flower.cli", *args])
        print(f"{label:66s} {seconds:5.2f} s  ({seconds / torch_import:.2f}x importing torch; target < 1.5 s)")
    label = 'python -c "import torch" (for scale)'
    print(f"{label:66s} {torch_import:5.2f} s")


if __name__ == "__main__":
    main()
