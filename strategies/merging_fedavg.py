"""MergingFedAvg: FedAvg whose coordinate-wise mean is replaced by an overridable ``merge`` hook."""

from __future__ import annotations

from logging import WARNING

import numpy as np
from flwr.common import FitRes, Parameters, Scalar, log, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from fedmi_flower.science.aggregation import weighted_mean

Result = tuple[ClientProxy, FitRes]


class MergingFedAvg(FedAvg):
    """FedAvg with the averaging rule as a hook: :meth:`merge` turns the round's results into the new weights.

    Everything else is FedAvg's: client sampling, the ``accept_failures`` rule, the fit
    metrics aggregation. The default :meth:`merge` is FedAvg's example-weighted mean.
    """

    def merge(self, server_round: int, results: list[Result]) -> list[np.ndarray]:
        """The new global weights from the round's results (FedAvg: their example-weighted mean)."""
        return weighted_mean(
            [parameters_to_ndarrays(res.parameters) for _, res in results], [res.num_examples for _, res in results]
        )

    def aggregate_fit(
        self, server_round: int, results: list[Result], failures: list[Result | BaseException]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """:meth:`merge` the results, under FedAvg's rules for empty rounds and failures."""
        if not results or (failures and not self.accept_failures):
            return None, {}
        merged = self.merge(server_round, results)
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn([(res.num_examples, res.metrics) for _, res in results])
        elif server_round == 1:
            log(WARNING, "No fit_metrics_aggregation_fn provided")
        return ndarrays_to_parameters(merged), metrics
