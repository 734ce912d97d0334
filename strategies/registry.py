"""Strategies by name or import path, of either Flower API, with the circuit analysis mixed in."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flwr.serverapp.strategy as message
import numpy as np
from flwr.common import Metrics, ndarrays_to_parameters
from flwr.server.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)

from fedmi_flower.analysis.round_analyst import ALIGNMENT_IMAGES, RoundAnalyst
from fedmi_flower.config import STRATEGIES as STRATEGY_NAMES
from fedmi_flower.config import ConfigError, ExperimentConfig, make_model
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.records.round_record import RoundRecord
from fedmi_flower.science.catalog import IMPORT_PATH, import_attribute
from fedmi_flower.science.model import get_weights

from .circuit_analysis_mixin import CircuitAnalysisMixin
from .circuit_fedavg import CircuitFedAvg
from .circuit_message_mixin import CircuitMessageMixin
from .masked_fedavg import MaskedFedAvg, MaskedMessageFedAvg
from .matched_fedavg import MatchedFedAvg, MatchedMessageFedAvg
from .merging_fedavg import MergeRule
from .modular_fedavg import ModularFedAvg, ModularMessageFedAvg

LEGACY: dict[str, type] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedadagrad": FedAdagrad,
    "fedyogi": FedYogi,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "matchedfedavg": MatchedFedAvg,
    "maskedfedavg": MaskedFedAvg,
    "modularfedavg": ModularFedAvg,
}
"""The built-in names under ``strategy.api = "legacy"``: Flower's ``flwr.server.strategy`` classes and fedmi's rules."""

MESSAGE: dict[str, type] = {
    "fedavg": message.FedAvg,
    "fedprox": message.FedProx,
    "fedavgm": message.FedAvgM,
    "fedadam": message.FedAdam,
    "fedadagrad": message.FedAdagrad,
    "fedyogi": message.FedYogi,
    "fedmedian": message.FedMedian,
    "fedtrimmedavg": message.FedTrimmedAvg,
    "matchedfedavg": MatchedMessageFedAvg,
    "maskedfedavg": MaskedMessageFedAvg,
    "modularfedavg": ModularMessageFedAvg,
}
"""The same names under ``strategy.api = "message"``: ``flwr.serverapp.strategy`` classes and fedmi's rules."""

assert set(LEGACY) == set(MESSAGE) == set(STRATEGY_NAMES)

# Kept for code that looked strategies up by name before import paths existed.
STRATEGIES = LEGACY


def strategy_class(config: ExperimentConfig) -> type:
    """The strategy class the experiment names: built-in under its ``strategy.api``, or by import path.

    A class named by import path speaks the API it derives from: Flower's legacy ``FedAvg``
    (``flwr.server.strategy``) or the Message API's ``FedAvg`` (``flwr.serverapp.strategy``).

    Raises
    ------
    ConfigError
        When the import path does not import, or names no strategy the circuit analysis can wrap.
    """
    name = config.strategy.name
    if not IMPORT_PATH.match(name):
        return (MESSAGE if config.strategy.api == "message" else LEGACY)[name]
    cls = import_attribute(
        name,
        what=f"strategy.name = {name!r}",
        error=ConfigError,
        hint="run from the folder that holds it, install its package, or put it on PYTHONPATH",
    )
    if not isinstance(cls, type):
        raise ConfigError(f"strategy.name = {name!r} is not a class")
    if issubclass(cls, FedAvg) or issubclass(cls, message.FedAvg):
        return cls
    which = (
        "legacy Strategy"
        if issubclass(cls, Strategy)
        else "Message-API Strategy"
        if issubclass(cls, message.Strategy)
        else "class"
    )
    raise ConfigError(
        f"strategy.name = {name!r} is a {which} that derives from neither FedAvg: the circuit analysis wraps "
        "FedAvg's aggregation (flwr.server.strategy.FedAvg's aggregate_fit, or flwr.serverapp.strategy.FedAvg's "
        "aggregate_train); derive your class from one of them"
    )


def speaks_message_api(cls: type) -> bool:
    """Whether ``cls`` is a Message-API strategy (else a legacy one)."""
    return issubclass(cls, message.Strategy)


