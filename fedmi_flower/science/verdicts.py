"""What a circuit's scores say about it: the verdicts every record, report and figure use.

Sufficiency alone cannot judge a circuit: an empty circuit, or one that answers its
class for every input, reaches sufficiency 1.0 (docs/faithful-circuits.md). So a
verdict reads the circuit's size and specificity too:

- ``empty``: no channel; nothing to preserve or lose.
- ``collapsed``: sufficiency below :data:`COLLAPSE_THRESHOLD`; the circuit no longer
  answers its class (paper section 3.2.1, "plummet to 0%").
- ``indiscriminate``: specificity below :data:`WORKING_THRESHOLD`; it calls most images
  of other classes its class, so its sufficiency says nothing.
- ``weakened``: sufficiency between the two thresholds.
- ``working``: sufficiency and specificity at least :data:`WORKING_THRESHOLD`.

A local circuit is **preserved** by aggregation when it was working on its own model
and still is on the global weights; it **collapses** when it was working there and is
``collapsed`` here. Circuits that never worked are counted apart, never as preserved.

Apart from the verdict, a circuit is **degenerate** when its numbers measure an
artefact, not a mechanism (:func:`degenerate_reason`): it is empty; the model itself
does not recognise the class (its own sufficiency or specificity for the class is below
:data:`WORKING_THRESHOLD`: it misses the class, or calls everything the class, as a
model that was never trained does), so no circuit of it can mean anything; or it
answers its class for (almost) every input, specificity below
:data:`WORKING_THRESHOLD`, where the model's own specificity is at least
:data:`MODEL_SPECIFIC` (always-target); or, on the model it was found on, it (almost)
never answers its class, sufficiency below :data:`COLLAPSE_THRESHOLD`, where the model's
own sufficiency is at least :data:`WORKING_THRESHOLD` (never-target: discovery failed). On
other weights (cross-evaluation) a circuit that stops answering its class has
collapsed, the effect under study, not an artefact. IoUs are also reported over the
circuits that are not degenerate.
"""

from __future__ import annotations

import math

COLLAPSE_THRESHOLD = 0.1
"""A circuit below this sufficiency counts as collapsed."""
WORKING_THRESHOLD = 0.5
"""Sufficiency and specificity a working circuit reaches."""
VERDICTS = ("empty", "collapsed", "indiscriminate", "weakened", "working", "unscored")
MODEL_SPECIFIC = 0.9
"""The model's own specificity above which a circuit below :data:`WORKING_THRESHOLD` is always-target."""
EMPTY, UNRECOGNISED, ALWAYS_TARGET, NEVER_TARGET = (
    "empty",
    "class not recognised by the model",
    "always-target",
    "never-target",
)
DEGENERATE_REASONS = (EMPTY, UNRECOGNISED, ALWAYS_TARGET, NEVER_TARGET)


def circuit_verdict(size: int, sufficiency: float | None, specificity: float | None) -> str:
    """One of :data:`VERDICTS` for a circuit of ``size`` channels with these scores (``unscored`` when a
    score is missing).
    """
    if size == 0:
        return "empty"
    if sufficiency is None or specificity is None or math.isnan(sufficiency) or math.isnan(specificity):
        return "unscored"
    if sufficiency < COLLAPSE_THRESHOLD:
        return "collapsed"
    if specificity < WORKING_THRESHOLD:
        return "indiscriminate"
    if sufficiency < WORKING_THRESHOLD:
        return "weakened"
    return "working"


def degenerate_reason(
    size: int,
    specificity: float | None,
    model_sufficiency: float | None,
    model_specificity: float | None,
    sufficiency: float | None = None,
    own_model: bool = True,
) -> str | None:
    """Why a circuit's numbers measure an artefact (one of :data:`DEGENERATE_REASONS`), or None when they do not.

    ``own_model``: the scores are on the model the circuit was found on (never-target is
    a verdict there only). A score that is missing (None or NaN) cannot make a circuit
    degenerate.
    """

    def defined(v: float | None) -> bool:
        return v is not None and not math.isnan(v)

    if size == 0:
        return EMPTY
    for own in (model_sufficiency, model_specificity):
        if defined(own) and own < WORKING_THRESHOLD:  # type: ignore[operator]
            return UNRECOGNISED
    if (
        defined(specificity)
        and specificity < WORKING_THRESHOLD  # type: ignore[operator]
        and defined(model_specificity)
        and model_specificity >= MODEL_SPECIFIC  # type: ignore[operator]
    ):
        return ALWAYS_TARGET
    if (
        own_model
        and defined(sufficiency)
        and sufficiency < COLLAPSE_THRESHOLD  # type: ignore[operator]
        and defined(model_sufficiency)
        and model_sufficiency >= WORKING_THRESHOLD  # type: ignore[operator]
    ):
        return NEVER_TARGET
    return None
