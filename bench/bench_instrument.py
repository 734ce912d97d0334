"""The instrument's cost, an earlier commit against this checkout, in one bench run on one machine (issue 29).

Runs each experiment with ``fedmi run`` twice, one after the other: first with the code of
``--baseline`` (a git commit, checked out into a temporary worktree and put first on
``PYTHONPATH``, so that the ServerApp, the Ray workers and the clients all import it), then
with this checkout's. Prints, per run, the round's seconds and its parts (the slowest client's
training and instrument, the server's analysis) and the instrument / training ratio
(``instrument_cost.py``); then whether the two codes' records agree round by round:

- the global model's accuracy exactly (training does not depend on the instrument);
- every IoU view and every noise floor within the noise of its floor (``1 - floor`` of the
  baseline's round: the IoU the same model's circuit loses when it is found twice);
- the counts of working, preserved and degenerate circuits, printed side by side.

    python bench/bench_instrument.py                                  # quickstart, 3 rounds (~7 min)
    python bench/bench_instrument.py --experiment "iid --set rounds=1" --experiment quickstart
    python bench/bench_instrument.py --baseline 0e89a8a --out runs/bench-instrument

``--experiment`` takes an experiment name and its ``--set`` overrides as one string; it repeats.
``--new-set KEY=VALUE`` (repeats) applies to the new code's runs only: the baseline as it was against
an option of the new code (``discovery.patience=30``, a study's settings). A run whose folder is
already there is reused, so a bench that stopped part way continues, and a baseline serves every
variant of the new code.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from instrument_cost import run_costs

from fedmi_flower.records.series import Run, load_run

REPO = Path(__file__).resolve().parent.parent
BASELINE = "0e89a8a"  # main before issue 29's instrument work (2026-12-07)
VIEWS = {
    "inter_client_iou": "seed_floor",
    "class_pair_iou": "seed_floor",
    "local_global_iou": "source_floor",
    "stability": "client_seed_floor",
    "seed_floor": "seed_floor",
    "source_floor": "source_floor",
    "client_seed_floor": "client_seed_floor",
}
COUNTS = ("cross_working_locally", "cross_preserved", "cross_collapsed_after_working", "degenerate_local")
CLI = "import sys; from fedmi_flower.cli import main; sys.exit(main())"


def run(code: Path | None, experiment: str, out: Path, extra: list[str] | None = None) -> float:
    """``fedmi run`` of ``experiment`` (a name and its ``--set`` overrides) with the code in ``code`` (None: this
    checkout's); returns its wall seconds, or 0 when ``out`` already holds a finished run."""
    if (out / "summary.csv").is_file():
        return 0.0
    env = dict(os.environ)
    # Python puts the working directory before PYTHONPATH: each code runs from its own folder.
    cwd = code if code is not None else REPO
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH", "")) if p)
        where = subprocess.run(
            [sys.executable, "-c", "import fedmi_flower; print(fedmi_flower.__file__)"],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not where.startswith(str(code)):
            raise SystemExit(f"the baseline's code is not what Python imports with PYTHONPATH={code}: {where}")
    name, *overrides = shlex.split(experiment)
    extra_sets = [arg for kv in extra or [] for arg in ("--set", kv)]
    command = [sys.executable, "-c", CLI, "run", name, *overrides, *extra_sets, "--out", str(out)]
    began = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def compare(old: Run, new: Run) -> bool:
    """Print the two runs' records side by side; True when they agree (the module docstring says how)."""
    agree = True
    for a, b in zip(old.records, new.records):
        sa, sb = a.summary.scalars(), b.summary.scalars()
        same_accuracy = sa["global_accuracy"] == sb["global_accuracy"]
        agree &= same_accuracy
        parts = [f"accuracy {sa['global_accuracy']:.4f} {'=' if same_accuracy else '!='} {sb['global_accuracy']:.4f}"]
        for view, floor in VIEWS.items():
            x, y, f = sa.get(view, math.nan), sb.get(view, math.nan), sa.get(floor, math.nan)
            if math.isnan(x) and math.isnan(y):
                continue
            within = abs(x - y) <= 1.0 - f + 1e-9 if not math.isnan(f) else x == y
            agree &= within
            parts.append(
                f"{view} {x:.3f}/{y:.3f}{'' if within else ' (beyond 1 - floor ' + format(1 - f, '.3f') + ')'}"
            )
        parts += [f"{key} {sa.get(key)}/{sb.get(key)}" for key in COUNTS]
        print(f"  round {a.round}: " + "; ".join(parts))
    return agree


def bench_one(code: Path, baseline: str, experiment: str, out: Path, new_set: list[str]) -> bool:
    """One experiment with both codes: their costs, and whether their records agree."""
    label = "-".join(shlex.split(experiment)).replace("--set-", "").replace("=", "_")
    variant = "".join(f"-{kv.replace('=', '_')}" for kv in new_set)
    old_dir, new_dir = out / f"{label}-{baseline}", out / f"{label}-new{variant}"
    walls = run(code, experiment, old_dir), run(None, experiment, new_dir, new_set)
    changed = f" (new: {', '.join(new_set)})" if new_set else ""
    print(f"\n{experiment}{changed}: wall {walls[0]:.0f} s (baseline), {walls[1]:.0f} s (new); 0: reused")
    print(f"  {'code':<9} {'round':>6} {'train':>6} {'client instr.':>13} {'server':>7} {'ratio':>6}")
    runs = {"baseline": load_run(old_dir), "new": load_run(new_dir)}
    costs = {}
    for name, loaded in runs.items():
        c = run_costs(loaded)
        assert c is not None, f"{loaded.path} has no round with client timings"
        costs[name] = c
        print(f"  {name:<9} {c.round:6.1f} {c.train:6.1f} {c.client:13.1f} {c.server:7.1f} {c.ratio:6.2f}")
    by_round = ", ".join(
        f"{b.timings.round / a.timings.round:.2f}" for a, b in zip(runs["baseline"].records, runs["new"].records)
    )
    print(f"  new / baseline: round {costs['new'].round / costs['baseline'].round:.2f} (by round: {by_round})")
    # Which code the clients ran shows in the floor client's timings: the new code finds its floor in the loop of its
    # own circuits (t_floor is the comparison alone), the baseline in a second loop.
    floors = [
        max(c.timings.get("t_floor", 0.0) for c in loaded.records[0].clients.values() if c.timings)
        for loaded in runs.values()
    ]
    server = [loaded.records[0].timings.noise_floor for loaded in runs.values()]
    print(
        f"  round 1's floors apart from discovery: the floor client's t_floor {floors[0]:.2f} s (baseline), "
        f"{floors[1]:.2f} s (new); the server's noise_floor {server[0]:.2f} s, {server[1]:.2f} s"
    )
    return compare(runs["baseline"], runs["new"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help=f"the commit to measure against (default {BASELINE})")
    parser.add_argument("--experiment", action="append", help="an experiment and its --set overrides, as one string")
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--new-set", action="append", default=[], help="KEY=VALUE for the new code's runs only")
    args = parser.parse_args()
    # Absolute: the baseline runs from its own folder.
    out = (Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-instrument-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    git = ["git", "-C", str(REPO)]
    baseline = subprocess.run([*git, "rev-parse", "--short", args.baseline], capture_output=True, text=True, check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"baseline {baseline.stdout.strip()} against this checkout (HEAD {head}, with its uncommitted changes)")
    print(f"{os.cpu_count()} CPUs; runs in {out}")
    with tempfile.TemporaryDirectory(prefix="fedmi-baseline-") as tmp:
        code = Path(tmp) / "code"
        subprocess.run([*git, "worktree", "add", "-q", "--detach", str(code), baseline.stdout.strip()], check=True)
        try:
            agree = [
                bench_one(code, baseline.stdout.strip(), experiment, out, args.new_set)
                for experiment in args.experiment or ["quickstart"]
            ]
            print(f"\nrecords agree within the floors: {'yes' if all(agree) else 'NO'}")
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(code)], check=False)
            subprocess.run([*git, "worktree", "prune"], check=False)


if __name__ == "__main__":
    main()
