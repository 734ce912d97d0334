"""Sparse training on real MNIST learns: clearly better than chance at the configured sparsity."""

from __future__ import annotations

from fedmi_flower.science.data import load_labels, load_split, partition_iid
from fedmi_flower.science.model import evaluate
from fedmi_flower.science.models import build_model
from fedmi_flower.science.seeding import torch_generator
from fedmi_flower.science.sparsity import nonzero_budget, prunable_weights, sparsity_report, train_sparse


def test_one_sparse_epoch_on_real_mnist_beats_chance(mnist_root):
    parts = partition_iid(load_labels("mnist", True, mnist_root), 20, seed=0)  # 3,000 images
    train = load_split("mnist", True, mnist_root, indices=parts[0])
    test = load_split("mnist", False, mnist_root, indices=range(2000))
    model = build_model(seed=0)
    stats = train_sparse(model, train, epochs=1, sparsity=0.9, batch_size=64, generator=torch_generator(0, "train"))
    result = evaluate(model, test)
    # Chance is 10%. The 47 steps of batch 64 at 90% sparsity reach about 80% here; the bar is 50%.
    assert result.accuracy > 0.5, result
    assert sparsity_report(model).overall > 0.89
    for w in prunable_weights(model).values():
        assert int((w != 0).sum()) <= nonzero_budget(w.shape, 0.9)
    assert stats.examples_seen == len(train)
