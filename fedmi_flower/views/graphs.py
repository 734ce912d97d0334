"""Circuit graphs (paper Fig. 11-13): a circuit as a layered node-link drawing, and overlays of two circuits.

A circuit's graph has the input channel, the circuit's channels of conv1..conv3 and
the output class as nodes, and as edges the nonzero weights between active channels
of consecutive layers (:func:`~fedmi_flower.science.circuits.circuit_edge_strengths`). Edges are read
from the weights the circuit was discovered on: a client's local weights of that
round, or the global weights of that round, which the run directory keeps under
``weights/round-<t>/``. Runs written before it kept them draw every circuit on the
final global weights; the figure says so.

An overlay draws two circuits in one picture: nodes and edges they share in one
colour, those of only one circuit in two others. Three overlays follow the paper:
two clients in one round (Fig. 11), one client in two rounds (Fig. 12), a client
against the global model (Fig. 13).

No Flower imports here.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch.nn as nn
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fedmi_flower.config import make_model
from fedmi_flower.records.results import WEIGHTS_FILE, RunDirectory
from fedmi_flower.records.round_record import RoundRecord
from fedmi_flower.records.series import Run, RunError
from fedmi_flower.science.circuits import Circuit, circuit_edge_strengths
from fedmi_flower.science.data import dataset_spec
from fedmi_flower.science.hook_points import capability, site_sizes
from fedmi_flower.science.model import set_weights

Node = tuple[str, int]
Edge = tuple[Node, Node]

GRAPH_DPI = 200
"""PNG resolution of graph figures (the SVG beside each has every detail)."""

SHARED, ONLY_A, ONLY_B = "#6a3d9a", "#1f78b4", "#e6550d"
"""Colours: shared by both circuits (purple), only the first (blue), only the second (orange)."""


@dataclass(frozen=True)
class CircuitGraph:
    """One circuit's nodes and edges, with what it is and which weights gave its edges."""

    nodes: frozenset[Node]
    edges: frozenset[Edge]
    label: str
    weights: str
    layer_sizes: Mapping[str, int]
    strength: Mapping[Edge, float] = field(default_factory=dict)
    """|weight| of every edge (summed over the kernel), for its line width."""
    edges_drawn: bool = True
    """False for a model without the ``circuit_edge_strengths`` capability: the graph shows channels only."""

    @property
    def channels(self) -> int:
        """Circuit channels (site nodes), the size the records report."""
        return sum(1 for layer, _ in self.nodes if layer in self.layer_sizes)

    @property
    def columns(self) -> tuple[str, ...]:
        """The graph's columns: the input, the model's circuit sites in order, the output."""
        return ("input", *self.layer_sizes, "output")


RUN_IN_TITLES: contextvars.ContextVar[bool] = contextvars.ContextVar("run_in_titles", default=True)
"""Whether figure titles name the run (its folder); off under :func:`paper_titles`."""


@contextlib.contextmanager
def paper_titles() -> Iterator[None]:
    """Figures drawn inside this block name no run in their titles (``fedmi plot --paper``: figures for a paper)."""
    token = RUN_IN_TITLES.set(False)
    try:
        yield
    finally:
        RUN_IN_TITLES.reset(token)


def of_run(run: Run) -> str:
    """`` of <run>`` for a title, or nothing for a paper's figure."""
    return f" of {run.name}" if RUN_IN_TITLES.get() else ""


def circuit_graph(
    model: nn.Module,
    circuit: Circuit,
    target_class: int,
    label: str,
    weights: str,
    in_channels: int | None = None,
) -> CircuitGraph:
    """The graph of ``circuit`` (of ``target_class``) on ``model``'s weights.

    Edges come from the model's ``circuit_edge_strengths`` capability; a model without it
    gives a graph of nodes only. The input column has a node per image channel
    (``in_channels``; when None, those the first site's edges start from).
    """
    sites = site_sizes(model)
    found = circuit_edge_strengths(model, circuit, target_class)
    strength: dict[Edge, float] = {}
    for source, (layer, edges) in zip(("input", *sites), found.items()):
        into = "output" if layer == "fc" else layer
        strength.update({((source, s), (into, d)): w for (s, d), w in edges.items()})
    inputs = range(in_channels) if in_channels is not None else {s for (src, s), _ in strength if src == "input"}
    nodes = {("input", int(i)) for i in inputs} | {("output", int(target_class))}
    nodes |= {(layer, int(ch)) for layer in sites for ch in circuit.get(layer, [])}
    return CircuitGraph(
        frozenset(nodes),
        frozenset(strength),
        label,
        weights,
        sites,
        strength=strength,
        edges_drawn=capability(model, "circuit_edge_strengths") is not None,
    )


