"""Integrated faithfulness (issue 27, item 1): faithfulness over circuit size and its areas, on a planted network."""

from __future__ import annotations

import math

import pytest
from planted import concat, half_bright_images, shortcut_model

from fedmi_flower.science.discovery import Discovery
from fedmi_flower.science.faithfulness_curve import SIZE_GRID, cpr_cmd, faithfulness_curves, grid_sizes

CLASSES = [3, 8]


def mixed_data(n: int = 64, seed: int = 0):
    return concat(*(half_bright_images(n, c, seed=seed) for c in (3, 8, 0)))


def curves_of(objective: str, ablation: str = "mean") -> dict[int, list[float]]:
    model = shortcut_model()
    recipe = Discovery(objective=objective, ablation=ablation)
    _, _, scores = recipe.find_scored(model, mixed_data(), CLASSES, seed=1)
    return faithfulness_curves(model, mixed_data(seed=1), scores, CLASSES, ablation=ablation)


def test_the_planted_circuits_curve_stays_at_one_and_its_cmd_is_near_zero():
    curves = curves_of("faithful")
    for cls in CLASSES:
        assert len(curves[cls]) == len(SIZE_GRID)
        assert curves[cls][0] == 1.0  # 1% of 224 channels is 3: the planted evidence path, the top-scored channels
        cpr, cmd = cpr_cmd(curves[cls])
        assert cpr >= 0.95 and cmd <= 0.05, (cls, curves[cls])


def test_the_paper_objectives_smallest_circuits_take_the_shortcut():
    """Under zero ablation the paper's objective ranks the shortcut channel first: its smallest circuits answer 3
    for everything (a constant channel mean-ablated is itself, so the shortcut exists under zero ablation only)."""
    paper = curves_of("paper", "zero")
    assert paper[3][0] <= 0.6  # its 3 top channels answer 3 for everything: faithfulness 0.5, not the model
    assert paper[3][-1] == 1.0  # every channel: the model itself
    # On a linear size axis (as MIB integrates) the smallest sizes weigh little: the area shows the dip, barely.
    assert cpr_cmd(paper[3])[1] > 0


def test_a_perfect_curve_integrates_to_exactly_one_so_a_report_carrying_it_passes_the_wire_check():
    from fedmi_flower.science.circuits import CircuitScores
    from fedmi_flower.wire.protocol import ClientReport, report_from_metrics, report_to_metrics

    cpr, cmd = cpr_cmd([1.0] * len(SIZE_GRID))
    assert (cpr, cmd) == (1.0, 0.0)  # exactly: the trapezoids alone give 1.0000000000000002
    sizes = {"conv1": 4, "conv2": 4, "conv3": 4}
    circuit = {"conv1": [0], "conv2": [1], "conv3": [2]}
    report = ClientReport(0, 10, {3: circuit}, local_scores={3: CircuitScores(cpr=cpr, cmd=cmd)})
    back = report_from_metrics(report_to_metrics(report, sizes), 10, num_clients=1, layer_sizes=sizes, num_classes=10)
    assert back.local_scores[3].cpr == 1.0 and back.circuits == {3: circuit}


def test_areas_of_simple_curves():
    assert cpr_cmd([1.0] * len(SIZE_GRID)) == (pytest.approx(1.0), pytest.approx(0.0))
    assert cpr_cmd([0.5] * len(SIZE_GRID)) == (pytest.approx(0.5), pytest.approx(0.5))
    assert all(math.isnan(v) for v in cpr_cmd([1.0, math.nan] + [1.0] * (len(SIZE_GRID) - 2)))
    assert grid_sizes(224) == [3, 5, 12, 23, 45, 68, 112, 168, 224]


def test_a_rounds_summary_integrates_the_global_local_and_control_rankings():
    """The summary's CPRs are the record's: the global model's per class (the planted network's faithful ranking
    integrates near 1), the clients' reported ones (planted, different per client) and the random control's."""
    from fedmi_flower.analysis.round_analyst import RoundAnalyst
    from fedmi_flower.config import ExperimentConfig
    from fedmi_flower.science.circuits import CircuitScores
    from fedmi_flower.wire.protocol import ClientReport

    config = ExperimentConfig.from_dict(
        {
            "clients": 2,
            "analysis": {
                "classes": CLASSES,
                "random_control": True,
                "alignment": "off",
                **dict.fromkeys(("noise_floor", "second_method", "ablations", "stitching", "cka"), False),
            },
            "discovery": {"objective": "faithful", "ablation": "mean", "steps": 60},
        }
    )
    analyst = RoundAnalyst(config, mixed_data(24), mixed_data(24, seed=1), reference=mixed_data(24, seed=2))
    channels = {"conv1": [0], "conv2": [0], "conv3": [0]}
    reports = [
        ClientReport(0, 100, {3: channels, 8: channels}, local_scores={3: CircuitScores(cpr=0.9, cmd=0.1),
                                                                     8: CircuitScores(cpr=0.7, cmd=0.3)}),
        ClientReport(1, 40, {3: channels}, local_scores={3: CircuitScores(cpr=0.2, cmd=0.8)}),
    ]  # fmt: skip
    record = analyst.analyse(1, shortcut_model(), reports)
    s = record.summary
    assert sorted(record.global_model.cpr) == CLASSES
    assert s.global_cpr == pytest.approx(sum(record.global_model.cpr.values()) / 2) and s.global_cpr >= 0.95
    assert s.global_cmd == pytest.approx(sum(record.global_model.cmd.values()) / 2)
    assert s.local_cpr == pytest.approx((0.9 + 0.7 + 0.2) / 3) and s.local_cmd == pytest.approx((0.1 + 0.3 + 0.8) / 3)
    control = record.control
    assert control is not None and sorted(control.faithfulness_curve) == CLASSES
    defined = [v for v in control.cpr.values() if not math.isnan(v)]
    assert s.control_cpr == pytest.approx(sum(defined) / len(defined)) if defined else math.isnan(s.control_cpr)
