"""One round of the paper's IID setting, timed end to end: in-process and through Flower's Ray simulation.

The round of the anchor measurement: 5 clients, each training on 12,000 MNIST images
(1 local epoch by default), 99% sparsity, circuits of classes 0, 1, 2, 7 with 200
discovery steps of 26 images per class (the target-class share of the reference
code's 256-image batches), local circuits scored on the client's model, global
circuits discovered on the server, every local circuit cross-evaluated on the global
model, global accuracy. The paper's reference code took 845 s for this round on this
machine (62.5 s training, 542 s discovery, 235 s evaluation).

    python bench/bench_round.py                  # both modes, 1 local epoch
    python bench/bench_round.py --epochs 5       # the paper's 5 local epochs: analysis vs training
    python bench/bench_round.py --quick          # 2,400 images per client, 50 steps (< 1 minute per mode)
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procmem import run_measured

from fedmi_flower.config import load_experiment, parse_override

REFERENCE_SECONDS = 845.0
REPO = Path(__file__).resolve().parent.parent


def overrides(epochs: int, quick: bool) -> dict:
    o = {
        "clients": 5,
        "rounds": 1,
        "data.partition": "iid",
        "data.holdout_fraction": 0.0,
        "data.max_per_client": 12000,  # all of a fifth of MNIST: the bench loads quickstart, which caps at 8,000
        "train.epochs": epochs,
        "train.sparsity": 0.99,
        "analysis.classes": [0, 1, 2, 7],
        "discovery.steps": 200,
        "discovery.batch_per_class": 26,
        "discovery.objective": "paper",  # the reference code's objective (quickstart's default is the faithful one)
    }
    if quick:
        o.update({"data.max_per_client": 2400, "discovery.steps": 50, "data.eval_per_class": 100})
    return o


def report(record: dict, label: str) -> None:
    clients = record["clients"].values()
    mean = lambda key: statistics.mean(c["timings"][key] for c in clients)
    total = lambda key: sum(c["timings"][key] for c in clients)
    t = record["timings"]
    print(
        f"  [{label}] per client: train {mean('t_train'):.1f} s, discovery {mean('t_discovery'):.1f} s, "
        f"local evaluation {mean('t_evaluate'):.1f} s"
    )
    print(f"  [{label}] server: global discovery {t['global_discovery']:.1f} s, evaluation {t['evaluation']:.1f} s")
    if "round" in t:  # a round under Flower: from configure_fit to the end of aggregate_fit
        print(
            f"  [{label}] the round {t['round']:.1f} s: clients' fit {t['round'] - t['server']:.1f} s (slowest client "
            f"{max(c['timings']['t_total'] for c in clients):.1f} s), server {t['server']:.1f} s"
        )
    analysis = total("t_discovery") + total("t_evaluate") + t["analysis"]
    print(
        f"  [{label}] all clients' training {total('t_train'):.1f} s vs circuit analysis (local + global discovery, "
        f"evaluation, IoU) {analysis:.1f} s: ratio {analysis / total('t_train'):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("inprocess", "ray", "both"), default="both")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-root", default=None)
    parser.add_argument(
        "--set", action="append", default=[], help="override, as for fedmi run (e.g. model.name=resnet10)"
    )
    args = parser.parse_args()
    o = overrides(args.epochs, args.quick)
    o.update(dict(parse_override(extra) for extra in args.set))
    config = load_experiment("quickstart", o)
    print(
        f"round: {config.model.name} on {config.data.dataset}, "
        f"{config.clients} clients, {config.train.epochs} epoch(s), sparsity {config.train.sparsity}, "
        f"{config.discovery.steps} discovery steps, classes {config.analysis.classes}"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode in ("inprocess", "both"):
            from inprocess import run_round_in_process

            record = run_round_in_process(config, Path(tmp) / "inprocess", args.data_root)
            w = record["wall"]
            results["in-process"] = w["clients"] + w["server"]
            print(
                f"in-process: {results['in-process']:.1f} s of work (clients {w['clients']:.1f} s one after another, "
                f"server {w['server']:.1f} s), {w['setup']:.1f} s setup"
            )
            report(record, "in-process")
        if args.mode in ("ray", "both"):
            sets = list(itertools.chain.from_iterable(("--set", f"{k}={v}".replace("'", '"')) for k, v in o.items()))
            command = [
                sys.executable,
                "-m",
                "fedmi_flower.cli",
                "run",
                "quickstart",
                *sets,
                "--out",
                str(Path(tmp) / "ray"),
            ]
            if args.data_root:
                command += ["--data-root", args.data_root]
            code, seconds, rss, pss = run_measured(
                command, cwd=REPO, stdout=subprocess_devnull(), stderr=subprocess_devnull()
            )
            if code != 0:
                raise SystemExit(f"the Ray run failed (exit {code}); run it by hand: {' '.join(command)}")
            from fedmi_flower.records.results import RunDirectory

            record = RunDirectory(Path(tmp) / "ray").read_rounds()[-1].to_json()
            results["Ray simulation"] = seconds
            print(
                f"Ray simulation: {seconds:.1f} s wall clock from `fedmi run` to exit (Ray start-up included); "
                f"peak memory PSS {pss / 2**30:.2f} GiB (RSS sum {rss / 2**30:.2f} GiB)"
            )
            report(record, "ray")
    for label, seconds in results.items():
        print(
            f"{label}: {seconds:.1f} s, {REFERENCE_SECONDS / seconds:.1f}x faster than the "
            f"reference's {REFERENCE_SECONDS:.0f} s"
            + ("" if args.epochs == 1 and not args.quick else " (not the anchor's workload)")
        )


def subprocess_devnull():
    return open(os.devnull, "w")


if __name__ == "__main__":
    main()
