"""Circuit discovery and scoring time per class for each model, on the same images and steps.

For every model (the paper's SimpleCNN on MNIST, ResNet-10 on Fashion-MNIST, the MLP on
MNIST by default): one sparse training epoch, discovery of 4 classes in one batched loop
(faithful objective), and scoring of the 4 circuits; seconds per class and the ratio to
SimpleCNN. Every model sees the same number of images and steps.

    python bench/bench_models.py                    # 4,000 images, 4 classes x 200 steps
    python bench/bench_models.py --quick            # 2,000 images, 4 classes x 50 steps

It also runs against an older tree, whose SimpleCNN had a hand-written gated path instead
of hooks: ``PYTHONPATH=<old checkout> python bench/bench_models.py --models simple-cnn:mnist``
(the hook path's cost is the ratio of the two discovery times).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedmi_flower.science.circuits import circuits_from_scores, evaluate_circuits
from fedmi_flower.science.data import load_labels, load_split, partition_iid
from fedmi_flower.science.seeding import torch_generator
from fedmi_flower.science.sparsity import train_sparse

try:  # this tree: any model by name
    from fedmi_flower.science.data import dataset_spec
    from fedmi_flower.science.discovery import learn_gate_scores
    from fedmi_flower.science.models import build_model

    def make(name: str, dataset: str) -> torch.nn.Module:
        channels, size, _ = dataset_spec(dataset).image_shape
        return build_model(name, in_channels=channels, image_size=size, num_classes=10, seed=0)

except ImportError:  # a tree before the model interface: SimpleCNN only
    from fedmi_flower.science.circuits import learn_gate_scores  # type: ignore[attr-defined,no-redef]
    from fedmi_flower.science.model import build_model as build_simple_cnn  # type: ignore[attr-defined,no-redef]

    def make(name: str, dataset: str) -> torch.nn.Module:
        assert name == "simple-cnn", "this tree has the paper's CNN only"
        return build_simple_cnn(seed=0)


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--models", default="simple-cnn:mnist,resnet10:fashion-mnist,mlp:mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_images, steps = (2000, 50) if args.quick else (4000, 200)
    classes = [0, 1, 2, 7]
    print(f"{n_images} images, {len(classes)} classes x {steps} discovery steps, {args.threads} threads")
    baseline: dict[str, float] = {}
    for entry in args.models.split(","):
        name, dataset = entry.split(":")
        per_class, size = measure(name, dataset, n_images, steps, classes, args.data_root, args.repeats)
        baseline = baseline or per_class
        ratios = ", ".join(f"{k} x{v / baseline[k]:.2f}" for k, v in per_class.items())
        print(
            f"{name} on {dataset}: training epoch {per_class['train']:.2f} s, discovery {per_class['discovery']:.2f} s "
            f"a class, scoring {per_class['scoring']:.3f} s a class (circuits of {size:.0f} channels); "
            f"vs the first model: {ratios}"
        )


def measure(
    name: str, dataset: str, n_images: int, steps: int, classes: list[int], data_root: str | None, repeats: int
) -> tuple[dict[str, float], float]:
    """Seconds of one training epoch, and of discovery and scoring per class; the mean circuit size."""
    parts = partition_iid(load_labels(dataset, True, data_root), 60000 // n_images, seed=0)
    data = load_split(dataset, True, data_root, indices=parts[0])
    model = make(name, dataset)
    train = best_of(
        1,
        lambda: train_sparse(model, data, epochs=1, sparsity=0.9, batch_size=64, generator=torch_generator(0, "bench")),
    )
    model.eval()
    found = {}

    def discover() -> None:
        scores, _ = learn_gate_scores(model, data, classes, objective="faithful", steps=steps, seed=1)
        found["circuits"] = circuits_from_scores(scores, classes)

    discovery = best_of(repeats, discover)
    pairs = sorted(found["circuits"].items())
    scoring = best_of(repeats, lambda: evaluate_circuits(model, data, pairs, ablation="mean"))
    size = statistics.mean(sum(len(v) for v in c.values()) for _, c in pairs)
    return {"train": train, "discovery": discovery / len(classes), "scoring": scoring / len(classes)}, size


if __name__ == "__main__":
    main()
