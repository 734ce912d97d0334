"""The cure's price, planted (docs/interference.md, "The cure"): a client's own circuits declared another's.

A SimpleCNN learns MNIST classes 2 and 3 (400 images, 2 epochs, batch 32, dense); its faithful circuits
are then declared the channels of another client's classes, and the same client is trained again from
the same start on the same batches with ``keep_off`` those channels at each lambda. Prints, per lambda,
how much of its new circuits lies on the kept-off channels (1.0: all), the mean absolute activation
they still carry, its accuracy on its own images and the circuits' sizes. tests/test_disjoint.py checks
the direction at lambda 0.3 and 1.

    FEDMI_DATA_ROOT=../shared/data python bench/disjoint_planted.py
"""

from __future__ import annotations

import math
import time

import torch

from fedmi_flower.science.circuits import Circuit, circuit_size
from fedmi_flower.science.data import ImageSplit, load_split
from fedmi_flower.science.discovery import Discovery
from fedmi_flower.science.disjoint import activation_penalty
from fedmi_flower.science.hook_points import captured, site_sizes
from fedmi_flower.science.model import evaluate
from fedmi_flower.science.models import SimpleCNN
from fedmi_flower.science.sparsity import train_sparse

LAMBDAS = (0.0, 0.3, 1.0, 3.0, 10.0)


def trained(data: ImageSplit, keep_off: Circuit, lam: float) -> SimpleCNN:
    torch.manual_seed(0)
    model = SimpleCNN()
    generator = torch.Generator().manual_seed(0)
    train_sparse(
        model, data, epochs=2, batch_size=32, sparsity=None, generator=generator, keep_off=keep_off, keep_off_lambda=lam
    )
    return model


def overlap(circuits: dict[int, Circuit], kept_off: Circuit) -> float:
    total = sum(circuit_size(c) for c in circuits.values())
    on = sum(len(set(c.get(s, [])) & set(kept_off.get(s, []))) for c in circuits.values() for s in c)
    return on / total if total else math.nan


def main() -> None:
    began = time.perf_counter()
    data = load_split("mnist", train=True, indices=range(3000))
    data = data.subset(torch.nonzero(torch.isin(data.labels, torch.tensor([2, 3]))).flatten()[:400])
    classes, recipe = [2, 3], Discovery(objective="faithful", steps=80)
    free = trained(data, {}, 0.0)
    planted, _ = recipe.find(free, data, classes, seed=0)
    kept_off = {s: sorted({ch for c in planted.values() for ch in c.get(s, [])}) for s in site_sizes(free)}
    share = sum(map(len, kept_off.values())) / sum(site_sizes(free).values())
    print(f"kept off: {sum(map(len, kept_off.values()))} channels, {share:.0%} of the model's")
    print("lambda  overlap  activation  accuracy  circuit sizes")
    for lam in LAMBDAS:
        model = trained(data, kept_off, lam)
        found, _ = recipe.find(model, data, classes, seed=0)
        with torch.no_grad(), captured(model) as acts:
            model(data.images[:256])
        mass = activation_penalty(acts, {s: torch.tensor(ch) for s, ch in kept_off.items() if ch}).item()
        accuracy = evaluate(model, data, num_classes=10).accuracy
        sizes = {c: circuit_size(v) for c, v in found.items()}
        print(f"{lam:6g}  {overlap(found, kept_off):7.2f}  {mass:10.3f}  {accuracy:8.3f}  {sizes}")
    print(f"{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
