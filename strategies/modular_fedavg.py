"""ModularFedAvg: each channel averaged over the clients whose circuits use it."""

from __future__ import annotations

from logging import WARNING

import numpy as np
from flwr.common import log, parameters_to_ndarrays

from fedmi_flower.science.aggregation import modular_mean
from fedmi_flower.science.alignment import layout_of
from fedmi_flower.science.circuits import Circuit
from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.wire.protocol import PayloadError, decode_circuits

from .merging_fedavg import MergingFedAvg, Result


class ModularFedAvg(MergingFedAvg):
    """Circuit-wise averaging, the paper's "modular FL" (section 4; Fed2's feature groups, Yu et al. 2021).

    Every client sends its per-class circuits with its weights. A channel that one
    client's circuits use is taken from that client; one that several clients' circuits
    use is their example-weighted mean; one that no circuit uses is every client's mean
    (:func:`~fedmi_flower.science.aggregation.modular_mean` states the rule). A client
    whose circuits are missing or do not decode, or whose report the circuit analysis
    rejected, counts as using no channel: its weights still enter the means of channels
    no circuit claims and the fc bias.
    """

    def circuits_of(self, result: Result, layer_sizes: dict[str, int]) -> dict[int, Circuit]:
        """The client's circuits in its fit metrics; none when they are missing (the circuit analysis removes
        those of a rejected report) or do not decode."""
        proxy, res = result
        if "circuits" not in res.metrics:
            return {}
        try:
            return decode_circuits(res.metrics.get("circuits", b""), layer_sizes)
        except PayloadError as err:
            log(
                WARNING, "modularfedavg: circuits of client %s do not decode (%s); it claims no channel", proxy.cid, err
            )
            return {}

    def merge(self, server_round: int, results: list[Result]) -> list[np.ndarray]:
        weights = [parameters_to_ndarrays(res.parameters) for _, res in results]
        template = self.model_template()
        circuits = [self.circuits_of(result, site_sizes(template)) for result in results]
        return modular_mean(weights, [res.num_examples for _, res in results], circuits, layout_of(template))
