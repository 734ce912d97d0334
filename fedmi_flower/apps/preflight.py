"""What is checked before any process starts: each a one-line error naming the fix.

A run that would fail 40 seconds in (after Flower's SuperLink and Ray have started) on a
setting the machine cannot honour is refused here instead: a GPU asked for where none is
visible, a model that cannot be built or does not speak the circuit interface. The run
directory is checked by :meth:`~fedmi_flower.records.results.RunDirectory.check_new`.
"""

from __future__ import annotations

import torch

from fedmi_flower.config import ConfigError, ExperimentConfig, make_model
from fedmi_flower.strategies import check_strategy


def check_devices(config: ExperimentConfig, cuda_available: bool | None = None) -> None:
    """Refuse GPU settings the machine cannot honour (``cuda_available``: what the machine has; None asks torch)."""
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if has_cuda:
        return
    r = config.resources
    if r.device == "cuda":
        raise ConfigError(
            "resources.device = 'cuda' but no CUDA device is visible here; "
            "use 'auto' (CUDA where there is one) or 'cpu'"
        )
    if r.client_gpus > 0:
        raise ConfigError(
            f"resources.client_gpus = {r.client_gpus:g} asks Ray for a GPU share per client, and no GPU is visible "
            "here: Ray would never schedule a client; set it to 0"
        )


def preflight(config: ExperimentConfig) -> None:
    """Every check a run can fail before it starts (devices, the model, the strategy); raises the user's one-line
    error."""
    check_devices(config)
    make_model(config)
    check_strategy(config)