# ---------------------------------------------------------------------- weights of a round


class _Weights:
    """Models of a run's rounds, loaded once each: a client's local or the global weights of a round."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.dir = RunDirectory(run.path)
        self.cache: dict[tuple[int, int | None], tuple[nn.Module, str]] = {}

    def model(self, server_round: int, client: int | None) -> tuple[nn.Module, str]:
        key = (server_round, client)
        if key not in self.cache:
            arrays = self.dir.read_round_weights(server_round, client)
            if arrays is not None:
                note = (
                    f"client {client}'s local weights of round {server_round}"
                    if client is not None
                    else f"the global weights of round {server_round}"
                )
            elif (self.run.path / WEIGHTS_FILE).exists():
                arrays, last = self.dir.read_weights()
                note = f"the final global weights (round {last}): this run kept no per-round weights"
            else:
                raise RunError(
                    f"{self.run.path} holds no weights ({WEIGHTS_FILE} is missing); "
                    "circuit graphs need them: rerun the experiment"
                )
            model = make_model(self.run.config)
            set_weights(model, arrays)
            self.cache[key] = (model, note)
        return self.cache[key]

    def graph(self, server_round: int, client: int | None, cls: int) -> CircuitGraph:
        record = _record(self.run, server_round)
        if client is None:
            circuit = record.global_model.circuits.get(cls, {})
            label = f"global model, class {cls}, round {server_round}"
        else:
            circuit = record.clients[client].circuits.get(cls, {})
            label = f"client {client}, class {cls}, round {server_round}"
        model, note = self.model(server_round, client)
        channels = dataset_spec(self.run.config.data.dataset).image_shape[0]
        return circuit_graph(model, circuit, cls, label, note, in_channels=channels)


def _record(run: Run, server_round: int) -> RoundRecord:
    for record in run.records:
        if record.round == server_round and record.analysed:
            return record
    analysed = [r.round for r in run.records if r.analysed]
    raise RunError(f"{run.path} has no analysed round {server_round}; choose one of {analysed}")


def _holders(record: RoundRecord, cls: int) -> list[int]:
    return sorted(p for p, c in record.clients.items() if cls in c.circuits)


def choose(run: Run, cls: int | None = None, server_round: int | None = None) -> tuple[int, int]:
    """The round and class the graphs show.

    By default the last analysed round and, among its classes, the first that two
    clients hold (else any), preferring a non-empty global circuit, then the most
    clients with a non-empty circuit of the class: the class with the most to draw.

    Raises
    ------
    RunError
        When the round or class is not in the run.
    """
    analysed = [r for r in run.records if r.analysed]
    record = _record(run, server_round) if server_round is not None else analysed[-1]
    classes = list(record.classes)
    if cls is not None:
        if cls not in classes:
            raise RunError(
                f"class {cls} was not analysed in round {record.round} of {run.path}; choose one of {classes}"
            )
        return record.round, cls
    if not classes:
        raise RunError(f"round {record.round} of {run.path} analysed no class; there is no circuit to draw")
    global_sizes = record.global_model.circuit_sizes

    def rank(c: int) -> tuple[bool, bool, int]:
        drawn = sum(1 for client in record.clients.values() if client.circuit_sizes.get(c))
        return (len(_holders(record, c)) < 2, not global_sizes.get(c), -drawn)

    return record.round, min(classes, key=rank)


# ---------------------------------------------------------------------- drawing


def _positions(nodes: set[Node], columns: Sequence[str]) -> dict[Node, tuple[float, float]]:
    pos = {}
    for x, column in enumerate(columns):
        members = sorted(ch for layer, ch in nodes if layer == column)
        for i, ch in enumerate(members):
            pos[(column, ch)] = (float(x), 1.0 - (i + 0.5) / len(members))
    return pos


EDGES_PER_LAYER = 25
"""A graph draws the strongest edges into each layer, at most this many (by |weight|): 700-900 edges are a hairball."""


def strongest_edges(strength: Mapping[Edge, float], per_layer: int = EDGES_PER_LAYER) -> set[Edge]:
    """The ``per_layer`` strongest edges into each destination column (ties broken by the edge, for a stable figure)."""
    by_layer: dict[str, list[Edge]] = {}
    for edge in strength:
        by_layer.setdefault(edge[1][0], []).append(edge)
    kept: set[Edge] = set()
    for edges in by_layer.values():
        kept.update(sorted(edges, key=lambda e: (-strength[e], e))[:per_layer])
    return kept


def draw(ax: Axes, a: CircuitGraph, b: CircuitGraph | None = None) -> tuple[int, int]:
    """Draw ``a`` alone, or ``a`` and ``b`` overlaid (shared, only ``a``, only ``b`` in three colours).

    Returns how many edges were drawn (:func:`strongest_edges`) and how many there are.
    """
    b_nodes = b.nodes if b is not None else frozenset()
    b_edges = b.edges if b is not None else frozenset()
    nodes = set(a.nodes | b_nodes)
    columns = a.columns
    sites = a.layer_sizes
    pos = _positions(nodes, columns)
    if b is None:
        groups = [(a.edges, a.nodes, SHARED)]
    else:
        groups = [
            (a.edges - b_edges, a.nodes - b_nodes, ONLY_A),
            (b_edges - a.edges, b_nodes - a.nodes, ONLY_B),
            (a.edges & b_edges, a.nodes & b_nodes, SHARED),
        ]
    # Line width follows |weight| (relative to the figure's strongest edge, each layer on its own scale, since a
    # conv3 -> output weight and a conv1 kernel are not comparable); shared and own edges are drawn alike, so that
    # an overlap of 90% reads as 90% purple.
    strength = {**b.strength, **a.strength} if b is not None else dict(a.strength)
    top: dict[str, float] = {}
    for (_, (layer, _)), value in strength.items():
        top[layer] = max(top.get(layer, 0.0), value)
    shown = strongest_edges(strength)
    for edges, _, colour in sorted(groups, key=lambda g: g[2] != SHARED):
        if edges := edges & shown:
            ordered = sorted(edges)
            widths = [0.25 + 2.0 * strength.get(e, 0.0) / (top.get(e[1][0]) or 1.0) for e in ordered]
            ax.add_collection(
                LineCollection(
                    [[pos[s], pos[d]] for s, d in ordered],
                    colors=colour,
                    linewidths=widths,
                    alpha=0.55,
                    zorder=1 if colour == SHARED else 2,
                )
            )
    counts = {column: sum(1 for layer, _ in nodes if layer == column) for column in columns}
    for group_nodes, colour in ((g[1], g[2]) for g in groups):
        if group_nodes:
            xy = np.array([pos[n] for n in sorted(group_nodes)])
            ax.scatter(
                xy[:, 0],
                xy[:, 1],
                s=30,
                color=colour,
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
            )
    for (column, ch), (x, y) in pos.items():
        if counts[column] <= 40 and column in sites:
            ax.text(x + 0.06, y, str(ch), fontsize=7, va="center", color="0.25", zorder=4)
    for x, column in enumerate(columns):
        if column in sites:
            size = a.layer_sizes.get(column, 0)
            head = f"{column}\n{counts[column]} of {size} channels"
        elif column == "input":
            head = "input"
        else:
            head = "output\n" + ", ".join(f"class {ch}" for layer, ch in sorted(nodes) if layer == "output")
        ax.text(x, 1.04, head, ha="center", va="bottom", fontsize=8)
        if column in sites and counts[column] == 0:
            ax.text(x, 0.5, "(none)", ha="center", va="center", fontsize=7, color="0.5")
    ax.set_xlim(-0.4, len(columns) - 0.6)
    ax.set_ylim(-0.03, 1.16)
    ax.axis("off")
    return len(shown), len(strength)


def _legend(ax: Axes, a: CircuitGraph, b: CircuitGraph | None) -> None:
    def entry(colour: str, text: str) -> Line2D:
        return Line2D([0], [0], color=colour, marker="o", linewidth=1.5, label=text)

    if b is None:
        handles = [entry(SHARED, f"{a.label}: {a.channels} channels, {len(a.edges)} edges")]
    else:
        both = CircuitGraph(a.nodes & b.nodes, a.edges & b.edges, "", "", {})
        handles = [
            entry(SHARED, f"shared: {both.channels} channels, {len(both.edges)} edges"),
            entry(ONLY_A, f"only {a.label}: {a.channels - both.channels} channels, {len(a.edges - b.edges)} edges"),
            entry(ONLY_B, f"only {b.label}: {b.channels - both.channels} channels, {len(b.edges - a.edges)} edges"),
        ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=1, fontsize=8, frameon=False)


def graph_figure(a: CircuitGraph, b: CircuitGraph | None, title: str) -> Figure:
    """One circuit, or two overlaid, with a legend counting channels and edges and a note on the weights used."""
    fig, ax = plt.subplots(figsize=(9, 6.2), layout="constrained", dpi=GRAPH_DPI)
    drawn, total = draw(ax, a, b)
    _legend(ax, a, b)
    notes = {a.weights} | ({b.weights} if b is not None else set())
    if a.edges_drawn:
        which = f"the {drawn} strongest of {total}" if drawn < total else f"all {total}"
        subtitle = (
            f"edges: {which} nonzero weights between circuit channels (at most {EDGES_PER_LAYER} into a layer)\n"
            "in " + "; ".join(sorted(notes))
        )
    else:
        subtitle = "channels only: the model declares no circuit edges (docs/your-own-model.md)"
    fig.suptitle(f"{title}\n{subtitle}", fontsize=9)
    return fig


def _message_figure(title: str, message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 2.5), layout="constrained", dpi=GRAPH_DPI)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=9, wrap=True)
    fig.suptitle(title, fontsize=9)
    return fig


def graph_figures(
    run: Run, cls: int | None = None, server_round: int | None = None
) -> Iterator[tuple[str, Figure, str]]:
    """The four circuit-graph figures of a run: ``(name, figure, caption)``.

    ``circuit_graph``: the global model's circuit of the class; ``overlay_two_clients``
    (Fig. 11): two holders of the class (two clients' different classes when no class
    has two holders); ``overlay_rounds`` (Fig. 12): a client's circuit in its previous
    round and in this one; ``overlay_client_global`` (Fig. 13): a client's circuit and
    the global model's.
    """
    server_round, cls = choose(run, cls, server_round)
    record = _record(run, server_round)
    weights = _Weights(run)
    holders = _holders(record, cls)
    clients = sorted(p for p, c in record.clients.items() if c.circuits)
    where = f"round {server_round}{of_run(run)}"

    global_graph = weights.graph(server_round, None, cls)
    yield (
        "circuit_graph",
        graph_figure(global_graph, None, f"Circuit of class {cls} in the global model, {where}"),
        f"Circuit graph: the global model's circuit of class {cls}, {where}.",
    )

    title = "Two clients in one round (paper Fig. 11)"
    if len(holders) >= 2:
        a, b = weights.graph(server_round, holders[0], cls), weights.graph(server_round, holders[1], cls)
        fig = graph_figure(a, b, f"{title}: class {cls}, {where}")
    elif len(clients) >= 2:
        first = holders[0] if holders else clients[0]
        second = next(p for p in clients if p != first)
        sizes = record.clients[second].circuit_sizes
        cls_a = cls if holders else min(record.clients[first].circuits)
        cls_b = max(sorted(record.clients[second].circuits), key=lambda c: sizes.get(c, 0))
        a, b = weights.graph(server_round, first, cls_a), weights.graph(server_round, second, cls_b)
        fig = graph_figure(a, b, f"{title}: no class has two holders, so different classes, {where}")
    else:
        fig = _message_figure(title, f"only {len(clients)} client reported circuits in {where}")
    yield (
        "overlay_two_clients",
        fig,
        "Overlay of two clients' circuits in one round (paper Fig. 11): "
        "shared in purple, each client's own in blue and orange.",
    )

    title = "One client in two rounds (paper Fig. 12)"
    client = holders[0] if holders else None
    previous = [
        r.round
        for r in run.records
        if r.round < server_round
        and r.analysed
        and client is not None
        and client in r.clients
        and cls in r.clients[client].circuits
    ]
    if client is not None and previous:
        a, b = weights.graph(previous[-1], client, cls), weights.graph(server_round, client, cls)
        fig = graph_figure(
            a, b, f"{title}: client {client}, class {cls}, rounds {previous[-1]} and {server_round}{of_run(run)}"
        )
    else:
        fig = _message_figure(
            title,
            f"no client has a circuit of class {cls} in a round before {server_round}"
            if client is not None
            else f"no client holds class {cls}",
        )
    yield (
        "overlay_rounds",
        fig,
        "Overlay of one client's circuit in two consecutive rounds it reported (paper Fig. 12).",
    )

    title = "A client against the global model (paper Fig. 13)"
    if client is not None:
        fig = graph_figure(weights.graph(server_round, client, cls), global_graph, f"{title}: class {cls}, {where}")
    else:
        fig = _message_figure(title, f"no client holds class {cls} in {where}")
    yield (
        "overlay_client_global",
        fig,
        "Overlay of a client's local circuit and the global model's circuit of the same class (paper Fig. 13).",
    )
