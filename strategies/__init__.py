"""Flower strategies with the circuit analysis (CircuitFedAvg, the mixin, a registry by name) and fedmi's own
aggregation rules (MatchedFedAvg, MaskedFedAvg, ModularFedAvg); CircuitMessageStrategy, their Message API front."""

from .circuit_analysis_mixin import CONSOLE_KEY, CircuitAnalysisMixin
from .circuit_fedavg import CircuitFedAvg
from .masked_fedavg import MaskedFedAvg
from .matched_fedavg import MatchedFedAvg
from .merging_fedavg import MergingFedAvg
from .message_strategy import CircuitMessageStrategy
from .modular_fedavg import ModularFedAvg
from .registry import STRATEGIES, build_strategy, circuit_strategy_class

__all__ = [
    "CONSOLE_KEY",
    "CircuitAnalysisMixin",
    "CircuitFedAvg",
    "CircuitMessageStrategy",
    "MaskedFedAvg",
    "MatchedFedAvg",
    "MergingFedAvg",
    "ModularFedAvg",
    "STRATEGIES",
    "build_strategy",
    "circuit_strategy_class",
]
