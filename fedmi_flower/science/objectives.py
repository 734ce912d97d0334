"""The discovery objectives' vocabulary and measured defaults (section 2.2, phase B; docs/faithful-circuits.md).

Kept apart from :mod:`fedmi_flower.science.circuits`, which implements them, so that
the config (and with it every ``fedmi`` command that only reads a config) loads
without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ABLATIONS",
    "SCORING_ABLATIONS",
    "GATES",
    "OBJECTIVES",
    "OBJECTIVE_DEFAULTS",
    "DISJOINT_RULES",
    "objective_setting",
]

ABLATIONS = ("zero", "mean")
SCORING_ABLATIONS = (*ABLATIONS, "resample")
"""What a closed channel outputs when a circuit is scored: zero, its mean, or its value on another image of the
reference set (resample ablation, scoring only: discovery learns with zero or mean)."""
OBJECTIVES = ("paper", "faithful")
GATES = ("straight-through", "annealed", "hard-concrete")
DISJOINT_RULES = ("off", "circuits", "budget")
"""The values of ``train.disjoint``: which channels a client keeps off (:mod:`fedmi_flower.science.disjoint`)."""
OBJECTIVE_DEFAULTS: dict[str, dict[str, object]] = {
    "paper": {"gate": "straight-through", "ablation": "zero", "l0_lambda": 0.01, "batch_per_class": 32},
    # 16 of the class and 16 others: as many images per step as the paper's 32, the same circuits as 32 + 32.
    "faithful": {"gate": "annealed", "ablation": "mean", "l0_lambda": 0.01, "batch_per_class": 16},
}
"""Each objective's gate, ablation and L0 coefficient where an experiment leaves them to it (measured defaults:
docs/faithful-circuits.md)."""


def objective_setting(objective: str, name: str, value: Any = None) -> Any:
    """``value``, or the objective's default for the setting ``name`` when it is None (:data:`OBJECTIVE_DEFAULTS`)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return OBJECTIVE_DEFAULTS[objective][name] if value is None else value
