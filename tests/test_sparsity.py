"""Pruning reaches its budget exactly, keeps the per-neuron minimum, and training respects it."""

from __future__ import annotations

import pytest
import torch

from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.models import build_model
from fedmi_flower.science.sparsity import (
    magnitude_mask,
    nonzero_budget,
    prunable_weights,
    prune_,
    sparsity_report,
    sparsity_schedule,
    train_sparse,
)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 0.995])
def test_prune_hits_the_budget_of_every_tensor_and_keeps_four_per_neuron(sparsity):
    model = build_model(seed=0)
    prune_(model, sparsity, min_per_neuron=4)
    for name, w in prunable_weights(model).items():
        rows = w.reshape(w.shape[0], -1)
        assert abs(int(torch.count_nonzero(w)) - nonzero_budget(w.shape, sparsity, 4)) <= 1, name
        assert int((rows != 0).sum(1).min()) >= min(4, rows.shape[1]), name
    for name, p in model.named_parameters():
        if p.dim() == 1:
            assert int(torch.count_nonzero(p)) == p.numel(), f"bias {name} was pruned"


def test_budget_is_the_target_or_the_per_neuron_floor():
    # conv3 at 99%: 1% of 73,728 = 737 > 128 filters x 4.
    assert nonzero_budget((128, 64, 3, 3), 0.99, 4) == 737
    # conv1 at 99%: 1% of 288 = 3 < 32 filters x 4 = 128, the floor wins.
    assert nonzero_budget((32, 1, 3, 3), 0.99, 4) == 128
    # a fan-in smaller than the minimum keeps everything it has
    assert nonzero_budget((5, 2), 0.99, 4) == 10
    with pytest.raises(ValueError):
        nonzero_budget((4, 4), 1.5)


def test_mask_keeps_the_largest_magnitudes():
    w = torch.tensor([[0.1, -5.0, 0.2, 0.3, 0.4, 4.0], [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]])
    mask = magnitude_mask(w, sparsity=0.5, min_per_neuron=1)  # budget 6: row minima 1 each, then top 4 of the rest
    kept = set(map(tuple, torch.nonzero(mask).tolist()))
    assert (0, 1) in kept and (0, 5) in kept and (1, 5) in kept
    assert (1, 0) not in kept and int(mask.sum()) == 6


def test_prune_is_idempotent():
    model = build_model(seed=1)
    prune_(model, 0.97)
    before = [w.clone() for w in prunable_weights(model).values()]
    prune_(model, 0.97)
    assert all(torch.equal(a, b) for a, b in zip(before, prunable_weights(model).values()))


def test_schedule_rises_linearly_over_the_first_half_then_holds():
    total = 100
    assert sparsity_schedule(0, total, 0.99) == 0.0
    assert sparsity_schedule(25, total, 0.99) == pytest.approx(0.495)
    assert sparsity_schedule(50, total, 0.99) == pytest.approx(0.99)
    assert sparsity_schedule(100, total, 0.99) == pytest.approx(0.99)


def _toy_data(n: int = 512, seed: int = 0) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randn(n, 1, 28, 28, generator=g) * 0.3
    images[torch.arange(n), 0, labels * 2, :] += 3.0  # a class-coded bright row
    return ImageSplit(images, labels)


def test_training_ends_at_the_target_sparsity_and_pruned_weights_are_zero():
    model = build_model(seed=0)
    stats = train_sparse(
        model, _toy_data(), epochs=2, batch_size=64, sparsity=0.95, generator=torch.Generator().manual_seed(0)
    )
    report = sparsity_report(model)
    for name, w in prunable_weights(model).items():
        assert abs(int(torch.count_nonzero(w)) - nonzero_budget(w.shape, 0.95, 4)) <= 1, name
        assert report.per_tensor[name] == pytest.approx(1 - int(torch.count_nonzero(w)) / w.numel())
    assert stats.steps == 2 * 8 and stats.examples_seen == 1024
    assert stats.accuracy > 0.3  # the bright row gives the class away


