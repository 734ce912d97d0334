"""The round core without Flower: screening updates and seeded sampling, as both strategy adapters use them."""

from __future__ import annotations

import numpy as np
from fakes import planted_model

from fedmi_flower.analysis.round_core import Update, sample_partitions, screen_updates
from fedmi_flower.config import ExperimentConfig
from fedmi_flower.science.model import get_weights
from fedmi_flower.wire.protocol import encode_circuits, payload_bytes


def _update(node: str, pid: object, n: object, weights: list[np.ndarray], report: dict | None = None) -> Update:
    base = {"partition_id": pid, "circuits": encode_circuits({}, {"conv1": 32, "conv2": 64, "conv3": 128})}
    return Update(node, n, base if report is None else report, lambda: [w.copy() for w in weights])


def test_screening_keeps_what_can_be_trusted_and_says_why_for_the_rest():
    config = ExperimentConfig.from_dict({"clients": 5})
    template = planted_model()
    good = get_weights(template)
    other = [w * 0.5 for w in good]  # different weights: a mix-up between updates would show
    wrong_shape = [np.zeros((3, 3), np.float32)] + good[1:]
    updates = [
        _update("n-a", 0, 120, good),
        _update("n-b", 1, 300, other),
        _update("n-c", 2, 50, good),  # claims partition 2 ...
        _update("n-d", 2, 50, other),  # ... and so does this one: neither is trusted
        _update("n-e", 3, 70, wrong_shape),
        _update("n-f", 4, 80, other, report={"partition_id": 4, "circuits": b"\x00garbage"}),
        _update("n-g", 1, 301, good),  # holds partition 1 by the node's own word, which says 3
    ]
    screening = screen_updates(
        1,
        updates,
        experiment=config,
        template=template,
        partition_of={"n-g": 3},
        partition_sizes={0: 120, 1: 300, 2: 50, 3: 70, 4: 80},
    )
    assert [updates[i].node for i in screening.accepted] == ["n-a", "n-b", "n-f"]  # partition order
    assert [updates[i].node for i, _ in screening.reports] == ["n-a", "n-b"]
    assert [report.partition_id for _, report in screening.reports] == [0, 1]
    # What the interpretability costs on the wire, measured on arrival: the report's bytes beside the weights'.
    for i, report in screening.reports:
        assert report.report_bytes == payload_bytes(updates[i].report) > len(updates[i].report["circuits"])
        assert report.weights_bytes == sum(w.nbytes for w in updates[i].arrays) == sum(w.nbytes for w in good)
    assert {updates[i].node for i in screening.circuits_refused} == {"n-f"}
    np.testing.assert_array_equal(updates[1].arrays[0], other[0])  # each update keeps its own decoded weights
    reasons = {r.client: (r.reason, r.weights_aggregated) for r in screening.rejected}
    assert set(reasons) == {"n-c", "n-d", "n-e", "n-f", "n-g"}
    assert "claimed by several nodes (n-c, n-d)" in reasons["n-c"][0] and not reasons["n-d"][1]
    assert "weights rejected" in reasons["n-e"][0]
    assert reasons["n-f"][1] is True  # its weights are aggregated, its circuits are not
    assert "claims partition 1, but this node holds partition 3" in reasons["n-g"][0]


def test_an_example_count_that_does_not_match_the_partition_is_refused():
    config = ExperimentConfig.from_dict({"clients": 2})
    template = planted_model()
    weights = get_weights(template)
    screening = screen_updates(
        1,
        [_update("a", 0, 99, weights), _update("b", 1, True, weights)],
        experiment=config,
        template=template,
        partition_of={},
        partition_sizes={0: 100, 1: 1},
    )
    assert screening.accepted == []
    reasons = sorted(r.reason for r in screening.rejected)
    assert "num_examples = 99, but partition 0 has 100 training examples" in reasons[0]
    assert "num_examples = True must be a positive integer" in reasons[1]


def test_seeded_sampling_depends_on_seed_and_round_only():
    first = sample_partitions(7, 3, [4, 0, 2, 1, 3], 2)
    assert first == sample_partitions(7, 3, [0, 1, 2, 3, 4], 2)  # not on the order nodes were listed in
    assert first == sorted(first) and len(set(first)) == 2
    draws = {tuple(sample_partitions(7, rnd, range(10), 3)) for rnd in range(1, 30)}
    assert len(draws) > 10  # each round draws anew
    assert sample_partitions(7, 3, [5, 1], 9) == [1, 5]  # asking for every partition gives them all


def test_payload_bytes_counts_what_the_report_carries():
    assert payload_bytes({"circuits": b"\x00" * 28, "partition_id": 3, "report": "{}"}) == (8 + 28) + (12 + 8) + (6 + 2)
