"""Flower strategies with the circuit analysis: CircuitFedAvg, the mixin, and a registry by name."""

from .circuit_analysis_mixin import CONSOLE_KEY, CircuitAnalysisMixin
from .circuit_fedavg import CircuitFedAvg
from .registry import STRATEGIES, build_strategy, circuit_strategy_class

__all__ = [
    "CONSOLE_KEY",
    "CircuitAnalysisMixin",
    "CircuitFedAvg",
    "STRATEGIES",
    "build_strategy",
    "circuit_strategy_class",
]
