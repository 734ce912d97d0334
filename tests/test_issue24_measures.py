"""What gets compared with what (issue 24): faithfulness where it can be measured, floors over each view's own
classes, polysemanticity like with like, label skew against the partition. Each test plants the answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from planted import EVIDENCE, concat, half_bright_images, shortcut_model

from fedmi_flower.analysis.round_analyst import RoundAnalyst, view_floors
from fedmi_flower.config import ExperimentConfig
from fedmi_flower.records.round_record import (
    ClientEntry,
    CrossEvaluation,
    GlobalEntry,
    IoU,
    NoiseFloor,
    RoundRecord,
    RoundSummary,
    Scores,
    View,
)
from fedmi_flower.records.series import view_floor_series
from fedmi_flower.science.circuits import CircuitScores, evaluate_circuits, smallest_faithful_circuit
from fedmi_flower.science.metrics import circuit_iou, polysemantic_share
from fedmi_flower.wire.protocol import ClientReport

SIZES = {"conv1": 32, "conv2": 64, "conv3": 128}
WORKING = CircuitScores(
    sufficiency=0.95,
    specificity=0.95,
    necessity=0.1,
    faithfulness=0.95,
    model_sufficiency=0.97,
    model_specificity=0.97,
)


def flat(value: float) -> IoU:
    return IoU({"conv1": value, "conv2": value, "conv3": value, "mean": value})


def mixed_data(n: int = 64, seed: int = 0):
    return concat(*(half_bright_images(n, c, seed) for c in (3, 8, 0, 5)))


# ---------------------------------------------------------------------------- item 1: faithfulness


def test_faithfulness_undefined_where_the_model_never_or_always_says_the_class():
    model, data = shortcut_model(), mixed_data()
    empty = {layer: [] for layer in SIZES}
    lost, kept = evaluate_circuits(model, data, [(5, empty), (3, empty)], ablation="mean")
    # The model never answers 5: an empty circuit "agrees" on every image, and used to score 1.0 on that side alone.
    assert lost.model_sufficiency == 0.0 and math.isnan(lost.faithfulness)
    # The model answers 3 on class-3 images: the empty circuit never does, so it is the 0.5 of a circuit that says no.
    assert kept.faithfulness == 0.5


def test_faithfulness_bisection_does_not_return_an_empty_circuit_on_one_side():
    model, data = shortcut_model(), mixed_data()
    scores = {layer: torch.ones(1, n) for layer, n in SIZES.items()}  # every channel learned as needed
    found = smallest_faithful_circuit(model, data, scores, 0, 5, 0.95, ablation="mean")
    # Class 5 is never the model's answer: no agreement to bisect towards; the learned circuit stands (not empty).
    assert found == {layer: list(range(n)) for layer, n in SIZES.items()}


def test_faithfulness_means_leave_degenerate_circuits_out():
    """Every circuit degenerate: no faithfulness mean above 0.5 (they used to average 1.0 for lost classes)."""
    perfect = Scores(
        0.0, 1.0, 0.0, 10, faithfulness=1.0, model_sufficiency=0.0, model_specificity=1.0
    )  # faithfulness 1.0 of a class the model does not recognise
    record = RoundRecord(
        round=1,
        clients={
            0: ClientEntry(100, circuit_sizes={3: 0}, local_scores={3: perfect}, degenerate={3: "empty"}),
            1: ClientEntry(50, circuit_sizes={3: 4}, local_scores={3: perfect}, degenerate={3: "class not recognised"}),
        },
        global_model=GlobalEntry(scores={3: perfect}, degenerate={3: "empty"}, circuit_sizes={3: 0}),
        cross_eval={
            0: {3: CrossEvaluation(0.0, 1.0, 0.0, 10, faithfulness=1.0, degenerate="empty")},
            1: {3: CrossEvaluation(0.0, 1.0, 0.0, 10, faithfulness=1.0, degenerate=None)},
        },
    )
    s = RoundAnalyst.summarise(record)
    for value in (s.local_faithfulness, s.global_faithfulness, s.cross_faithfulness):
        assert math.isnan(value)


# ---------------------------------------------------------------------------- item 2: polysemanticity


def test_polysemanticity_like_with_like():
    """Global circuits identical to the local ones: local and global shares are equal."""
    circuits = {
        0: {"conv1": [0, 1], "conv2": [4], "conv3": [9]},
        1: {"conv1": [1, 2], "conv2": [4], "conv3": [10]},
        2: {"conv1": [5], "conv2": [6, 7], "conv3": [10]},  # conv3 channel 10 also serves client 0's class 1
        3: {"conv1": [5, 6], "conv2": [7], "conv3": [12]},
    }
    reports = [
        ClientReport(0, 100, {c: circuits[c] for c in (0, 1)}),
        ClientReport(1, 100, {c: circuits[c] for c in (2, 3)}),
    ]
    clients = {r.partition_id: RoundAnalyst.client_entry(r) for r in reports}
    global_entry = GlobalEntry(circuits=dict(circuits), circuit_sizes={c: 4 for c in circuits})
    RoundAnalyst.skew_and_polysemanticity(reports, clients, global_entry, SIZES)
    for pid, r in enumerate(reports):
        assert clients[pid].polysemantic_share == polysemantic_share(r.circuits, SIZES)
        assert clients[pid].global_polysemantic_share == clients[pid].polysemantic_share
    record = RoundRecord(round=1, clients=clients, global_model=global_entry)
    s = RoundAnalyst.summarise(record)
    assert s.polysemantic_local == s.polysemantic_global
    # Pooling all four classes mixes both clients' channels: higher by itself, so it is not the comparison.
    assert global_entry.polysemantic_share > s.polysemantic_global


# ---------------------------------------------------------------------------- item 3: floors per class


class PlantedFloors(RoundAnalyst):
    """The real analysis, with each class's floor planted: class 3's is 0.6, class 8's 0.9, class 0's 0.3."""

    def floor_from(self, planned, found, global_circuits, sizes, reports):
        floors = {3: flat(0.6), 8: flat(0.9), 0: flat(0.3)}
        return NoiseFloor(
            seed=dict(floors),
            source=dict(floors),
            source_clients={3: 0, 8: 0, 0: 2},
            clients={0: {3: flat(0.5), 8: flat(0.8)}},
        )


def shared_class_round(analyst: RoundAnalyst) -> RoundRecord:
    """Client 0 holds 3 and 8, client 1 holds 3, client 2 holds 0: only class 3 has two holders."""
    reports = [
        ClientReport(0, 100, {3: EVIDENCE[3], 8: EVIDENCE[8]}, local_scores={3: WORKING, 8: WORKING}),
        ClientReport(1, 60, {3: EVIDENCE[3]}, local_scores={3: WORKING}),
        ClientReport(2, 30, {0: {"conv1": [], "conv2": [], "conv3": []}}, local_scores={0: WORKING}),
    ]
    model = shortcut_model()
    return analyst.analyse(1, model, reports)


def test_floors_per_class_over_each_views_own_classes():
    config = ExperimentConfig.from_dict(
        {
            "clients": 3,
            "analysis": {"classes": [0, 3, 8], "random_control": False, "alignment": "off"},
            "discovery": {"objective": "faithful"},
        }
    )
    analyst = PlantedFloors(config, mixed_data(), mixed_data(seed=1), reference=mixed_data(seed=2))
    record = shared_class_round(analyst)
    s = record.summary
    # Inter-client IoU covers class 3 alone: its floor is class 3's, not the mean over every class (0.6).
    assert [c for c, v in record.inter_client_iou.items() if v.pairs] == [3]
    inter = s.inter_client_iou
    assert inter.floor == pytest.approx(0.6) and (inter.floor_covers, inter.entries) == (1, 1)
    # Local-global covers (0, 3), (0, 8), (1, 3); client 2's empty circuit of class 0 is degenerate, out of both.
    assert 0 in record.clients[2].degenerate
    assert s.local_global_iou.floor == pytest.approx((0.6 + 0.9 + 0.6) / 3) and s.local_global_iou.floor_covers == 3
    # The report's verdict reads the same floor.
    from fedmi_flower.views.report import FLOOR, SCALE, scale_numbers

    assert scale_numbers([record])[(SCALE, "inter-client IoU", FLOOR)] == pytest.approx(0.6)
    # Each client panel draws its own classes' floor: client 1 (class 3) 0.6; client 0 (3 and 8) both.
    floors = view_floor_series([record], View.LOCAL_GLOBAL_IOU)
    assert {k[:2] for k in floors} == {(0, 3), (0, 8), (1, 3)}
    assert floors[(1, 3, "mean")][0] == pytest.approx(0.6) and floors[(0, 8, "mean")][0] == pytest.approx(0.9)


def floors_of(record: RoundRecord, previous_degenerate=None) -> dict:
    """The summary's floors of a hand-made record by their flat names (``summary.csv``'s), its views' IoUs taken as
    the non-degenerate ones."""
    clean = {
        View.INTER_CLIENT_IOU: dict(record.inter_client_iou),
        View.LOCAL_GLOBAL_IOU: {(p, c): v for p, per in record.local_global_iou.items() for c, v in per.items()},
        View.STABILITY: {(p, c): v for p, per in record.stability.items() for c, v in per.items()},
    }
    summary = RoundSummary()
    for view, parts in view_floors(record, clean, previous_degenerate).items():
        summary.set_view(view, **parts)
    return summary.scalars()


def test_a_view_whose_classes_have_no_floor_says_so():
    inter = {3: IoU({"mean": 0.7}, pairs=1, clients=[0, 1]), 8: IoU({"mean": 0.4}, pairs=1, clients=[0, 1])}
    clients = {0: ClientEntry(10), 1: ClientEntry(10)}
    record = RoundRecord(round=1, clients=clients, inter_client_iou=inter, noise_floor=NoiseFloor(seed={3: flat(0.9)}))
    got = floors_of(record)
    assert got["seed_floor"] == pytest.approx(0.9) and (got["seed_floor_covers"], got["inter_client_iou_entries"]) == (
        1,
        2,
    )
    assert got["seed_floor_against"] == pytest.approx(0.7)  # the verdict compares class 3's IoU, not 0.55
    record.noise_floor = NoiseFloor(seed={})
    got = floors_of(record)
    assert math.isnan(got["seed_floor"]) and got["seed_floor_covers"] == 0
    # A degenerate global circuit's floor is out too.
    record.noise_floor = NoiseFloor(seed={3: flat(0.9)})
    record.global_model = GlobalEntry(degenerate={3: "empty"})
    assert math.isnan(floors_of(record)["seed_floor"])


def test_stability_floor_leaves_out_a_degenerate_floor_circuit_and_figures_agree_with_the_summary():
    """Client 1's stability of class 3 has the floor client's class-3 floor, unless that circuit is degenerate;
    the figure's band reads the same entries as the summary."""
    clients = {0: ClientEntry(10), 1: ClientEntry(10)}
    record = RoundRecord(
        round=2,
        clients=clients,
        stability={0: {3: flat(0.5), 8: flat(0.6)}, 1: {3: flat(0.4)}},
        noise_floor=NoiseFloor(seed={}, clients={0: {3: flat(0.7), 8: flat(0.9)}}),
    )
    got = floors_of(record)
    assert got["client_seed_floor"] == pytest.approx((0.7 + 0.9 + 0.7) / 3) and got["client_seed_floor_covers"] == 3
    bands = view_floor_series([record], View.STABILITY)
    assert {k[:2]: v[0] for k, v in bands.items() if k[-1] == "mean"} == {(0, 3): 0.7, (0, 8): 0.9, (1, 3): 0.7}
    clients[0].degenerate = {3: "empty"}  # the floor client's class-3 circuit: its floor measures an artefact
    got = floors_of(record)
    assert got["client_seed_floor"] == pytest.approx(0.9) and (
        got["client_seed_floor_covers"],
        got["stability_entries"],
    ) == (1, 2)
    bands = view_floor_series([record], View.STABILITY)
    assert {k[:2] for k in bands} == {(0, 8)}
    # A class whose circuit was degenerate in the previous round is out of both as well.
    got = floors_of(record, {0: {8}})
    assert math.isnan(got["client_seed_floor"]) and got["stability_entries"] == 1
    earlier = RoundRecord(round=1, clients={0: ClientEntry(10, degenerate={8: "empty"}), 1: ClientEntry(10)})
    run_bands = view_floor_series([earlier, record], View.STABILITY)
    assert not any(np.isfinite(v[1]) for v in run_bands.values())


