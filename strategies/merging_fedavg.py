"""MergingFedAvg: FedAvg whose coordinate-wise mean is replaced by an overridable ``merge`` hook."""

from __future__ import annotations

from logging import WARNING
from typing import Any

import numpy as np
import torch.nn as nn
from flwr.common import FitRes, Parameters, Scalar, log, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from fedmi_flower.science.aggregation import weighted_mean

Result = tuple[ClientProxy, FitRes]


class MergingFedAvg(FedAvg):
    """FedAvg with the averaging rule as a hook: :meth:`merge` turns the round's results into the new weights.

    Everything else is FedAvg's: client sampling, the ``accept_failures`` rule, the fit
    metrics aggregation. The default :meth:`merge` is FedAvg's example-weighted mean.

    Parameters
    ----------
    template : nn.Module, optional
        A model of the run's architecture (``make_model(config)``): the rules that work
        channel by channel read its permutation spec, and re-pruning loads weights into a
        copy of it.
    **kwargs
        FedAvg's.
    """

    def __init__(self, *args: Any, template: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.template = template

    def model_template(self) -> nn.Module:
        """The run's model (for rules that need its architecture); a clear error when none was given."""
        if self.template is None:
            raise ValueError(
                f"{type(self).__name__} needs template=make_model(config): its rule reads the architecture"
            )
        return self.template

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
