"""Flower strategies with the circuit analysis: CircuitFedAvg, the mixin, and a registry by name."""

from .circuit_analysis_mixin import CircuitAnalysisMixin
from .circuit_fedavg import CircuitFedAvg
from .registry import STRATEGIES, build_strategy, circuit_strategy_class

__all__ = ["CircuitAnalysisMixin", "CircuitFedAvg", "STRATEGIES", "build_strategy", "circuit_strategy_class"]
