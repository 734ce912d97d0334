"""MergingFedAvg: FedAvg whose coordinate-wise mean is replaced by an overridable ``merge`` hook, under either API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
import torch.nn as nn
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import FitIns, FitRes, Parameters, Scalar, log, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as MessageFedAvg

from fedmi_flower.science.aggregation import weighted_mean
from fedmi_flower.wire.protocol import scalars

Result = tuple[ClientProxy, FitRes]


@dataclass
class Contribution:
    """One client's part in a merge, whichever Flower API carried it."""

    node: str
    arrays: list[np.ndarray]
    num_examples: int
    report: Mapping[str, Any]
    """The client's report (its circuits under ``"circuits"``, when the server accepted them)."""


class MergeRule:
    """The averaging rule as a hook: :meth:`merge` turns the round's contributions into the new weights.

    Mixed into a Flower strategy of either API (:class:`MergingFedAvg`,
    :class:`MergingMessageFedAvg`), which keeps everything else of FedAvg's: client
    sampling, the failure rules, the metrics aggregation. The default :meth:`merge` is
    FedAvg's example-weighted mean.

    Parameters
    ----------
    template : nn.Module, optional
        A model of the run's architecture (``make_model(config)``): the rules that work
        channel by channel read its permutation spec, and re-pruning loads weights into a
        copy of it.
    """

    def __init__(self, *args: Any, template: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.template = template
        self.reference: list[np.ndarray] | None = None
        """The global weights the round started from (the frame a rule may align clients to)."""

    def model_template(self) -> nn.Module:
        """The run's model (for rules that need its architecture); a clear error when none was given."""
        if self.template is None:
            raise ValueError(
                f"{type(self).__name__} needs template=make_model(config): its rule reads the architecture"
            )
        return self.template

    def merge(self, server_round: int, contributions: list[Contribution]) -> list[np.ndarray]:
        """The new global weights from the round's contributions (FedAvg: their example-weighted mean)."""
        return weighted_mean([c.arrays for c in contributions], [c.num_examples for c in contributions])


class MergingFedAvg(MergeRule, FedAvg):
    """:class:`MergeRule` on Flower's legacy ``FedAvg`` (``aggregate_fit``)."""

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.reference = parameters_to_ndarrays(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self, server_round: int, results: list[Result], failures: list[Result | BaseException]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """:meth:`merge` the results, under FedAvg's rules for empty rounds and failures."""
        if not results or (failures and not self.accept_failures):
            return None, {}
        contributions = [
            Contribution(proxy.cid, parameters_to_ndarrays(res.parameters), res.num_examples, res.metrics)
            for proxy, res in results
        ]
        merged = self.merge(server_round, contributions)
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn([(res.num_examples, res.metrics) for _, res in results])
        elif server_round == 1:
            log(WARNING, "No fit_metrics_aggregation_fn provided")
        return ndarrays_to_parameters(merged), metrics


class MergingMessageFedAvg(MergeRule, MessageFedAvg):
    """:class:`MergeRule` on the Message API's ``FedAvg`` (``aggregate_train``).

    A reply carries its weights as its one ArrayRecord, its example count under the
    strategy's ``weighted_by_key``, and the client's report as the ConfigRecord ``report``.
    """

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.reference = arrays.to_numpy_ndarrays()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contributions = []
        for reply in valid:
            content = reply.content
            (weights,) = content.array_records.values()
            (counts,) = content.metric_records.values()
            report = content.config_records.get("report")
            contributions.append(
                Contribution(
                    str(reply.metadata.src_node_id),
                    weights.to_numpy_ndarrays(),
                    int(counts[self.weighted_by_key]),  # type: ignore[arg-type]
                    scalars(report) if report is not None else {},
                )
            )
        merged = self.merge(server_round, contributions)
        metrics = self.train_metrics_aggr_fn([reply.content for reply in valid], self.weighted_by_key)
        return ArrayRecord(merged), metrics
