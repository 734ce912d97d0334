"""Disjoint-circuit training (issue 28 item 3, the paper's proposed cure): which channels a client keeps off, the
price it pays, the server's message, and a planted pair whose circuits move apart as the price grows."""

from __future__ import annotations

import math

import pytest
import torch

from fedmi_flower.analysis.round_analyst import RoundAnalyst
from fedmi_flower.analysis.round_core import round_instructions
from fedmi_flower.config import ConfigError, load_experiment, make_model
from fedmi_flower.science.circuits import circuit_size
from fedmi_flower.science.data import load_split
from fedmi_flower.science.discovery import Discovery
from fedmi_flower.science.disjoint import activation_penalty, budget_occupied, class_unions, occupied_by_others
from fedmi_flower.science.hook_points import captured, site_sizes
from fedmi_flower.science.model import evaluate
from fedmi_flower.science.models import SimpleCNN
from fedmi_flower.science.sparsity import train_sparse
from fedmi_flower.wire.protocol import CLASS_CIRCUITS, FitInstructions, decode_circuits, encode_circuits

SIZES = {"conv1": 32, "conv2": 64, "conv3": 128}


def test_each_class_is_the_union_of_its_clients_circuits_and_a_client_keeps_off_the_classes_it_lacks():
    circuits = {
        0: {3: {"conv1": [1, 2], "conv2": [5]}, 8: {"conv1": [9]}},
        1: {3: {"conv1": [2, 4]}, 5: {"conv1": [], "conv2": [], "conv3": []}},
        2: {7: {"conv2": [6], "conv3": [70]}},
    }
    unions = class_unions(circuits, degenerate={1: {5}})  # client 1's empty class-5 circuit says nothing
    assert unions == {3: {"conv1": [1, 2, 4], "conv2": [5]}, 7: {"conv2": [6], "conv3": [70]}, 8: {"conv1": [9]}}
    # Client 2 holds class 7: it keeps off classes 3 and 8, and none of its own.
    assert occupied_by_others(unions, held=[7]) == {"conv1": [1, 2, 4, 9], "conv2": [5]}
    assert occupied_by_others(unions, held=[3, 7, 8]) == {}


def test_a_channel_budget_leaves_a_client_its_own_classes_blocks():
    kept_off = budget_occupied({"a": 10, "b": 4}, held=[1, 3], num_classes=5)
    # Class c owns [2c, 2c + 2) of 10 channels, and [4c // 5, 4(c + 1) // 5) of 4: class 1 channel 0, class 3
    # channel 2 (a site narrower than the class count leaves some classes none).
    assert kept_off["a"] == [0, 1, 4, 5, 8, 9] and kept_off["b"] == [1, 3]
    assert budget_occupied({"a": 10}, held=range(5), num_classes=5) == {}
    with pytest.raises(ValueError, match="at least one class"):
        budget_occupied({"a": 10}, held=[0], num_classes=0)


def test_the_price_is_the_mean_absolute_activation_of_the_kept_off_channels():
    acts = {"a": torch.tensor([[1.0, -2.0, 3.0], [1.0, 2.0, -5.0]]), "b": torch.ones(2, 4, 3, 3)}
    kept = {"a": torch.tensor([1, 2]), "b": torch.tensor([0])}
    assert activation_penalty(acts, kept).item() == pytest.approx((2 + 3 + 2 + 5) / 4 + 1.0)
    with pytest.raises(ValueError, match="nothing to penalise"):
        activation_penalty(acts, {"a": torch.tensor([], dtype=torch.long)})


def test_a_price_needs_a_rule_and_a_rule_at_price_0_is_the_control():
    with pytest.raises(ConfigError, match="train.disjoint_lambda = 0.5 prices nothing while train.disjoint = off"):
        load_experiment("quickstart", {"train.disjoint_lambda": 0.5})
    # A rule at lambda 0 is the control of a lambda sweep: allowed.
    assert load_experiment("quickstart", {"train.disjoint": "budget"}).train.disjoint_lambda == 0
    with pytest.raises(ConfigError, match="train.disjoint"):
        load_experiment("quickstart", {"train.disjoint": "orthogonal", "train.disjoint_lambda": 1.0})


def test_the_server_sends_last_rounds_class_circuits_only_under_the_circuits_rule():
    config = load_experiment("quickstart", {"train.disjoint": "circuits", "train.disjoint_lambda": 1.0})
    template = make_model(config)
    analyst = RoundAnalyst.__new__(RoundAnalyst)  # the two fields the instructions read, no data
    analyst.previous, analyst.previous_degenerate = {}, {}
    assert CLASS_CIRCUITS not in round_instructions(config, 1, analyst, template)  # round 1: nothing yet
    analyst.previous = {0: (1, {3: {"conv1": [1], "conv2": [], "conv3": [7]}}), 2: (1, {8: {"conv1": [4]}})}
    analyst.previous_degenerate = {2: {8}}
    sent = round_instructions(config, 2, analyst, template)
    orders = FitInstructions.parse(sent)
    assert orders.server_round == 2 and orders.config.train.disjoint_lambda == 1.0
    unions = decode_circuits(orders.class_circuits, site_sizes(template), config.num_classes)
    assert unions == {3: {"conv1": [1], "conv2": [], "conv3": [7]}}  # client 2's degenerate class 8 left out
    plain = load_experiment("quickstart", {"train.disjoint": "budget", "train.disjoint_lambda": 1.0})
    assert CLASS_CIRCUITS not in round_instructions(plain, 2, analyst, template)  # a budget needs no message
    with pytest.raises(ConfigError, match="class_circuits must be bytes"):
        FitInstructions.parse({**sent, CLASS_CIRCUITS: "not bytes"})


