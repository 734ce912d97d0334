"""Measurement integrity: one test per bug of issue 11, each failing on the code before its fix.

The fakes differ where the code could mix clients up: different weights, different example
counts, a client that skips a round, a client that claims another's partition.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fakes import ROUND1, Proxy, distinct_weights, fit_res, make_strategy
from flwr.common import Code, EvaluateRes, Status, parameters_to_ndarrays
from planted import PLANTED, bright_images, concat, planted_model
from runs import flat_summary, rounds_json

from fedmi_flower.clients import CircuitClient
from fedmi_flower.clients.faults import InjectedFailure
from fedmi_flower.config import ConfigError, ExperimentConfig
from fedmi_flower.science.circuits import circuit_size, circuits_from_scores
from fedmi_flower.science.discovery import learn_gate_scores
from fedmi_flower.science.metrics import circuit_iou
from fedmi_flower.science.models import build_model
from fedmi_flower.wire.protocol import FitInstructions, fit_instructions

TOTAL_CHANNELS = 32 + 64 + 128


def weighted_mean(arrays_and_counts):
    """The FedAvg aggregate by hand: sum of n_i * w_i over sum of n_i, tensor by tensor."""
    total = sum(n for _, n in arrays_and_counts)
    return [
        sum(n * a[i].astype(np.float64) for a, n in arrays_and_counts) / total
        for i in range(len(arrays_and_counts[0][0]))
    ]


def assert_weights(params, expected):
    got = parameters_to_ndarrays(params)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- bug 1


def test_bug1_a_negative_example_count_is_rejected_not_weighted(tmp_path):
    strategy, run_dir = make_strategy(tmp_path, steps=10)
    w = distinct_weights(0)
    honest = fit_res(0, ROUND1[0], weights=w, num_examples=100)
    liar = fit_res(1, ROUND1[1], weights=[3 * a for a in w], num_examples=-50)
    params, _ = strategy.aggregate_fit(1, [honest, liar], [])
    assert_weights(params, w)  # before the fix: -w (100 w - 150 w) / 50
    (record,) = rounds_json(run_dir)
    (rejection,) = record["rejected"]
    assert (
        rejection["client"] == "node-1"
        and rejection["weights_aggregated"] is False
        and "num_examples" in rejection["reason"]
    )


def test_bug1_all_zero_example_counts_do_not_kill_the_round(tmp_path):
    strategy, run_dir = make_strategy(tmp_path, steps=10)
    params, _ = strategy.aggregate_fit(
        1, [fit_res(p, ROUND1[p], weights=distinct_weights(p), num_examples=0) for p in ROUND1], []
    )
    assert params is None  # nothing valid to aggregate: the global model is kept
    (record,) = rounds_json(run_dir)
    assert record["aggregated"] is False and len(record["rejected"]) == 3


def test_bug1_example_counts_must_match_the_partition_the_server_knows(tmp_path):
    sizes = {0: 100, 1: 300, 2: 50}
    strategy, run_dir = make_strategy(tmp_path, steps=10, partition_sizes=sizes)
    weights = {p: distinct_weights(p) for p in ROUND1}
    inflated = fit_res(1, ROUND1[1], weights=weights[1], num_examples=3000)  # claims 10x its partition
    params, _ = strategy.aggregate_fit(
        1, [fit_res(0, ROUND1[0], weights[0], 100), inflated, fit_res(2, ROUND1[2], weights[2], 50)], []
    )
    assert_weights(params, weighted_mean([(weights[0], 100), (weights[2], 50)]))
    (record,) = rounds_json(run_dir)
    (rejection,) = record["rejected"]
    assert rejection["weights_aggregated"] is False and "300" in rejection["reason"] and "3000" in rejection["reason"]
    assert sorted(record["clients"]) == ["0", "2"]


def test_fedavg_aggregate_is_the_example_weighted_mean(tmp_path):
    sizes = {0: 100, 1: 300, 2: 50}
    strategy, run_dir = make_strategy(tmp_path, steps=10, partition_sizes=sizes)
    weights = {p: distinct_weights(p) for p in ROUND1}
    params, metrics = strategy.aggregate_fit(1, [fit_res(p, ROUND1[p], weights[p], sizes[p]) for p in ROUND1], [])
    assert_weights(params, weighted_mean([(weights[p], sizes[p]) for p in ROUND1]))
    record = rounds_json(run_dir)[0]
    assert {pid: c["num_examples"] for pid, c in record["clients"].items()} == {"0": 100, "1": 300, "2": 50}


# ---------------------------------------------------------------------------- bug 2


def test_bug2_stability_compares_round_t_with_round_t_minus_1_only(tmp_path):
    strategy, run_dir = make_strategy(tmp_path, steps=20, rounds=3)
    grown = {3: {"conv1": [5, 6, 7, 8], "conv2": [10], "conv3": [20, 21]}}
    strategy.aggregate_fit(1, [fit_res(p, ROUND1[p]) for p in ROUND1], [])
    strategy.aggregate_fit(2, [fit_res(0, ROUND1[0]), fit_res(2, ROUND1[2])], [])  # client 1 is not sampled
    strategy.aggregate_fit(3, [fit_res(0, ROUND1[0]), fit_res(1, grown), fit_res(2, ROUND1[2])], [])
    third = rounds_json(run_dir)[2]
    assert sorted(third["stability"]) == ["0", "2"]  # before the fix, client 1 compared round 3 with round 1 as if t-1
    gap = third["stability_gap"]["1"]["3"]
    assert gap["previous_round"] == 1 and gap["conv1"] == 0.5
    assert third["stability"]["0"]["3"]["mean"] == 1.0
    assert flat_summary(third)["stability_pairs"] == 4  # clients 0 (classes 3, 8) and 2 (3, 8)


# ---------------------------------------------------------------------------- bug 3


def test_bug3_short_patience_cannot_return_the_whole_network():
    model, data = planted_model(), concat(bright_images(128, 3), bright_images(128, 8))
    scores, steps_run = learn_gate_scores(model, data, [3, 8], seed=1, patience=10)
    found = circuits_from_scores(scores, [3, 8])
    for cls in (3, 8):
        assert circuit_size(found[cls]) < TOTAL_CHANNELS, (
            f"class {cls} stopped with the whole network after {steps_run}"
        )
        assert circuit_iou(found[cls], PLANTED[cls])["mean"] >= 0.9
    assert all(n < 200 for n in steps_run)  # early stop still stops early


# ---------------------------------------------------------------------------- bug 4


def test_bug4_faults_work_with_more_than_5_clients_and_10_rounds():
    config = ExperimentConfig.from_dict(
        {
            "clients": 8,
            "rounds": 12,
            "train": {"epochs": 1, "sparsity": 0.0, "batch_size": 64},
            "discovery": {"steps": 2},
            "analysis": {"classes": [3, 8]},
            "faults": {"fail_clients": [6], "fail_rounds": [11]},
        }
    )
    orders = FitInstructions.parse(
        fit_instructions(config, 11)
    )  # before the fix: ConfigError, fail_clients outside 0..4
    assert orders.config.clients == 8 and orders.config.rounds == 12
    data = concat(bright_images(64, 3), bright_images(64, 8))
    with pytest.raises(InjectedFailure, match="client 6 fails in round 11"):
        CircuitClient(6, data, data.subset(range(8)), model_factory=build_model, num_classes=10).fit(
            [], fit_instructions(config, 11)
        )
    weights, n, metrics = CircuitClient(5, data, data.subset(range(8)), model_factory=build_model, num_classes=10).fit(
        distinct_weights(5), fit_instructions(config, 11)
    )
    assert n == 128 and metrics["partition_id"] == 5


# ---------------------------------------------------------------------------- bug 5


def test_bug5_a_second_claim_on_a_partition_is_not_averaged(tmp_path):
    strategy, run_dir = make_strategy(tmp_path, steps=10)
    strategy._partition_of.update({"node-0": 0, "node-1": 1, "node-2": 2})  # what get_properties told the server
    weights = {p: distinct_weights(p) for p in ROUND1}
    impostor = fit_res(0, ROUND1[0], weights[1], 100, node="node-1")  # node 1 claims partition 0
    params, _ = strategy.aggregate_fit(
        1, [impostor, fit_res(0, ROUND1[0], weights[0]), fit_res(2, ROUND1[2], weights[2])], []
    )
    assert_weights(params, weighted_mean([(weights[0], 100), (weights[2], 100)]))  # before the fix: w1 averaged in
    (record,) = rounds_json(run_dir)
    (rejection,) = record["rejected"]
    assert (
        rejection["client"] == "node-1"
        and rejection["weights_aggregated"] is False
        and "partition 1" in rejection["reason"]
    )
    assert sorted(record["clients"]) == ["0", "2"]


def test_bug5_contested_partition_unknown_to_the_server_is_rejected_in_any_order(tmp_path):
    weights = {p: distinct_weights(p) for p in ROUND1}
    a = fit_res(0, ROUND1[0], weights[0], 100, node="node-a")
    b = fit_res(0, ROUND1[0], weights[1], 100, node="node-b")
    c = fit_res(2, ROUND1[2], weights[2], 100)
    for order, folder in (([a, b, c], "ab"), ([b, a, c], "ba")):
        strategy, run_dir = make_strategy(tmp_path, steps=10, folder=folder)
        params, _ = strategy.aggregate_fit(1, order, [])
        assert_weights(params, weights[2])
        (record,) = rounds_json(run_dir)
        assert sorted(r["client"] for r in record["rejected"]) == ["node-a", "node-b"]
        assert sorted(record["clients"]) == ["2"]


# ---------------------------------------------------------------------------- bug 6


def test_bug6_evaluation_without_held_out_rows_cannot_divide_by_zero(tmp_path):
    with pytest.raises(ConfigError, match="holdout_fraction"):
        ExperimentConfig.from_dict({"data": {"holdout_fraction": 0.0}, "strategy": {"fraction_evaluate": 0.5}})
    strategy, _ = make_strategy(tmp_path, steps=10)
    empty = [(Proxy(f"node-{p}"), EvaluateRes(Status(Code.OK, ""), 0.0, 0, {"accuracy": 0.0})) for p in range(3)]
    loss, metrics = strategy.aggregate_evaluate(1, empty, [])  # before the fix: ZeroDivisionError inside Flower
    assert loss is None and metrics == {}
    mixed = [(Proxy("node-0"), EvaluateRes(Status(Code.OK, ""), 2.0, 30, {"accuracy": 0.5})), *empty[1:]]
    loss, metrics = strategy.aggregate_evaluate(1, mixed, [])
    assert loss == 2.0 and metrics["accuracy"] == 0.5


# ---------------------------------------------------------------------------- the scale and the verdicts


def test_planted_model_has_noise_floor_one_and_its_circuits_a_chance_level(tmp_path):
    """Discovery finds the planted circuits whatever the seed, draw or rows: every floor is exactly 1."""
    strategy, run_dir = make_strategy(tmp_path, steps=100)
    rows = concat(bright_images(40, 3, seed=7), bright_images(40, 8, seed=7))
    strategy.analyst.client_rows = lambda pid: rows
    strategy.aggregate_fit(1, [fit_res(p, ROUND1[p]) for p in ROUND1], [])
    (record,) = rounds_json(run_dir)
    floor = record["noise_floor"]
    for kind in ("seed", "source"):
        assert {c: e["mean"] for c, e in floor[kind].items()} == {"3": 1.0, "8": 1.0}
    # The planted model calls every bright image its default class: its global circuits are degenerate, so the
    # views' floors leave their classes out and have nothing left to average.
    assert set(record["global"]["degenerate"]) == {"3", "8"}
    s = flat_summary(record)
    assert s["seed_floor"] is None and s["seed_floor_covers"] == 0 and s["source_floor_covers"] == 0
    # Client 1's class-3 circuit against the planted one: 2+1+2 channels against 1+1+1 in 32, 64, 128.
    chance = record["local_global_iou"]["1"]["3"]["chance"]
    assert chance["conv1"] == pytest.approx(
        (2 / 32) * (1 / 2)
    )  # the planted channel falls in the 2-set w.p. 2/32, IoU 1/2
    assert record["inter_client_iou"]["3"]["pairs"] == 3 and record["inter_client_iou"]["8"]["pairs"] == 1


def test_client_reports_its_own_noise_floor_when_it_is_the_floor_client():
    config = ExperimentConfig.from_dict(
        {
            "clients": 3,
            "train": {"epochs": 1, "sparsity": 0.0, "lr": 1e-9, "batch_size": 64},
            "discovery": {"steps": 100, "objective": "paper"},  # planted circuits are always-target ones
            "analysis": {"classes": [3, 8], "floor_client": 1},
        }
    )
    data = concat(bright_images(64, 3), bright_images(64, 8))
    _, _, metrics = CircuitClient(1, data, data.subset(range(8)), model_factory=build_model, num_classes=10).fit(
        [w for w in planted_weights()], fit_instructions(config, 1)
    )
    from fedmi_flower.wire.protocol import report_from_metrics

    report = report_from_metrics(
        metrics, 128, num_clients=3, layer_sizes={"conv1": 32, "conv2": 64, "conv3": 128}, num_classes=10
    )
    assert {c: f["mean"] for c, f in report.noise_floor.items()} == {3: 1.0, 8: 1.0}
    assert set(report.sparsity_per_tensor) == {"conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"}
    _, _, metrics = CircuitClient(0, data, data.subset(range(8)), model_factory=build_model, num_classes=10).fit(
        planted_weights(), fit_instructions(config, 1)
    )
    assert (
        report_from_metrics(
            metrics, 128, num_clients=3, layer_sizes={"conv1": 32, "conv2": 64, "conv3": 128}, num_classes=10
        ).noise_floor
        == {}
    )


def planted_weights():
    from fedmi_flower.science.model import get_weights

    return get_weights(planted_model())


def test_verdicts_never_call_an_empty_or_indiscriminate_circuit_preserved(tmp_path):
    from fedmi_flower.science.verdicts import circuit_verdict

    assert circuit_verdict(0, 1.0, 1.0) == "empty"
    assert circuit_verdict(5, 1.0, 0.02) == "indiscriminate"  # answers its class for every input
    assert circuit_verdict(5, 0.05, 0.9) == "collapsed"
    assert circuit_verdict(5, 0.3, 0.9) == "weakened"
    assert circuit_verdict(5, 0.9, 0.9) == "working"
    assert circuit_verdict(5, None, 0.9) == "unscored"

    strategy, run_dir = make_strategy(tmp_path, steps=100)
    scored = {"sufficiency": 1.0, "specificity": 0.9, "necessity": 0.0}
    results = []
    for pid in ROUND1:
        proxy, res = fit_res(pid, ROUND1[pid])
        report = json.loads(res.metrics["report"])
        report["local_scores"] = {str(c): scored for c in ROUND1[pid]}  # every circuit worked on its own model
        res.metrics["report"] = json.dumps(report)
        results.append((proxy, res))
    strategy.aggregate_fit(1, results, [])
    (record,) = rounds_json(run_dir)
    cross = record["cross_eval"]
    assert cross["0"]["3"]["verdict"] == "working" and cross["0"]["3"]["local_verdict"] == "working"
    assert cross["2"]["3"]["verdict"] == "collapsed" and cross["2"]["8"]["verdict"] == "collapsed"
    s = flat_summary(record)
    working_on_global = sum(1 for per in cross.values() for e in per.values() if e["verdict"] == "working")
    assert (
        s["cross_working_locally"] == 5
        and s["cross_collapsed_after_working"] == 2
        and s["cross_preserved"] == working_on_global
    )


def test_bug3_a_class_whose_gates_never_moved_is_not_retired_early():
    # All-zero weights and no L0 penalty: no gradient reaches the gates, so the pattern never leaves "all open".
    import torch

    model = planted_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    data = concat(bright_images(64, 3), bright_images(64, 8))
    _, steps_run = learn_gate_scores(model, data, [3, 8], seed=1, steps=60, l0_lambda=0.0, patience=10)
    assert steps_run == [60, 60]  # before: retired at step 30 with every gate open


def test_bug5_nodes_that_tell_the_server_the_same_partition_are_never_sampled():
    from flwr.common import GetPropertiesRes
    from flwr.server.client_manager import SimpleClientManager

    from fedmi_flower.strategies.seeded_client_manager import SeededClientManager

    class Node(Proxy):
        def __init__(self, cid, pid):
            super().__init__(cid)
            self.pid = pid

        def get_properties(self, ins, timeout, group_id):
            return GetPropertiesRes(Status(Code.OK, ""), {"partition_id": self.pid})

    manager = SimpleClientManager()
    for cid, pid in (("honest-0", 0), ("sybil", 0), ("n1", 1), ("n2", 2), ("n3", 3)):
        manager.register(Node(cid, pid))
    picked = {p.cid for r in range(1, 30) for p in SeededClientManager(manager, 0, r, {}).sample(2, 2)}
    assert picked == {"n1", "n2", "n3"}  # before: the later claim replaced the honest node's, and the sybil was sampled


def test_bug6_evaluation_counts_must_match_the_held_out_rows(tmp_path):
    strategy, _ = make_strategy(tmp_path, steps=10)
    strategy.holdout_sizes = {0: 30, 1: 10, 2: 0}
    strategy._partition_of.update({"node-0": 0, "node-1": 1, "node-2": 2})
    results = [
        (Proxy("node-0"), EvaluateRes(Status(Code.OK, ""), 2.0, 30, {"accuracy": 0.5})),
        (Proxy("node-1"), EvaluateRes(Status(Code.OK, ""), 9.0, 10_000, {"accuracy": 0.0})),  # claims 1000x its rows
        (Proxy("node-2"), EvaluateRes(Status(Code.OK, ""), 0.0, 0, {"accuracy": 0.0})),
    ]
    loss, metrics = strategy.aggregate_evaluate(1, results, [])
    assert loss == 2.0 and metrics["accuracy"] == 0.5
