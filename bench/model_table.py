"""The last round of runs of several models side by side: the numbers of docs/models.md.

Each argument is a folder of run directories (``fedmi run ... --seeds 0,1,2 --out FOLDER``);
runs are grouped by their partition and every value is the mean ± standard deviation
over the group's seeds, read from the typed round records:

    python bench/model_table.py runs/models/resnet10-fmnist runs/models/simplecnn-mnist

Besides the summary's means it prints where the circuits sit: each site's share of the
global model's circuit channels, and of the site's own channels.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from fedmi_flower.records.results import RunDirectory
from fedmi_flower.records.round_record import RoundRecord
from fedmi_flower.records.series import record_sites


def spread(values: Sequence[float]) -> str:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return "—"
    if len(kept) == 1:
        return f"{kept[0]:.2f}"
    return f"{statistics.mean(kept):.2f} ± {statistics.stdev(kept):.2f}" + (
        "" if len(kept) == len(values) else f" ({len(kept)} of {len(values)})"
    )


ROWS: list[tuple[str, Callable[[RoundRecord], float]]] = [
    ("global accuracy", lambda r: r.summary.global_accuracy),
    ("inter-client IoU, non-degenerate", lambda r: r.summary.inter_client_iou.nondegenerate),
    ("inter-client seed floor", lambda r: r.summary.inter_client_iou.floor),
    ("inter-client IoU over the floor's classes", lambda r: r.summary.inter_client_iou.floor_against),
    ("local-global IoU, non-degenerate", lambda r: r.summary.local_global_iou.nondegenerate),
    ("local-global source floor", lambda r: r.summary.local_global_iou.floor),
    ("local-global IoU over the floor's classes", lambda r: r.summary.local_global_iou.floor_against),
    ("chance of local-global IoU", lambda r: r.summary.local_global_iou.chance),
    ("stability, non-degenerate", lambda r: r.summary.stability.nondegenerate),
    ("local circuits degenerate (share)", lambda r: r.summary.degenerate_local / max(1, _locals(r))),
    ("working locally (share of local circuits)", lambda r: r.summary.cross_working_locally / max(1, _locals(r))),
    (
        "preserved on the global model (share of those working)",
        lambda r: (
            r.summary.cross_preserved / r.summary.cross_working_locally if r.summary.cross_working_locally else math.nan
        ),
    ),
    (
        "collapsed after working (share of those working)",
        lambda r: (
            r.summary.cross_collapsed_after_working / r.summary.cross_working_locally
            if r.summary.cross_working_locally
            else math.nan
        ),
    ),
    ("cross-eval faithfulness", lambda r: r.summary.cross_faithfulness),
    ("global circuit size (channels)", lambda r: r.summary.global_circuit_channels),
    ("local circuit size (channels)", lambda r: r.summary.local_circuit_channels),
]


def _locals(r: RoundRecord) -> int:
    return sum(len(c.circuits) for c in r.clients.values())


def site_shares(r: RoundRecord) -> dict[str, float]:
    """Each site's share of the global model's circuit channels (over its analysed classes)."""
    sites = record_sites([r])
    counts = {s: sum(len(c.get(s, [])) for c in r.global_model.circuits.values()) for s in sites}
    total = sum(counts.values())
    return {s: counts[s] / total if total else math.nan for s in sites}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    for folder in args.folders:
        groups: dict[str, list[RoundRecord]] = defaultdict(list)
        for run in sorted(p for p in Path(folder).iterdir() if (p / "rounds.jsonl").is_file()):
            directory = RunDirectory(run)
            config = directory.read_config()
            records = directory.read_rounds()
            if records:
                label = f"{config.model.name} on {config.data.dataset}, {config.data.partition}"
                if config.data.partition == "dirichlet":
                    label += f" {config.data.alpha:g}"
                groups[label].append(records[-1])
        for label, last in groups.items():
            print(f"\n{label}: round {last[0].round}, {len(last)} seeds")
            for name, value in ROWS:
                print(f"  {name:<58} {spread([value(r) for r in last])}")
            shares = [site_shares(r) for r in last]
            print(
                "  where the global circuits sit (share of their channels): "
                + ", ".join(f"{s} {spread([sh[s] for sh in shares])}" for s in shares[0])
            )


if __name__ == "__main__":
    main()