def test_sparsity_follows_the_schedule_during_training(monkeypatch):
    import fedmi_flower.science.sparsity as sp

    seen = []
    real = sp.prune_

    def spy(model, sparsity, *args):
        seen.append(sparsity)
        return real(model, sparsity, *args)

    monkeypatch.setattr(sp, "prune_", spy)
    train_sparse(build_model(seed=0), _toy_data(256), epochs=2, batch_size=32, sparsity=0.9)
    assert len(seen) == 16 + 1  # after each of 16 steps, plus the final prune
    assert seen[0] == pytest.approx(0.9 / 8) and seen[7] == pytest.approx(0.9) and seen[-1] == 0.9


def test_dense_training_prunes_nothing():
    model = build_model(seed=0)
    train_sparse(model, _toy_data(128), epochs=1, batch_size=64, sparsity=None)
    assert sparsity_report(model).overall < 0.01


def test_training_is_reproducible_from_the_generator():
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # unrelated global state must not matter
        model = build_model(seed=7)
        train_sparse(
            model, _toy_data(256), epochs=1, batch_size=64, sparsity=0.9, generator=torch.Generator().manual_seed(9)
        )
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_fedprox_term_pulls_towards_the_start():
    data = _toy_data(256)
    drift = {}
    for mu in (0.0, 10.0):
        model = build_model(seed=0)
        start = [p.detach().clone() for p in model.parameters()]
        train_sparse(
            model,
            data,
            epochs=2,
            batch_size=64,
            sparsity=None,
            proximal_mu=mu,
            generator=torch.Generator().manual_seed(0),
        )
        drift[mu] = sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start))
    assert drift[10.0] < 0.5 * drift[0.0]


def test_global_scope_keeps_one_budget_over_all_tensors_with_the_per_neuron_floor():
    from fedmi_flower.science.sparsity import global_magnitude_masks, prune_

    g = torch.Generator().manual_seed(0)
    small = torch.randn(8, 50, generator=g) * 0.01  # small weights: only the floor survives a global budget
    large = torch.randn(4, 100, generator=g)
    masks = global_magnitude_masks([small, large], 0.9, min_per_neuron=2)
    kept = [int(m.sum()) for m in masks]
    assert sum(kept) == round(0.1 * (400 + 400))  # one budget: 80 of 800 weights
    assert kept[0] == 8 * 2 and all(int(r.sum()) >= 2 for m in masks for r in m.view(m.shape[0], -1))  # the floor holds
    assert kept[1] == 80 - 16  # the rest of the budget went to the large tensor's largest magnitudes
    assert float(large.abs()[~masks[1]].max()) <= float(large.abs()[masks[1]].min())  # by magnitude
    # A per-tensor budget instead: each tensor keeps 10% of its own weights.
    model = torch.nn.Sequential(torch.nn.Linear(50, 8, bias=False), torch.nn.Linear(100, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(small)
        model[1].weight.copy_(large)
    prune_(model, 0.9, 2, scope="tensor")
    assert [int(torch.count_nonzero(m.weight)) for m in model] == [40, 40]


def test_held_target_prunes_to_the_target_from_the_first_step(monkeypatch):
    import fedmi_flower.science.sparsity as sparsity_module

    data = ImageSplit(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    levels: dict[bool, list[float]] = {True: [], False: []}
    original = sparsity_module.prune_
    for anneal in (True, False):
        monkeypatch.setattr(
            sparsity_module,
            "prune_",
            lambda m, level, *a, _seen=levels[anneal], **k: (_seen.append(level), original(m, level, *a, **k)),
        )
        train_sparse(
            build_model(seed=0),
            data,
            epochs=1,
            batch_size=16,
            sparsity=0.9,
            anneal=anneal,
            generator=torch.Generator().manual_seed(0),
        )
    assert levels[True][0] == pytest.approx(0.45) and levels[True][-1] == 0.9  # 4 steps, annealed over the first 2
    assert levels[False] and all(level == 0.9 for level in levels[False])  # held from step 1
