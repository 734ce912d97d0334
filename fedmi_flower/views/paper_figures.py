"""A study's figures in the paper's numbering: each ``[[figure]]`` of a study drawn from its runs.

A figure names the paper's number, the study experiment whose runs draw it, and which of the
package's plots it is (a per-run figure of :data:`~fedmi_flower.views.plots.RUN_FIGURES`, a circuit
graph of :data:`~fedmi_flower.views.plots.GRAPH_FIGURES`, or, for a sweep, a comparison of
:data:`~fedmi_flower.views.plots.COMPARE_FIGURES`). It is written as ``fig<NN>-<objective>.png``
(and ``.svg``), one per discovery objective the study ran the experiment with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from fedmi_flower.records.series import Run, comparison, setting_label
from fedmi_flower.views.graphs import graph_figures, paper_titles
from fedmi_flower.views.plots import (
    COMPARE_FIGURES,
    GRAPH_FIGURES,
    RUN_FIGURES,
    fig_compare_cross_eval,
    fig_compare_summary,
    save,
)

PLOTS = (*(name for name, _, _ in RUN_FIGURES), *GRAPH_FIGURES, *COMPARE_FIGURES)


@dataclass(frozen=True)
class PaperFigure:
    """One figure of the paper: its number, the experiment that draws it and the plot it is."""

    number: int
    experiment: str
    plot: str
    caption: str = ""

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "figure") -> PaperFigure:
        """From a study's ``[[figure]]`` table, with an error naming the key and the fix."""
        if set(table) - {"number", "experiment", "plot", "caption"} or not {"number", "experiment", "plot"} <= set(
            table
        ):
            raise ValueError(
                f"{where}: a [[figure]] has number, experiment, plot and optionally caption; got {dict(table)}"
            )
        if not isinstance(table["number"], int) or table["number"] < 1:
            raise ValueError(f"{where}: figure number {table['number']!r} must be a positive whole number")
        if table["plot"] not in PLOTS:
            raise ValueError(
                f"{where}: figure {table['number']}: plot {table['plot']!r} is not one of {', '.join(PLOTS)}"
            )
        return cls(int(table["number"]), str(table["experiment"]), str(table["plot"]), str(table.get("caption", "")))

    def draw(self, runs: Sequence[Run]) -> Figure:
        """The figure, from one run (a per-run plot) or from a sweep's runs (a comparison)."""
        if self.plot in COMPARE_FIGURES:
            setting, groups = comparison(runs)
            labels = [setting_label(g[0].config, [setting]) for g in groups]
            make = fig_compare_summary if self.plot == COMPARE_FIGURES[0] else fig_compare_cross_eval
            return make(groups, labels, setting)
        (run,) = runs[:1]
        if self.plot in GRAPH_FIGURES:
            chosen = None
            for name, figure, _ in graph_figures(run):
                if name == self.plot:
                    chosen = figure
                else:
                    plt.close(figure)
            if chosen is None:
                raise ValueError(f"figure {self.number}: the run draws no {self.plot}")
            return chosen
        return next(make for name, make, _ in RUN_FIGURES if name == self.plot)(run)

    def write(self, runs: Sequence[Run], out: Path, label: str) -> list[Path]:
        """Draw and save as ``out/fig<NN>-<label>.{png,svg}``, without run folder names in the titles."""
        with paper_titles():
            figure = self.draw(runs)
        return save(figure, out, f"fig{self.number:02d}-{label}")
