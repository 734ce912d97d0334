"""Each step of the server's round analysis alone, on hand-made reports whose answers are counted by hand."""

from __future__ import annotations

import math

import torch

from fedmi_flower.analysis.round_analyst import RoundAnalyst
from fedmi_flower.config import ExperimentConfig
from fedmi_flower.records.round_record import ClientEntry, CrossEvaluation, IoU, RoundRecord
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.wire.protocol import ClientReport

SIZES = {"conv1": 32, "conv2": 64, "conv3": 128}
NO_DATA = ImageSplit(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))


def report(pid: int, circuits: dict, n: int = 100) -> ClientReport:
    return ClientReport(partition_id=pid, num_examples=n, circuits=circuits)


A = {"conv1": [0, 1], "conv2": [], "conv3": [5]}
B = {"conv1": [1], "conv2": [], "conv3": [5, 6]}
C = {"conv1": [0, 1, 2, 3], "conv2": [9], "conv3": [5, 6]}


def test_inter_client_iou_averages_the_holders_pairs_only():
    reports = [report(0, {7: A}), report(1, {7: B, 3: C}), report(2, {3: C})]
    got = RoundAnalyst.inter_client([3, 7], reports, SIZES)
    # Class 7: one pair (0, 1): conv1 1/2, conv2 undefined (both empty), conv3 1/2.
    assert got[7].layers["conv1"] == 0.5 and math.isnan(got[7].layers["conv2"]) and got[7].layers["conv3"] == 0.5
    assert got[7].mean == 0.5 and got[7].pairs == 1 and got[7].clients == [0, 1]
    assert 0 < got[7].chance_layer("conv1") < 0.5  # random sets of 2 and 1 channels of 32 rarely meet
    # Class 3: clients 1 and 2 hold the same circuit.
    assert got[3].mean == 1.0 and got[3].pairs == 1


def test_class_pairs_compare_different_classes_on_different_clients():
    got = RoundAnalyst.class_pair([report(0, {7: A}), report(1, {3: C})], SIZES)
    assert list(got) == ["3-7"] and got["3-7"].pairs == 1
    assert got["3-7"].layers["conv1"] == 2 / 4 and got["3-7"].layers["conv2"] == 0.0


def test_local_global_iou_is_against_the_global_circuit_of_the_same_class():
    got = RoundAnalyst.local_global([report(0, {7: A, 3: C})], {7: B}, SIZES)
    assert set(got[0]) == {7} and got[0][7].mean == 0.5


def test_stability_compares_with_round_t_minus_1_only_and_keeps_gaps_apart():
    analyst = RoundAnalyst(ExperimentConfig(), NO_DATA, NO_DATA)
    analyst.previous = {0: (1, {7: B}), 1: (2, {7: B})}
    stable, gaps = analyst.stability(3, [report(0, {7: A}), report(1, {7: A}), report(2, {7: A})], SIZES)
    assert set(stable) == {1} and stable[1][7].previous_round == 2 and stable[1][7].mean == 0.5
    assert set(gaps) == {0} and gaps[0][7].previous_round == 1


def test_summary_means_count_their_pairs_and_keep_gaps_out():
    iou = lambda m: IoU({"conv1": m, "conv2": m, "conv3": m, "mean": m}, chance={"mean": 0.1})
    record = RoundRecord(
        round=3,
        clients={0: ClientEntry(100, circuit_sizes={7: 3}), 1: ClientEntry(50, circuit_sizes={7: 0})},
        inter_client_iou={7: IoU(iou(0.5).layers, {"mean": 0.2}, pairs=1)},
        local_global_iou={0: {7: iou(0.25)}, 1: {7: iou(math.nan)}},
        stability={1: {7: iou(0.8)}},
        stability_gap={0: {7: iou(0.1)}},
        cross_eval={
            0: {7: CrossEvaluation(0.9, 0.9, 0.0, 10, verdict="working", local_verdict="working")},
            1: {7: CrossEvaluation(0.05, 0.9, 0.0, 10, verdict="collapsed", local_verdict="working")},
        },
    )
    s = RoundAnalyst.summarise(record)
    assert s.clients == 2 and (s.inter_client_iou.mean, s.inter_client_iou.pairs) == (0.5, 1)
    assert (s.local_global_iou.mean, s.local_global_iou.pairs) == (0.25, 1)  # the undefined pair counts for nothing
    assert (s.stability.mean, s.stability.pairs, s.stability_gaps) == (0.8, 1, 1)
    assert s.cross_working_locally == 2 and s.cross_preserved == 1 and s.cross_collapsed_after_working == 1
    assert s.cross_collapsed == 1 and s.local_circuit_channels == 1.5 and s.empty_local_circuits == 1


def test_stability_over_non_degenerate_circuits_leaves_out_a_degenerate_previous_circuit():
    analyst = RoundAnalyst(ExperimentConfig(), NO_DATA, NO_DATA)
    analyst.previous = {1: (2, {7: B, 3: C})}
    analyst.previous_degenerate = {1: {7}}  # its class-7 circuit of round 2 was degenerate
    everything, _ = analyst.stability(3, [report(1, {7: A, 3: C})], SIZES)
    clean, _ = analyst.stability(3, [report(1, {7: A, 3: C})], SIZES, without_degenerate=True)
    assert set(everything[1]) == {3, 7} and set(clean[1]) == {3}
    restored = RoundAnalyst(ExperimentConfig(), NO_DATA, NO_DATA)
    restored.load_state_dict(analyst.state_dict())  # a resumed run remembers which were degenerate
    assert restored.previous_degenerate == {1: {7}}
