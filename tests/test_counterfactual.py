"""Counterfactual aggregation names the client whose update broke a circuit (issue 28), on a planted network."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fakes import P3, P8, Proxy, make_strategy
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from planted import planted_model

from fedmi_flower.analysis.counterfactual import agreement_with_dominance, interference
from fedmi_flower.records.round_record import CrossEvaluation, Interference
from fedmi_flower.science.circuits import CircuitScores
from fedmi_flower.science.model import get_weights
from fedmi_flower.wire.protocol import ClientReport, report_to_metrics

SIZES = {"conv1": 32, "conv2": 64, "conv3": 128}
UNMEASURED = {"noise_floor": False, "random_control": False}
"""Analysis steps these tests never read: off, they would be two thirds of each round's time."""


def result(pid: int, circuits: dict, weights: list[np.ndarray], working: dict[int, float]) -> tuple[Proxy, FitRes]:
    """A client's result whose circuits scored ``working`` (sufficiency by class, specificity 0.9) on its own model."""
    report = ClientReport(
        partition_id=pid,
        num_examples=100,
        circuits=circuits,
        local_scores={c: CircuitScores(sufficiency=s, specificity=0.9) for c, s in working.items()},
    )
    return Proxy(f"node-{pid}"), FitRes(
        Status(Code.OK, ""), ndarrays_to_parameters(weights), 100, report_to_metrics(report, SIZES)
    )


def overwriting_client_weights() -> list[np.ndarray]:
    """The planted network with class 3's relay driven hard negative at its first channel: averaged with two intact
    clients it closes that channel (mean weight (1 + 1 - 4) / 3 < 0 under ReLU), so class 3 dies in the average."""
    model = planted_model()
    model.conv1.weight.data[P3["conv1"][0], 0, 1, 1] = -4.0
    return get_weights(model)


