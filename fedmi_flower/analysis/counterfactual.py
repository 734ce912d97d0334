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

import numpy as np

from fedmi_flower.records.round_record import CrossEvaluation, Interference
from fedmi_flower.science.circuits import Circuit, CircuitScores, circuit_size
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
