"""MaskedFedAvg: each weight averaged over the clients that keep it, pruned back to the target sparsity."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmi_flower.science.aggregation import masked_mean, resparsify

from .merging_fedavg import Contribution, MergeRule, MergingFedAvg, MergingMessageFedAvg


class MaskedMerge(MergeRule):
    """Sparse FL's masked averaging (FedDST, Bibikar et al. 2022; FLASH, Babakniya et al. 2023).

    FedAvg divides every weight by all clients' examples, so a weight kept by one
    client of three shrinks to a third, and the global model's support is the union of
    the clients': denser than any client. Here every weight is the example-weighted
    mean over the clients where it is nonzero (:func:`~fedmi_flower.science.aggregation.masked_mean`);
    a weight no client keeps stays zero. With ``target_sparsity`` the merged weights are
    then pruned back to it by the clients' own rule (magnitude, per-neuron floor), so
    the global model keeps the sparsity the clients train at.

    Parameters
    ----------
    target_sparsity : float, optional
        Sparsity to prune the merged weights to; None keeps the union of the supports.
    min_per_neuron, sparsity_scope
        The clients' pruning rule (``train.min_per_neuron``, ``train.sparsity_scope``).
    **kwargs
        FedAvg's.
    """

    def __init__(
        self,
        *args: Any,
        target_sparsity: float | None = None,
        min_per_neuron: int = 4,
        sparsity_scope: str = "tensor",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.target_sparsity = target_sparsity
        self.min_per_neuron = min_per_neuron
        self.sparsity_scope = sparsity_scope

    def merge(self, server_round: int, contributions: list[Contribution]) -> list[np.ndarray]:
        merged = masked_mean([c.arrays for c in contributions], [c.num_examples for c in contributions])
        if self.target_sparsity:
            merged = resparsify(
                self.model_template(), merged, self.target_sparsity, self.min_per_neuron, self.sparsity_scope
            )
        return merged


class MaskedFedAvg(MaskedMerge, MergingFedAvg):
    """:class:`MaskedMerge` on Flower's legacy FedAvg (``strategy.api = "legacy"``)."""


class MaskedMessageFedAvg(MaskedMerge, MergingMessageFedAvg):
    """:class:`MaskedMerge` on the Message API's FedAvg (``strategy.api = "message"``)."""
