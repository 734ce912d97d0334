"""Discovery objectives side by side: circuit size, sufficiency, specificity, faithfulness, time per class.

One model trained centrally on 8,000 MNIST images (IID client 0 of 3, 2 epochs) at each
sparsity, its circuits of classes 0, 1, 4, 7 found on those rows by every variant, and
scored on 3,000 test images. A never-trained model of the same architecture and
sparsity is the random-weight control. Prints one row per variant and the time ratio
of the faithful objective to the paper's. Times are CPU seconds of this process
(``time.process_time``), so that the ratios hold on a machine that is busy with
other work; ``--threads 1`` keeps thread spinning out of them.

    python bench/bench_faithful.py                      # 90% and 99%, 200 steps (~5 minutes on 2 cores)
    python bench/bench_faithful.py --quick              # 90% only, 50 steps (~1 minute)
"""

from __future__ import annotations

import argparse
import time

import torch

from fedmi_flower.science.circuits import channel_means, circuit_size, evaluate_circuits
from fedmi_flower.science.data import load_labels, load_split, partition_iid
from fedmi_flower.science.discovery import find_circuits
from fedmi_flower.science.model import evaluate
from fedmi_flower.science.models import build_model
from fedmi_flower.science.objectives import objective_setting
from fedmi_flower.science.sparsity import prune_, train_sparse
from fedmi_flower.science.verdicts import degenerate_reason

CLASSES = [0, 1, 4, 7]
VARIANTS: list[tuple[str, dict[str, object]]] = [
    ("paper, zero ablation (Eq. 3)", {"objective": "paper", "ablation": "zero"}),
    ("paper, mean ablation", {"objective": "paper", "ablation": "mean"}),
    ("faithful, straight-through, L0 0.01", {"objective": "faithful", "gate": "straight-through"}),
    ("faithful, annealed, L0 0.003", {"objective": "faithful", "l0_lambda": 0.003}),
    ("faithful, annealed, L0 0.01 (default)", {"objective": "faithful"}),
    ("faithful, annealed, L0 0.03", {"objective": "faithful", "l0_lambda": 0.03}),
    ("faithful, zero ablation", {"objective": "faithful", "ablation": "zero"}),
    ("faithful, target faithfulness 0.95", {"objective": "faithful", "target_faithfulness": 0.95}),
]


def discover(model, train, reference, settings: dict[str, object], steps: int):
    """One variant's circuits, its ablation, and the channel means it used (timed together, as a client runs them).

    Mean ablation takes its means from the reference images, as clients and server do
    (``discovery.reference_size``), not from all 8,000 rows: that pass alone once cost
    more than the faithful objective's optimisation.
    """
    ablation = str(objective_setting(str(settings["objective"]), "ablation", settings.get("ablation")))
    means = channel_means(model, reference) if ablation == "mean" else None
    circuits, _ = find_circuits(model, train, CLASSES, seed=0, steps=steps, means=means, **settings)  # type: ignore[arg-type]
    return circuits, ablation, means


def row(label: str, model: torch.nn.Module, test, circuits, ablation: str, means, seconds: float) -> None:
    scores = evaluate_circuits(model, test, [(c, circuits[c]) for c in CLASSES], ablation=ablation, means=means)
    sizes = [circuit_size(circuits[c]) for c in CLASSES]
    degenerate = [
        degenerate_reason(n, s.specificity, s.model_sufficiency, s.model_specificity, s.sufficiency)
        for n, s in zip(sizes, scores)
    ]

    def fmt(values: list[float]) -> str:
        return " ".join(f"{v:.2f}" for v in values)

    print(
        f"  {label:40s} {seconds / len(CLASSES):5.2f} CPU s/class | sizes {sizes} | "
        f"suff {fmt([s.sufficiency for s in scores])} | spec {fmt([s.specificity for s in scores])} | "
        f"faith {fmt([s.faithfulness for s in scores])} | degenerate {sum(d is not None for d in degenerate)}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="90%% only, 50 steps")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = 50 if args.quick else 200
    labels = load_labels("mnist", True, args.data_root)
    train = load_split("mnist", True, args.data_root, partition_iid(labels, 3, 0)[0][:8000])
    test = load_split("mnist", False, args.data_root)
    reference = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:512])
    test = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:3000].sort().values)
    for sparsity in [0.9] if args.quick else [0.9, 0.99]:
        model = build_model(seed=0)
        train_sparse(model, train, epochs=2, sparsity=sparsity, generator=torch.Generator().manual_seed(0))
        print(f"model at {sparsity:.0%} sparsity: accuracy {evaluate(model, test).accuracy:.3f}", flush=True)
        seconds = {}
        for label, settings in VARIANTS:
            began = time.process_time()
            circuits, ablation, means = discover(model, train, reference, settings, steps)
            seconds[label] = time.process_time() - began
            row(label, model, test, circuits, ablation, means, seconds[label])
        ratio = seconds[VARIANTS[4][0]] / seconds[VARIANTS[0][0]]
        print(f"  faithful (default) / paper discovery time per class: {ratio:.2f}x (target <= 1.5x)")
        control = build_model(seed=1)
        prune_(control, sparsity)
        print(f"  random-weight control at {sparsity:.0%} (never trained):")
        for label, settings in (VARIANTS[0], VARIANTS[1], VARIANTS[4]):
            began = time.process_time()
            circuits, ablation, means = discover(control, train, reference, settings, steps)
            row("  " + label, control, test, circuits, ablation, means, time.process_time() - began)


if __name__ == "__main__":
    main()
