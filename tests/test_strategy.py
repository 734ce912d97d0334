"""The strategy's analysis, driven with hand-made FitRes objects (no Ray), against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import P3, P8, ROUND1, Proxy, fit_res, make_strategy
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from planted import bright_images, concat, planted_model
from runs import rounds_json

from fedmi_flower.science.model import get_weights
from fedmi_flower.science.models import build_model
from fedmi_flower.strategies import STRATEGIES


def close(a, b):
    return abs(a - b) < 1e-9


def test_round_metrics_equal_hand_computations(tmp_path):
    strategy, run_dir = make_strategy(tmp_path)
    params, metrics = strategy.aggregate_fit(1, [fit_res(p, c) for p, c in ROUND1.items()], [])
    (record,) = rounds_json(run_dir)

    # The global model is the planted one: its circuits are the planted circuits.
    assert record["global"]["circuits"] == {"3": P3, "8": P8}

    inter3 = record["inter_client_iou"]["3"]
    assert close(inter3["conv1"], 1 / 6) and close(inter3["conv2"], 1 / 3) and close(inter3["conv3"], 2 / 3)
    assert close(inter3["mean"], 7 / 18) and inter3["clients"] == [0, 1, 2]
    inter8 = record["inter_client_iou"]["8"]
    assert (inter8["conv1"], inter8["conv2"], inter8["conv3"], inter8["clients"]) == (1.0, 0.5, 0.0, [0, 2])

    lg = record["local_global_iou"]
    assert lg["0"]["3"]["mean"] == 1.0 and lg["0"]["8"]["mean"] == 1.0
    assert (lg["1"]["3"]["conv1"], lg["1"]["3"]["conv2"], lg["1"]["3"]["conv3"]) == (0.5, 1.0, 0.5)
    assert close(lg["2"]["3"]["mean"], 1 / 3) and close(lg["2"]["8"]["mean"], 0.5)

    cross = record["cross_eval"]
    assert cross["0"]["3"]["sufficiency"] == 1.0 and close(cross["0"]["3"]["specificity"], 100 / 150)
    assert cross["2"]["3"]["sufficiency"] == 0.0 and cross["2"]["3"]["specificity"] == 1.0  # a cut circuit collapses
    assert record["summary"]["cross_collapsed"] == 1 + 1  # client 2's class-3 and class-8 circuits
    assert record["stability"] == {}  # nothing to compare with in round 1
    assert record["class_pair_iou"]["3-8"]["mean"] == 0.0  # the hand-made circuits of 3 and 8 share no channel
    assert record["global"]["scores"]["3"]["sufficiency"] == 1.0
    assert record["rejected"] == [] and record["failures"] == []
    assert close(metrics["inter_client_iou"], (7 / 18 + 0.5) / 2)
    assert all(
        np.allclose(a, b, atol=1e-6) for a, b in zip(parameters_to_ndarrays(params), get_weights(planted_model()))
    )
    # The round's weights are kept for circuit graphs: each client's as sent, and the aggregate.
    for pid in ROUND1:
        assert all(
            np.array_equal(a, b) for a, b in zip(run_dir.read_round_weights(1, pid), get_weights(planted_model()))
        )
    assert all(np.array_equal(a, b) for a, b in zip(run_dir.read_round_weights(1), parameters_to_ndarrays(params)))
    assert run_dir.read_round_weights(2) is None

    # Round 2: client 0 repeats itself, client 1 grows its conv1 set, client 2 stays away.
    round2 = {0: ROUND1[0], 1: {3: {"conv1": [5, 6, 7, 8], "conv2": [10], "conv3": [20, 21]}}}
    strategy.aggregate_fit(2, [fit_res(p, c) for p, c in round2.items()], [])
    record2 = rounds_json(run_dir)[1]
    assert record2["stability"]["0"]["3"]["mean"] == 1.0 and record2["stability"]["0"]["8"]["previous_round"] == 1
    assert record2["stability"]["1"]["3"]["conv1"] == 0.5 and "2" not in record2["stability"]
    assert record2["inter_client_iou"]["8"]["clients"] == [0] and record2["inter_client_iou"]["8"]["mean"] is None


def test_malformed_payloads_do_not_crash_the_round(tmp_path):
    strategy, run_dir = make_strategy(tmp_path, steps=20)
    strategy._partition_of.update({"node-4": 1})  # what node 4 told the server when asked
    nan_weights = [w.copy() for w in get_weights(planted_model())]
    nan_weights[0][0, 0, 0, 0] = float("nan")
    wrong_shape = get_weights(planted_model())[:-1]
    results = [
        fit_res(0, ROUND1[0]),
        fit_res(1, ROUND1[1], circuits=b"garbage"),  # circuits unreadable: weights still count
        fit_res(2, ROUND1[2], weights=nan_weights),  # NaN weights: not aggregated
        fit_res(2, ROUND1[2], weights=wrong_shape),
        fit_res(0, ROUND1[0]),  # node 4 claims partition 0 but holds partition 1: not aggregated
        fit_res(2, ROUND1[2], report="{broken"),  # the only valid claim on partition 2: weights count, circuits do not
    ]
    results = [(Proxy(f"node-{i}"), res) for i, (_, res) in enumerate(results)]
    params, _ = strategy.aggregate_fit(1, results, [])
    (record,) = rounds_json(run_dir)
    assert sorted(record["clients"]) == ["0"]
    rejected = {r["client"]: (r["weights_aggregated"], r["reason"]) for r in record["rejected"]}
    assert rejected["node-1"][0] and "FMC1 header" in rejected["node-1"][1]
    assert not rejected["node-2"][0] and "NaN" in rejected["node-2"][1]
    assert not rejected["node-3"][0] and "expected 8 weight tensors" in rejected["node-3"][1]
    assert not rejected["node-4"][0] and "claims partition 0, but this node holds partition 1" in rejected["node-4"][1]
    assert rejected["node-5"][0] and "not valid JSON" in rejected["node-5"][1]
    # Local weights are kept only for the client whose circuits were accepted (the ones a graph can draw).
    assert (
        run_dir.read_round_weights(1, 0) is not None
        and run_dir.read_round_weights(1, 1) is None
        and run_dir.read_round_weights(1, 2) is None
    )
    assert all(np.isfinite(a).all() for a in parameters_to_ndarrays(params))


def test_failures_are_recorded_and_survivors_analysed(tmp_path):
    strategy, run_dir = make_strategy(tmp_path, steps=20)
    strategy.aggregate_fit(1, [fit_res(0, ROUND1[0]), fit_res(2, ROUND1[2])], [RuntimeError("client 1 died")])
    (record,) = rounds_json(run_dir)
    assert sorted(record["clients"]) == ["0", "2"] and record["sampled"] == 3
    assert record["failures"] == [{"client": None, "error": "RuntimeError: client 1 died"}]
    assert record["inter_client_iou"]["3"]["clients"] == [0, 2]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_gives_records_of_the_same_shape(tmp_path, name):
    reference, ref_dir = make_strategy(tmp_path, "fedavg", steps=20, folder="reference")
    reference.aggregate_fit(1, [fit_res(p, c) for p, c in ROUND1.items()], [])
    strategy, run_dir = make_strategy(tmp_path, name, steps=20)
    assert type(strategy).__name__.lower() == f"circuit{name}"
    params, _ = strategy.aggregate_fit(1, [fit_res(p, c) for p, c in ROUND1.items()], [])
    assert params is not None
    (ref,), (got,) = rounds_json(ref_dir), rounds_json(run_dir)

    def shape(value):
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items() if k != "timings"}
        return type(value).__name__ if not isinstance(value, (int, float)) or isinstance(value, bool) else "number"

    assert shape(got) == shape(ref)


def test_fedprox_sends_mu_and_the_client_honours_it(tmp_path):
    from flwr.server.client_manager import SimpleClientManager

    from fedmi_flower.clients import CircuitClient

    strategy, _ = make_strategy(tmp_path, "fedprox")

    manager = SimpleClientManager()
    for pid in range(3):
        manager.register(Proxy(f"node-{pid}"))
    start = get_weights(planted_model())
    pairs = strategy.configure_fit(1, ndarrays_to_parameters(start), manager)
    assert len(pairs) == 3
    ins = pairs[0][1]
    assert ins.config["proximal_mu"] == strategy.proximal_mu and ins.config["server_round"] == 1
    data = concat(bright_images(64, 3), bright_images(64, 8))
    client = CircuitClient(0, data, data.subset(range(8)), model_factory=build_model, num_classes=10)
    drift = {}
    for mu in (0.0, 100.0):
        config = {
            **ins.config,
            "proximal_mu": mu,
            "train.sparsity": 0.0,
            "discovery.steps": 2,
            "train.lr": 0.01,
            "train.epochs": 3,
            "train.batch_size": 16,
        }
        weights, n, metrics = client.fit(start, config)
        drift[mu] = sum(float(((w - s) ** 2).sum()) for w, s in zip(weights, start))
        assert n == 128 and metrics["partition_id"] == 0
    assert drift[100.0] < 0.2 * drift[0.0]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_aggregates_as_flowers_own_on_the_same_inputs(tmp_path, name):
    from fakes import distinct_weights

    from fedmi_flower.strategies.registry import LEGACY, strategy_options

    sizes = {0: 100, 1: 300, 2: 50, 3: 700, 4: 20}  # different counts and weights: a rule that ignores either differs
    strategy, _ = make_strategy(tmp_path, name, steps=5, partition_sizes=sizes, clients=5)
    weights = {p: distinct_weights(p) for p in sizes}
    results = [fit_res(p, ROUND1[p % 3], weights[p], sizes[p]) for p in sizes]
    base = LEGACY[name]
    plain = base(
        initial_parameters=ndarrays_to_parameters(get_weights(planted_model())),
        **strategy_options(strategy.experiment, strategy.analyst, base),
    )
    expected, _ = plain.aggregate_fit(1, [(proxy, res) for proxy, res in results], [])
    params, _ = strategy.aggregate_fit(1, results, [])
    assert len(parameters_to_ndarrays(params)) == len(parameters_to_ndarrays(expected)) == 8
    for got, want in zip(parameters_to_ndarrays(params), parameters_to_ndarrays(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    if name in ("fedavg", "fedprox"):  # and both are the example-weighted mean, by hand
        total = sum(sizes.values())
        by_hand = [
            sum(sizes[p] * weights[p][i].astype(np.float64) for p in sizes) / total for i in range(len(weights[0]))
        ]
        for got, want in zip(parameters_to_ndarrays(params), by_hand):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
