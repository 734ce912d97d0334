"""Re-score a finished run's circuits with one set of channel means, to see what the ablation fill did.

Runs made before the clients and the server measured mean-ablation means on the same
reference images used different fills: a client its own rows' means (1-3 classes under
label skew), the server the evaluation rows' means. A local circuit then met a different
fill on the global weights than on its own model. This script re-scores every recorded
circuit on the server's evaluation rows, on its own model and on the global weights of
its round, once with those two fills and once with the reference images' means on both
sides, and counts what the paper calls collapse (sufficiency below 10% on the global
weights) among circuits that work on their own model.

    python bench/recheck_means.py runs/noniid-3class-faithful
"""

from __future__ import annotations

import argparse
import dataclasses

from fedmi_flower.analysis.reference import reference_images
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.science.circuits import channel_means, evaluate_circuits
from fedmi_flower.science.data import experiment_partitions, load_split
from fedmi_flower.science.model import set_weights
from fedmi_flower.science.models import build_model
from fedmi_flower.science.verdicts import COLLAPSE_THRESHOLD, circuit_verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory with per-round weights")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    run = RunDirectory(args.run)
    config = run.read_config()
    server = run.read_partitions()["server"]
    evaluation = load_split(config.data.dataset, False, args.data_root, server["evaluation"])
    reference = reference_images(config, args.data_root)
    parts = experiment_partitions(dataclasses.asdict(config.data), config.clients, config.seed, args.data_root)
    totals = {"recorded fills": [0, 0, 0], "reference fills": [0, 0, 0]}  # circuits, working locally, then collapsed
    for record in run.read_rounds():
        if not record.analysed:
            continue
        global_weights = run.read_round_weights(record.round)
        global_model = build_model()
        set_weights(global_model, global_weights)
        for pid, entry in record.clients.items():
            local_weights = run.read_round_weights(record.round, pid)
            if local_weights is None or not entry.circuits:
                continue
            local_model = build_model()
            set_weights(local_model, local_weights)
            own_rows = load_split(config.data.dataset, True, args.data_root, parts[pid].train)
            pairs = sorted(entry.circuits.items())
            fills = {
                "recorded fills": (channel_means(local_model, own_rows), channel_means(global_model, evaluation)),
                "reference fills": (channel_means(local_model, reference), channel_means(global_model, reference)),
            }
            for label, (local_means, global_means) in fills.items():
                local = evaluate_circuits(local_model, evaluation, pairs, ablation="mean", means=local_means)
                on_global = evaluate_circuits(global_model, evaluation, pairs, ablation="mean", means=global_means)
                for (_cls, circuit), a, b in zip(pairs, local, on_global):
                    size = sum(map(len, circuit.values()))
                    worked = circuit_verdict(size, a.sufficiency, a.specificity) == "working"
                    totals[label][0] += 1
                    totals[label][1] += worked
                    totals[label][2] += worked and b.sufficiency < COLLAPSE_THRESHOLD
        print(f"round {record.round}: " + "; ".join(f"{k} {v[1]} working, {v[2]} collapsed" for k, v in totals.items()))
    for label, (n, worked, collapsed) in totals.items():
        print(f"{label}: {n} client-class-rounds, {worked} working on their own model, {collapsed} of those collapse")


if __name__ == "__main__":
    main()
