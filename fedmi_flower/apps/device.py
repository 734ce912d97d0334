"""Where a process computes: one rule for the server and every client."""

from __future__ import annotations

import torch


def pick_device(choice: str) -> torch.device:
    """The device for ``resources.device``: ``auto`` is CUDA when visible, else CPU; ``cuda`` without a GPU is an error.

    The server and the clients read the same setting and apply this same rule, so a run
    never silently computes part of its numbers somewhere the config did not ask for.
    """
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("resources.device = 'cuda' but no CUDA device is visible here; use 'auto' or 'cpu'")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")
