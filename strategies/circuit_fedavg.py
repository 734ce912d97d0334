"""CircuitFedAvg: Flower's FedAvg with the circuit analysis in ``aggregate_fit``."""

from __future__ import annotations

from flwr.server.strategy import FedAvg

from .circuit_analysis_mixin import CircuitAnalysisMixin


class CircuitFedAvg(CircuitAnalysisMixin, FedAvg):
    """FedAvg (McMahan et al., 2017) that also measures circuit preservation every round.

    Aggregation is FedAvg's weighted average; see :class:`CircuitAnalysisMixin` for
    the analysis and the keyword arguments it adds (``experiment``, ``analyst``,
    ``run_dir``). All other keyword arguments are FedAvg's.
    """
