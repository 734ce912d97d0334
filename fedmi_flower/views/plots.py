"""Every figure of the paper from a run directory (``fedmi plot``), and runs side by side (``fedmi plot --compare``).

Each ``fig_*`` function takes a :class:`~fedmi_flower.records.series.Run` (the comparison
figures take groups of runs) and returns a matplotlib figure; :func:`plot_run` and
:func:`plot_compare` save them as PNG and SVG. The values come from
:mod:`fedmi_flower.records.series`: an undefined value is NaN and shows as a gap (lines carry
markers so that a lone defined round stays visible; heatmap cells are grey), never
as zero. IoU and score axes run from 0 to 1.

Matplotlib runs on the Agg backend (files only, no display). No Flower imports here.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from fedmi_flower.records.round_record import (
    ALIGNED_SUMMARY,
    FLOOR_OF_VIEW,
    SUMMARY_FLOOR,
    GlobalEntry,
    RoundSummary,
    View,
)
from fedmi_flower.records.series import (
    OVERALL,
    Run,
    Series,
    accuracy_series,
    chance_series,
    class_pair_series,
    cross_eval_series,
    inter_client_series,
    layer_curve,
    local_global_series,
    nanmean_rows,
    stability_series,
    summary_series,
    view_floor_series,
)
from fedmi_flower.science.law import fit_line
from fedmi_flower.science.verdicts import COLLAPSE_THRESHOLD
from fedmi_flower.views.graphs import RUN_IN_TITLES, choose, graph_figures

FORMATS: tuple[str, ...] = ("png", "svg")
DPI = 200
"""Resolution of the PNG figures (print quality; the SVG beside each is resolution-free)."""
GREY = "#d9d9d9"
CURVE_COLUMNS = 5
"""Clients side by side in a cross-evaluation curve figure; more wrap into further rows."""
COLLAPSED = "#d62728"
"""Red: the collapse threshold and the frame of a cell whose circuit collapsed after working on its own model."""
NEVER_WORKED_COLOUR = "0.35"
NEVER_WORKED_HATCH = "///"
"""Grey hatching: a cell whose circuit never worked on its own model."""
NOT_SCORED_HATCH = "..."
"""Grey dots: a cell whose circuit has no scores from its own model (``analysis.evaluate_local = false``, or a
record whose client could not score it), so whether it worked there is unknown."""


def class_colour(cls: int) -> tuple[float, ...]:
    """One colour per class in every figure."""
    return plt.get_cmap("tab10")(int(cls) % 10)


def _line(ax: Axes, x: np.ndarray, y: np.ndarray, **style: Any) -> None:
    # Markers keep a defined value between two gaps visible; clip_on=False keeps 0 and 1 whole.
    ax.plot(x, y, marker=style.pop("marker", "o"), markersize=style.pop("markersize", 3.5), clip_on=False, **style)


def _round_axis(ax: Axes, rounds: Sequence[int] | np.ndarray) -> None:
    ax.set_xlabel("round")
    if len(rounds):
        ax.set_xlim(min(rounds) - 0.3, max(rounds) + 0.3)
    if len(rounds) <= 12:
        ax.set_xticks(list(rounds))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _unit_axis(ax: Axes, label: str) -> None:
    # A little room beyond 0 and 1: curves that sit at either end stay visible, not hidden in the frame.
    ax.set_ylim(-0.04, 1.06)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)


def _note_if_undefined(ax: Axes, curves: Sequence[np.ndarray], why: str) -> None:
    """Say so on the axes when no value is defined: an empty panel is not a plotting failure."""
    if not any(np.isfinite(c).any() for c in curves):
        ax.text(
            0.5,
            0.5,
            f"undefined in every round\n{why}",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=8,
            color="0.35",
            wrap=True,
        )


def _legend(
    fig: Figure,
    axes: Sequence[Axes],
    title: str | None = None,
    order: Callable[[str], Any] | None = None,
    fontsize: float = 8,
) -> None:
    """One legend for the figure, right of the panels: every label any of ``axes`` carries, once."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = sorted(handles, key=order) if order else list(handles)
    if labels:
        fig.legend(
            [handles[k] for k in labels],
            labels,
            title=title,
            loc="outside right center",
            fontsize=fontsize,
            title_fontsize=fontsize,
            frameon=False,
        )


def _figure(nrows: int, ncols: int, width: float = 3.2, height: float = 2.5) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width * ncols, height * nrows + 0.6),
        squeeze=False,
        sharex=True,
        layout="constrained",
        dpi=DPI,
    )
    return fig, axes


def _bottom_labels_only(axes: np.ndarray) -> None:
    """Rows share the round axis: only the bottom row names it."""
    for ax in axes[:-1].flat:
        ax.set_xlabel("")


def _suptitle(fig: Figure, text: str, fontsize: float = 10) -> None:
    """The figure's title, wrapped to the figure's width (a narrow figure would cut a long title at both sides)."""
    per_line = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))  # ~0.55 em per character
    fig.suptitle(textwrap.fill(text, per_line), fontsize=fontsize)


def _title(fig: Figure, run: Run, what: str) -> None:
    """A short title and the run's name (none under ``paper_titles``); the experiment's description belongs in the
    caption (``fedmi report``)."""
    _suptitle(fig, f"{what} ({run.name})" if RUN_IN_TITLES.get() else what)


# ---------------------------------------------------------------------- accuracy


def fig_global_accuracy(run: Run) -> Figure:
    """Global model accuracy over rounds, overall and per class, on the server's evaluation split."""
    acc = accuracy_series(run.records)
    rounds = run.rounds
    fig, axes = _figure(1, 2, width=4.2)
    left, right = axes[0]
    _line(left, rounds, acc.get(OVERALL, np.full(len(rounds), np.nan)), color="black", label="overall")
    left.set_title("overall", fontsize=9)
    for cls, values in acc.items():
        if cls != OVERALL:
            _line(right, rounds, values, color=class_colour(cls), label=f"class {cls}", markersize=3)
    right.set_title("per class", fontsize=9)
    for ax in (left, right):
        _round_axis(ax, rounds)
        _unit_axis(ax, "accuracy")
    _legend(fig, [right])
    _title(fig, run, "Global model accuracy")
    return fig