def _overlap(circuits: dict, kept_off: dict) -> float:
    """Share of the circuits' channels (all classes together) that lie on the kept-off channels."""
    total = sum(circuit_size(c) for c in circuits.values())
    on = sum(len(set(c.get(site, [])) & set(kept_off.get(site, []))) for c in circuits.values() for site in c)
    return on / total if total else math.nan


def test_a_planted_collision_moves_apart_as_the_price_grows():
    """Plant the collision: the channels a client's own circuits use when trained freely are declared another
    client's. Trained again from the same start on the same batches, it pays for them: as lambda grows its
    circuits move off them and carry less there (measured: overlap 1.0 / 0.53 / 0.34 / 0.0 at lambda 0 / 0.3 /
    1 / 3, accuracy 0.94 / 0.94 / 0.86 / 0.67: the cure has a price when the kept-off channels are this many)."""
    data = load_split("mnist", train=True, indices=range(3000))
    data = data.subset(torch.nonzero(torch.isin(data.labels, torch.tensor([2, 3]))).flatten()[:400])
    classes, recipe = [2, 3], Discovery(objective="faithful", steps=80)

    def trained(keep_off: dict, lam: float) -> SimpleCNN:
        torch.manual_seed(0)
        model = SimpleCNN()
        generator = torch.Generator().manual_seed(0)
        train_sparse(
            model,
            data,
            epochs=2,
            batch_size=32,
            sparsity=None,
            generator=generator,
            keep_off=keep_off,
            keep_off_lambda=lam,
        )
        return model

    def carried(model: SimpleCNN, kept_off: dict) -> float:
        with torch.no_grad(), captured(model) as acts:
            model(data.images[:256])
        return activation_penalty(acts, {site: torch.tensor(ch) for site, ch in kept_off.items() if ch}).item()

    free = trained({}, 0.0)
    planted, _ = recipe.find(free, data, classes, seed=0)
    kept_off = {site: sorted({ch for c in planted.values() for ch in c.get(site, [])}) for site in SIZES}
    # At no price the kept-off channels change nothing: the same weights, so the planted circuits themselves.
    unpriced = trained(kept_off, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(free.state_dict().values(), unpriced.state_dict().values()))
    overlaps, masses = [_overlap(planted, kept_off)], [carried(free, kept_off)]
    for lam in (0.3, 1.0):
        model = trained(kept_off, lam)
        found, _ = recipe.find(model, data, classes, seed=0)
        overlaps.append(_overlap(found, kept_off))
        masses.append(carried(model, kept_off))
        if lam == 0.3:
            assert evaluate(model, data, num_classes=10).accuracy > 0.9  # a small price: it still learns both
    assert overlaps[0] == 1.0 and overlaps[0] > overlaps[1] > overlaps[2] and overlaps[2] < 0.5, overlaps
    assert masses[0] > masses[1] > masses[2] and masses[2] < 0.2 * masses[0], masses


def test_a_client_keeps_off_what_the_rule_says_for_the_classes_it_holds():
    """The client's side: it decodes the server's class circuits and keeps off those of the classes it lacks (a
    class it holds stays open), or the other classes' blocks; nothing before the server has sent circuits."""
    from types import SimpleNamespace

    from clients.circuit_client import CircuitClient

    counts = [0] * 10
    counts[3], counts[5] = 40, 1  # holds classes 3 and 5
    client = SimpleNamespace(class_counts=counts, num_classes=10)
    model = SimpleCNN()
    circuits = load_experiment("quickstart", {"train.disjoint": "circuits", "train.disjoint_lambda": 1.0})
    unions = {3: {"conv1": [1], "conv2": [], "conv3": []}, 7: {"conv1": [2], "conv2": [9], "conv3": []}}
    packed = encode_circuits(unions, SIZES)
    assert CircuitClient.kept_off(client, model, circuits, packed) == {"conv1": [2], "conv2": [9]}  # class 7's only
    assert CircuitClient.kept_off(client, model, circuits, b"") == {}  # round 1
    budget = load_experiment("quickstart", {"train.disjoint": "budget", "train.disjoint_lambda": 1.0})
    kept = CircuitClient.kept_off(client, model, budget, b"")
    assert kept["conv1"] == [c for c in range(32) if c not in (9, 10, 11, 16, 17, 18)]  # blocks of classes 3, 5
    off = load_experiment("quickstart")
    assert CircuitClient.kept_off(client, model, off, packed) == {}
