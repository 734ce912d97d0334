"""What is checked before any process starts: each a one-line error naming the fix.

A run that would fail 40 seconds in (after Flower's SuperLink and Ray have started) on a
setting the machine cannot honour is refused here instead: a GPU asked for where none is
visible, a model that cannot be built or does not speak the circuit interface. The run
directory is checked by :meth:`~fedmi_flower.records.results.RunDirectory.check_new`.
"""

from __future__ import annotations

from pathlib import Path

from fedmi_flower.config import ConfigError, ExperimentConfig, make_model

GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")
"""Device nodes of NVIDIA's driver, WSL's GPU bridge and AMD's ROCm: without any, no GPU can be visible."""


def gpu_device_present() -> bool:
    """Whether this machine has a GPU device node at all (a cheap answer, without loading torch)."""
    return any(Path(p).exists() for p in GPU_DEVICE_FILES)


def check_devices(config: ExperimentConfig, cuda_available: bool | None = None) -> None:
    """Refuse GPU settings the machine cannot honour (``cuda_available``: what the machine has; None asks torch).

    torch is loaded only when the settings ask for a GPU and a GPU device node exists: a
    machine without one is refused at once (``resources.device = 'cuda'`` on a laptop is
    one line, not two seconds of loading torch).
    """
    r = config.resources
    if r.device != "cuda" and r.client_gpus <= 0:
        return
    if cuda_available is None:
        if gpu_device_present():
            import torch

            cuda_available = torch.cuda.is_available()
        else:
            cuda_available = False
    if cuda_available:
        return
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
    from fedmi_flower.strategies import check_strategy  # Flower loads only once the devices are known to do

    check_devices(config)
    make_model(config)
    check_strategy(config)