def fig_open_questions(run: Run) -> Figure:
    """Circuit bloat, induced polysemanticity and dominance over rounds (the paper's open questions, issue 16).

    Bloat per class: the global circuit's size over the clients' mean circuit size of the
    class (1: as large). Polysemanticity: of the channels some circuit uses, the share two
    or more classes use, in the local models (mean over clients) and in the global model.
    Dominance per class held by two or more clients: the normalised entropy of the
    holders' local-global IoUs (0: the global circuit follows one client; 1: all alike).
    """
    rounds = run.rounds
    fig, axes = _figure(1, 3, width=3.4)
    bloat_ax, poly_ax, dom_ax = axes[0]
    classes = sorted({c for r in run.records for c in (*r.global_model.bloat, *r.dominance)})
    bloat_curves, dom_curves = [], []
    for cls in classes:
        bloat = np.array([r.global_model.bloat.get(cls, np.nan) for r in run.records], dtype=float)
        entropy = np.array(
            [r.dominance[cls].entropy if cls in r.dominance else np.nan for r in run.records], dtype=float
        )
        bloat_curves.append(bloat)
        dom_curves.append(entropy)
        _line(bloat_ax, rounds, bloat, color=class_colour(cls), label=f"class {cls}", markersize=3)
        _line(dom_ax, rounds, entropy, color=class_colour(cls), markersize=3)
    bloat_ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    bloat_ax.set_title("circuit bloat (global / local size)", fontsize=9)
    bloat_ax.set_ylim(bottom=0)
    local = np.array([r.summary.polysemantic_local for r in run.records], dtype=float)
    global_ = np.array([r.summary.polysemantic_global for r in run.records], dtype=float)
    _line(poly_ax, rounds, local, color="black", label="local models (mean)")
    _line(poly_ax, rounds, global_, color="black", linestyle="--", label="global model")
    poly_ax.set_title("channels used by 2+ classes, share", fontsize=9)
    dom_ax.set_title("dominance: entropy over holders", fontsize=9)
    _note_if_undefined(bloat_ax, bloat_curves, "no class with local and global circuits")
    _note_if_undefined(poly_ax, [local, global_], "not in these records")
    _note_if_undefined(dom_ax, dom_curves, "no class held by two clients")
    for ax in (bloat_ax, poly_ax, dom_ax):
        _round_axis(ax, rounds)
    _unit_axis(poly_ax, "share")
    _unit_axis(dom_ax, "normalised entropy")
    _legend(fig, [bloat_ax, poly_ax])
    _title(fig, run, "Circuit bloat, induced polysemanticity and dominance")
    return fig


def fig_robustness(run: Run) -> Figure:
    """The conclusions under another method and the randomisation control (issue 27).

    Left: client circuits that collapse after working, per round, found by the learned
    gates and by attribution. Middle: how alike the two methods' circuits are (IoU, chance
    dotted) and how alike the clients' and global models' representations are (CKA, its
    unpaired-image chance dotted). Right: cascading randomisation of the final measured
    round: the trained circuits' sufficiency and the model's accuracy as layers are
    re-initialised from the top.
    """
    rounds = run.rounds
    fig, axes = plt.subplots(1, 3, figsize=(3.4 * 3, 3.1), squeeze=False, layout="constrained", dpi=DPI)
    collapse_ax, similar_ax, cascade_ax = axes[0]

    def curve(value: Callable[[RoundSummary], float]) -> np.ndarray:
        return np.array([value(r.summary) for r in run.records], dtype=float)

    measured = np.array([r.second_method is not None for r in run.records])
    learned = np.where(measured, curve(lambda s: s.cross_collapsed_after_working), np.nan)
    attributed = np.where(measured, curve(lambda s: s.attribution_collapsed_after_working), np.nan)
    _line(collapse_ax, rounds, learned, color="black", label="learned gates")
    _line(collapse_ax, rounds, attributed, color="tab:orange", linestyle="--", label="attribution")
    collapse_ax.set_title("collapsed after working", fontsize=9)
    collapse_ax.set_ylabel("client circuits")
    counts = np.concatenate([learned, attributed])
    top = float(np.nanmax(counts)) if np.isfinite(counts).any() else 0.0
    collapse_ax.set_ylim(0, max(1.0, top) * 1.1)  # counts: whole numbers from 0, however few
    collapse_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _note_if_undefined(collapse_ax, [attributed], "analysis.second_method off")
    method_iou, cka = curve(lambda s: s.method_client_iou), curve(lambda s: s.cka)
    for value, chance, colour, label in (
        (method_iou, curve(lambda s: s.method_client_iou_chance), "tab:orange", "IoU, attribution vs learned"),
        (cka, curve(lambda s: s.cka_chance), "tab:blue", "CKA, client vs global"),
    ):
        _line(similar_ax, rounds, value, color=colour, label=label)
        _line(similar_ax, rounds, chance, color=colour, linestyle=":", marker="")
    similar_ax.set_title("agreement (dotted: chance)", fontsize=9)
    _note_if_undefined(similar_ax, [method_iou, cka], "second_method and cka off")
    for ax in (collapse_ax, similar_ax):
        _round_axis(ax, rounds)
    _unit_axis(similar_ax, "similarity")
    last = next((r.cascade for r in reversed(run.records) if r.cascade is not None and r.cascade.stages), None)
    if last is not None:
        stages = np.arange(len(last.stages))
        cascade_ax.plot(stages, last.sufficiency, marker="o", color="black", label="circuits' sufficiency")
        cascade_ax.plot(stages, last.accuracy, marker="s", color="tab:green", linestyle="--", label="model accuracy")
        cascade_ax.set_xticks(stages, [f"+{s}" if i else s for i, s in enumerate(last.stages)], rotation=45, fontsize=7)
        cascade_ax.set_xlabel("re-initialised, from the top")
    else:
        cascade_ax.text(
            0.5,
            0.5,
            "not measured\n(analysis.cascade off)",
            transform=cascade_ax.transAxes,
            ha="center",
            va="center",
            fontsize=8,
            color="0.35",
        )
    cascade_ax.set_title("cascading randomisation (final round)", fontsize=9)
    _unit_axis(cascade_ax, "share")
    _legend(fig, [collapse_ax, similar_ax, cascade_ax])
    _title(fig, run, "Robustness: a second method, CKA, randomisation")
    return fig


# ---------------------------------------------------------------------- structural views


