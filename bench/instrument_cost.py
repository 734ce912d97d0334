"""Where a run's time went: the clients' training against the instrument (discovery, floor, scoring, server analysis).

    python bench/instrument_cost.py RUN_DIR [RUN_DIR ...]      # a study folder works too (its runs)

Reads the timings every round record keeps (the clients' ``t_train``, ``t_discovery``, ``t_floor``,
``t_evaluate``; the server's analysis steps) and prints, per run, means over rounds: the slowest
client's training and its instrument (clients run at once, so a round waits for the slowest), the
server's analysis, their ratio, and the server's costliest steps. Issue 29's target is an
instrument that costs no more than the training it measures. Timings taken on a busy machine are
slower across the board; the ratio is what compares.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields

import numpy as np

from fedmi_flower.records.round_record import RoundTimings
from fedmi_flower.records.series import Run, RunError, find_runs, load_run

INSTRUMENT = ("t_discovery", "t_floor", "t_evaluate")
SERVER_STEPS = [f.name for f in fields(RoundTimings) if f.name not in ("analysis", "server", "round")]


@dataclass(frozen=True)
class Costs:
    """One run's means over its analysed rounds, in seconds (the module docstring says which)."""

    round: float
    train: float
    client: float
    server: float
    steps: dict[str, float]

    @property
    def ratio(self) -> float:
        return (self.client + self.server) / self.train


def run_costs(run: Run) -> Costs | None:
    """Means over the rounds with client timings; None when no round has them."""
    train, client, server, rounds, steps = [], [], [], [], {}
    for record in run.records:
        timings = [c.timings for c in record.clients.values() if c.timings]
        if not timings:
            continue
        train.append(max(t.get("t_train", 0.0) for t in timings))
        client.append(max(sum(t.get(k, 0.0) for k in INSTRUMENT) for t in timings))
        server.append(record.timings.analysis)
        rounds.append(record.timings.round)
        for step in SERVER_STEPS:
            value = getattr(record.timings, step)
            if not math.isnan(value):
                steps.setdefault(step, []).append(value)
    if not train:
        return None
    t, c, s, r = (float(np.nanmean(x)) for x in (train, client, server, rounds))
    return Costs(r, t, c, s, {k: float(np.mean(v)) for k, v in steps.items()})


def main(paths: list[str]) -> None:
    head = f"{'run':<44} {'round':>6} {'train':>6} {'client instr.':>13} {'server':>7} {'ratio':>6}"
    print(head + "  costliest server steps")
    ratios = []
    for path in find_runs(paths):
        try:
            run = load_run(path)
        except RunError as err:  # a run still in its first round
            print(f"{path.name:<44} skipped: {str(err)[:60]}")
            continue
        costs = run_costs(run)
        if costs is None:
            continue
        ratios.append(costs.ratio)
        top = sorted(((v, k) for k, v in costs.steps.items()), reverse=True)[:3]
        named = ", ".join(f"{k} {v:.1f}" for v, k in top)
        print(
            f"{run.name:<44} {costs.round:6.1f} {costs.train:6.1f} {costs.client:13.1f} {costs.server:7.1f} "
            f"{costs.ratio:6.1f}  {named}"
        )
    if ratios:
        print(f"instrument / training over {len(ratios)} runs: median {np.median(ratios):.1f}x (target <= 1x)")


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs"])
