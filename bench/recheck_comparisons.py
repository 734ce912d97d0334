"""Each number issue 24 changed, under the old and the new definition, from the same records.

Issue 24 changed what some summaries compare (docs/skew-law.md, docs/paper-claims.md).
A record written since keeps what both definitions need, so the old value and the new
one can be read side by side from the same runs, and the docs can say which claim moved:

- **induced polysemanticity**: the global model's share over every analysed class (old,
  ``global.polysemantic_share``) against its share over each client's own classes, the
  clients' mean (new, ``summary.polysemantic_global``); the clients' own share beside both;
- **collapse**: sufficiency below 10% on the global weights, whatever the circuit did on
  its own model (old) against collapse after working there (new);
- **noise floors**: the mean over every global class, or over the floor client's classes
  (old) against the mean over exactly the view's non-degenerate classes (new);
- **faithfulness**: the mean over every circuit (old; here over those where it is defined,
  since a one-sided score is no longer recorded) against the mean over circuits that are
  not degenerate (new).

Final round of each run, mean ± standard deviation over the runs of a group (runs are
grouped by their folder name without the ``-seed=N`` part).

    python bench/recheck_comparisons.py runs/skew
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable

from fedmi_flower.records.round_record import RoundRecord
from fedmi_flower.records.series import find_runs, load_run
from fedmi_flower.science.metrics import nanmean
from fedmi_flower.science.verdicts import COLLAPSE_THRESHOLD


def old_and_new(records: list[RoundRecord]) -> dict[str, float]:
    """The changed numbers of one run: the final round's, and collapse over every round."""
    last = [r for r in records if r.analysed][-1]
    s, floor = last.summary, last.noise_floor
    cross = [e for r in records if r.analysed for per in r.cross_eval.values() for e in per.values()]
    defined = [e for e in cross if not math.isnan(e.sufficiency)]
    worked = [e for e in cross if e.local_verdict == "working"]
    low = lambda e: not math.isnan(e.sufficiency) and e.sufficiency < COLLAPSE_THRESHOLD
    local_faith = [sc.faithfulness for c in last.clients.values() for sc in c.local_scores.values()]
    return {
        "polysemantic, clients": s.polysemantic_local,
        "polysemantic, global over every class (old)": last.global_model.polysemantic_share,
        "polysemantic, global over each client's classes (new)": s.polysemantic_global,
        "collapse rate, sufficiency < 0.1 (old)": sum(map(low, defined)) / len(defined) if defined else math.nan,
        "collapse rate after working (new)": sum(map(low, worked)) / len(worked) if worked else math.nan,
        "inter-client floor, every global class (old)": nanmean(v.mean for v in floor.seed.values()),
        "inter-client floor, the view's classes (new)": s.inter_client_iou.floor,
        "local-global floor, the floor client's classes (old)": nanmean(
            v.mean for c, v in (floor.source or {}).items() if floor.source_clients.get(c) == floor.source_client
        ),
        "local-global floor, the view's pairs (new)": s.local_global_iou.floor,
        "local faithfulness, every circuit where defined (old)": nanmean(local_faith),
        "local faithfulness, not degenerate (new)": s.local_faithfulness,
    }


def spread(values: Iterable[float]) -> str:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return "—"
    if len(kept) == 1:
        return f"{kept[0]:.3f}"
    return f"{statistics.mean(kept):.3f} ± {statistics.stdev(kept):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run directories or folders holding them")
    args = parser.parse_args()
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in find_runs(args.paths):
        groups[re.sub(r"-seed=\d+", "", path.name)].append(old_and_new(load_run(path).records))
    names = sorted(groups)
    rows = list(next(iter(groups.values()))[0]) if groups else []
    print("| | " + " | ".join(f"{n} ({len(groups[n])} runs)" for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for row in rows:
        print(f"| {row} | " + " | ".join(spread(g[row] for g in groups[n]) for n in names) + " |")


if __name__ == "__main__":
    main()