def _draw_scale(ax: Axes, rounds: np.ndarray, floor: np.ndarray | None, chance: np.ndarray | None) -> None:
    """The scale of an IoU panel: a grey band from the noise floor up to 1 (no change beyond
    discovery noise) and a dotted line at the chance level (random circuits of the same sizes)."""
    if floor is not None and np.isfinite(floor).any():
        ax.fill_between(
            rounds,
            floor,
            1.0,
            where=np.isfinite(floor),
            color="0.85",
            alpha=0.6,
            linewidth=0,
            label="noise floor to 1",
            zorder=0,
        )
    if chance is not None and np.isfinite(chance).any():
        ax.plot(rounds, chance, color="0.3", linestyle=":", linewidth=1.2, label="chance level", zorder=1)


def _view_scale(
    run: Run, view: View, layer: str, keys: Callable[[Any], bool] = lambda k: True
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Round-wise noise floor and chance level of ``view`` at ``layer``, each over the keys ``keys`` accepts.

    The floor is the mean of the floors measured for exactly those entries' classes
    (:func:`view_floor_series`): a client's panel draws its own classes' floor, or none.
    """
    n = len(run.records)
    floor = None
    if FLOOR_OF_VIEW.get(view) is not None:
        floors = view_floor_series(run.records, view)
        floor = nanmean_rows((v for k, v in floors.items() if k[-1] == layer and keys(k)), n)
    chance = chance_series(run.records, view)
    return floor, nanmean_rows((v for k, v in chance.items() if k[-1] == layer and keys(k)), n)


def _per_layer_figure(
    run: Run,
    series: Series,
    label: Callable[[Any], str],
    colour: Callable[[Any, int], Any],
    what: str,
    why: str,
    view: View | None = None,
) -> Figure:
    """One panel per layer (and the mean over layers), one line per key of ``series`` (its last element is the layer).

    ``view`` (a record key) adds the view's noise floor and chance level to every panel.
    """
    rounds = run.rounds
    layers = run.layers
    fig, axes = _figure(1, len(layers))
    lines = list(dict.fromkeys(k[:-1] for k in series))
    for ax, layer in zip(axes[0], layers):
        curves = [series[(*line, layer)] for line in lines if (*line, layer) in series]
        if view is not None:
            _draw_scale(ax, rounds, *_view_scale(run, view, layer))
        for i, line in enumerate(lines):
            if (*line, layer) in series:
                _line(ax, rounds, series[(*line, layer)], color=colour(line, i), label=label(line))
        _note_if_undefined(ax, curves, why)
        ax.set_title("mean over layers" if layer == "mean" else layer, fontsize=9)
        _round_axis(ax, rounds)
        _unit_axis(ax, "IoU" if layer == layers[0] else "")
    _legend(fig, list(axes.flat))
    _title(fig, run, what)
    return fig


def fig_inter_client(run: Run) -> Figure:
    """Inter-client consistency (RQ1, paper Fig. 1 and 6): mean pairwise IoU of the clients' circuits of each class."""
    return _per_layer_figure(
        run,
        inter_client_series(run.records),
        label=lambda k: f"class {k[0]}",
        colour=lambda k, i: class_colour(k[0]),
        what="Inter-client consistency: mean pairwise IoU of the circuits of a class across clients",
        why="(no class has two holders with a circuit,\nor all circuits are empty; see class-pair IoU)",
        view=View.INTER_CLIENT_IOU,
    )


def fig_class_pair(run: Run) -> Figure:
    """Class-pair IoU (paper Fig. 3 and 14): IoU of different classes' circuits on different clients.

    Under disjoint label skew no class has two holders; this is the inter-client view there.
    """
    series = class_pair_series(run.records)
    pairs = list(dict.fromkeys(k[0] for k in series))
    cmap = plt.get_cmap("tab20")
    why = "(all circuits empty)" if series else "(this run's records predate class-pair IoU)"
    return _per_layer_figure(
        run,
        series,
        label=lambda k: f"classes {k[0]}",
        colour=lambda k, i: cmap(pairs.index(k[0]) % 20),
        what="Class-pair IoU: circuits of different classes on different clients (inter-client view under label skew)",
        why=why,
        view=View.CLASS_PAIR_IOU,
    )


def _client_grid(run: Run, series: Series, what: str, why: str, view: View) -> Figure:
    """Rows: clients; columns: layers and their mean; one line per class; the view's noise floor and this
    client's chance level behind them.
    """
    rounds = run.rounds
    clients = sorted({k[0] for k in series}) or sorted({p for r in run.records for p in r.clients})[:1]
    layers = run.layers
    fig, axes = _figure(max(len(clients), 1), len(layers), width=3.0, height=2.1)
    for row, pid in zip(axes, clients):
        classes = sorted({k[1] for k in series if k[0] == pid})
        for ax, layer in zip(row, layers):
            curves = []

            def of_client(k: Any, pid: Any = pid) -> bool:
                return bool(k[0] == pid)

            _draw_scale(ax, rounds, *_view_scale(run, view, layer, keys=of_client))
            for cls in classes:
                values = series.get((pid, cls, layer))
                if values is not None:
                    curves.append(values)
                    _line(ax, rounds, values, color=class_colour(cls), label=f"class {cls}")
            _note_if_undefined(ax, curves, why)
            ax.set_title(f"client {pid}, {'mean over layers' if layer == 'mean' else layer}", fontsize=9)
            _round_axis(ax, rounds)
            _unit_axis(ax, "IoU" if layer == layers[0] else "")
    _bottom_labels_only(axes)
    _legend(
        fig, list(axes.flat), order=lambda label: (0, int(label.split()[-1])) if label.startswith("class") else (1, 0)
    )
    _title(fig, run, what)
    return fig


def fig_stability(run: Run) -> Figure:
    """Intra-client stability (RQ2, paper Fig. 10).

    IoU of each client's circuit with its circuit of the previous round it reported.
    """
    return _client_grid(
        run,
        stability_series(run.records),
        "Intra-client stability: IoU of a client's circuit in round t and in round t-1",
        "(needs two consecutive rounds;\nor all circuits empty)",
        View.STABILITY,
    )


def fig_local_global(run: Run) -> Figure:
    """Local-global preservation (paper Fig. 2, 5, 8, 15-18).

    IoU of each client's circuit and the global model's circuit of the class.
    """
    return _client_grid(
        run,
        local_global_series(run.records),
        "Local-global preservation: IoU of a client's circuit and the global model's circuit",
        "(all circuits empty)",
        View.LOCAL_GLOBAL_IOU,
    )


# ---------------------------------------------------------------------- cross-evaluation


def _cross_matrix(run: Run, score: str) -> tuple[list[Any], np.ndarray]:
    series = cross_eval_series(run.records, score)
    keys = list(series)
    matrix = np.vstack([series[k] for k in keys]) if keys else np.full((1, len(run.records)), np.nan)
    return keys, matrix


NOT_EVALUATED = "not evaluated"
NOT_SCORED = "not scored on its own model"
NEVER_WORKED = "never worked on its own model"
COLLAPSED_AFTER_WORKING = "collapsed after working on its own model"
WORKED = "worked on its own model"
"""What :func:`cross_eval_marks` says of a cross-evaluation cell."""


def cross_eval_marks(run: Run, threshold: float = COLLAPSE_THRESHOLD) -> tuple[list[Any], np.ndarray]:
    """What the cross-evaluation heatmap marks on each cell: client-class rows (as in its score matrices) x rounds.

    Each cell is one of :data:`COLLAPSED_AFTER_WORKING` (the circuit worked on its own
    model, ``local_verdict`` ``working``, and its sufficiency on the global weights is
    below ``threshold``: the red frame), :data:`NEVER_WORKED` (evaluated, but its
    ``local_verdict`` is not ``working``: empty, too weak or indiscriminate on its own
    model, or unscored there, which the round summary does not count as working either;
    hatched, whatever its score on the global weights), :data:`WORKED` (worked there and
    did not collapse) or :data:`NOT_EVALUATED`.

    A circuit that never worked cannot collapse: a low score on the global weights only
    repeats what its own model already did, and says nothing about aggregation. These are
    the round summary's ``cross_working_locally`` and ``cross_collapsed_after_working``,
    cell by cell.
    """
    keys, _ = _cross_matrix(run, "sufficiency")
    marks = np.full((max(1, len(keys)), len(run.records)), NOT_EVALUATED, dtype=object)
    for j, record in enumerate(run.records):
        for i, (pid, cls) in enumerate(keys):
            entry = record.cross_eval.get(pid, {}).get(cls)
            if entry is None:
                continue
            if entry.local_verdict in ("unscored", ""):  # no scores from its own model: unknown, not "never worked"
                marks[i, j] = NOT_SCORED
            elif entry.local_verdict != "working":
                marks[i, j] = NEVER_WORKED
            elif not math.isnan(entry.sufficiency) and entry.sufficiency < threshold:
                marks[i, j] = COLLAPSED_AFTER_WORKING
            else:
                marks[i, j] = WORKED
    return keys, marks


def _heatmap(ax: Axes, run: Run, score: str, annotate: bool = True, ylabels: bool = True) -> AxesImage:
    keys, matrix = _cross_matrix(run, score)
    marks = cross_eval_marks(run)[1]
    cmap = plt.get_cmap("viridis").with_extremes(bad=GREY)  # a missing value is grey, not a colour of the scale
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    rounds = run.rounds
    step = max(1, len(rounds) // 12)
    ax.set_xticks(range(0, len(rounds), step), [str(r) for r in rounds[::step]])
    ax.set_xlabel("round")
    ax.set_yticks(range(len(keys)), [f"client {p}, class {c}" for p, c in keys], fontsize=7)
    ax.tick_params(labelleft=ylabels)
    for i in range(1, len(keys)):  # a line between clients
        if keys[i][0] != keys[i - 1][0]:
            ax.axhline(i - 0.5, color="white", linewidth=1.5)
    # A circuit that never worked on its own model is hatched on both scores: a low score there is no collapse
    # (in the IID quickstart's round 1 such cells were framed red while the console said "preserved 8/8").
    for mark, hatch in ((NEVER_WORKED, NEVER_WORKED_HATCH), (NOT_SCORED, NOT_SCORED_HATCH)):
        for i, j in zip(*np.nonzero(marks == mark)):
            ax.add_patch(
                Rectangle(
                    (j - 0.5, i - 0.5), 1.0, 1.0, fill=False, hatch=hatch, edgecolor=NEVER_WORKED_COLOUR, linewidth=0
                )
            )
    if score == "sufficiency":  # a collapse after working gets a red frame: visible whatever the cell's colour
        for i, j in zip(*np.nonzero(marks == COLLAPSED_AFTER_WORKING)):
            ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor=COLLAPSED, linewidth=1.4))
    if annotate and matrix.size <= 240:
        for (i, j), v in np.ndenumerate(matrix):
            if math.isnan(v):
                ax.text(j, i, "–", ha="center", va="center", fontsize=6, color="0.4")
            else:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="black" if v > 0.6 else "white")
    if not keys:
        ax.text(
            0.5, 0.5, "no client circuit was evaluated", transform=ax.transAxes, ha="center", va="center", fontsize=8
        )
    return image