def qualified_name(cls: type) -> str:
    """``module.Class``: how the run directory records a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.cache
def circuit_strategy_class(base: type) -> type:
    """``Circuit<Base>``: the circuit analysis mixed into ``base`` (either API); FedAvg gets :class:`CircuitFedAvg`."""
    if base is FedAvg:
        return CircuitFedAvg
    mixin = CircuitMessageMixin if speaks_message_api(base) else CircuitAnalysisMixin
    if not (issubclass(base, FedAvg) or issubclass(base, message.FedAvg)):
        raise TypeError(f"{base.__name__} does not derive from FedAvg; the circuit analysis wraps FedAvg's aggregation")
    return type(
        f"Circuit{base.__name__}",
        (mixin, base),
        {"__doc__": f"{base.__name__} with the circuit analysis after its aggregation.", "__module__": base.__module__},
    )


def strategy_options(config: ExperimentConfig, analyst: RoundAnalyst | None, cls: type) -> dict[str, Any]:
    """The keyword arguments ``cls`` takes from the experiment: its ``[strategy.<name>]`` table or ``strategy.args``.

    ``analyst`` None (a check before the run) leaves out what only the server's data gives
    (activation matching's probe images).
    """
    s = config.strategy
    if IMPORT_PATH.match(s.name):
        options = dict(s.args)
    else:
        table = getattr(s, s.name, None)
        options = dataclasses.asdict(table) if table is not None else {}
        if s.name == "maskedfedavg":
            train = config.train
            prune = options.pop("prune")
            options |= {
                "target_sparsity": train.sparsity if prune else None,
                "min_per_neuron": train.min_per_neuron,
                "sparsity_scope": train.sparsity_scope,
            }
        if s.name == "matchedfedavg":
            activations = options["matching"] == "activations"
            options["probe_images"] = (
                analyst.probe.images[:ALIGNMENT_IMAGES] if activations and analyst is not None else None
            )
    if issubclass(cls, MergeRule):
        options.setdefault("template", make_model(config))
    return options


def common_options(config: ExperimentConfig, cls: type) -> dict[str, Any]:
    """What every strategy of ``cls``'s API is given: sampling and failure rules, metrics aggregation.

    A Message-API strategy is shown exactly the nodes the circuit analysis sampled (by
    partition, from the run's seed), so it is built to train on all it is shown.
    """
    s = config.strategy
    if speaks_message_api(cls):
        return {
            "fraction_train": 1.0,
            "fraction_evaluate": 0.0,
            "min_train_nodes": 1,
            "min_evaluate_nodes": 0,
            "min_available_nodes": 1,
        }
    sampled = max(1, int(config.clients * s.fraction_fit))
    evaluated = int(config.clients * s.fraction_evaluate)
    return {
        "fraction_fit": s.fraction_fit,
        "fraction_evaluate": s.fraction_evaluate,
        "min_fit_clients": s.min_fit_clients or sampled,
        "min_evaluate_clients": max(1, evaluated),
        "min_available_clients": config.clients,
        "accept_failures": s.accept_failures,
        "fit_metrics_aggregation_fn": weighted_train_metrics,
        "evaluate_metrics_aggregation_fn": weighted_eval_metrics,
    }


def check_strategy(config: ExperimentConfig) -> type:
    """Resolve the experiment's strategy class and build it once with the arguments the run would give it.

    Called before a run starts (``fedmi run``'s preflight), so that a wrong import path or
    argument is one line, not a traceback from inside the ServerApp. Built, not only
    matched against its signature: a subclass that passes ``**kwargs`` on to FedAvg
    refuses an unknown argument only there.
    """
    cls = strategy_class(config)
    circuit_strategy_class(cls)
    options = {**common_options(config, cls), **strategy_options(config, None, cls)}
    if not speaks_message_api(cls):  # the legacy API's FedOpt family requires the initial weights
        options["initial_parameters"] = ndarrays_to_parameters(get_weights(make_model(config)))
    try:
        inspect.signature(cls).bind(**options)
        if IMPORT_PATH.match(config.strategy.name):  # the built-ins take their typed [strategy.<name>] tables
            cls(**options)
    except TypeError as err:
        where = "strategy.args" if IMPORT_PATH.match(config.strategy.name) else f"[strategy.{config.strategy.name}]"
        raise ConfigError(
            f"strategy {qualified_name(cls)} does not take the arguments the run gives it ({err}); "
            f"its own are set in {where}"
        ) from None
    return cls


def weighted_train_metrics(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Example-weighted mean of the clients' training loss and accuracy (Flower's fit metrics hook)."""
    total = sum(n for n, _ in metrics)
    out: Metrics = {}
    for key in ("train_loss", "train_accuracy"):
        values = [(n, m[key]) for n, m in metrics if isinstance(m.get(key), (int, float))]
        if values and total:
            out[key] = sum(n * float(v) for n, v in values) / sum(n for n, _ in values)
    return out


def weighted_eval_metrics(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Example-weighted mean of the clients' held-out accuracy."""
    values = [(n, float(m["accuracy"])) for n, m in metrics if isinstance(m.get("accuracy"), (int, float)) and n > 0]
    total = sum(n for n, _ in values)
    return {"accuracy": sum(n * v for n, v in values) / total} if total else {}


def build_strategy(
    config: ExperimentConfig,
    *,
    analyst: RoundAnalyst,
    run_dir: RunDirectory,
    initial_arrays: list[np.ndarray],
    start_round: int = 0,
    partition_sizes: Mapping[int, int] | None = None,
    holdout_sizes: Mapping[int, int] | None = None,
    round_listeners: Sequence[Callable[[RoundRecord], None]] = (),
) -> Any:
    """The experiment's strategy, of its API, with the circuit analysis, ready for a ServerApp.

    ``start_round``: rounds already done; ``partition_sizes`` and ``holdout_sizes``: each
    partition's training and held-out rows as the server computed them (a client's
    example counts in fit and evaluate must match its own); ``round_listeners`` are
    called with every finished round's record.
    """
    base = strategy_class(config)
    cls: Any = circuit_strategy_class(base)
    ours: dict[str, Any] = {
        "experiment": config,
        "analyst": analyst,
        "run_dir": run_dir,
        "start_round": start_round,
        "partition_sizes": partition_sizes,
        "holdout_sizes": holdout_sizes,
        "round_listeners": round_listeners,
    }
    if speaks_message_api(base):
        ours["initial_arrays"] = initial_arrays
    else:
        ours["initial_parameters"] = ndarrays_to_parameters(initial_arrays)
    return cls(**ours, **common_options(config, base), **strategy_options(config, analyst, base))
