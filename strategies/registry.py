"""Strategies by name: any FedAvg-derived Flower strategy, with the circuit analysis mixed in."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.common import Metrics, Parameters
from flwr.server.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, FedYogi

from fedmi_flower.analysis.round_analyst import ALIGNMENT_IMAGES, RoundAnalyst
from fedmi_flower.config import STRATEGIES as STRATEGY_NAMES
from fedmi_flower.config import ExperimentConfig, make_model
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.records.round_record import RoundRecord

from .circuit_analysis_mixin import CircuitAnalysisMixin
from .circuit_fedavg import CircuitFedAvg
from .masked_fedavg import MaskedFedAvg
from .matched_fedavg import MatchedFedAvg
from .modular_fedavg import ModularFedAvg

StrategyParameters = Callable[[ExperimentConfig, RoundAnalyst], dict[str, Any]]


def _matched(config: ExperimentConfig, analyst: RoundAnalyst) -> dict[str, Any]:
    probe = analyst.probe.images[:ALIGNMENT_IMAGES] if config.strategy.matching == "activations" else None
    return {"matching": config.strategy.matching, "probe_images": probe, "template": make_model(config)}


def _masked(config: ExperimentConfig, analyst: RoundAnalyst) -> dict[str, Any]:
    train = config.train
    return {
        "target_sparsity": train.sparsity if config.strategy.masked_prune else None,
        "min_per_neuron": train.min_per_neuron,
        "sparsity_scope": train.sparsity_scope,
        "template": make_model(config),
    }


# Each strategy class and the parameters it takes from the experiment (its [strategy] table, mostly).
_PARAMETERS: dict[type[FedAvg], StrategyParameters] = {
    FedAvg: lambda c, a: {},
    FedProx: lambda c, a: {"proximal_mu": c.strategy.proximal_mu},
    FedAvgM: lambda c, a: {
        "server_learning_rate": c.strategy.server_learning_rate,
        "server_momentum": c.strategy.server_momentum,
    },
    FedAdam: lambda c, a: {
        "eta": c.strategy.eta,
        "beta_1": c.strategy.beta_1,
        "beta_2": c.strategy.beta_2,
        "tau": c.strategy.tau,
    },
    FedAdagrad: lambda c, a: {"eta": c.strategy.eta, "tau": c.strategy.tau},
    FedYogi: lambda c, a: {
        "eta": c.strategy.eta,
        "beta_1": c.strategy.beta_1,
        "beta_2": c.strategy.beta_2,
        "tau": c.strategy.tau,
    },
    FedMedian: lambda c, a: {},
    FedTrimmedAvg: lambda c, a: {"beta": c.strategy.trim_beta},
    MatchedFedAvg: _matched,
    MaskedFedAvg: _masked,
    ModularFedAvg: lambda c, a: {"template": make_model(c)},
}
_BY_NAME = {base.__name__.lower(): (base, parameters) for base, parameters in _PARAMETERS.items()}

# The names live in the config (``strategy.name``); each names its Flower class, lower-cased.
STRATEGIES: dict[str, tuple[type[FedAvg], StrategyParameters]] = {name: _BY_NAME[name] for name in STRATEGY_NAMES}


@functools.cache
def circuit_strategy_class(base: type[FedAvg]) -> type[FedAvg]:
    """The class ``Circuit<Base>(CircuitAnalysisMixin, Base)``; FedAvg gets :class:`CircuitFedAvg`."""
    if base is FedAvg:
        return CircuitFedAvg
    if not issubclass(base, FedAvg):
        raise TypeError(
            f"{base.__name__} does not derive from FedAvg; the circuit analysis wraps FedAvg's aggregate_fit"
        )
    return type(
        f"Circuit{base.__name__}",
        (CircuitAnalysisMixin, base),
        {"__doc__": f"{base.__name__} with the circuit analysis in aggregate_fit."},
    )


def weighted_train_metrics(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Example-weighted mean of the clients' training loss and accuracy (Flower's fit metrics hook)."""
    total = sum(n for n, _ in metrics)
    out: Metrics = {}
    for key in ("train_loss", "train_accuracy"):
        values = [(n, m[key]) for n, m in metrics if isinstance(m.get(key), (int, float))]
        if values and total:
            out[key] = sum(n * float(v) for n, v in values) / sum(n for n, _ in values)
    return out


def build_strategy(
    config: ExperimentConfig,
    *,
    analyst: RoundAnalyst,
    run_dir: RunDirectory,
    initial_parameters: Parameters,
    start_round: int = 0,
    partition_sizes: Mapping[int, int] | None = None,
    holdout_sizes: Mapping[int, int] | None = None,
    round_listeners: Sequence[Callable[[RoundRecord], None]] = (),
) -> FedAvg:
    """The experiment's strategy, with the circuit analysis, ready for a ServerApp.

    ``start_round``: rounds already done; ``partition_sizes`` and ``holdout_sizes``: each
    partition's training and held-out rows as the server computed them (a client's
    example counts in fit and evaluate must match its own); ``round_listeners`` are called with every finished
    round's record.
    """
    base, specific = STRATEGIES[config.strategy.name]
    s = config.strategy
    sampled = max(1, int(config.clients * s.fraction_fit))
    evaluated = int(config.clients * s.fraction_evaluate)
    cls: Any = circuit_strategy_class(base)  # a FedAvg subclass whose constructor also takes the mixin's arguments
    return cls(
        experiment=config,
        analyst=analyst,
        run_dir=run_dir,
        start_round=start_round,
        partition_sizes=partition_sizes,
        holdout_sizes=holdout_sizes,
        round_listeners=round_listeners,
        fraction_fit=s.fraction_fit,
        fraction_evaluate=s.fraction_evaluate,
        min_fit_clients=s.min_fit_clients or sampled,
        min_evaluate_clients=max(1, evaluated),
        min_available_clients=config.clients,
        accept_failures=s.accept_failures,
        initial_parameters=initial_parameters,
        fit_metrics_aggregation_fn=weighted_train_metrics,
        evaluate_metrics_aggregation_fn=weighted_eval_metrics,
        **specific(config, analyst),
    )


def weighted_eval_metrics(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Example-weighted mean of the clients' held-out accuracy."""
    values = [(n, float(m["accuracy"])) for n, m in metrics if isinstance(m.get("accuracy"), (int, float)) and n > 0]
    total = sum(n for n, _ in values)
    return {"accuracy": sum(n * v for n, v in values) / total} if total else {}