def interference_matrix(run: Run) -> tuple[list[int], list[str], np.ndarray, np.ndarray]:
    """Counterfactual aggregation over a run (issue 28): clients x collapsed circuits.

    Returns the clients (rows), a label per collapsed circuit (``r3 c0:7``: round 3, client 0's
    circuit of class 7), each client's share of the round's change to that circuit's own
    parameters (NaN where not measured), and where leaving the client out restores the circuit.
    """
    entries = [
        (record.round, owner, cls, entry)
        for record in run.records
        for owner, per in sorted(record.interference.items())
        for cls, entry in sorted(per.items())
    ]
    clients = sorted({k for *_, e in entries for k in (*e.overwrite_share, *e.without)} | {o for _, o, _, _ in entries})
    shares = np.full((len(clients), len(entries)), np.nan)
    restores = np.zeros((len(clients), len(entries)), dtype=bool)
    for j, (_, _, _, entry) in enumerate(entries):
        for i, k in enumerate(clients):
            shares[i, j] = entry.overwrite_share.get(k, np.nan)
            restores[i, j] = k in entry.restored_by
    labels = [f"r{t} c{owner}:{cls}" for t, owner, cls, _ in entries]
    return clients, labels, shares, restores


def fig_interference(run: Run) -> Figure:
    """Who broke which circuit (issue 28): clients x collapsed circuits, coloured by each client's share of the
    round's change to the circuit's own parameters; a black frame where leaving that client out restores it.

    Every column is a circuit that worked on its own model and collapsed on the global weights
    (``analysis.counterfactual``); a column without a frame has no single overwriter.
    """
    clients, labels, shares, restores = interference_matrix(run)
    width = 2.6 + 0.42 * max(len(labels), 4)
    fig, ax = plt.subplots(figsize=(min(width, 18.0), 1.9 + 0.35 * max(len(clients), 2)), layout="constrained", dpi=DPI)
    if not labels:
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "no collapsed circuit was analysed counterfactually\n"
            "(analysis.counterfactual off, or no circuit collapsed after working)",
            ha="center",
            va="center",
            fontsize=9,
            color="0.35",
            transform=ax.transAxes,
        )
    else:
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad=GREY)
        image = ax.imshow(
            np.ma.masked_invalid(shares), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
        )
        for i, j in zip(*np.nonzero(restores), strict=True):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.6))
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(clients)), [f"client {k}" for k in clients], fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8, label="share of the change to its parameters")
        fig.legend(
            handles=[
                Patch(fill=False, edgecolor="black", linewidth=1.6, label="left out, the circuit works again"),
                Patch(facecolor=GREY, label="not measured"),
            ],
            loc="outside lower center",
            ncol=2,
            fontsize=8,
            frameon=False,
        )
    _title(fig, run, "Interference: who moved each collapsed circuit's parameters, and whose absence restores it")
    return fig


