"""The paper's open questions as numbers (issue 16): label skew, circuit bloat, polysemanticity, dominance.

Every answer is planted: label histograms whose EMD is worked out by hand, circuits whose
sizes and shared channels are counted by hand, IoUs whose winner and entropy are known.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.science.metrics import (
    channel_class_counts,
    circuit_bloat,
    dominance,
    label_emd,
    mean_label_emd,
    polysemantic_share,
)

SIZES = {"conv1": 4, "conv2": 4, "conv3": 4}


def test_label_emd_of_known_histograms():
    assert label_emd([10, 0], [5, 5]) == pytest.approx(1.0, abs=1e-9)  # |1 - .5| + |0 - .5|
    assert label_emd([3, 3, 3], [1, 1, 1]) == pytest.approx(0.0, abs=1e-9)
    assert label_emd([1, 0, 0], [0, 0, 7]) == pytest.approx(2.0, abs=1e-9)  # disjoint supports
    assert math.isnan(label_emd([0, 0], [1, 1]))
    with pytest.raises(ValueError, match="3 class counts against 2"):
        label_emd([1, 2, 3], [1, 2])


def test_mean_label_emd_of_disjoint_and_iid_partitions():
    # 5 clients, 2 disjoint classes of 10 each, 100 images per class: each client puts 0.5 on two classes where the
    # pool puts 0.1, so its EMD is 2 * 0.4 + 8 * 0.1 = 1.6.
    disjoint = [[100 if c // 2 == k else 0 for c in range(10)] for k in range(5)]
    assert mean_label_emd(disjoint) == pytest.approx(1.6, abs=1e-9)
    iid = [[20] * 10 for _ in range(5)]
    assert mean_label_emd(iid) == pytest.approx(0.0, abs=1e-9)
    # Unequal clients: 30 of class 0 and 10 of class 1 pooled with 10 of class 1 gives q = (0.6, 0.4).
    assert mean_label_emd([[30, 10], [0, 10]]) == pytest.approx((abs(0.75 - 0.6) * 2 + abs(1 - 0.4) * 2) / 2, abs=1e-9)


def test_circuit_bloat_is_the_global_size_over_the_mean_local_size():
    assert circuit_bloat(30, [10, 20]) == pytest.approx(2.0)
    assert circuit_bloat(5, [10]) == pytest.approx(0.5)
    assert math.isnan(circuit_bloat(5, [])) and math.isnan(circuit_bloat(5, [0, 0]))


def test_channels_shared_by_classes_are_counted_per_channel():
    circuits = {
        3: {"conv1": [0, 1], "conv2": [2], "conv3": []},
        7: {"conv1": [1], "conv2": [2, 3], "conv3": [0]},
        8: {"conv1": [1], "conv2": [], "conv3": []},
    }
    counts = channel_class_counts(circuits, SIZES)
    assert counts == {"conv1": [1, 3, 0, 0], "conv2": [0, 0, 2, 1], "conv3": [1, 0, 0, 0]}
    # Used channels: conv1 0 and 1, conv2 2 and 3, conv3 0; used by two or more classes: conv1 1 and conv2 2.
    assert polysemantic_share(circuits, SIZES) == pytest.approx(2 / 5)
    assert math.isnan(polysemantic_share({3: {"conv1": [], "conv2": [], "conv3": []}}, SIZES))


def test_dominance_names_the_client_the_global_circuit_follows():
    winner, lead, entropy = dominance({4: 0.2, 2: 0.8, 9: 0.0})
    assert winner == 2 and lead == pytest.approx(0.6)
    assert entropy == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(3))
    assert dominance({0: 0.5, 1: 0.5})[2] == pytest.approx(1.0)  # followed alike
    assert dominance({0: 0.5, 1: 0.5})[0] == 0  # ties go to the lowest id
    assert dominance({0: 0.7, 1: 0.0})[2] == pytest.approx(0.0)  # one client only
    winner, lead, entropy = dominance({5: 0.4})
    assert winner == 5 and math.isnan(lead) and math.isnan(entropy)
    winner, lead, entropy = dominance({})
    assert winner is None and math.isnan(lead) and math.isnan(entropy)


def test_a_round_record_carries_skew_bloat_polysemanticity_and_dominance(tmp_path):
    from fakes import P3, P8, fit_res, make_strategy

    # Clients 0 and 1 both hold class 3 (client 0 with the planted circuit itself); client 2 holds class 8 only.
    circuits = {0: {3: P3, 8: P8}, 1: {3: {"conv1": [5, 6], "conv2": [10], "conv3": [20, 21]}}, 2: {8: P8}}
    counts = {0: [0, 0, 0, 50, 0, 0, 0, 0, 50, 0], 1: [0, 0, 0, 100, 0, 0, 0, 0, 0, 0], 2: [0] * 8 + [100, 0]}
    strategy, run_dir = make_strategy(tmp_path, "fedavg", partition_sizes={0: 100, 1: 100, 2: 100})
    results = []
    for pid in range(3):
        proxy, res = fit_res(pid, circuits[pid])
        report = json.loads(res.metrics["report"])
        report["class_counts"] = counts[pid]
        res.metrics["report"] = json.dumps(report)
        results.append((proxy, res))
    pooled = [sum(c[k] for c in counts.values()) for k in range(10)]
    strategy.analyst.population_counts = pooled  # partitions.json's label counts: these three clients here
    strategy.aggregate_fit(1, results, [])
    (record,) = run_dir.read_rounds()
    for pid, client in record.clients.items():
        assert client.label_emd == pytest.approx(label_emd(counts[pid], pooled), abs=1e-9)
        assert client.polysemantic_share == pytest.approx(
            polysemantic_share(circuits[pid], site_sizes(strategy.template))
        )
    assert record.summary.mean_label_emd == pytest.approx(
        sum(label_emd(c, pooled) for c in counts.values()) / 3, abs=1e-9
    )
    g = record.global_model
    local3 = [sum(len(v) for v in circuits[p][3].values()) for p in (0, 1)]
    assert g.bloat[3] == pytest.approx(g.circuit_sizes[3] / (sum(local3) / 2))
    # Class 3: two holders, the global circuit follows one of them; class 8 too (clients 0 and 2, same circuit).
    ious3 = {p: record.local_global_iou[p][3].mean for p in (0, 1)}
    assert record.dominance[3].winner == max(sorted(ious3), key=lambda p: ious3[p])
    assert record.dominance[3].lead == pytest.approx(abs(ious3[0] - ious3[1]))
    assert record.dominance[8].lead == pytest.approx(0.0) and record.dominance[8].entropy == pytest.approx(1.0)
    # Like with like: the global model's share over each client's own classes, averaged over the clients.
    own = [polysemantic_share({c: g.circuits[c] for c in circuits[p]}, site_sizes(strategy.template)) for p in range(3)]
    assert record.summary.polysemantic_global == pytest.approx(sum(own) / 3)


def test_the_skew_law_fit_recovers_a_planted_line_and_its_uncertainty():
    from scipy import stats

    from fedmi_flower.science.law import fit_line

    x = [0.0, 0.5, 1.0, 1.5, 2.0]
    exact = fit_line(x, [0.9 - 0.3 * v for v in x])
    assert exact is not None
    assert exact.slope == pytest.approx(-0.3) and exact.intercept == pytest.approx(0.9) and exact.r2 == pytest.approx(1)
    assert exact.slope_ci == pytest.approx((-0.3, -0.3))
    # With noise: the estimate and its interval agree with scipy's own regression.
    noisy_y = [0.92, 0.71, 0.63, 0.41, 0.33]
    fit = fit_line(x + [float("nan")], noisy_y + [0.5])  # a run without a value is left out
    reference = stats.linregress(x, noisy_y)
    assert fit is not None and fit.n == 5
    assert fit.slope == pytest.approx(reference.slope) and fit.intercept == pytest.approx(reference.intercept)
    assert fit.r2 == pytest.approx(reference.rvalue**2)
    half = stats.t.ppf(0.975, 3) * reference.stderr
    assert fit.slope_ci == pytest.approx((reference.slope - half, reference.slope + half))
    assert fit.intercept_ci[0] < fit.intercept < fit.intercept_ci[1]
    assert fit_line([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) is None and fit_line([0.0, 1.0], [0.0, 1.0]) is None
    assert "R^2" in fit.describe()


def test_a_report_over_a_skew_sweep_fits_each_metric_against_the_runs_label_skew(tmp_path):
    from figure_bounds import text_outside

    from fedmi_flower.config import ExperimentConfig
    from fedmi_flower.records.round_record import GlobalEntry, RoundRecord, RoundSummary
    from fedmi_flower.records.series import Run
    from fedmi_flower.science.law import fit_line
    from fedmi_flower.views.plots import fig_skew_law
    from fedmi_flower.views.report import skew_law_groups, skew_law_points

    def run(emd: float, accuracy: float, name: str = "sweep") -> Run:
        summary = RoundSummary(mean_label_emd=emd, global_accuracy=accuracy, circuit_bloat=1.0 + emd)
        record = RoundRecord(round=1, global_model=GlobalEntry(accuracy=accuracy), summary=summary)
        return Run(tmp_path / f"emd-{emd}", ExperimentConfig(name=name), [record])

    planted = [run(e, 0.9 - 0.4 * e) for e in (0.0, 0.5, 1.0, 1.5)]
    points = skew_law_points(planted)
    assert points["global accuracy"] == ([0.0, 0.5, 1.0, 1.5], pytest.approx([0.9, 0.7, 0.5, 0.3]))
    fit = fit_line(*points["global accuracy"])
    assert fit is not None and fit.slope == pytest.approx(-0.4) and fit.r2 == pytest.approx(1.0)
    assert fit_line(*points["circuit bloat"]).slope == pytest.approx(1.0)
    assert skew_law_points([run(0.30, 0.5), run(0.31, 0.6), run(0.32, 0.7)]) == {}  # seeds of one skew: no law
    assert text_outside(fig_skew_law(points)) == []
    # A sweep's seeds: one setting each, its mean and spread drawn beside the runs.
    seeded = [run(0.1 * i + e, 0.9 - 0.4 * e, f"law-alpha={e}-seed={i}") for e in (0.0, 1.0) for i in (0, 1)]
    assert skew_law_groups(seeded) == ["law-alpha=0.0"] * 2 + ["law-alpha=1.0"] * 2
    figure = fig_skew_law(skew_law_points(seeded), skew_law_groups(seeded))
    bars = [c for c in figure.axes[0].containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == 2 and text_outside(figure) == []
    means = sorted(tuple(np.round(b.lines[0].get_xydata()[0], 6)) for b in bars)
    assert means == [(0.05, 0.9), (1.05, 0.5)]


def test_a_study_folder_of_sweeps_is_found_to_its_runs(tmp_path):
    from fedmi_flower.records.series import RunError, find_runs

    runs = [tmp_path / "skew" / "dirichlet" / f"law-alpha={a}-seed=0" for a in (0.1, 1.0)]
    runs.append(tmp_path / "skew" / "iid" / "law-seed=0")
    for run in runs:
        (run / "weights" / "round-1").mkdir(parents=True)
        (run / "config.toml").write_text("")
    (tmp_path / "skew" / "report" / "figures").mkdir(parents=True)  # a report beside the runs holds none
    assert find_runs([tmp_path / "skew"]) == sorted(runs)
    assert find_runs([runs[0]]) == [runs[0]]  # a run directory itself, not its insides
    with pytest.raises(RunError, match="holds none"):
        find_runs([tmp_path / "skew" / "report"])


def test_the_skew_sweep_runs_short_and_its_report_fits_the_law(tmp_path, mnist_root):
    """The bundled experiment with three of its five alphas (a line through three points has a slope and an
    interval; five cost the suite ten minutes) and the analysis steps the law does not read off."""
    from runs import REPO, fedmi, sets

    bundled = (REPO / "experiments" / "skew-law.toml").read_text()
    sweep = '"data.alpha" = [0.05, 0.1, 0.3, 1.0, 10.0]'
    assert sweep in bundled, "the bundled sweep changed: update this test's copy"
    experiment = tmp_path / "skew-law.toml"
    experiment.write_text(bundled.replace(sweep, '"data.alpha" = [0.05, 0.3, 10.0]'))
    out = tmp_path / "skew"
    short = ["rounds=2", "clients=3", "data.max_per_client=300", "discovery.steps=10", "data.eval_per_class=10"]
    unread = ["noise_floor", "random_control", "second_method", "ablations", "stitching", "cka"]
    unread += ["integrated_faithfulness"]
    short += [f"analysis.{step}=false" for step in unread]
    proc = fedmi("run", str(experiment), *sets(short), "--out", str(out), "--data-root", mnist_root, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fedmi: 3 runs in" in proc.stdout
    alphas = ("0.05", "0.3", "10.0")
    assert sorted(p.name for p in out.iterdir()) == [f"skew-law-alpha={a}" for a in alphas]
    report = fedmi("report", str(out))
    assert report.returncode == 0, report.stderr[-3000:]
    page = (out / "report" / "report.md").read_text()
    assert "## The skew law: each metric against label skew" in page
    law = page.split("## The skew law")[1].split("## Definitions")[0]
    assert "| global accuracy |" in law and " EMD (slope 95% CI [" in law and "R^2" in law
    assert (out / "report" / "figures" / "skew-law" / "skew_law.png").is_file()
