"""An experiment's rounds on one GPU, in this process: time per round and the records, for bench/README.md.

Runs the real clients and strategy (bench/inprocess.py) with ``resources.device = "cuda"``
for every client and the server's analysis, one client after another, and prints one
line per round (beside the strategy's own progress line): wall time (clients, server),
global accuracy, the IoU views, the circuits' faithfulness. The run directory it writes
is a normal one (``fedmi report`` reads it), so its numbers can be set beside the CPU
run of the same experiment and seed. Made for a GPU machine where Ray is not installed;
on a CPU it runs too (``--device cpu``).

    python bench/gpu_experiment.py quickstart --out /tmp/quickstart-gpu
    python bench/gpu_experiment.py iid --rounds 3 --out /tmp/iid-gpu     # the paper's IID settings
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from inprocess import run_in_process

from fedmi_flower.cli import _overrides
from fedmi_flower.config import load_experiment
from fedmi_flower.records.round_record import RoundRecord


def _fmt(value: object) -> str:
    return "null" if value is None or value != value else f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=None, help="stop after this many rounds (default: all)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu", "auto"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    overrides = {**_overrides(args), "resources.device": args.device}
    config = load_experiment(args.experiment, overrides)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    print(
        f"{config.name} on {name} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads): "
        f"{config.clients} clients, {args.rounds or config.rounds} rounds, {config.train.epochs} epoch(s), "
        f"sparsity {config.train.sparsity}, objective {config.discovery.objective}",
        flush=True,
    )
    began = time.perf_counter()
    records = run_in_process(config, args.out, args.data_root, rounds=args.rounds)
    for r in records:
        w, s = r["wall"], RoundRecord.from_json(r).summary.scalars()  # flat names, as summary.csv has them
        print(
            f"round {r['round']}: {w['total']:.1f} s (clients {w['clients']:.1f} s, server {w['server']:.1f} s"
            + (f", setup {w['setup']:.1f} s" if w["setup"] else "")
            + f"); acc {_fmt(s['global_accuracy'])} inter-client IoU {_fmt(s['inter_client_iou'])} "
            f"local-global IoU {_fmt(s['local_global_iou'])} stability {_fmt(s['stability'])} "
            f"faith local {_fmt(s['local_faithfulness'])} global {_fmt(s['global_faithfulness'])}, "
            f"preserved {s['cross_preserved']}/{s['cross_working_locally']}"
        )
    print(f"total {time.perf_counter() - began:.1f} s for {len(records)} rounds; records in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
