"""The run's reference images: one set every client, the server's analysis and the frontier load alike."""

from __future__ import annotations

from fedmi_flower.config import ExperimentConfig
from fedmi_flower.science.data import ImageSplit, reference_split


def reference_images(config: ExperimentConfig, data_root: str | None) -> ImageSplit:
    """The run's reference images: :func:`~fedmi_flower.science.data.reference_split` of its settings."""
    return reference_split(
        config.data.dataset,
        data_root,
        probe_fraction=config.data.probe_fraction,
        eval_per_class=config.data.eval_per_class,
        seed=config.seed,
        size=config.discovery.reference_size,
    )


def reference_of(config: ExperimentConfig, data_root: str | None) -> ImageSplit | None:
    """:func:`reference_images`, or None when the run's discovery needs none (``DiscoveryConfig.needs_reference``)."""
    return reference_images(config, data_root) if config.discovery.needs_reference else None
