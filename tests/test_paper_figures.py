"""The paper's figures by number, drawn from real runs: a per-run plot, a circuit graph, a comparison of runs."""

from __future__ import annotations

import pytest

from fedmi_flower.records.series import load_run
from fedmi_flower.views.paper_figures import PaperFigure


def test_a_per_run_figure_and_a_circuit_graph_by_the_papers_number(iid_run, tmp_path):
    run = load_run(iid_run)
    made = PaperFigure(2, "iid", "local_global_iou").write([run], tmp_path, "faithful")
    made += PaperFigure(11, "iid", "overlay_two_clients").write([run], tmp_path, "faithful")
    assert sorted(p.name for p in made) == [
        "fig02-faithful.png",
        "fig02-faithful.svg",
        "fig11-faithful.png",
        "fig11-faithful.svg",
    ]
    assert all(p.stat().st_size > 1000 for p in made)


def test_a_comparison_figure_from_several_runs(noniid_runs, tmp_path):
    runs = [load_run(p) for p in noniid_runs]
    made = PaperFigure(19, "sparsity-ablation", "compare_cross_eval").write(runs, tmp_path, "paper")
    assert [p.name for p in made] == ["fig19-paper.png", "fig19-paper.svg"]


@pytest.mark.parametrize(
    "table,message",
    [
        ({"number": 0, "experiment": "iid", "plot": "stability"}, "positive whole number"),
        ({"number": 3, "experiment": "iid"}, "has number, experiment, plot"),
        ({"number": 3, "experiment": "iid", "plot": "stability", "colour": "red"}, "has number, experiment, plot"),
    ],
)
def test_a_malformed_figure_names_the_fix(table, message):
    with pytest.raises(ValueError, match=message):
        PaperFigure.from_table(table)
