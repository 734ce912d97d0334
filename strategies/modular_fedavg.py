"""ModularFedAvg: each channel averaged over the clients whose circuits use it."""

from __future__ import annotations

from logging import WARNING

import numpy as np
from flwr.common import log

from fedmi_flower.science.aggregation import modular_mean
from fedmi_flower.science.alignment import layout_of
from fedmi_flower.science.circuits import Circuit
from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.wire.protocol import PayloadError, decode_circuits

from .merging_fedavg import Contribution, MergeRule, MergingFedAvg, MergingMessageFedAvg


class ModularMerge(MergeRule):
    """Circuit-wise averaging, the paper's "modular FL" (section 4; Fed2's feature groups, Yu et al. 2021).

    Every client sends its per-class circuits with its weights. A channel that one
    client's circuits use is taken from that client; one that several clients' circuits
    use is their example-weighted mean; one that no circuit uses is every client's mean
    (:func:`~fedmi_flower.science.aggregation.modular_mean` states the rule). A client
    whose circuits are missing or do not decode, or whose report the circuit analysis
    rejected, counts as using no channel: its weights still enter the means of channels
    no circuit claims and the fc bias.
    """

    def circuits_of(self, contribution: Contribution, layer_sizes: dict[str, int]) -> dict[int, Circuit]:
        """The client's circuits in its report; none when they are missing (the circuit analysis removes
        those of a rejected report) or do not decode."""
        if "circuits" not in contribution.report:
            return {}
        try:
            return decode_circuits(contribution.report.get("circuits", b""), layer_sizes)
        except PayloadError as err:
            log(
                WARNING,
                "modularfedavg: circuits of client %s do not decode (%s); it claims no channel",
                contribution.node,
                err,
            )
            return {}

    def merge(self, server_round: int, contributions: list[Contribution]) -> list[np.ndarray]:
        template = self.model_template()
        circuits = [self.circuits_of(c, site_sizes(template)) for c in contributions]
        return modular_mean(
            [c.arrays for c in contributions], [c.num_examples for c in contributions], circuits, layout_of(template)
        )


class ModularFedAvg(ModularMerge, MergingFedAvg):
    """:class:`ModularMerge` on Flower's legacy FedAvg (``strategy.api = "legacy"``)."""


class ModularMessageFedAvg(ModularMerge, MergingMessageFedAvg):
    """:class:`ModularMerge` on the Message API's FedAvg (``strategy.api = "message"``)."""
