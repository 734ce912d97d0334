"""MatchedFedAvg: FedAvg after each client's channels are matched to the global model's."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from fedmi_flower.science.aggregation import weighted_mean
from fedmi_flower.science.alignment import Permutation, layout_of, match_all, permute

from .merging_fedavg import MergingFedAvg, Result


class MatchedFedAvg(MergingFedAvg):
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
        self.reference: list[np.ndarray] | None = None
        self.permutations: dict[str, Permutation] = {}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """FedAvg's, remembering the weights the round starts from: the frame clients are matched to."""
        self.reference = parameters_to_ndarrays(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def merge(self, server_round: int, results: list[Result]) -> list[np.ndarray]:
        """Every client's weights permuted onto the reference frame, then FedAvg's example-weighted mean.

        Without a reference (``aggregate_fit`` called before any ``configure_fit``), the
        first result's weights are the frame.
        """
        arrays = [parameters_to_ndarrays(res.parameters) for _, res in results]
        reference = self.reference if self.reference is not None else arrays[0]
        template = self.model_template()
        layout = layout_of(template)
        self.permutations = match_all(
            template,
            reference,
            {proxy.cid: w for (proxy, _), w in zip(results, arrays)},
            self.matching,
            self.probe_images,
        )
        aligned = [permute(w, self.permutations[proxy.cid], layout) for (proxy, _), w in zip(results, arrays)]
        return weighted_mean(aligned, [res.num_examples for _, res in results])