def fig_cross_eval_heatmap(run: Run) -> Figure:
    """Cross-evaluation (paper Fig. 4, 7, 9): each local circuit on that round's global weights, client-class x round.

    Sufficiency (the paper's circuit accuracy) beside specificity (non-target images
    not called the target): a circuit that answers its class for everything scores
    sufficiency 1 and specificity 0. A red frame marks a circuit that collapsed after
    working: it worked on its own model and its sufficiency here is below 10%. Hatching
    marks a circuit that never worked on its own model (:func:`cross_eval_marks`): its
    score here, low or not, says nothing about what aggregation did to it; dots one that
    its own model never scored.
    """
    n_rows = max(1, len(_cross_matrix(run, "sufficiency")[0]))
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(2.2 + 0.45 * len(run.records) * 2 + 2, 1.6 + 0.28 * n_rows),
        squeeze=False,
        layout="constrained",
        sharey=True,
        dpi=DPI,
    )
    for ax, score in zip(axes[0], ("sufficiency", "specificity")):
        image = _heatmap(ax, run, score, ylabels=score == "sufficiency")
        ax.set_title(score, fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="score on the global weights")
    fig.legend(
        handles=[
            Patch(
                fill=False,
                edgecolor=COLLAPSED,
                linewidth=1.4,
                label=f"collapsed after working (sufficiency < {COLLAPSE_THRESHOLD:.0%})",
            ),
            Patch(fill=False, hatch=NEVER_WORKED_HATCH, edgecolor=NEVER_WORKED_COLOUR, linewidth=0, label=NEVER_WORKED),
            *(
                [
                    Patch(
                        fill=False, hatch=NOT_SCORED_HATCH, edgecolor=NEVER_WORKED_COLOUR, linewidth=0, label=NOT_SCORED
                    )
                ]
                if (cross_eval_marks(run)[1] == NOT_SCORED).any()
                else []
            ),
            Patch(facecolor=GREY, label=NOT_EVALUATED),
        ],
        loc="outside lower center",
        ncol=2,  # three entries side by side overrun a figure of few rounds
        fontsize=8,
        frameon=False,
    )
    _title(fig, run, "Cross-evaluation: local circuits on the global weights")
    return fig


def fig_cross_eval_curves(run: Run) -> Figure:
    """Cross-evaluation over rounds (paper Fig. 4, 7, 9): one column per client.

    Top row sufficiency, with the collapse threshold; bottom row specificity (the
    threshold does not apply to it). One colour per class.
    """
    scores = {score: cross_eval_series(run.records, score) for score in ("sufficiency", "specificity")}
    clients = sorted({p for p, _ in scores["sufficiency"]}) or [0]
    ncols = min(CURVE_COLUMNS, len(clients))  # more clients wrap into further pairs of rows
    fig, axes = _figure(2 * math.ceil(len(clients) / ncols), ncols, width=2.9, height=2.3)
    rounds = run.rounds
    used: set[tuple[int, int]] = set()
    for i, pid in enumerate(clients):
        block, col = divmod(i, ncols)
        for row, (score, series) in enumerate(scores.items()):
            used.add((2 * block + row, col))
            ax = axes[2 * block + row, col]
            for (p, cls), values in series.items():
                if p == pid:
                    _line(ax, rounds, values, color=class_colour(cls), label=f"class {cls}")
            if score == "sufficiency":
                ax.axhline(
                    COLLAPSE_THRESHOLD, color=COLLAPSED, linewidth=0.8, linestyle=":", label="collapse threshold"
                )
                ax.set_title(f"client {pid}", fontsize=9)
            _round_axis(ax, rounds)
            _unit_axis(ax, score if col == 0 else "")
            ax.xaxis.set_tick_params(labelbottom=row == 1)  # every pair of rows names its rounds
    for (r, c), ax in np.ndenumerate(axes):
        if (r, c) not in used:
            ax.set_visible(False)
    _bottom_labels_only(axes)
    _legend(fig, list(axes.flat), fontsize=7, order=lambda label: (label == "collapse threshold", label))
    _title(fig, run, "Cross-evaluation: each local circuit on the global weights")
    return fig


# ---------------------------------------------------------------------- comparison (paper Fig. 19)


