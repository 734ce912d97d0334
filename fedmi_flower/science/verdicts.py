"""What a circuit's scores say about it: the verdicts every record, report and figure use.

Sufficiency alone cannot judge a circuit: an empty circuit, or one that answers its
class for every input, reaches sufficiency 1.0 (DESIGN.md, "Known weakness"). So a
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
"""

from __future__ import annotations

import math

COLLAPSE_THRESHOLD = 0.1
"""A circuit below this sufficiency counts as collapsed."""
WORKING_THRESHOLD = 0.5
"""Sufficiency and specificity a working circuit reaches."""
VERDICTS = ("empty", "collapsed", "indiscriminate", "weakened", "working", "unscored")


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
