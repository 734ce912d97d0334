"""Counterfactual aggregation: which client's update broke which circuit (issue 28).

The paper (section 3.2.1) describes FedAvg's "winner-take-all" by eye: the update
"aligns the global model with the circuit of one dominant client, temporarily rendering
the circuits from other clients non-functional". The IoU-based dominance of
:func:`fedmi_flower.science.metrics.dominance` says whose circuit the global circuit
*resembles*; this module asks what *caused* a collapse. The server holds every client's
update, so for a circuit that works on its own model and collapses on the global weights
it aggregates the round again with each other client left out (the same rule, no
retraining) and scores the circuit on that aggregate. A client whose absence makes the
circuit work again overwrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedmi_flower.records.round_record import CrossEvaluation, Interference
from fedmi_flower.science.circuits import Circuit, CircuitScores, circuit_size
from fedmi_flower.science.permutation_spec import WeightLayout
from fedmi_flower.science.verdicts import circuit_verdict

Reaggregate = Callable[[int], "list[np.ndarray] | None"]
"""The round's aggregation rule applied again without one client (by partition id); None where it cannot be."""

ScoreOn = Callable[["list[np.ndarray]", "Sequence[tuple[int, int, Circuit]]"], "Sequence[CircuitScores]"]
"""Scores ``(client, class, circuit)`` triples on the model with the given weights, in order."""


def collapsed_after_working(cross_eval: Mapping[int, Mapping[int, CrossEvaluation]]) -> list[tuple[int, int]]:
    """``(client, class)`` of every circuit that works on its own model and collapses on the global weights."""
    return sorted(
        (pid, cls)
        for pid, per in cross_eval.items()
        for cls, s in per.items()
        if s.local_verdict == "working" and s.verdict == "collapsed"
    )


def interference(
    cross_eval: Mapping[int, Mapping[int, CrossEvaluation]],
    circuits: Mapping[int, Mapping[int, Circuit]],
    aggregated: Sequence[int],
    reaggregate: Reaggregate,
    score_on: ScoreOn,
) -> dict[int, dict[int, Interference]]:
    """Leave each aggregated client out in turn and score every collapsed circuit on what the others give.

    Parameters
    ----------
    cross_eval : Mapping
        The round's cross-evaluation (client -> class -> scores on the global weights).
    circuits : Mapping
        Each client's circuits (client -> class -> circuit).
    aggregated : Sequence[int]
        The partitions whose updates the round aggregated: the candidates to leave out.
    reaggregate : Reaggregate
        The round's aggregation rule without one partition.
    score_on : ScoreOn
        Scores circuits on a model with the given weights.

    Returns
    -------
    dict
        Client -> class -> :class:`Interference`, for every collapsed circuit.
    """
    collapsed = collapsed_after_working(cross_eval)
    out: dict[int, dict[int, Interference]] = {}
    for pid, cls in collapsed:
        out.setdefault(pid, {})[cls] = Interference(sufficiency=cross_eval[pid][cls].sufficiency)
    if not collapsed:
        return out
    for left_out in sorted(aggregated):
        victims = [(pid, cls) for pid, cls in collapsed if pid != left_out]  # a client's own absence says nothing
        if not victims:
            continue
        weights = reaggregate(left_out)
        if weights is None:
            continue
        scores = score_on(weights, [(pid, cls, circuits[pid][cls]) for pid, cls in victims])
        for (pid, cls), s in zip(victims, scores):
            entry = out[pid][cls]
            entry.without[left_out] = s.sufficiency
            if circuit_verdict(circuit_size(circuits[pid][cls]), s.sufficiency, s.specificity) == "working":
                entry.restored_by.append(left_out)
    return out


def agreement_with_dominance(
    found: Mapping[int, Mapping[int, Interference]], dominance_winner: Mapping[int, int | None]
) -> float:
    """Share of the restored circuits whose strongest overwriter is the class's IoU-dominant client (NaN: none)."""
    restored = [(cls, entry.strongest) for per in found.values() for cls, entry in per.items() if entry.restored_by]
    if not restored:
        return float("nan")
    return sum(1 for cls, who in restored if dominance_winner.get(cls) == who) / len(restored)


SIDES = ("writes", "reads")
"""The two sides of a circuit's own parameters: those that make its channels (a producing tensor's
rows, its bias and norm entries) and those that read them (the next layer's input columns, a
classifier's blocks)."""


