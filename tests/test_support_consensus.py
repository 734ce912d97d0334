"""Weight-support consensus (issue 27, item 7): the clients' nonzero weights compared tensor by tensor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fakes import ROUND1, fit_res, make_strategy
from planted import planted_model

from fedmi_flower.science.metrics import chance_iou, chance_support_iou, support_iou
from fedmi_flower.science.model import get_weights, weight_names


def test_support_iou_counts_shared_nonzero_weights_and_knows_its_chance_level():
    a = np.array([1.0, 0.0, 2.0, 0.0, 3.0, 0.0])
    b = np.array([0.5, 0.0, 0.0, 4.0, 1.0, 0.0])
    value, chance = support_iou(a, b)
    assert value == pytest.approx(2 / 4)  # {0, 2, 4} and {0, 3, 4}: 2 shared of 4
    assert chance == pytest.approx(chance_iou(3, 3, 6))
    assert all(math.isnan(v) for v in support_iou(np.zeros(3), np.zeros(3)))


def test_the_chance_level_of_a_weight_tensor_is_the_exact_hypergeometric_one_at_any_size():
    for a, b, n in ((16, 16, 32), (40, 70, 128), (100, 3, 256), (0, 5, 9)):
        assert chance_support_iou(a, b, n) == pytest.approx(chance_iou(a, b, n), rel=1e-9)
    big = chance_support_iou(737, 737, 73728)  # conv3 at 99%: the integer sum would overflow a float
    k = 737 * 737 / 73728
    assert big == pytest.approx(k / (2 * 737 - k), rel=0.02)  # the intersection concentrates at its mean
    assert chance_support_iou(73728, 73728, 73728) == pytest.approx(1.0)


def test_the_round_record_compares_supports_per_tensor(tmp_path):
    """Clients 0 and 1 send the planted weights; client 2 the same weights with conv2's support moved entirely."""
    base = get_weights(planted_model())
    names = weight_names(planted_model())
    conv2 = names.index("conv2.weight")
    moved = [w.copy() for w in base]
    support = moved[conv2] != 0
    moved[conv2] = np.where(support, 0.0, 0.01).astype(np.float32)  # every weight conv2 had is gone, the rest is set
    strategy, run_dir = make_strategy(tmp_path, "fedavg", partition_sizes={0: 100, 1: 100, 2: 100})
    strategy.aggregate_fit(
        1,
        [fit_res(0, ROUND1[0], base), fit_res(1, ROUND1[1], base), fit_res(2, ROUND1[2], moved)],
        [],
    )
    (record,) = run_dir.read_rounds()
    inter = record.support_inter_client_iou
    assert inter is not None and set(inter.layers) == {
        "conv1.weight",
        "conv2.weight",
        "conv3.weight",
        "fc.weight",
        "mean",
    }
    assert inter.layers["conv1.weight"] == pytest.approx(1.0)  # every pair shares conv1's support
    assert inter.layers["conv2.weight"] == pytest.approx(1 / 3)  # pair (0, 1) shares all of it, (0, 2) and (1, 2) none
    assert 0 < inter.chance["conv2.weight"] < 1 and inter.pairs == 3
    local_global = record.support_local_global_iou
    assert local_global is not None and local_global.layers["conv1.weight"] == pytest.approx(1.0)
    s = record.summary
    assert s.support_inter_client_iou == pytest.approx(inter.mean) and not math.isnan(s.support_inter_client_iou_chance)
    assert record.timings.support_consensus >= 0
