"""Flower strategies with the circuit analysis, under either Flower API.

- ``CircuitAnalysisMixin``: any legacy ``flwr.server.strategy.FedAvg`` subclass (``aggregate_fit``);
- ``CircuitMessageMixin``: any Message-API ``flwr.serverapp.strategy.FedAvg`` subclass (``aggregate_train``);
- fedmi's own aggregation rules (matched, masked and modular averaging) on the ``MergeRule`` hook, for both;
- the registry: strategies by name or ``package.module:Class``.

Both adapters share the Flower-free round core (:mod:`fedmi_flower.analysis.round_core`).
"""

from fedmi_flower.analysis.round_core import CONSOLE_KEY

from .circuit_analysis_mixin import CircuitAnalysisMixin
from .circuit_fedavg import CircuitFedAvg
from .circuit_message_mixin import CircuitMessageMixin
from .masked_fedavg import MaskedFedAvg, MaskedMessageFedAvg
from .matched_fedavg import MatchedFedAvg, MatchedMessageFedAvg
from .merging_fedavg import Contribution, MergeRule, MergingFedAvg, MergingMessageFedAvg
from .modular_fedavg import ModularFedAvg, ModularMessageFedAvg
from .registry import (
    LEGACY,
    MESSAGE,
    STRATEGIES,
    build_strategy,
    check_strategy,
    circuit_strategy_class,
    qualified_name,
    speaks_message_api,
    strategy_class,
)

__all__ = [
    "CONSOLE_KEY",
    "LEGACY",
    "MESSAGE",
    "STRATEGIES",
    "CircuitAnalysisMixin",
    "CircuitFedAvg",
    "CircuitMessageMixin",
    "Contribution",
    "MaskedFedAvg",
    "MaskedMessageFedAvg",
    "MatchedFedAvg",
    "MatchedMessageFedAvg",
    "MergeRule",
    "MergingFedAvg",
    "MergingMessageFedAvg",
    "ModularFedAvg",
    "ModularMessageFedAvg",
    "build_strategy",
    "check_strategy",
    "circuit_strategy_class",
    "qualified_name",
    "speaks_message_api",
    "strategy_class",
]
