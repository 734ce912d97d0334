"""Server-side analysis cost against the number of participating clients (fixed classes).

Feeds the strategy's ``aggregate_fit`` N reports whose circuits come from a real
trained model, for growing N, and times it. Global discovery runs once per class
whatever N is; evaluation grows with the number of local circuits (linear); pairwise
IoU is quadratic in N but costs microseconds.

    python bench/bench_scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from inprocess import _Node

from fedmi_flower.apps.server_app import prepare_run
from fedmi_flower.config import load_experiment
from fedmi_flower.science.data import load_labels, load_split, partition_iid
from fedmi_flower.science.discovery import discover_circuits
from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.science.model import get_weights
from fedmi_flower.science.models import build_model
from fedmi_flower.science.sparsity import train_sparse
from fedmi_flower.strategies import build_strategy
from fedmi_flower.wire.protocol import ClientReport, report_to_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    sizes = [5, 10, 20] if args.quick else [5, 10, 20, 40, 80]
    steps = 50 if args.quick else 200
    classes = [0, 1, 2, 7]
    data = load_split(
        "mnist", True, args.data_root, partition_iid(load_labels("mnist", True, args.data_root), 10, 0)[0]
    )
    model = build_model(seed=0)
    train_sparse(model, data, epochs=1, sparsity=0.95)
    circuits = discover_circuits(model, data, classes, steps=steps)
    weights = get_weights(model)
    times = {}
    for n in sizes:
        config = load_experiment(
            "quickstart",
            {"clients": n, "analysis.classes": classes, "discovery.steps": steps, "data.eval_per_class": 200},
        )
        with tempfile.TemporaryDirectory() as tmp:
            run_dir, analyst, _, _ = prepare_run(config, Path(tmp) / "run", args.data_root)
            strategy = build_strategy(config, analyst=analyst, run_dir=run_dir, initial_arrays=weights)
            results = []
            for pid in range(n):
                report = ClientReport(
                    partition_id=pid,
                    num_examples=100,
                    circuits=circuits,
                    train_loss=0.5,
                    train_accuracy=0.8,
                    sparsity=0.95,
                )
                metrics = report_to_metrics(report, site_sizes(model))
                results.append(
                    (_Node(str(pid)), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 100, metrics))
                )
            began = time.perf_counter()
            strategy.aggregate_fit(1, results, [])
            times[n] = time.perf_counter() - began
            t = run_dir.read_rounds()[-1].timings.to_json()
        print(
            f"{n:3d} clients: aggregate_fit {times[n]:6.2f} s (global discovery "
            f"{t['global_discovery']:.2f} s, evaluation {t['evaluation']:.2f} s)"
        )
    first, last = sizes[0], sizes[-1]
    per_client = (times[last] - times[first]) / (last - first)
    print(
        f"marginal cost per client {per_client:.3f} s; {last}/{first} clients = {last / first:.0f}x the clients for "
        f"{times[last] / times[first]:.2f}x the time (linear or better when <= {last / first:.0f})"
    )


if __name__ == "__main__":
    main()