def test_floors_fail_when_wrong(random_model_analyst):
    """Every floor below 1, and each equal to the IoU recomputed from the floor circuits the record keeps."""
    analyst, model = random_model_analyst
    found = analyst.discover(model, analyst.probe, [0, 1, 2, 3], "server-discovery", 1)
    reports = [ClientReport(0, 100, {0: found[0], 1: found[1]}), ClientReport(1, 100, {2: found[2], 3: found[3]})]
    floor = analyst.noise_floor(model, found, 1, reports)
    assert sorted(floor.seed) == [0, 1, 2, 3]
    # The source floor is measured on a holder's rows for every class: client 0 for 0 and 1, client 1 for 2 and 3.
    assert floor.source_clients == {0: 0, 1: 0, 2: 1, 3: 1}
    for kind, again in ((floor.seed, floor.seed_circuits), (floor.source or {}, floor.source_circuits)):
        for cls, entry in kind.items():
            recomputed = circuit_iou(found[cls], again[cls])
            assert entry.mean < 1.0, (cls, entry)
            assert entry.mean == pytest.approx(recomputed["mean"], abs=1e-12)
    # And a view's floor is the mean of exactly its classes' floors: here class 2 alone has two holders.
    inter = {2: IoU({"mean": 0.5}, pairs=1, clients=[0, 1]), 0: IoU({"mean": math.nan}, pairs=0, clients=[0])}
    clients = {0: ClientEntry(10), 1: ClientEntry(10)}
    got = floors_of(RoundRecord(round=1, clients=clients, inter_client_iou=inter, noise_floor=floor))
    assert got["seed_floor"] == pytest.approx(floor.seed[2].mean) and got["seed_floor_covers"] == 1


# ---------------------------------------------------------------------------- item 6: label skew


def test_label_emd_against_the_partition_counts():
    """A client's skew does not depend on who else reported in the round."""
    population = [50, 50, 50, 50]
    counts = {0: [50, 0, 0, 0], 1: [0, 50, 0, 0], 2: [0, 0, 50, 50]}
    every = [ClientReport(p, 50, {}, class_counts=c) for p, c in counts.items()]
    emds = []
    for reports in (every, every[:2]):
        clients = {r.partition_id: ClientEntry(r.num_examples) for r in reports}
        RoundAnalyst.skew_and_polysemanticity(reports, clients, GlobalEntry(), SIZES, population)
        emds.append(clients[0].label_emd)
    # Client 0 holds class 0 only: |1 - 1/4| + 3 x 1/4 = 1.5 against the partition, whoever reported.
    assert emds == [pytest.approx(1.5), pytest.approx(1.5)]
