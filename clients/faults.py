"""Injected client failures (the ``[faults]`` table): deterministic from the run's seed."""

from __future__ import annotations

from fedmi_flower.config import FaultsConfig
from fedmi_flower.science.seeding import numpy_rng


class InjectedFailure(RuntimeError):
    """Raised by a client's fit because the experiment asked for it."""


def should_fail(faults: FaultsConfig, seed: int, server_round: int, partition_id: int) -> bool:
    """Whether this client's fit in this round fails, by the ``[faults]`` table.

    A client listed in ``fail_clients`` fails in every round of ``fail_rounds`` (every
    round when that is omitted); any client also fails with ``fail_probability``, drawn
    from a stream seeded by ``(seed, round, partition id)``.
    """
    listed = faults.fail_clients is not None and partition_id in faults.fail_clients
    if listed and (faults.fail_rounds is None or server_round in faults.fail_rounds):
        return True
    if faults.fail_probability > 0.0:
        return bool(numpy_rng(seed, "fault", server_round, partition_id).random() < faults.fail_probability)
    return False
