"""What the source noise floor costs when it is measured for every class some client holds.

The source floor of a class (local-global IoU's scale) is the global model's circuit of
the class found on a holder's training rows against the one found on the server's probe
rows. Clients holding the same classes (IID) need one client's rows: one discovery. Clients
holding different classes need one discovery per client that adds classes
(:meth:`RoundAnalyst.source_floor_clients`). This prints the server's floor time for both,
on a model trained briefly on real MNIST with the quickstart's discovery settings, and
the cost per extra client.

    python bench/bench_floor.py            # 3,000 training images, 4 classes, 200 discovery steps
    python bench/bench_floor.py --quick    # 50 discovery steps
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedmi_flower.analysis.round_analyst import RoundAnalyst
from fedmi_flower.config import load_experiment
from fedmi_flower.science.data import ImageSplit, load_split
from fedmi_flower.science.models import build_model
from fedmi_flower.science.seeding import torch_generator
from fedmi_flower.science.sparsity import train_sparse
from fedmi_flower.wire.protocol import ClientReport

CLASSES = [0, 1, 2, 7]


def only(split: ImageSplit, classes: list[int]) -> ImageSplit:
    return split.subset(torch.nonzero(torch.isin(split.labels, torch.tensor(classes))).flatten())


def timed_floor(analyst: RoundAnalyst, model: torch.nn.Module, global_circuits: dict, reports: list) -> float:
    began = time.perf_counter()
    analyst.noise_floor(model, global_circuits, 1, reports)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 discovery steps")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    steps = 50 if args.quick else 200
    config = load_experiment("quickstart", {"discovery.steps": steps, "analysis.classes": CLASSES})
    train = load_split("mnist", True, args.data_root, np.arange(3000))
    test = load_split("mnist", False, args.data_root, np.arange(2000))
    probe, evaluation = test.subset(range(1000)), test.subset(range(1000, 2000))
    model = build_model(seed=0)
    train_sparse(model, train, epochs=1, sparsity=0.9, generator=torch_generator(0, "bench-floor"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {steps} discovery steps, classes {CLASSES}")

    # IID: every client holds every class; disjoint: client k holds classes[k] alone (4 clients).
    iid_rows = {pid: train.subset(range(pid * 750, (pid + 1) * 750)) for pid in range(4)}
    disjoint_rows = {pid: only(train, [cls]) for pid, cls in enumerate(CLASSES)}
    reference = evaluation.subset(range(512))
    rows = {"iid": iid_rows, "disjoint": disjoint_rows}
    for label in rows:
        table = rows[label]
        analyst = RoundAnalyst(config, probe, evaluation, client_rows=table.get, reference=reference)
        global_circuits = analyst.discover(model, probe, CLASSES, "server-discovery", 1)
        held = {pid: CLASSES if label == "iid" else [CLASSES[pid]] for pid in table}
        reports = [ClientReport(pid, 750, {c: global_circuits[c] for c in classes}) for pid, classes in held.items()]
        seed_only = RoundAnalyst(config, probe, evaluation, reference=reference)
        base = min(timed_floor(seed_only, model, global_circuits, reports) for _ in range(2))
        full = min(timed_floor(analyst, model, global_circuits, reports) for _ in range(2))
        found = analyst.noise_floor(model, global_circuits, 1, reports)
        clients = sorted(set(found.source_clients.values()))
        per_client = (full - base) / max(len(clients), 1)
        print(
            f"{label:9s} seed floor {base:6.2f} s | with source floor {full:6.2f} s | source floor on {len(clients)} "
            f"client(s) {clients}: {per_client:5.2f} s per client ({per_client / base:4.2f}x the seed floor)"
        )


if __name__ == "__main__":
    main()