def _aligned(runs: Sequence[Run], curve: Callable[[Run], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rounds present in any run, and a (runs x rounds) matrix of each run's curve (NaN where a run lacks the round)."""
    rounds = sorted({int(r) for run in runs for r in run.rounds})
    matrix = np.full((len(runs), len(rounds)), np.nan)
    for i, run in enumerate(runs):
        values = curve(run)
        for r, v in zip(run.rounds, values):
            matrix[i, rounds.index(int(r))] = v
    return np.array(rounds), matrix


def collapsed_share(run: Run) -> np.ndarray:
    """Per round, the share of evaluated local circuits whose sufficiency on the global weights is below the
    collapse threshold.
    """
    _, matrix = _cross_matrix(run, "sufficiency")
    defined = np.isfinite(matrix).sum(axis=0)
    collapsed = np.where(np.isfinite(matrix), matrix < COLLAPSE_THRESHOLD, False).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined > 0, collapsed / np.maximum(defined, 1), np.nan)


def degenerate_share(run: Run) -> np.ndarray:
    """Per round, the share of the global model's circuits that are degenerate (NaN: none found).

    What aggregation decides: whether the global model still recognises the classes its
    clients hold. (Local circuits are degenerate on their own model or not, whatever the
    strategy; the report counts them.)
    """
    return np.array([record.global_degenerate_share for record in run.records], dtype=float)


def summary_curve(name: str) -> Callable[[Run], np.ndarray]:
    """A round summary (a ``RoundSummary`` field) over rounds (NaN where a round lacks it)."""
    return lambda run: summary_series(run.records, name)


def _scale_names(view: View) -> tuple[str | None, str | None]:
    """The summary fields of a view's noise floor and chance level."""
    kind = FLOOR_OF_VIEW.get(view)
    return (SUMMARY_FLOOR[kind] if kind is not None else None), f"{view.value}_chance"


SUMMARY_CURVES: list[tuple[str, Callable[[Run], np.ndarray], tuple[str | None, str | None]]] = [
    (
        "global accuracy",
        lambda run: accuracy_series(run.records).get(OVERALL, np.full(len(run.records), np.nan)),
        (None, None),
    ),
    (
        "inter-client IoU (same class)",
        lambda run: layer_curve(inter_client_series(run.records), "mean", len(run.records)),
        _scale_names(View.INTER_CLIENT_IOU),
    ),
    (
        "class-pair IoU (different classes)",
        lambda run: layer_curve(class_pair_series(run.records), "mean", len(run.records)),
        _scale_names(View.CLASS_PAIR_IOU),
    ),
    (
        "local-global IoU",
        lambda run: layer_curve(local_global_series(run.records), "mean", len(run.records)),
        _scale_names(View.LOCAL_GLOBAL_IOU),
    ),
    (
        "intra-client stability",
        lambda run: layer_curve(stability_series(run.records), "mean", len(run.records)),
        _scale_names(View.STABILITY),
    ),
    (f"local circuits collapsed (suff. < {COLLAPSE_THRESHOLD:.0%}), share", collapsed_share, (None, None)),
    *(
        (
            f"{what}, aligned",
            summary_curve(ALIGNED_SUMMARY[view]),
            (_scale_names(view)[0], f"{ALIGNED_SUMMARY[view]}_chance"),
        )
        for what, view in (("inter-client IoU", View.INTER_CLIENT_IOU), ("local-global IoU", View.LOCAL_GLOBAL_IOU))
    ),
    ("global circuits degenerate, share", degenerate_share, (None, None)),
]
"""The per-round curves a comparison sets side by side (IoUs: mean over classes, clients and layers), with the
summary fields of their noise floor and chance level (drawn dashed and dotted in the group's colour)."""


GROUP_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
PANEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"
"""Panel labels of a comparison figure, row by row, so that a caption or a reader can point at one."""


def fig_compare_summary(groups: Sequence[Sequence[Run]], labels: Sequence[str], setting: str) -> Figure:
    """Runs that differ in one setting.

    Each summary curve per group, mean over the group's seeds with a min-max band.
    """
    fig, axes = _figure(3, 3, width=3.6, height=2.6)
    cmap = plt.get_cmap("viridis" if len(groups) > 4 else "tab10")
    for panel, (ax, (what, curve, (floor_key, chance_key))) in enumerate(zip(axes.flat, SUMMARY_CURVES)):
        curves = []
        for g, (runs, label) in enumerate(zip(groups, labels)):
            rounds, matrix = _aligned(runs, curve)
            colour = cmap(g / max(len(groups) - 1, 1)) if len(groups) > 4 else cmap(g)
            masked = np.ma.masked_invalid(matrix)  # a run lacking a value leaves it out; no run: a gap
            mean = masked.mean(axis=0).filled(np.nan)
            curves.append(mean)
            # Each group its own marker, and earlier groups drawn wider: a group whose curve coincides with an
            # earlier one's (matchedfedavg where no channel moves is FedAvg) leaves that one visible around it.
            _line(
                ax,
                rounds,
                mean,
                color=colour,
                marker=GROUP_MARKERS[g % len(GROUP_MARKERS)],
                markersize=max(6.5 - 1.2 * g, 3.0),
                linewidth=max(3.2 - 0.6 * g, 1.0),
                label=label + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""),
            )
            if len(runs) > 1:
                ax.fill_between(
                    rounds,
                    masked.min(axis=0).filled(np.nan),
                    masked.max(axis=0).filled(np.nan),
                    color=colour,
                    alpha=0.15,
                    linewidth=0,
                )
            for key, style, name in ((floor_key, "--", "noise floor"), (chance_key, ":", "chance level")):
                if key is not None:
                    level = np.ma.masked_invalid(_aligned(runs, summary_curve(key))[1]).mean(axis=0).filled(np.nan)
                    if np.isfinite(level).any():
                        ax.plot(
                            rounds,
                            level,
                            color=colour,
                            linestyle=style,
                            linewidth=1.0,
                            label=f"{name} (dashed)" if style == "--" else f"{name} (dotted)",
                        )
            _round_axis(ax, rounds)
        _note_if_undefined(ax, curves, "")
        ax.set_title(f"({PANEL_LETTERS[panel]}) {what}", fontsize=9)  # a caption can name each panel
        _unit_axis(ax, "")
    _bottom_labels_only(axes)
    _legend(fig, [axes[0][0]], title=setting)
    scale = "; dashed: noise floor, dotted: chance level"
    _suptitle(
        fig,
        f"Runs side by side by {setting}"
        + (
            " (lines: mean over seeds; bands: min-max" + scale + ")"
            if any(len(g) > 1 for g in groups)
            else " (" + scale[2:] + ")"
        ),
    )
    return fig


