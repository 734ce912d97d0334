"""IoU and the preservation views against hand computations."""

from __future__ import annotations

import itertools
import math
import random

from fedmi_flower.science.metrics import (
    circuit_iou,
    class_pair_iou,
    inter_client_iou,
    intra_client_stability,
    iou,
    local_global_iou,
    nanmean,
)


def test_iou_basic_cases():
    assert iou([1, 2, 3], [2, 3, 4]) == 0.5
    assert iou([1], [1]) == 1.0
    assert iou([1], []) == 0.0
    assert math.isnan(iou([], []))


def test_nan_stays_out_of_averages():
    assert nanmean([0.5, float("nan"), 1.0]) == 0.75
    assert math.isnan(nanmean([float("nan")]))
    a = {"conv1": [1, 2], "conv2": [], "conv3": [5]}
    b = {"conv1": [2], "conv2": [], "conv3": [6]}
    out = circuit_iou(a, b)
    assert out["conv1"] == 0.5 and math.isnan(out["conv2"]) and out["conv3"] == 0.0
    assert out["mean"] == 0.25


def test_inter_client_iou_is_the_mean_over_pairs():
    circuits = {
        0: {"conv1": [1, 2], "conv2": [1], "conv3": []},
        1: {"conv1": [2, 3], "conv2": [1], "conv3": []},
        2: {"conv1": [1, 2, 3], "conv2": [2], "conv3": [4]},
    }
    out = inter_client_iou(circuits)
    # conv1 pairs: (0,1) 1/3, (0,2) 2/3, (1,2) 2/3
    assert abs(out["conv1"] - (1 / 3 + 2 / 3 + 2 / 3) / 3) < 1e-12
    # conv2 pairs: 1, 0, 0
    assert abs(out["conv2"] - 1 / 3) < 1e-12
    # conv3 pairs: NaN (both empty), 0, 0 -> NaN left out
    assert out["conv3"] == 0.0
    assert abs(out["mean"] - (out["conv1"] + out["conv2"] + out["conv3"]) / 3) < 1e-12


def test_fewer_than_two_clients_is_undefined():
    out = inter_client_iou({0: {"conv1": [1], "conv2": [1], "conv3": [1]}})
    assert all(math.isnan(v) for v in out.values())


def test_stability_and_local_global_are_circuit_iou():
    a = {"conv1": [1, 2, 3, 4], "conv2": [1], "conv3": [9]}
    b = {"conv1": [1, 2], "conv2": [1], "conv3": [8]}
    assert intra_client_stability(a, b) == circuit_iou(a, b) == local_global_iou(a, b)
    assert circuit_iou(a, b)["conv1"] == 0.5


def test_class_pair_iou_compares_different_classes_of_different_clients():
    circuits = {
        0: {0: {"conv1": [1, 2], "conv2": [], "conv3": []}, 1: {"conv1": [9], "conv2": [], "conv3": []}},
        1: {1: {"conv1": [2, 3], "conv2": [], "conv3": []}},
        2: {2: {"conv1": [1], "conv2": [], "conv3": []}},
    }
    out = class_pair_iou(circuits)
    # (0, 1): client 0's class 0 vs client 1's class 1 only (client 0's own class 1 is the same client)
    assert abs(out[(0, 1)]["conv1"] - 1 / 3) < 1e-12 and math.isnan(out[(0, 1)]["conv2"])
    assert out[(0, 1)]["mean"] == out[(0, 1)]["conv1"]
    # (1, 2): client 0's class 1 vs client 2's class 2 (0.0), client 1's class 1 vs client 2's class 2 (0.0)
    assert out[(1, 2)]["conv1"] == 0.0
    assert out[(0, 2)]["conv1"] == 0.5
    assert set(out) == {(0, 1), (0, 2), (1, 2)}


def test_chance_iou_equals_enumeration_of_every_pair_of_sets():
    from fedmi_flower.science.metrics import chance_iou

    n = 7
    for a, b in [(0, 3), (1, 1), (2, 5), (3, 3), (7, 2), (7, 7)]:
        values = [
            len(set(x) & set(y)) / len(set(x) | set(y))
            for x in itertools.combinations(range(n), a)
            for y in itertools.combinations(range(n), b)
        ]
        assert math.isclose(chance_iou(a, b, n), sum(values) / len(values), rel_tol=1e-12)
    assert math.isnan(chance_iou(0, 0, 5))
    # Too many sets to enumerate at conv1's size: sampled, two random 16-of-32 sets share about a third of their union.
    rng = random.Random(0)
    draws = [(set(rng.sample(range(32), 16)), set(rng.sample(range(32), 16))) for _ in range(20000)]
    sampled = sum(len(x & y) / len(x | y) for x, y in draws) / len(draws)
    assert abs(chance_iou(16, 16, 32) - sampled) < 0.005 and 0.3 < sampled < 0.36
