"""Circuit discovery finds planted circuits; evaluation scores them as defined."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from planted import DEFAULT_CLASS, DISTRACTOR, PLANTED, bright_images, concat, planted_model

from fedmi_flower.science.circuits import (
    HeavisideSTE,
    channel_means,
    circuit_edges,
    circuits_from_scores,
    evaluate_circuits,
)
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.discovery import discover_circuits, learn_gate_scores
from fedmi_flower.science.hook_points import activations, logits, site_sizes
from fedmi_flower.science.metrics import circuit_iou
from fedmi_flower.science.models import SimpleCNN, build_model


def planted_data() -> ImageSplit:
    return concat(bright_images(128, 3), bright_images(128, 8))


def test_discovery_finds_the_planted_circuits():
    found = discover_circuits(planted_model(), planted_data(), [3, 8], seed=1)
    for cls, planted in PLANTED.items():
        assert circuit_iou(found[cls], planted)["mean"] >= 0.9, (cls, found[cls])
        for layer, channels in DISTRACTOR.items():
            assert not set(channels) & set(found[cls][layer]), f"class {cls} kept the distractor in {layer}"


def test_batched_discovery_equals_one_class_at_a_time():
    model, data = planted_model(), planted_data()
    settings = dict(steps=120, seed=4, batch_per_class=16)
    together, _ = learn_gate_scores(model, data, [3, 8], **settings)
    for row, cls in enumerate([3, 8]):
        alone, _ = learn_gate_scores(model, data, [cls], **settings)
        for layer in together:
            torch.testing.assert_close(together[layer][row], alone[layer][0], rtol=0, atol=1e-5)


def test_batched_discovery_equals_one_at_a_time_on_a_trained_like_model():
    # A random dense model: no planted answer, so gates sit near decision boundaries.
    torch.manual_seed(0)
    model = build_model(seed=3)
    data = ImageSplit(torch.randn(300, 1, 28, 28), torch.randint(0, 3, (300,)))
    together, _ = learn_gate_scores(model, data, [0, 1, 2], steps=40, batch_per_class=8, seed=2)
    for row, cls in enumerate([0, 1, 2]):
        alone, _ = learn_gate_scores(model, data, [cls], steps=40, batch_per_class=8, seed=2)
        for layer in together:
            torch.testing.assert_close(together[layer][row], alone[layer][0], rtol=1e-4, atol=1e-4)


def test_early_stop_keeps_the_circuits_and_saves_steps():
    model, data = planted_model(), planted_data()
    full = discover_circuits(model, data, [3, 8], seed=1)
    scores, steps_run = learn_gate_scores(model, data, [3, 8], seed=1, patience=30, min_steps=40)
    assert circuits_from_scores(scores, [3, 8]) == full
    assert max(steps_run) < 200


def test_weights_are_frozen_and_restored():
    model, data = planted_model(), planted_data()
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    discover_circuits(model, data, [3], steps=10)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters()) and model.training


def test_straight_through_gate_forward_is_binary_backward_is_sigmoid():
    score = torch.tensor([-1.0, 0.0, 0.5, 3.0], requires_grad=True)
    gate = HeavisideSTE.apply(score)
    assert gate.tolist() == [0.0, 0.0, 1.0, 1.0]
    gate.sum().backward()
    s = torch.sigmoid(score.detach())
    torch.testing.assert_close(score.grad, s * (1 - s))


def degenerate_model() -> SimpleCNN:
    """The planted model plus a channel chain that votes for class 3 on every image (a bias, no input)."""
    model = planted_model()
    with torch.no_grad():
        model.conv1.bias[30] = 1.0
        model.conv2.weight[60, 30, 1, 1] = 1.0
        model.conv3.weight[120, 60, 1, 1] = 1.0
        model.fc.weight.view(10, 128, 9)[3, 120] = 2.0
    return model


def test_specificity_catches_an_always_target_circuit():
    model = degenerate_model()
    dark = ImageSplit(torch.zeros(100, 1, 28, 28), torch.full((100,), DEFAULT_CLASS))
    data = concat(bright_images(100, 3), dark)
    always_three = {"conv1": [30], "conv2": [60], "conv3": [120]}
    genuine = PLANTED[3]
    degenerate, real = evaluate_circuits(model, data, [(3, always_three), (3, genuine)])
    assert degenerate.sufficiency == 1.0 and degenerate.specificity == 0.0
    assert real.sufficiency == 1.0 and real.specificity == 1.0
    assert (degenerate.num_target, degenerate.num_other) == (100, 100)


def _one_at_a_time(model, data, cls, circuit):
    """Reference implementation: one circuit, plain forward passes, no batching tricks."""
    sizes = site_sizes(model)
    keep = {layer: torch.zeros(n) for layer, n in sizes.items()}
    for layer, chans in circuit.items():
        keep[layer][chans] = 1.0
    with torch.no_grad():
        pred_keep = logits(model, data.images, keep).argmax(1)
        pred_drop = logits(model, data.images, {layer: 1 - g for layer, g in keep.items()}).argmax(1)
    t = data.labels == cls
    return (
        float((pred_keep[t] == cls).float().mean()),
        float((pred_keep[~t] != cls).float().mean()),
        float((pred_drop[t] == cls).float().mean()),
    )


def test_batched_evaluation_equals_a_plain_implementation():
    torch.manual_seed(1)
    model = build_model(seed=5)
    data = ImageSplit(torch.randn(257, 1, 28, 28), torch.randint(0, 4, (257,)))
    g = torch.Generator().manual_seed(0)
    circuits = []
    for cls in [0, 1, 2, 3, 1]:
        circuits.append(
            (
                cls,
                {
                    layer: torch.nonzero(torch.rand(n, generator=g) < 0.6).flatten().tolist()
                    for layer, n in site_sizes(model).items()
                },
            )
        )
    scores = evaluate_circuits(model, data, circuits, rows_per_pass=300)  # several passes, ragged last one
    for (cls, circ), got in zip(circuits, scores):
        suff, spec, nec = _one_at_a_time(model, data, cls, circ)
        assert (
            abs(got.sufficiency - suff) < 1e-6
            and abs(got.specificity - spec) < 1e-6
            and abs(got.necessity - nec) < 1e-6
        )


def test_class_missing_from_evaluation_data_gives_nan_sufficiency():
    model = planted_model()
    (score,) = evaluate_circuits(model, bright_images(10, 3), [(8, PLANTED[8])])
    assert score.num_target == 0 and score.sufficiency != score.sufficiency
    assert score.specificity == 0.0  # its lone relay calls every bright image an 8


def test_mean_ablation_fills_closed_channels_with_their_mean():
    model = planted_model()
    data = planted_data()
    means = channel_means(model, data)
    acts = activations(model, data.images)
    for layer, act in acts.items():
        torch.testing.assert_close(means[layer], act.mean(dim=(0, 2, 3)))
    # Zero ablation silences the distractor; mean ablation puts its (bright-image) mean
    # back, and the distractor's vote for the default class wins again.
    (zero,) = evaluate_circuits(model, data, [(3, PLANTED[3])])
    (mean,) = evaluate_circuits(model, data, [(3, PLANTED[3])], ablation="mean", means=means)
    assert zero.sufficiency == 1.0
    assert mean.sufficiency == 0.0


def test_circuit_edges_follow_nonzero_weights_between_active_channels():
    edges = circuit_edges(planted_model(), PLANTED[3], target_class=3)
    assert edges == {"conv1": [(0, 5)], "conv2": [(5, 10)], "conv3": [(10, 20)], "fc": [(20, 3)]}
    assert circuit_edges(planted_model(), PLANTED[3], target_class=8)["fc"] == []


@pytest.mark.parametrize("filled", [False, True], ids=["zero ablation", "mean ablation"])
def test_circuit_only_subnetwork_equals_the_gated_dense_network(filled):
    from fedmi_flower.science.circuits import circuit_masks, circuit_only_logits

    model = build_model(seed=2)
    # Means far from zero: an ablated channel that the sub-network dropped instead of filling moves the logits.
    fill = {
        site: torch.rand(n, generator=torch.Generator().manual_seed(3)) + 0.5 for site, n in site_sizes(model).items()
    }
    fill = fill if filled else None
    images = torch.randn(40, 1, 28, 28)
    g = torch.Generator().manual_seed(1)
    circuits = [
        {
            layer: torch.nonzero(torch.rand(n, generator=g) < 0.3).flatten().tolist()
            for layer, n in site_sizes(model).items()
        },
        {"conv1": [], "conv2": [1, 2], "conv3": [5]},  # nothing flows into conv2: biases alone
        {"conv1": [0, 3], "conv2": [], "conv3": [7, 9]},
        {"conv1": [4], "conv2": [8], "conv3": []},  # no conv3 channel: the fc bias alone
    ]
    with torch.no_grad():
        stem = model.stem(images)
        for circuit in circuits:
            gates = {layer: m[0] for layer, m in circuit_masks([circuit], site_sizes(model)).items()}
            torch.testing.assert_close(
                circuit_only_logits(model, stem, circuit, fill), model.head(stem, gates, fill), rtol=1e-5, atol=1e-5
            )


class OlderCNN(SimpleCNN):
    """A model whose ``circuit_logits`` was written before fills: it takes no ``fill``."""

    def circuit_logits(self, stem, circuit):
        return super().circuit_logits(stem, circuit)


@pytest.mark.parametrize("make", [SimpleCNN, OlderCNN], ids=["sub-networks", "a capability without fill"])
def test_mean_ablation_scores_equal_the_gated_dense_passes(make, monkeypatch):
    import fedmi_flower.science.circuits as circuits_module

    torch.manual_seed(1)
    model = make().eval()
    images = torch.randn(400, 1, 28, 28)
    with torch.no_grad():
        said = model(images).argmax(1)  # labelled by the model itself: every circuit class has target rows
    data = ImageSplit(images, said)
    means = channel_means(model, data)
    g = torch.Generator().manual_seed(0)
    classes = torch.bincount(said).argsort(descending=True)[:2].tolist()
    circuits = [
        (
            cls,
            {
                site: torch.nonzero(torch.rand(n, generator=g) < share).flatten().tolist()
                for site, n in site_sizes(model).items()
            },
        )
        for cls in classes
        for share in (0.3, 0.6, 0.9)
    ]
    fast = evaluate_circuits(model, data, circuits, ablation="mean", means=means)
    monkeypatch.setattr(circuits_module, "_sub_network", lambda model, filled: None)
    dense = evaluate_circuits(model, data, circuits, ablation="mean", means=means)
    assert [repr(dataclasses.astuple(s)) for s in fast] == [repr(dataclasses.astuple(s)) for s in dense]
    assert len({(s.sufficiency, s.specificity) for s in fast}) > 2, "scores that do not vary test nothing"


def test_discovery_without_the_stem_cache_gives_the_same_scores(monkeypatch):
    import fedmi_flower.science.circuits as circuits_mod

    model, data = planted_model(), planted_data()
    cached, _ = learn_gate_scores(model, data, [3, 8], steps=30, seed=2)
    monkeypatch.setattr(circuits_mod, "STEM_CACHE_BYTES", 0)
    uncached, _ = learn_gate_scores(model, data, [3, 8], steps=30, seed=2)
    for layer in cached:
        torch.testing.assert_close(cached[layer], uncached[layer], rtol=0, atol=1e-6)
