"""Every random choice of a run flows from its seed through these two functions.

A run seed is combined with a purpose and the coordinates of the choice (round,
client, class) into an independent stream, so that adding a client or a class never
shifts the randomness of another one.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """Return a 63-bit seed for one purpose and coordinates, derived from the run seed.

    Parameters
    ----------
    seed : int
        The run's seed.
    purpose : str
        What the stream is for, e.g. ``"train"`` or ``"discovery"``.
    *keys : int
        Coordinates of the choice, e.g. round, partition id, class.

    Returns
    -------
    int
        A non-negative integer below 2**63, identical for identical arguments.
    """
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(purpose.encode())] + [int(k) & 0xFFFFFFFF for k in keys]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def torch_generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded by :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose, *keys))


def numpy_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` seeded by :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(seed, purpose, *keys))
