"""Peak memory of whole simulations: 5 clients, and 100 clients of which 10 train per round.

Samples the proportional set size (PSS) of `fedmi run` and every process it starts
(Ray's raylet, GCS and client actors) every half second; PSS counts a page shared by
several processes once in total, so the sum is the simulation's real footprint. Also
prints the sum of RSS, which counts shared pages once per process.

    python bench/bench_memory.py            # targets: 5 clients < 4 GiB, 100 clients < 6 GiB
    python bench/bench_memory.py --quick    # smaller clients, fewer steps
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procmem import run_measured

REPO = Path(__file__).resolve().parent.parent
CASES = {
    "5 clients": ({"clients": 5, "rounds": 2}, 4.0),
    "100 clients, fraction-fit 0.1": ({"clients": 100, "rounds": 2, "strategy.fraction_fit": 0.1}, 6.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    common = {"train.epochs": 1, "discovery.steps": 50 if args.quick else 200, "data.eval_per_class": 200}
    if args.quick:
        common["data.max_per_client"] = 1000
    for label, (case, target_gib) in CASES.items():
        settings = {**common, **case}
        with tempfile.TemporaryDirectory() as tmp:
            sets = list(itertools.chain.from_iterable(("--set", f"{k}={v}") for k, v in settings.items()))
            command = [
                sys.executable,
                "-m",
                "fedmi_flower.cli",
                "run",
                "quickstart",
                *sets,
                "--out",
                str(Path(tmp) / "run"),
            ]
            if args.data_root:
                command += ["--data-root", args.data_root]
            with open(os.devnull, "w") as null:
                code, seconds, rss, pss = run_measured(command, cwd=REPO, stdout=null, stderr=null)
        if code != 0:
            raise SystemExit(f"{label}: the run failed (exit {code}); run by hand: {' '.join(command)}")
        print(
            f"{label}: peak PSS {pss / 2**30:.2f} GiB (target < {target_gib:.0f} GiB, "
            f"{pss / 2**30 / target_gib:.0%} of it), peak RSS sum {rss / 2**30:.2f} GiB, {seconds:.0f} s"
        )


if __name__ == "__main__":
    main()
