"""Issue 24, items 6b, 7 and 8b: what a reader sees of a constant metric's line, of collapse, and of ``k/n clients``.

Each test plants records or a round by hand (no MNIST, no Ray) and checks the returned
numbers and figure objects, not pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from fakes import ROUND1, Proxy, fit_res, make_strategy
from flwr.common import Code, GetPropertiesRes, Status, ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle
from planted import planted_model
from runs import rounds_json

from fedmi_flower.config import ExperimentConfig
from fedmi_flower.records.round_record import RoundRecord
from fedmi_flower.records.series import Run
from fedmi_flower.science.law import fit_line
from fedmi_flower.science.model import get_weights

# ---------------------------------------------------------------------- 6b: a constant metric has no R^2


def test_fit_line_constant_metric_no_variation():
    from fedmi_flower.views.plots import fig_skew_law

    emd = [0.0, 0.4, 0.8, 1.2, 1.6]
    for constant in ([0.3] * 5, [0.1 + 0.2, 0.3, 0.3, 0.3, 0.3]):  # the second differs from 0.3 in the last bit
        fit = fit_line(emd, constant)
        assert fit is not None and fit.n == 5
        assert math.isnan(fit.r2) and fit.undefined_because == "no variation"  # before: R^2 1.00
        assert all(math.isnan(v) for v in (*fit.slope_ci, *fit.intercept_ci))  # before: [0.00, 0.00]
        assert fit.slope == 0.0 and abs(fit.intercept - 0.3) < 1e-12
        text = fit.describe()
        assert "no variation" in text and "1.00" not in text and "CI" not in text, text

    # The skew-law figure writes the same on its panel.
    fig = fig_skew_law({"global accuracy": (emd, [0.9] * 5)})
    try:
        title = fig.axes[0].get_title()
    finally:
        plt.close(fig)
    assert "no variation" in title and "R² 1.00" not in title, title

    # A metric that varies keeps its R^2 and intervals; constant x is still no line at all.
    fit = fit_line(emd, [0.9 - 0.3 * x + e for x, e in zip(emd, [0.01, -0.02, 0.0, 0.02, -0.01])])
    assert fit is not None and fit.undefined_because is None and 0.9 < fit.r2 < 1.0
    assert "no variation" not in fit.describe() and f"R^2 {fit.r2:.2f}" in fit.describe()
    assert fit_line([0.5] * 4, [0.1, 0.2, 0.3, 0.4]) is None


# ---------------------------------------------------------------------- 7: collapse means collapsed after working


def _entry(local: str, sufficiency: float, verdict: str) -> dict:
    return {
        "sufficiency": sufficiency,
        "specificity": 0.9,
        "necessity": 0.5,
        "verdict": verdict,
        "local_verdict": local,
    }


PLANTED_CROSS = {
    # Round 1: client 0's class-2 circuit and client 1's class-2 circuit never worked on their own model and score
    # below 10% on the global weights (as in the IID quickstart's round 1); client 0's class-3 circuit worked
    # there and collapsed; client 1's class-3 circuit is preserved.
    1: {
        "0": {"2": _entry("weakened", 0.02, "collapsed"), "3": _entry("working", 0.05, "collapsed")},
        "1": {"2": _entry("indiscriminate", 0.0, "collapsed"), "3": _entry("working", 0.9, "working")},
    },
    # Round 2: client 0's class-2 circuit now works and is preserved; its class-3 circuit collapses again after
    # working (it never recovers); client 1's class-2 circuit is empty on its own model.
    2: {
        "0": {"2": _entry("working", 0.8, "working"), "3": _entry("working", 0.03, "collapsed")},
        "1": {"2": _entry("empty", 0.0, "empty"), "3": _entry("working", 0.95, "working")},
    },
}
"""Rows in the heatmap's order: (0, 2), (0, 3), (1, 2), (1, 3); columns: rounds 1 and 2."""
ROWS = [(0, 2), (0, 3), (1, 2), (1, 3)]
NEVER_WORKED_CELLS = {(0, 0), (2, 0), (2, 1)}
COLLAPSED_AFTER_WORKING_CELLS = {(1, 0), (1, 1)}


def _planted_run(tmp_path: Path) -> Run:
    records = [
        RoundRecord.from_json({"schema": 2, "round": t, "cross_eval": cross}) for t, cross in PLANTED_CROSS.items()
    ]
    return Run(tmp_path / "planted", ExperimentConfig(), records)


def _cells(ax, keep) -> set[tuple[int, int]]:
    """(row, column) of every rectangle on ``ax`` that ``keep`` accepts (cells are centred on integer positions)."""
    return {
        (round(p.get_y() + p.get_height() / 2), round(p.get_x() + p.get_width() / 2))
        for p in ax.patches
        if isinstance(p, Rectangle) and keep(p)
    }


