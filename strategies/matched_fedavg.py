"""MatchedFedAvg: FedAvg after each client's channels are matched to the global model's."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedmi_flower.science.aggregation import weighted_mean
from fedmi_flower.science.alignment import Permutation, layout_of, match_all, permute

from .merging_fedavg import Contribution, MergeRule, MergingFedAvg, MergingMessageFedAvg


class MatchedMerge(MergeRule):
    """FedAvg of permutation-aligned clients (Git Re-Basin, Ainsworth et al. 2023; FedMA, Wang et al. 2020).

    Before averaging, every client's channels (every group of the model's permutation
    spec, on the side that produces it and every side that reads it) are permuted onto
    the global model the round started from: by weight matching, or by the correlation
    of activations on ``probe_images``
    (:mod:`fedmi_flower.science.alignment`). A permutation does not change what a
    client's network computes, so two clients that learned the same features in other
    channel slots average to that network instead of a blend of unrelated channels.
    The permutations of the last round are kept in :attr:`permutations` by client id.

    Parameters
    ----------
    matching : {"weights", "activations"}
        How channels are paired.
    probe_images : torch.Tensor, optional
        Images for activation matching (the server's probe rows).
    **kwargs
        FedAvg's.
    """

    def __init__(
        self, *args: Any, matching: str = "weights", probe_images: torch.Tensor | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if matching not in ("weights", "activations"):
            raise ValueError(f"matching = {matching!r}; use 'weights' or 'activations'")
        if matching == "activations" and probe_images is None:
            raise ValueError("activation matching needs probe_images")
        self.matching = matching
        self.probe_images = probe_images
        self.permutations: dict[str, Permutation] = {}

    def merge(self, server_round: int, contributions: list[Contribution]) -> list[np.ndarray]:
        """Every client's weights permuted onto the reference frame, then FedAvg's example-weighted mean.

        Without a reference (a merge before any round was configured), the first
        contribution's weights are the frame.
        """
        reference = self.reference if self.reference is not None else contributions[0].arrays
        template = self.model_template()
        layout = layout_of(template)
        self.permutations = match_all(
            template, reference, {c.node: c.arrays for c in contributions}, self.matching, self.probe_images
        )
        aligned = [permute(c.arrays, self.permutations[c.node], layout) for c in contributions]
        return weighted_mean(aligned, [c.num_examples for c in contributions])


class MatchedFedAvg(MatchedMerge, MergingFedAvg):
    """:class:`MatchedMerge` on Flower's legacy FedAvg (``strategy.api = "legacy"``)."""


class MatchedMessageFedAvg(MatchedMerge, MergingMessageFedAvg):
    """:class:`MatchedMerge` on the Message API's FedAvg (``strategy.api = "message"``)."""