def fig_compare_cross_eval(groups: Sequence[Sequence[Run]], labels: Sequence[str], setting: str) -> Figure:
    """Cross-evaluation stability side by side (paper Fig. 19).

    Sufficiency heatmaps, one column per group, one row per seed.
    """
    nrows = max(len(g) for g in groups)
    heights = max(len(_cross_matrix(r, "sufficiency")[0]) for g in groups for r in g)
    max_rounds = max(len(r.records) for g in groups for r in g)
    fig, axes = plt.subplots(
        nrows,
        len(groups),
        # At least 3.4 inches high: the colorbar's label runs past a shorter figure (one seed of few circuits).
        figsize=(2.0 + (0.35 * max_rounds + 0.9) * len(groups), max(3.4, (1.0 + 0.22 * heights) * nrows + 0.8)),
        squeeze=False,
        layout="constrained",
        dpi=DPI,
    )
    image = None
    for col, (runs, label) in enumerate(zip(groups, labels)):
        for row in range(nrows):
            ax = axes[row][col]
            if row >= len(runs):
                ax.set_visible(False)
                continue
            run = runs[row]
            image = _heatmap(ax, run, "sufficiency", annotate=False, ylabels=col == 0)
            letter = PANEL_LETTERS[(row * len(groups) + col) % len(PANEL_LETTERS)]
            ax.set_title(
                f"({letter}) {label}" if setting == "seed" else f"({letter}) {label}\nseed {run.config.seed}",
                fontsize=8,
            )
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7, label="sufficiency on the global weights")
    _suptitle(
        fig,
        f"Cross-evaluation side by side by {setting}: local circuits on the global weights (sufficiency; red frame: "
        f"collapsed after working, below {COLLAPSE_THRESHOLD:.0%}; hatched: {NEVER_WORKED}; grey: not evaluated)",
    )
    return fig


def fig_skew_law(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]], groups: Sequence[str] | None = None
) -> Figure:
    """Each metric against label skew over a sweep's runs, every run a point, with its least-squares line.

    ``points`` maps a metric to its runs' mean label EMDs and values
    (:func:`fedmi_flower.views.report.skew_law_points`); the fit and its confidence
    interval are :func:`fedmi_flower.science.law.fit_line`'s, written on each panel.
    ``groups`` (one label per run, :func:`fedmi_flower.views.report.skew_law_groups`) adds
    each setting's mean over its seeds, with one standard deviation either way on both axes.
    """
    names = list(points)
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = _figure(nrows, ncols, width=3.3, height=2.7)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        xs, ys = (np.asarray(v, dtype=float) for v in points[name])
        ax.scatter(xs, ys, s=14, color="tab:blue", alpha=0.6, zorder=3, clip_on=False, label="a run")
        for i, group in enumerate(dict.fromkeys(groups or [])):
            member = np.array([g == group for g in groups or []]) & np.isfinite(ys) & np.isfinite(xs)
            if member.sum() < 2:
                continue
            ax.errorbar(
                xs[member].mean(),
                ys[member].mean(),
                xerr=xs[member].std(ddof=1),
                yerr=ys[member].std(ddof=1),
                fmt="D",
                color="tab:orange",
                markeredgecolor="black",
                markersize=5,
                capsize=2,
                zorder=4,
                label="a setting's mean ± sd" if i == 0 else None,
            )
        fit = fit_line(list(xs), list(ys))
        title = name
        if fit is not None:
            grid = np.linspace(np.nanmin(xs), np.nanmax(xs), 50)
            ax.plot(grid, fit.intercept + fit.slope * grid, color="black", linewidth=1.2)
            low, high = fit.slope_ci
            if fit.undefined_because is not None:  # a constant metric: no R^2 of 1, no interval of zero width
                title += f"\n{fit.intercept:.2f} at every EMD, {fit.r2_text('R²')}"
            else:
                title += (
                    f"\n{fit.intercept:.2f} {'-' if fit.slope < 0 else '+'} {abs(fit.slope):.2f} EMD, "
                    f"slope CI [{low:.2f}, {high:.2f}], {fit.r2_text('R²')}"
                )
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("mean label EMD")
        ax.grid(True, alpha=0.3)
    if groups:
        axes.flat[0].legend(fontsize=7, loc="lower left")
    _suptitle(fig, "The skew law: each run's final round against its label skew (line: least squares, 95% CI of slope)")
    return fig


def plot_skew_law(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    out: str | Path,
    formats: Sequence[str] = FORMATS,
    groups: Sequence[str] | None = None,
) -> list[tuple[Path, str]]:
    """Save :func:`fig_skew_law` as ``skew_law``; returns ``(path, caption)`` of every file."""
    caption = "The skew law: every metric against the runs' mean label EMD, with its least-squares line."
    if groups:
        caption += " Diamonds: each setting's mean over its seeds, bars one standard deviation."
    return [(p, caption) for p in save(fig_skew_law(points, groups), Path(out), "skew_law", formats)]


# ---------------------------------------------------------------------- saving


RUN_FIGURES: list[tuple[str, Callable[[Run], Figure], str]] = [
    ("global_accuracy", fig_global_accuracy, "Global model accuracy over rounds, overall and per class."),
    (
        View.INTER_CLIENT_IOU.value,
        fig_inter_client,
        "Inter-client consistency (RQ1, paper Fig. 1, 6): "
        "mean pairwise IoU of the clients' circuits of each class, per layer.",
    ),
    (
        View.CLASS_PAIR_IOU.value,
        fig_class_pair,
        "Class-pair IoU (paper Fig. 3, 14): circuits of different classes on different clients; "
        "the inter-client view under disjoint label skew.",
    ),
    (
        View.STABILITY.value,
        fig_stability,
        "Intra-client stability (RQ2, paper Fig. 10): "
        "IoU of each client's circuit with its previous one, per class and layer.",
    ),
    (
        View.LOCAL_GLOBAL_IOU.value,
        fig_local_global,
        "Local-global preservation (paper Fig. 2, 5, 8, 15-18): "
        "IoU of each client's circuit and the global circuit, per class and layer.",
    ),
    (
        "cross_eval_heatmap",
        fig_cross_eval_heatmap,
        "Cross-evaluation (paper Fig. 4, 7, 9): "
        "each local circuit on the global weights, sufficiency beside specificity "
        "(red frame: collapsed after working on its own model; hatched: never worked on its own model).",
    ),
    (
        "cross_eval_curves",
        fig_cross_eval_curves,
        "Cross-evaluation over rounds (paper Fig. 4, 7, 9): sufficiency (solid) and specificity (dashed).",
    ),
    (
        "open_questions",
        fig_open_questions,
        "The paper's open questions over rounds: circuit bloat per class, the share of channels serving two or "
        "more classes (local and global), and how much the global circuit follows one client (dominance entropy).",
    ),
    (
        "robustness",
        fig_robustness,
        "Robustness (issue 27): client circuits that collapse after working, found by the learned gates and by "
        "attribution; the two methods' IoU and the clients' CKA with the global model (dotted: chance); cascading "
        "randomisation of the final round's global model.",
    ),
]
"""Name, figure function and caption of every per-run figure; circuit graphs are added by :func:`plot_run`."""