def test_counterfactual_aggregation_names_the_client_that_broke_a_circuit(tmp_path):
    strategy, run_dir = make_strategy(
        tmp_path, "fedavg", partition_sizes={0: 100, 1: 100, 2: 100}, analysis={"counterfactual": True, **UNMEASURED}
    )
    intact = get_weights(planted_model())
    results = [
        result(0, {3: P3}, intact, {3: 1.0}),
        result(1, {3: P3}, intact, {3: 1.0}),
        result(2, {8: P8}, overwriting_client_weights(), {8: 1.0}),  # holds class 8 only, yet breaks class 3
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    (record,) = run_dir.read_rounds()
    assert not record.step_errors
    # The round's answer is the real aggregate of all three, not a counterfactual one computed after it.
    conv1 = parameters_to_ndarrays(params)[0]
    assert conv1[P3["conv1"][0], 0, 1, 1] == np.float32((1.0 + 1.0 - 4.0) / 3)
    # Both holders' class-3 circuits worked on their own model and collapse on the global weights ...
    for pid in (0, 1):
        assert record.cross_eval[pid][3].local_verdict == "working" and record.cross_eval[pid][3].verdict == "collapsed"
    assert record.cross_eval[2][8].verdict == "working"  # ... class 8 survives: not analysed
    assert set(record.interference) == {0, 1} and all(set(per) == {3} for per in record.interference.values())
    for pid in (0, 1):
        entry = record.interference[pid][3]
        other_holder = 1 - pid
        assert entry.restored_by == [2] and entry.strongest == 2  # leaving out client 2 restores it
        assert entry.without[2] == 1.0 and entry.without[other_holder] < 0.1  # leaving out the other holder does not
        assert set(entry.without) == {other_holder, 2}  # a client's own absence is not asked about
    assert record.interference_left_out == [0, 1, 2]
    # Where the overwrite happened: all of the change to class 3's own parameters is client 2's update.
    for pid in (0, 1):
        shares = record.interference[pid][3].overwrite_share
        assert shares[2] == pytest.approx(1.0) and shares[0] == shares[1] == 0.0
    assert record.summary.interference_restorer_moved_most == 1.0
    s = record.summary
    assert (s.interference_collapsed, s.interference_restored) == (2, 2)
    # IoU-based dominance can only name a holder of class 3; the cause is a client that does not hold it.
    assert record.dominance[3].winner in (0, 1) and s.interference_agrees_with_dominance == 0.0
    assert record.timings.counterfactual > 0


def test_without_a_collapse_nothing_is_reaggregated():
    calls = []
    working = CrossEvaluation(sufficiency=0.9, specificity=0.9, verdict="working", local_verdict="working")
    found = interference(
        {0: {3: working}},
        {0: {3: P3}},
        [0, 1],
        lambda pid: calls.append(pid),
        lambda weights, circuits: [],
    )
    assert found == {} and calls == []


def test_agreement_counts_only_restored_circuits():
    restored = Interference(sufficiency=0.0, without={2: 0.9, 1: 0.6}, restored_by=[1, 2])
    unrestored = Interference(sufficiency=0.0, without={2: 0.0})
    assert restored.strongest == 2 and unrestored.strongest is None
    assert agreement_with_dominance({0: {3: restored, 4: unrestored}}, {3: 2, 4: 1}) == 1.0
    assert agreement_with_dominance({0: {3: restored}}, {3: 1}) == 0.0
    assert math.isnan(agreement_with_dominance({0: {4: unrestored}}, {4: 1}))
    assert Interference.from_json(restored.to_json()) == restored


def test_counterfactual_aggregations_leave_a_stateful_strategy_as_the_real_one_left_it(tmp_path):
    """FedAvgM keeps a momentum across rounds: aggregating again without each client must not move it."""
    intact = get_weights(planted_model())
    results = [
        result(0, {3: P3}, intact, {3: 1.0}),
        result(1, {3: P3}, intact, {3: 1.0}),
        result(2, {8: P8}, overwriting_client_weights(), {8: 1.0}),
    ]
    outcomes = []
    for on in (False, True):
        strategy, run_dir = make_strategy(
            tmp_path,
            "fedavgm",
            folder=f"cf-{on}",
            partition_sizes={0: 100, 1: 100, 2: 100},
            analysis={"counterfactual": on, **UNMEASURED},
        )
        params, _ = strategy.aggregate_fit(1, results, [])
        (record,) = run_dir.read_rounds()
        outcomes.append((parameters_to_ndarrays(params), strategy.strategy_state(), record))
    (plain, plain_state, plain_record), (cf, cf_state, cf_record) = outcomes
    assert cf_record.interference and not plain_record.interference
    for a, b in zip(plain, cf):
        np.testing.assert_array_equal(a, b)
    assert plain_state.keys() == cf_state.keys() and plain_state
    for key in plain_state:
        for a, b in zip(plain_state[key], cf_state[key]):
            np.testing.assert_array_equal(a, b)


def test_the_report_counts_what_counterfactual_aggregation_found(tmp_path):
    from fedmi_flower.views.report import INTERFERENCE, interference_numbers

    strategy, run_dir = make_strategy(
        tmp_path, "fedavg", partition_sizes={0: 100, 1: 100, 2: 100}, analysis={"counterfactual": True, **UNMEASURED}
    )
    intact = get_weights(planted_model())
    strategy.aggregate_fit(
        1,
        [
            result(0, {3: P3}, intact, {3: 1.0}),
            result(1, {3: P3}, intact, {3: 1.0}),
            result(2, {8: P8}, overwriting_client_weights(), {8: 1.0}),
        ],
        [],
    )
    numbers = {row: v for (table, row, _), v in interference_numbers(run_dir.read_rounds()).items()}
    assert numbers["collapsed after working, analysed"] == 2
    assert numbers["restored by leaving out one other client"] == 2
    assert numbers["restored by leaving out a client that holds none of the circuit's class"] == 2
    assert numbers["the strongest overwriter is the class's IoU-dominant client: share"] == 0.0
    assert all(table == INTERFERENCE for table, _, _ in interference_numbers(run_dir.read_rounds()))
    assert interference_numbers([]) == {}


def test_with_more_clients_than_the_cap_a_seeded_draw_is_left_out(tmp_path):
    intact = get_weights(planted_model())
    results = [
        result(0, {3: P3}, intact, {3: 1.0}),
        result(1, {3: P3}, intact, {3: 1.0}),
        result(2, {8: P8}, overwriting_client_weights(), {8: 1.0}),
    ]
    drawn = []
    for folder in ("a", "b"):
        strategy, run_dir = make_strategy(
            tmp_path,
            "fedavg",
            folder=folder,
            partition_sizes={0: 100, 1: 100, 2: 100},
            analysis={"counterfactual": True, "counterfactual_clients": 2, **UNMEASURED},
        )
        strategy.aggregate_fit(1, results, [])
        (record,) = run_dir.read_rounds()
        drawn.append(record.interference_left_out)
        left_out = set(record.interference_left_out)
        for per in record.interference.values():
            for entry in per.values():
                assert set(entry.without) <= left_out  # only the drawn clients were left out
    assert len(drawn[0]) == 2 and drawn[0] == drawn[1]  # from the run's seed: the same draw both times


def test_a_circuits_own_parameters_are_what_makes_and_reads_its_channels():
    from fedmi_flower.analysis.counterfactual import circuit_parameter_mask
    from fedmi_flower.science.alignment import layout_of

    model = planted_model()
    masks = circuit_parameter_mask(layout_of(model), {"conv1": [5], "conv3": [20]})
    assert masks["conv1.weight"][5].all() and masks["conv1.weight"].sum() == 9  # the channel's filter
    assert masks["conv1.bias"][5] and masks["conv1.bias"].sum() == 1
    assert masks["conv2.weight"][:, 5].all() and masks["conv2.weight"].sum() == 64 * 9  # every filter reading it
    assert masks["conv3.weight"][20].all() and masks["conv3.weight"][:, :].sum() == 64 * 9  # conv3's row 20
    fc = masks["fc.weight"].reshape(10, 128, 9)  # the classifier reads conv3's channels in channel-major blocks
    assert fc[:, 20].all() and fc.sum() == 10 * 9


def test_the_interference_figure_puts_each_share_and_restorer_where_the_records_do(tmp_path):
    from matplotlib.patches import Rectangle

    from fedmi_flower.config import load_experiment
    from fedmi_flower.records.round_record import RoundRecord
    from fedmi_flower.records.series import Run
    from fedmi_flower.views.plots import fig_interference, interference_matrix

    # Round 2: client 0's circuit of class 7 collapsed; client 2 moved most of its parameters, and leaving
    # client 2 out restores it. Round 3: client 1's circuit of class 3 collapsed with no single overwriter.
    records = [
        RoundRecord(round=1),
        RoundRecord(
            round=2,
            interference={
                0: {7: Interference(0.0, {1: 0.1, 2: 0.9}, restored_by=[2], overwrite_share={0: 0.2, 1: 0.1, 2: 0.7})}
            },
        ),
        RoundRecord(
            round=3,
            interference={1: {3: Interference(0.05, {0: 0.0, 2: 0.1}, overwrite_share={0: 0.4, 2: 0.35})}},
        ),
    ]
    run = Run(tmp_path, load_experiment("smoke"), records)
    clients, labels, shares, restores = interference_matrix(run)
    assert clients == [0, 1, 2] and labels == ["r2 c0:7", "r3 c1:3"]
    np.testing.assert_allclose(shares[:, 0], [0.2, 0.1, 0.7])
    assert shares[0, 1] == 0.4 and np.isnan(shares[1, 1]) and shares[2, 1] == 0.35
    assert restores.tolist() == [[False, False], [False, False], [True, False]]
    frames = [p for p in fig_interference(run).axes[0].patches if isinstance(p, Rectangle)]
    assert [(f.get_x(), f.get_y()) for f in frames] == [(-0.5, 1.5)]  # column 0, row 2: client 2 restores
    empty = Run(tmp_path, load_experiment("smoke"), records[:1])
    assert "no collapsed circuit" in fig_interference(empty).axes[0].texts[0].get_text()


def test_an_overwrite_share_lands_on_the_side_of_the_circuit_a_client_changed():
    """One client remakes a circuit's channel, another rewires what reads it, a third changes a stranger's filter."""
    from fedmi_flower.analysis.counterfactual import overwrite_by_side, overwrite_shares
    from fedmi_flower.science.alignment import layout_of

    model = planted_model()
    layout = layout_of(model)
    start = get_weights(model)
    circuit = {"conv1": [5]}

    def changed(name: str, index: tuple, by: float) -> list[np.ndarray]:
        weights = [w.copy() for w in start]
        weights[layout.index[name]][index] += by
        return weights

    local = {
        0: changed("conv1.weight", (5,), 1.0),  # the channel's own filter: 9 entries
        1: changed("conv2.weight", (slice(None), 5), 2.0),  # every conv2 filter's column reading it: 64 x 9
        2: changed("conv1.weight", (7,), 5.0),  # channel 7, no part of the circuit
    }
    counts = {0: 100, 1: 300, 2: 600}
    sides = overwrite_by_side(layout, start, local, counts, circuit)
    writes, reads = 9 * 0.1**2, 64 * 9 * (2 * 0.3) ** 2  # |change|^2 on each side
    assert sides[0]["writes"] == pytest.approx(writes / (writes + reads)) and sides[0]["reads"] == 0.0
    assert sides[1]["reads"] == pytest.approx(reads / (writes + reads)) and sides[1]["writes"] == 0.0
    assert sides[2] == {"writes": 0.0, "reads": 0.0}
    whole = overwrite_shares(layout, start, local, counts, circuit)
    assert whole == pytest.approx({p: s["writes"] + s["reads"] for p, s in sides.items()})
    assert sum(whole.values()) == pytest.approx(1.0)
    # conv2's filter 10 reading channel 5 of conv1: it makes one circuit channel and reads another, counted once,
    # as making.
    two_sites = {"conv1": [5], "conv2": [10]}
    overlap = overwrite_by_side(layout, start, {0: changed("conv2.weight", (10, 5), 1.0), 1: start}, counts, two_sites)
    assert overlap[0] == {"writes": pytest.approx(1.0), "reads": 0.0}
    unchanged = overwrite_by_side(layout, start, {0: start, 1: start}, {0: 1, 1: 2}, circuit)
    assert all(math.isnan(v) for s in unchanged.values() for v in s.values())