def test_collapse_means_after_working_heatmap(tmp_path):
    from fedmi_flower.views.plots import COLLAPSED, fig_cross_eval_heatmap

    run = _planted_run(tmp_path)
    fig = fig_cross_eval_heatmap(run)
    try:
        sufficiency, specificity = fig.axes[0], fig.axes[1]
        assert sufficiency.get_title() == "sufficiency" and specificity.get_title() == "specificity"
        red = _cells(sufficiency, lambda p: p.get_edgecolor() == to_rgba(COLLAPSED) and not p.get_hatch())
        hatched = _cells(sufficiency, lambda p: bool(p.get_hatch()))
        legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    finally:
        plt.close(fig)
    # Only circuits that worked on their own model and fell below 10% here are framed red (before: every cell
    # below 10%, the never-working ones of round 1 included).
    assert red == COLLAPSED_AFTER_WORKING_CELLS, red
    # Circuits that never worked on their own model are marked apart, whatever their score here.
    assert hatched == NEVER_WORKED_CELLS, hatched
    assert any("never worked on its own model" in t for t in legend), legend
    assert any("collapsed after working" in t for t in legend), legend
    assert not any(t.startswith("collapsed (") for t in legend), legend

    from fedmi_flower.views.plots import COLLAPSED_AFTER_WORKING, NEVER_WORKED, WORKED, cross_eval_marks

    keys, marks = cross_eval_marks(run)
    assert keys == ROWS
    expected = np.full((4, 2), WORKED, dtype=object)
    for cell in NEVER_WORKED_CELLS:
        expected[cell] = NEVER_WORKED
    for cell in COLLAPSED_AFTER_WORKING_CELLS:
        expected[cell] = COLLAPSED_AFTER_WORKING
    assert (marks == expected).all(), marks


def test_collapse_means_after_working_report(tmp_path):
    from fedmi_flower.views.report import collapse_numbers, format_value, rq_table

    records = _planted_run(tmp_path).records
    table = [(key, value) for key, value in rq_table(records).items() if key[0].startswith("Cross-evaluation")]
    (first_key, first), *rest = table
    # The report leads with the after-working rate: 2 collapses of 5 client-class-rounds working on their own
    # model (before: the sufficiency-only rate, 5 of 8 evaluated, first and called "collapse rate").
    assert "collapse rate" in first_key[1] and "after working" in first_key[1], first_key
    assert first == 2 / 5 and format_value(first_key, first) == "0.400"
    rows = {key[1]: value for key, value in table}
    assert rows["working on their own model"] == 5 and rows["collapsed after working on their own model"] == 2
    assert rows["preserved (working on the global weights too)"] == 3 and rows["never recovered"] == 1
    # Every row that says "collapse" means collapsed after working; the paper's sufficiency-only count is kept
    # under a name that says what it counts.
    for label in rows:
        assert "collaps" not in label or "after working" in label, label
    paper = {label: v for label, v in rows.items() if "whether or not the circuit worked before" in label}
    assert sorted(paper.values()) == [5 / 8, 5.0], paper
    assert collapse_numbers(records) == dict(table)  # the page's numbers are collapse_numbers', in its order


# ---------------------------------------------------------------------- 8b: k/n clients counts every sampled client


class Node(Proxy):
    """A connected node that tells its partition id when asked (sampling asks every node once)."""

    def __init__(self, cid: str, partition_id: int) -> None:
        super().__init__(cid)
        self.partition_id = partition_id

    def get_properties(self, ins, timeout, group_id):
        return GetPropertiesRes(Status(Code.OK, ""), {"partition_id": self.partition_id})


def test_sampled_counts_every_sampled_client(tmp_path):
    strategy, run_dir = make_strategy(tmp_path, steps=5)
    manager = SimpleClientManager()
    for pid in range(3):
        manager.register(Node(f"node-{pid}", pid))
    weights = ndarrays_to_parameters(get_weights(planted_model()))

    # Round 1: all three are sampled; client 1 neither answers nor fails (silent).
    assert len(strategy.configure_fit(1, weights, manager)) == 3
    strategy.aggregate_fit(1, [fit_res(0, ROUND1[0]), fit_res(2, ROUND1[2])], [])
    # Round 2: client 1's failure comes without its client, as Flower reports a lost node: it is also the one
    # silent client, and counts once.
    assert len(strategy.configure_fit(2, weights, manager)) == 3
    strategy.aggregate_fit(2, [fit_res(0, ROUND1[0]), fit_res(2, ROUND1[2])], [RuntimeError("node-1 was lost")])

    first, second = rounds_json(run_dir)
    assert [s["partition_id"] for s in first["silent_clients"]] == [1]
    assert sorted(first["clients"]) == ["0", "2"] and first["sampled"] == 3  # before: 2, "2/2 clients"
    assert [s["partition_id"] for s in second["silent_clients"]] == [1] and len(second["failures"]) == 1
    assert second["sampled"] == 3  # not 4: the lost node is counted once


def test_collapse_means_after_working_a_circuit_its_own_model_never_scored_is_marked_apart(tmp_path):
    """Without local scores (``analysis.evaluate_local = false``) whether a circuit worked is unknown: not "never"."""
    from fedmi_flower.views.plots import NEVER_WORKED, NOT_SCORED, cross_eval_marks, fig_cross_eval_heatmap
    from fedmi_flower.views.report import collapse_numbers

    cross = {1: {"0": {"2": _entry("unscored", 0.02, "collapsed"), "3": _entry("weakened", 0.5, "weakened")}}}
    records = [RoundRecord.from_json({"schema": 3, "round": t, "cross_eval": c}) for t, c in cross.items()]
    run = Run(tmp_path / "unscored", ExperimentConfig(), records)
    keys, marks = cross_eval_marks(run)
    assert keys == [(0, 2), (0, 3)] and list(marks[:, 0]) == [NOT_SCORED, NEVER_WORKED]
    fig = fig_cross_eval_heatmap(run)
    try:
        legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
        dotted = _cells(fig.axes[0], lambda p: p.get_hatch() == "...")
    finally:
        plt.close(fig)
    assert NOT_SCORED in legend and dotted == {(0, 0)}
    numbers = {row: v for (_, row, _), v in collapse_numbers(records).items()}
    assert numbers["not scored on their own model"] == 1 and numbers["working on their own model"] == 0