def circuit_parameter_mask(layout: WeightLayout, circuit: Circuit, side: str | None = None) -> dict[str, np.ndarray]:
    """Per weight tensor, the entries that produce or read the circuit's channels (its own parameters).

    Every axis the site's permutation group orders (the producing rows, the next layer's
    input columns, a classifier's channel-major blocks) is selected at the circuit's
    channels; an entry on both sides of two circuit sites is counted once. ``side``
    (one of :data:`SIDES`) keeps one side only: ``"writes"`` the first axes (what makes
    the channels), ``"reads"`` the later ones, less any entry that also writes.
    """
    if side is not None and side not in SIDES:
        raise ValueError(f"side {side!r} is not one of {SIDES}")
    if side == "reads":
        writes = circuit_parameter_mask(layout, circuit, "writes")
        reads = _select(layout, circuit, lambda axis: axis > 0)
        return {name: mask & ~writes[name] if name in writes else mask for name, mask in reads.items()}
    return _select(layout, circuit, (lambda axis: axis == 0) if side == "writes" else (lambda axis: True))


def _select(layout: WeightLayout, circuit: Circuit, keep_axis: Callable[[int], bool]) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for site, channels in circuit.items():
        group = layout.spec.site_groups.get(site)
        if group is None or not channels:
            continue
        n = layout.sizes[group]
        for name, axis in layout.spec.entries(group):
            if not keep_axis(axis):
                continue
            shape = layout.shapes[name]
            mask = masks.setdefault(name, np.zeros(shape, dtype=bool))
            blocks = mask.reshape(*shape[:axis], n, -1, *shape[axis + 1 :])  # a view: writes reach the mask
            index: list[Any] = [slice(None)] * blocks.ndim
            index[axis] = list(channels)
            blocks[tuple(index)] = True
    return masks


def _weighted_updates(
    layout: WeightLayout,
    start: Sequence[np.ndarray],
    local: Mapping[int, Sequence[np.ndarray]],
    counts: Mapping[int, int],
    masks: Mapping[str, np.ndarray],
) -> dict[int, np.ndarray]:
    """FedAvg's decomposition ``u_k = n_k / N (w_k - w_start)`` restricted to ``masks``, one flat vector a client."""
    total = sum(counts[p] for p in local)
    return {
        p: np.concatenate(
            [np.zeros(0)]
            + [
                (counts[p] / total) * (np.asarray(w[layout.index[name]], np.float64) - start[layout.index[name]])[mask]
                for name, mask in masks.items()
            ]
        )
        for p, w in local.items()
    }


def overwrite_shares(
    layout: WeightLayout,
    start: Sequence[np.ndarray],
    local: Mapping[int, Sequence[np.ndarray]],
    counts: Mapping[int, int],
    circuit: Circuit,
) -> dict[int, float]:
    """Each client's share of the round's change to a circuit's own parameters (issue 28, item 2).

    FedAvg's change of the global weights is the sum of the clients' weighted updates,
    ``u_k = n_k / N (w_k - w_start)``; restricted to the circuit's parameters
    (:func:`circuit_parameter_mask`), client k's share is the projection
    ``<u_k, sum u> / |sum u|^2``: the shares add up to 1, and a client whose update points
    against the change gets a negative one. For another aggregation rule it is FedAvg's
    decomposition of the same updates.
    """
    by_side = overwrite_by_side(layout, start, local, counts, circuit)
    return {p: sides["writes"] + sides["reads"] for p, sides in by_side.items()}


def overwrite_by_side(
    layout: WeightLayout,
    start: Sequence[np.ndarray],
    local: Mapping[int, Sequence[np.ndarray]],
    counts: Mapping[int, int],
    circuit: Circuit,
) -> dict[int, dict[str, float]]:
    """:func:`overwrite_shares` split by :data:`SIDES`: where on the circuit each client's share lands.

    Both sides are projected on the same total change (writes and reads together), so a
    client's two numbers add up to its :func:`overwrite_shares` and all of them to 1. A
    share on ``"writes"`` changed how the circuit's channels are made (on every input,
    its own class's included); one on ``"reads"`` changed what the next layer or the
    classifier does with them. NaN where the circuit's parameters did not change.
    """
    updates = {
        side: _weighted_updates(layout, start, local, counts, circuit_parameter_mask(layout, circuit, side))
        for side in SIDES
    }
    change = {side: sum(u.values()) for side, u in updates.items()}
    norm = sum(float(np.dot(c, c)) for c in change.values())
    if norm == 0.0:
        return {p: dict.fromkeys(SIDES, float("nan")) for p in sorted(local)}
    return {p: {side: float(np.dot(updates[side][p], change[side]) / norm) for side in SIDES} for p in sorted(local)}


def restorer_moved_most(found: Mapping[int, Mapping[int, Interference]]) -> float:
    """Share of the restored circuits whose strongest overwriter contributed the largest share of the change to
    the circuit's parameters (NaN when none was restored, or no shares were measured)."""
    judged = [
        entry.strongest == max(entry.overwrite_share, key=lambda k: entry.overwrite_share[k])
        for per in found.values()
        for entry in per.values()
        if entry.restored_by and entry.overwrite_share
    ]
    return sum(judged) / len(judged) if judged else float("nan")