INTERFERENCE_FIGURE = "collapse_overwriters"
INTERFERENCE_CAPTION = (
    "Interference (issue 28): clients x collapsed circuits, coloured by each client's share of the change to the "
    "circuit's own parameters; framed where leaving the client out restores the circuit."
)
GRAPH_FIGURES = ("circuit_graph", "overlay_two_clients", "overlay_rounds", "overlay_client_global")
COMPARE_FIGURES = ("compare_summary", "compare_cross_eval")


def _palette_png(path: Path) -> None:
    """Rewrite a PNG with a 256-colour palette: a chart has few colours, and its file shrinks about threefold."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    # Octree keeps the rare colours (an overlay's few unique edges); no dithering keeps lines clean.
    rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)


def save(fig: Figure, out: Path, name: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``out/name.<format>`` for each format and close it."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    # SVG text stays text (smaller, searchable, editable); no date, so reruns give the same file.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fedmi"}):
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            # Constrained layout already fits titles and legends: no second, "tight" drawing pass.
            fig.savefig(path, dpi="figure", metadata={"Date": None} if fmt == "svg" else None, facecolor="white")
            if fmt == "png":
                _palette_png(path)
            paths.append(path)
    plt.close(fig)
    return paths


def plot_run(
    run: Run,
    out: str | Path,
    formats: Sequence[str] = FORMATS,
    graph_class: int | None = None,
    graph_round: int | None = None,
) -> list[tuple[Path, str]]:
    """Every per-run figure of the paper, saved under ``out``; returns ``(path, caption)`` of every file.

    Circuit graphs (paper Fig. 11-13) show ``graph_class`` in ``graph_round``
    (default: chosen by :func:`fedmi_flower.views.graphs.choose`).
    """
    graph_round, graph_class = choose(run, graph_class, graph_round)  # a bad class or round fails before any drawing
    out = Path(out)
    made: list[tuple[Path, str]] = []
    for name, make, caption in RUN_FIGURES:
        made += [(p, caption) for p in save(make(run), out, name, formats)]
    if any(r.interference for r in run.records):  # only a run that analysed collapses counterfactually has one
        made += [(p, INTERFERENCE_CAPTION) for p in save(fig_interference(run), out, INTERFERENCE_FIGURE, formats)]
    for name, fig, caption in graph_figures(run, graph_class, graph_round):
        made += [(p, caption) for p in save(fig, out, name, formats)]
    return made


def plot_compare(
    groups: Sequence[Sequence[Run]],
    labels: Sequence[str],
    setting: str,
    out: str | Path,
    formats: Sequence[str] = FORMATS,
) -> list[tuple[Path, str]]:
    """The comparison figures of runs grouped by one setting (paper Fig. 19), saved under ``out``."""
    out = Path(out)
    seeds = " (seeds as rows)" if any(len(g) > 1 for g in groups) else ""
    made = [
        (p, f"Summary curves side by side by {setting}: mean over seeds, band min-max.")
        for p in save(fig_compare_summary(groups, labels, setting), out, "compare_summary", formats)
    ]
    made += [
        (p, f"Cross-evaluation stability side by side by {setting} (paper Fig. 19){seeds}.")
        for p in save(fig_compare_cross_eval(groups, labels, setting), out, "compare_cross_eval", formats)
    ]
    return made


# ---------------------------------------------------------------------- size against faithfulness


def fig_frontier(points: Sequence[Any], title: str, ranking: GlobalEntry | None = None) -> Figure:
    """Circuit size against faithfulness and specificity, one colour per objective, one marker per class.

    ``points`` carry ``objective``, ``l0_lambda``, ``cls``, ``size``, ``faithfulness`` and
    ``specificity`` (:class:`fedmi_flower.analysis.frontier.FrontierPoint`); the line joins
    each objective's mean over classes at each L0 coefficient, labelled with it. ``ranking``,
    the round's global entry where it recorded integrated faithfulness, adds the run's own curve
    (top channels of its learned scores at the fixed grid of sizes, mean over the classes whose curve is
    defined at every size) and their CPR.
    """
    fig, axes = _figure(1, 2, width=4.6, height=3.4)
    # The line and its CPR read the same classes: those whose curve is defined at every size (an area needs all).
    whole = {
        cls: curve
        for cls, curve in (ranking.faithfulness_curve if ranking is not None else {}).items()
        if np.all(np.isfinite(curve))
    }
    if ranking is not None and whole and ranking.curve_sizes:
        cpr = f"CPR {np.mean([ranking.cpr[c] for c in whole]):.2f}"
        if len(whole) < len(ranking.faithfulness_curve):
            cpr += f", {len(whole)} of {len(ranking.faithfulness_curve)} classes"
        axes[0][0].plot(
            ranking.curve_sizes,
            np.mean(list(whole.values()), axis=0),
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"the run's top-k ({cpr})",
        )
    objectives = list(dict.fromkeys(p.objective for p in points))
    classes = sorted({p.cls for p in points})
    markers = "os^DvP*X"
    for ax, score in zip(axes[0], ("faithfulness", "specificity")):
        for i, objective in enumerate(objectives):
            colour = plt.get_cmap("tab10")(i)
            mine = [p for p in points if p.objective == objective]
            for j, cls in enumerate(classes):
                own = [p for p in mine if p.cls == cls]
                ax.scatter(
                    [p.size for p in own],
                    [getattr(p, score) for p in own],
                    color=colour,
                    alpha=0.45,
                    s=18,
                    marker=markers[j % len(markers)],
                    label=f"class {cls}" if i == 0 else None,
                )
            lambdas = sorted({p.l0_lambda for p in mine})
            xs = [float(np.mean([p.size for p in mine if p.l0_lambda == lam])) for lam in lambdas]
            ys = [float(np.nanmean([getattr(p, score) for p in mine if p.l0_lambda == lam])) for lam in lambdas]
            ax.plot(xs, ys, color=colour, linewidth=1.6, marker="o", markersize=4, label=f"{objective} (mean)")
            for x, y, lam in zip(xs, ys, lambdas):
                ax.annotate(f"{lam:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6, color=colour)
        ax.set_xlabel("circuit size (channels)")
        ax.set_title(score, fontsize=9)
        _unit_axis(ax, score)
    _legend(fig, [axes[0][0]], title="objective and class (labels: L0 coefficient)")
    _suptitle(fig, title)
    return fig
