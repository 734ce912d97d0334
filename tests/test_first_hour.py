"""The first hour of a new user (issue 26, item 6, in part): readable circuit graphs, the smoke experiment."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from fedmi_flower.config import load_experiment
from fedmi_flower.views.graphs import EDGES_PER_LAYER, CircuitGraph, graph_figure, strongest_edges


def planted_graph() -> CircuitGraph:
    """30 edges into conv2 of strengths 1..30, 5 into conv3, 40 into the output (5 strong ones from conv3, 35 of
    strengths 10..44 from conv1); nodes for all of them."""
    strength = {}
    strength.update({(("conv1", i), ("conv2", 0)): float(i + 1) for i in range(30)})
    strength.update({(("conv2", 0), ("conv3", j)): 0.5 for j in range(5)})
    strength.update({(("conv3", j), ("output", 0)): 100.0 + j for j in range(5)})
    strength.update({(("conv1", i), ("output", 1)): 10.0 + i for i in range(35)})
    nodes = {n for edge in strength for n in edge}
    return CircuitGraph(
        frozenset(nodes),
        frozenset(strength),
        "planted",
        "planted weights",
        {"conv1": 40, "conv2": 4, "conv3": 8},
        strength=strength,
    )


def test_a_graph_draws_the_strongest_edges_into_each_layer_and_says_so():
    graph = planted_graph()
    kept = strongest_edges(graph.strength)
    into = lambda layer: {e for e in kept if e[1][0] == layer}
    assert {e[0][1] for e in into("conv2")} == set(range(5, 30))  # the 25 strongest of 30: strengths 6..30
    assert len(into("conv3")) == 5  # fewer than the cap: all of them
    assert len(into("output")) == EDGES_PER_LAYER
    assert {e[0] for e in into("output")} == {("conv3", j) for j in range(5)} | {("conv1", i) for i in range(15, 35)}
    figure = graph_figure(graph, None, "planted graph")
    title = figure._suptitle.get_text()
    assert f"the {len(kept)} strongest of {len(graph.strength)}" in title and "at most 25 into a layer" in title


def test_the_smoke_experiment_is_the_short_run_the_readme_promises():
    config = load_experiment("smoke")
    assert (config.clients, config.rounds, config.train.epochs) == (2, 1, 1)
    assert config.data.partition == "iid" and config.train.sparsity == 0.9
