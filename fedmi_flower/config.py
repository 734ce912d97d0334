"""One typed experiment config: a TOML file plus overrides, validated with clear errors.

An experiment is a TOML file under ``experiments/`` (or any path). Overrides use
dotted keys, ``train.sparsity=0.995``, from the command line (``--set``) or from
Flower's run config (``flwr run . --run-config``). The config crosses the Flower
boundary as a flat run config (:meth:`ExperimentConfig.to_run_config`), so that the
ServerApp and every ClientApp rebuild exactly the same config, in simulation and in
deployment alike.

Every field is checked when the config is built: its type, its range or choices, and
unknown keys (with a did-you-mean). A :class:`ConfigError` names the field, the value
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from fedmi_flower.science.catalog import DATASETS, IMPORT_PATH, MODEL_NAMES
from fedmi_flower.science.objectives import ABLATIONS, DISJOINT_RULES, GATES, OBJECTIVES, objective_setting

if typing.TYPE_CHECKING:
    import torch.nn as nn

    from fedmi_flower.science.discovery import Discovery

EXPERIMENTS_ENV = "FEDMI_EXPERIMENTS"
STRATEGIES = (
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedadagrad",
    "fedyogi",
    "fedmedian",
    "fedtrimmedavg",
    "matchedfedavg",
    "maskedfedavg",
    "modularfedavg",
)
MATCHINGS = ("weights", "activations")
"""How two models' channels are paired (``science/alignment.py``): Git Re-Basin weight matching, or activations."""
STRATEGY_APIS = ("legacy", "message")
"""Flower's strategy APIs a run can speak (``apps/server_app.main``)."""
PARTITIONS = ("iid", "dirichlet", "classes-per-client", "shared-class", "class-map")
DATASET_NAMES = tuple(DATASETS)


class ConfigError(ValueError):
    """An experiment config is invalid; the message names the field and what is allowed."""


def _spec(
    default: Any = dataclasses.MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    choices: tuple = (),
    doc: str = "",
    factory: Any = None,
) -> Any:
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Dataset, partition among clients, and the server's probe and evaluation splits."""

    dataset: str = _spec("mnist", choices=DATASET_NAMES, doc="dataset to load")
    partition: str = _spec("iid", choices=PARTITIONS, doc="how training examples are split among clients")
    alpha: float = _spec(0.5, lo=0.0, lo_open=True, doc="Dirichlet concentration (partition = dirichlet)")
    min_client_size: int = _spec(10, lo=1, doc="smallest client a Dirichlet draw may produce")
    classes_per_client: int = _spec(2, lo=1, doc="disjoint classes per client (partition = classes-per-client)")
    shared_class: int = _spec(0, lo=0, doc="class every client holds (partition = shared-class)")
    distinct_per_client: int = _spec(2, lo=0, doc="classes of its own per client (partition = shared-class)")
    class_map: list[list[int]] | None = _spec(None, doc="explicit classes of each client (partition = class-map)")
    max_per_client: int | None = _spec(
        None, lo=1, doc="keep at most this many training examples per client (seeded subset)"
    )
    holdout_fraction: float = _spec(
        0.1, lo=0.0, hi=1.0, hi_open=True, doc="share of a client's examples held out for its evaluate()"
    )
    probe_fraction: float = _spec(
        0.5,
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
        doc="share of the test split the server discovers global circuits on; the rest evaluates",
    )
    eval_per_class: int | None = _spec(
        None, lo=1, doc="evaluate circuits and accuracy on at most this many images per class of the evaluation split"
    )


@dataclass
class TrainConfig:
    """Sparse local training (paper section 2.2, phase A)."""

    epochs: int = _spec(5, lo=1, doc="local epochs per round")
    lr: float = _spec(1e-3, lo=0.0, lo_open=True, doc="Adam learning rate")
    batch_size: int = _spec(256, lo=1, doc="batch size")
    sparsity: float = _spec(0.99, lo=0.0, hi=1.0, hi_open=True, doc="target weight sparsity; 0 trains densely")
    min_per_neuron: int = _spec(4, lo=0, doc="minimum nonzero weights per conv filter and linear row (Eq. 2)")
    anneal_fraction: float = _spec(
        0.5, lo=0.0, hi=1.0, lo_open=True, doc="share of local steps over which sparsity rises from 0 to the target"
    )
    sparsity_scope: str = _spec(
        "tensor",
        choices=("tensor", "global"),
        doc=(
            "tensor: every weight tensor pruned to the target; "
            "global: one budget over all weights (Eq. 1), per-neuron floor kept"
        ),
    )
    anneal: str = _spec(
        "every_round",
        choices=("every_round", "first_round"),
        doc=(
            "re-anneal sparsity from 0 in every round (the paper's reference) or only in "
            "round 1, holding the target after"
        ),
    )
    disjoint: str = _spec(
        "off",
        choices=DISJOINT_RULES,
        doc=(
            "disjoint-circuit training, the paper's proposed cure (section 4): circuits: keep off the channels "
            "other clients' circuits of classes this client does not hold used last round; budget: keep off "
            "every site's channel blocks of other classes"
        ),
    )
    restricted_softmax: float = _spec(
        1.0,
        lo=0.0,
        hi=1.0,
        doc=(
            "FedRS's restricted softmax (a label-skew baseline): the logits of classes a client lacks are scaled "
            "by this in its loss; 1 is plain softmax, 0 leaves their classifier rows untouched"
        ),
    )
    frozen_head: bool = _spec(
        False,
        doc=(
            "FedBABU (a label-skew baseline): clients train the body only; the classifier keeps the initial "
            "weights, one head shared by all"
        ),
    )
    disjoint_lambda: float = _spec(
        0.0,
        lo=0.0,
        doc=(
            "price per unit of mean absolute activation on the kept-off channels (train.disjoint); 0 with a rule "
            "on is the cure's control: the server sends the circuits, training pays nothing"
        ),
    )


@dataclass
class DiscoveryConfig:
    """Circuit discovery (paper section 2.2, phase B); field names are those of ``find_circuits``.

    ``objective = "paper"`` is Eq. 3 (target images only); ``"faithful"`` asks the circuit to
    agree with the full model on target and other images (``fedmi_flower.science.circuits``).
    ``"auto"`` settings take the objective's defaults (``OBJECTIVE_DEFAULTS``).
    """

    objective: str = _spec(
        "faithful", choices=OBJECTIVES, doc="paper: Eq. 3, target images only; faithful: agree with the model"
    )
    steps: int = _spec(200, lo=1, doc="optimisation steps")
    lr: float = _spec(0.1, lo=0.0, lo_open=True, doc="Adam learning rate of the gate scores")
    l0_lambda: float | None = _spec(
        None, lo=0.0, doc="L0 penalty coefficient; omitted: the objective's (0.01 for both)"
    )
    init_score: float = _spec(2.0, doc="initial gate score (positive: all gates open)")
    batch_per_class: int | None = _spec(
        None,
        lo=1,
        doc="images of the class per step (faithful: and as many others); omitted: paper 32, faithful 16",
    )
    ablation: str = _spec(
        "auto", choices=("auto", *ABLATIONS), doc="what a closed channel outputs; auto: paper zero, faithful mean"
    )
    gate: str = _spec(
        "auto",
        choices=("auto", *GATES),
        doc=(
            "straight-through Heaviside, sigmoid with an annealed temperature, or hard-concrete (Louizos et al. "
            "2018, stochastic); auto: paper straight-through, faithful annealed"
        ),
    )
    temperature_start: float = _spec(1.0, lo=0.0, lo_open=True, doc="annealed gate: first temperature")
    temperature_end: float = _spec(0.1, lo=0.0, lo_open=True, doc="annealed gate: last temperature")
    target_faithfulness: float | None = _spec(
        None,
        lo=0.5,
        lo_open=True,  # an empty circuit already agrees half the time
        hi=1.0,
        doc="the smallest top-scored circuit that agrees with the model this often; omitted: scores above 0",
    )
    negatives: str = _spec(
        "own",
        choices=("own", "reference"),
        doc=(
            "faithful: other images from the client's own rows (the reference set when it holds one class), "
            "or always from the reference set"
        ),
    )
    reference_size: int = _spec(512, lo=1, doc="images in the reference set (unlabelled, from the server's probe rows)")
    patience: int | None = _spec(
        None, lo=1, doc="stop a class early once its gates have not changed for this many steps"
    )
    min_steps: int = _spec(0, lo=0, doc="never stop early before this many steps")

    @property
    def resolved_ablation(self) -> str:
        """The ablation used: the configured one, or the objective's."""
        return str(objective_setting(self.objective, "ablation", None if self.ablation == "auto" else self.ablation))

    @property
    def needs_reference(self) -> bool:
        """Whether the run's discovery needs its reference images: other images for the faithful objective or a
        target faithfulness, and the common set of channel means for mean ablation.

        Clients load them on first use whatever this says: a one-class client's circuits are scored with them
        beside its rows under any objective (``CircuitClient.local_eval_split``)."""
        return self.objective == "faithful" or self.target_faithfulness is not None or self.resolved_ablation == "mean"

    def uses_reference(self, classes_held: int) -> bool:
        """Whether discovery on rows of ``classes_held`` classes takes its other images from the reference set.

        Count a class as held when there are at least ``analysis.min_class_examples`` rows of it:
        a handful of stray images of another class are no set of other images.
        """
        wants_others = self.objective == "faithful" or self.target_faithfulness is not None
        return wants_others and (self.negatives == "reference" or classes_held < 2)

    def recipe(self) -> Discovery:
        """The one discovery recipe clients, the server's analysis and the frontier follow (``auto`` resolved)."""
        from fedmi_flower.science.discovery import Discovery  # deferred: the config is read without torch

        return Discovery(
            objective=self.objective,
            gate=None if self.gate == "auto" else self.gate,
            steps=self.steps,
            lr=self.lr,
            l0_lambda=self.l0_lambda,
            init_score=self.init_score,
            temperature_start=self.temperature_start,
            temperature_end=self.temperature_end,
            batch_per_class=self.batch_per_class,
            ablation=None if self.ablation == "auto" else self.ablation,
            target_faithfulness=self.target_faithfulness,
            negatives=self.negatives,
            patience=self.patience,
            min_steps=self.min_steps,
        )


@dataclass
class AnalysisConfig:
    """Which circuits are found and how they are scored."""

    classes: list[int] | None = _spec(None, doc="classes to analyse; omitted: every class a client holds")
    min_class_examples: int = _spec(
        20, lo=1, doc="a client analyses a class only if it holds at least this many examples of it"
    )
    evaluate_local: bool = _spec(
        True,
        doc="clients score their circuits on their own model and held-out rows (training rows when none are held out)",
    )
    noise_floor: bool = _spec(
        True,
        doc=(
            "measure the noise floor of every IoU view each round: the global model's circuits found again (another "
            "seed and draw; a holder's rows for every class), and floor_client's own"
        ),
    )
    integrated_faithfulness: bool = _spec(
        True,
        doc=(
            "score the global, local and control circuits' faithfulness over circuit size (their top-scored "
            "channels at 1-100% of the model's channels) and record its areas, CPR and CMD (the MIB benchmark's)"
        ),
    )
    counterfactual: bool = _spec(
        False,
        doc=(
            "counterfactual aggregation: for every circuit that works on its own model and collapses on the global "
            "weights, aggregate again with each other client left out (same rule, no retraining) and score it there: "
            "whose update broke it"
        ),
    )
    counterfactual_clients: int = _spec(
        8,
        lo=1,
        doc=(
            "counterfactual aggregation leaves out at most this many clients in turn (a seeded draw of the round's "
            "aggregated clients when there are more; the record says how many): each costs one aggregation and "
            "one scoring pass"
        ),
    )
    random_control: bool = _spec(
        True,
        doc="discover circuits on a never-trained model of the same architecture and sparsity, beside the real ones",
    )
    stitching: bool = _spec(
        True,
        doc=(
            "circuit stitching: the union, intersection and majority of the clients' circuits of each class, scored "
            "on the global weights beside each client's own"
        ),
    )
    cka: bool = _spec(
        True,
        doc=(
            "linear CKA of each client's model with the global model on the reference images, per site and masked to "
            "each class's circuits (permutation invariant, beside raw and aligned IoU)"
        ),
    )
    second_method: bool = _spec(
        True,
        doc=(
            "a second discovery method (attribution: gradient x (activation - fill), one pass) for the global model "
            "and every client's model, with its IoU to the learned circuits and its verdicts"
        ),
    )
    ablations: bool = _spec(
        True,
        doc="score every circuit again under zero, mean and resample ablation and count the verdicts that change",
    )
    cascade: bool = _spec(
        False,
        doc=(
            "cascading randomisation: re-initialise the global model from its top layer down, one layer at a time, "
            "and score its circuits at every stage (a control; on in the controls experiment)"
        ),
    )
    label_control: bool = _spec(
        False,
        doc=(
            "a label-randomised control: a model trained on shuffled labels, whose circuits must all be degenerate "
            "(trained once per run on the server; on in the controls experiment)"
        ),
    )
    floor_client: int = _spec(
        0,
        lo=0,
        doc=(
            "partition whose training rows give the local-global noise floor first (other holders' rows cover the "
            "classes it lacks) and which measures its own seed floor"
        ),
    )
    alignment: str = _spec(
        "weights",
        choices=(*MATCHINGS, "off"),
        doc=(
            "aligned IoU: before comparing masks, match each client's channels to the global model's (weights: "
            "weight matching; activations: on the probe rows); off: raw IoU only"
        ),
    )


@dataclass
class FedProxOptions:
    """``[strategy.fedprox]``: FedProx (Li et al. 2020)."""

    proximal_mu: float = _spec(0.01, lo=0.0, doc="proximal coefficient: clients add mu/2 ||w - w_global||^2")


@dataclass
class FedAvgMOptions:
    """``[strategy.fedavgm]``: FedAvg with server momentum (Hsu et al. 2019)."""

    server_learning_rate: float = _spec(1.0, lo=0.0, lo_open=True, doc="server learning rate")
    server_momentum: float = _spec(0.9, lo=0.0, hi=1.0, hi_open=True, doc="server momentum")


@dataclass
class FedOptOptions:
    """``[strategy.fedadam]`` and ``[strategy.fedyogi]``: adaptive server optimisers (Reddi et al. 2021)."""

    eta: float = _spec(0.01, lo=0.0, lo_open=True, doc="server learning rate")
    beta_1: float = _spec(0.9, lo=0.0, hi=1.0, hi_open=True, doc="first moment decay")
    beta_2: float = _spec(0.99, lo=0.0, hi=1.0, hi_open=True, doc="second moment decay")
    tau: float = _spec(1e-3, lo=0.0, lo_open=True, doc="adaptivity")


@dataclass
class FedAdagradOptions:
    """``[strategy.fedadagrad]`` (Reddi et al. 2021)."""

    eta: float = _spec(0.01, lo=0.0, lo_open=True, doc="server learning rate")
    tau: float = _spec(1e-3, lo=0.0, lo_open=True, doc="adaptivity")


@dataclass
class FedTrimmedAvgOptions:
    """``[strategy.fedtrimmedavg]`` (Yin et al. 2018)."""

    beta: float = _spec(0.2, lo=0.0, hi=0.5, hi_open=True, doc="share trimmed from each end")


@dataclass
class MatchedOptions:
    """``[strategy.matchedfedavg]``: FedAvg of permutation-aligned clients (docs/aggregation.md)."""

    matching: str = _spec(
        "weights",
        choices=MATCHINGS,
        doc="how each client's channels are paired with the global model's: weights, or activations on the probe rows",
    )


@dataclass
class MaskedOptions:
    """``[strategy.maskedfedavg]``: the mean over the clients where a weight is nonzero (docs/aggregation.md)."""

    prune: bool = _spec(True, doc="prune the merged weights back to train.sparsity (else keep the clients' union)")


FLAT_STRATEGY_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "proximal_mu": (("fedprox", "proximal_mu"),),
    "server_learning_rate": (("fedavgm", "server_learning_rate"),),
    "server_momentum": (("fedavgm", "server_momentum"),),
    "eta": (("fedadam", "eta"), ("fedyogi", "eta"), ("fedadagrad", "eta")),
    "beta_1": (("fedadam", "beta_1"), ("fedyogi", "beta_1")),
    "beta_2": (("fedadam", "beta_2"), ("fedyogi", "beta_2")),
    "tau": (("fedadam", "tau"), ("fedyogi", "tau"), ("fedadagrad", "tau")),
    "trim_beta": (("fedtrimmedavg", "beta"),),
    "matching": (("matchedfedavg", "matching"),),
    "masked_prune": (("maskedfedavg", "prune"),),
}
"""Where each key of the flat ``[strategy]`` table of earlier versions now lives (their run directories read as
they were written)."""


def _nest_flat_strategy_keys(table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` with a ``[strategy]`` of earlier versions' flat keys moved into the per-strategy tables."""
    strategy = table.get("strategy")
    if not isinstance(strategy, Mapping) or not FLAT_STRATEGY_KEYS.keys() & strategy.keys():
        return dict(table)
    moved = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in strategy.items() if k not in FLAT_STRATEGY_KEYS}
    for key, places in FLAT_STRATEGY_KEYS.items():
        if key in strategy:
            for sub, field_name in places:
                moved.setdefault(sub, {}).setdefault(field_name, strategy[key])
    return {**table, "strategy": moved}


@dataclass
class StrategyConfig:
    """The Flower aggregation strategy and its parameters."""

    name: str = _spec(
        "fedavg",
        doc=(
            f"aggregation strategy: one of {', '.join(STRATEGIES)} (its options in [strategy.<name>]), or a "
            "strategy class of either Flower API as 'package.module:Class' (its arguments in strategy.args)"
        ),
    )
    fraction_fit: float = _spec(
        1.0, lo=0.0, hi=1.0, lo_open=True, doc="share of clients sampled for training each round"
    )
    fraction_evaluate: float = _spec(
        0.0, lo=0.0, hi=1.0, doc="share of clients sampled for federated evaluation each round"
    )
    min_fit_clients: int | None = _spec(None, lo=1, doc="fewest clients a round trains on; default: all sampled")
    accept_failures: bool = _spec(True, doc="aggregate the clients that reported when others failed")
    wait_for_clients: float = _spec(
        300.0, lo=0.0, lo_open=True, doc="seconds to wait for all clients to connect before a round fails with an error"
    )
    round_timeout: float | None = _spec(
        None,
        lo=0.0,
        lo_open=True,
        doc=(
            "seconds a round waits for its clients' replies; the round then goes on with those that answered "
            "and names the silent ones (default: wait for every one)"
        ),
    )
    fedprox: FedProxOptions = _spec(factory=FedProxOptions)
    fedavgm: FedAvgMOptions = _spec(factory=FedAvgMOptions)
    fedadam: FedOptOptions = _spec(factory=FedOptOptions)
    fedyogi: FedOptOptions = _spec(factory=FedOptOptions)
    fedadagrad: FedAdagradOptions = _spec(factory=FedAdagradOptions)
    fedtrimmedavg: FedTrimmedAvgOptions = _spec(factory=FedTrimmedAvgOptions)
    matchedfedavg: MatchedOptions = _spec(factory=MatchedOptions)
    maskedfedavg: MaskedOptions = _spec(factory=MaskedOptions)
    args: dict[str, Any] = _spec(
        factory=dict,
        doc=(
            "keyword arguments of a strategy named by import path (strategy.name = 'pkg.module:Class'), "
            "e.g. {proximal_mu = 0.1}"
        ),
    )
    api: str = _spec(
        "legacy",
        choices=STRATEGY_APIS,
        doc=(
            "Flower strategy API the run speaks: legacy (FedAvg subclass, aggregate_fit) or message "
            "(flwr.serverapp Strategy, aggregate_train); the same analysis and records either way"
        ),
    )


@dataclass
class ResourcesConfig:
    """Where clients run."""

    device: str = _spec("auto", choices=("auto", "cpu", "cuda"), doc="auto: CUDA when available, else CPU")
    client_cpus: float = _spec(1.0, lo=0.0, lo_open=True, doc="CPUs per Ray virtual client (also its torch threads)")
    client_gpus: float = _spec(0.0, lo=0.0, doc="GPU fraction per Ray virtual client")


@dataclass
class FaultsConfig:
    """Client failures injected on purpose, to see what a run survives."""

    fail_clients: list[int] | None = _spec(None, doc="partition ids whose fit raises (in fail_rounds, or every round)")
    fail_rounds: list[int] | None = _spec(None, doc="rounds in which fail_clients raise; omitted: every round")
    fail_probability: float = _spec(
        0.0, lo=0.0, hi=1.0, doc="every client's fit raises with this probability per round (seeded)"
    )


@dataclass
class LoggingConfig:
    """Where a run's numbers go besides its run directory."""

    tensorboard: str | None = _spec(
        None, doc="a folder for TensorBoard events: every round's scalars go to <folder>/<run name>"
    )


@dataclass
class ModelConfig:
    """The network clients train and every analysis looks at; saved with the run (config.toml)."""

    name: str = _spec(
        "simple-cnn",
        doc=f"built-in model ({', '.join(MODEL_NAMES)}) or your own builder as 'package.module:builder' "
        "(docs/your-own-model.md)",
    )
    args: dict[str, Any] = _spec(
        factory=dict,
        doc="keyword arguments of the builder, e.g. {channels = [32, 64]}; input and classes come from the dataset",
    )


@dataclass
class ExperimentConfig:
    """A whole experiment. Build it with :func:`load_experiment` or :meth:`from_run_config`."""

    name: str = _spec("unnamed", doc="experiment name")
    description: str = _spec("", doc="one line on what the experiment shows")
    measured_minutes: float | None = _spec(
        None,
        lo=0.0,
        doc="wall time of one run as written, measured on 2 CPU cores (shown by `fedmi list`; not a setting)",
    )
    seed: int = _spec(0, lo=0, doc="the run's seed; every random choice derives from it")
    rounds: int = _spec(10, lo=1, doc="federated rounds")
    clients: int = _spec(5, lo=1, doc="number of clients (partitions)")
    model: ModelConfig = _spec(factory=ModelConfig)
    data: DataConfig = _spec(factory=DataConfig)
    train: TrainConfig = _spec(factory=TrainConfig)
    discovery: DiscoveryConfig = _spec(factory=DiscoveryConfig)
    analysis: AnalysisConfig = _spec(factory=AnalysisConfig)
    strategy: StrategyConfig = _spec(factory=StrategyConfig)
    resources: ResourcesConfig = _spec(factory=ResourcesConfig)
    faults: FaultsConfig = _spec(factory=FaultsConfig)
    logging: LoggingConfig = _spec(factory=LoggingConfig)

    @property
    def num_classes(self) -> int:
        """Classes of the dataset (its spec)."""
        return DATASETS[self.data.dataset].num_classes

    def import_paths(self) -> list[str]:
        """The ``package.module:attribute`` names the run imports (its model builder, its strategy class)."""
        return [name for name in (self.model.name, self.strategy.name) if IMPORT_PATH.match(name)]

    # ------------------------------------------------------------------ conversions

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (what a TOML file holds)."""
        return dataclasses.asdict(self)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat Flower run config: dotted keys, lists as JSON strings, ``None`` left out."""
        flat: dict[str, bool | int | float | str] = {}

        def walk(prefix: str, value: Any) -> None:
            if prefix in _FREE_TABLES:  # a builder's keyword arguments: one JSON value, not dotted keys
                flat[prefix[:-1]] = json.dumps(value, sort_keys=True)
            elif isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}{k}.", v)
            elif value is not None:
                flat[prefix[:-1]] = json.dumps(value) if isinstance(value, list) else value

        walk("", self.to_dict())
        return flat

    @classmethod
    def from_dict(cls, table: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
        """Build and validate a config from a nested dict."""
        config = _build(cls, _nest_flat_strategy_keys(table), "", source)
        config.validate(source)
        return config

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ExperimentConfig:
        """Rebuild a config from a Flower run config.

        An ``experiment`` key names an experiment file (or path) to start from; every
        other dotted key matching a field overrides it, and so does every ``key=value``
        in the ``set`` string (``flwr run`` only overrides keys that pyproject.toml
        declares, so ``set`` carries the rest). Keys of other kinds (``out``,
        ``data-root``) are ignored here.
        """
        base = load_experiment(str(run_config["experiment"])).to_dict() if run_config.get("experiment") else {}
        overrides = {k: v for k, v in run_config.items() if k not in RUNTIME_KEYS}
        overrides.update(parse_overrides(str(run_config.get("set") or "")))
        return cls.from_dict(apply_overrides(base, overrides), "run config")

    # ------------------------------------------------------------------ checks across fields

    def validate(self, source: str = "config") -> None:
        """Checks that involve several fields; single fields are checked while building."""

        def fail(key: str, value: Any, why: str) -> NoReturn:
            raise ConfigError(f"{source}: {key} = {value!r} {why}")

        d = self.data
        n = self.num_classes
        top = n - 1
        if d.partition == "classes-per-client" and self.clients * d.classes_per_client > n:
            fail(
                "data.classes_per_client",
                d.classes_per_client,
                f"with {self.clients} clients needs {self.clients * d.classes_per_client} "
                f"disjoint classes; {d.dataset} has {n}",
            )
        if d.partition == "shared-class":
            if d.shared_class > top:
                fail("data.shared_class", d.shared_class, f"is not a class of {d.dataset} (0..{top})")
            if self.clients * d.distinct_per_client > top:
                fail(
                    "data.distinct_per_client",
                    d.distinct_per_client,
                    f"with {self.clients} clients needs {self.clients * d.distinct_per_client} "
                    f"classes besides the shared one; {top} exist",
                )
        if d.partition == "class-map":
            if d.class_map is None:
                fail("data.class_map", None, "must be given when data.partition = 'class-map'")
            if len(d.class_map) != self.clients:
                fail(
                    "data.class_map",
                    d.class_map,
                    f"has {len(d.class_map)} entries but clients = {self.clients}; give one class list per client",
                )
            for i, classes in enumerate(d.class_map):
                if not classes or any(not 0 <= c <= top for c in classes):
                    fail("data.class_map", d.class_map, f"entry {i} must be a non-empty list of classes in 0..{top}")
        if self.train.disjoint == "off" and self.train.disjoint_lambda > 0:
            # The other way round is allowed: a rule at lambda 0 is the cure's control (the same wire, no price).
            fail(
                "train.disjoint_lambda",
                self.train.disjoint_lambda,
                "prices nothing while train.disjoint = off: set train.disjoint = circuits or budget",
            )
        if self.analysis.classes is not None:
            if not self.analysis.classes or any(not 0 <= c <= top for c in self.analysis.classes):
                fail(
                    "analysis.classes",
                    self.analysis.classes,
                    f"must be a non-empty list of classes in 0..{top} (or left out for every class a client holds)",
                )
        if self.model.name not in MODEL_NAMES and not IMPORT_PATH.match(self.model.name):
            fail(
                "model.name",
                self.model.name,
                f"is not a model: choose one of {', '.join(MODEL_NAMES)}, or name your own builder as "
                "'package.module:builder' (docs/your-own-model.md)",
            )
        if self.strategy.name not in STRATEGIES and not IMPORT_PATH.match(self.strategy.name):
            near = difflib.get_close_matches(self.strategy.name, STRATEGIES, n=1)
            fail(
                "strategy.name",
                self.strategy.name,
                f"is not a strategy{f' (did you mean {near[0]!r}?)' if near else ''}: choose one of "
                f"{', '.join(STRATEGIES)}, or name a strategy class of either Flower API as 'package.module:Class'",
            )
        if self.strategy.args and not IMPORT_PATH.match(self.strategy.name):
            fail(
                "strategy.args",
                self.strategy.args,
                "is for a strategy named by import path; a built-in strategy's options are in its own "
                "table, [strategy.<name>] (`fedmi keys strategy`)",
            )
        if self.strategy.api == "message" and self.strategy.fraction_evaluate > 0:
            fail(
                "strategy.fraction_evaluate",
                self.strategy.fraction_evaluate,
                "asks for federated evaluation, which only strategy.api = 'legacy' runs; set it to 0 or use legacy",
            )
        if self.strategy.fraction_evaluate > 0 and d.holdout_fraction == 0:
            fail(
                "data.holdout_fraction",
                d.holdout_fraction,
                "leaves clients nothing to evaluate on while strategy.fraction_evaluate = "
                f"{self.strategy.fraction_evaluate}; hold rows out (e.g. 0.1) or set strategy.fraction_evaluate = 0",
            )
        if self.analysis.floor_client >= self.clients:
            fail("analysis.floor_client", self.analysis.floor_client, f"is not a partition (0..{self.clients - 1})")
        if self.strategy.min_fit_clients is not None and self.strategy.min_fit_clients > self.clients:
            fail("strategy.min_fit_clients", self.strategy.min_fit_clients, f"exceeds clients = {self.clients}")
        for key, ids, top in (
            ("faults.fail_clients", self.faults.fail_clients, self.clients),
            ("faults.fail_rounds", self.faults.fail_rounds, self.rounds + 1),
        ):
            if ids is not None and any(not 0 <= i < top for i in ids):
                fail(key, ids, f"must hold values in 0..{top - 1}")
        if self.discovery.patience is not None and self.discovery.min_steps > self.discovery.steps:
            fail("discovery.min_steps", self.discovery.min_steps, f"exceeds discovery.steps = {self.discovery.steps}")


def make_model(config: ExperimentConfig, seed: int | None = None) -> nn.Module:
    """The experiment's model (``[model]``) for its dataset's images and classes, initialised from ``seed`` when given.

    The one place a model is built: clients, server, views and resume all call it with
    the run's saved config, so each rebuilds exactly the network that ran. Raises
    :class:`~fedmi_flower.science.models.ModelError` when the model cannot be built or
    does not speak the circuit interface on the dataset's images.
    """
    from fedmi_flower.science.models import build_model  # deferred: the config is read without torch

    spec = DATASETS[config.data.dataset]
    channels, size, _ = spec.image_shape
    return build_model(
        config.model.name,
        config.model.args,
        in_channels=channels,
        num_classes=spec.num_classes,
        image_size=size,
        seed=seed,
    )


_FREE_TABLES = frozenset({"model.args.", "strategy.args."})
"""Tables whose keys are not config fields (a model builder's arguments)."""


RUNTIME_KEYS = frozenset({"experiment", "set", "out", "data-root", "resume", "console"})
"""Run-config keys that are not experiment fields: where to read and write."""


# ---------------------------------------------------------------------- building and checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert JSON strings and ints where harmless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key, source)
    if origin is list:
        if isinstance(value, str):  # lists travel through Flower's run config as JSON
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(
                    f"{source}: {key} = {value!r} is not a list; write it as [1, 2] (JSON/TOML)"
                ) from None
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} = {value!r} must be a list ({_type_name(tp)})")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):  # tables travel through Flower's run config as JSON
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise ConfigError(f"{source}: {key} = {value!r} is not a table; write it as {{k = 1}} (TOML)") from None
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} = {value!r} must be a table of keyword arguments")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} = {value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{source}: {key} = {value!r} must be a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} = {value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} = {value!r} must be a string")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def _check_range(value: Any, meta: Mapping[str, Any], key: str, source: str) -> None:
    if value is None:
        return
    if meta["choices"] and value not in meta["choices"]:
        near = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(
            f"{source}: {key} = {value!r} is not allowed{hint}; choose one of {', '.join(map(repr, meta['choices']))}"
        )
    lo, hi = meta["lo"], meta["hi"]
    if lo is None and hi is None or not isinstance(value, (int, float)):
        return
    bad = (lo is not None and (value <= lo if meta["lo_open"] else value < lo)) or (
        hi is not None and (value >= hi if meta["hi_open"] else value > hi)
    )
    if bad:
        left = "(" if meta["lo_open"] else "["
        right = ")" if meta["hi_open"] else "]"
        allowed = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{source}: {key} = {value!r} is out of range; allowed: {allowed}")


def _build(cls: type, table: Mapping[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: [{prefix[:-1]}] must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {prefix + near[0]!r}?" if near else ""
            raise ConfigError(f"{source}: unknown key {prefix + key!r}{hint} (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            values[name] = _build(tp, table.get(name, {}), f"{key}.", source)
            continue
        if name not in table:
            continue
        value = _coerce(table[name], tp, key, source)
        _check_range(value, f.metadata, key, source)
        values[name] = value
    return cls(**values)


@dataclass(frozen=True)
class KeyDoc:
    """One config key as ``fedmi keys`` shows it."""

    key: str
    default: Any
    allowed: str
    doc: str


def _allowed(meta: Mapping[str, Any], tp: Any) -> str:
    if meta["choices"]:
        return " | ".join(map(str, meta["choices"]))
    lo, hi = meta["lo"], meta["hi"]
    if lo is None and hi is None:
        return _type_name(tp).replace("NoneType", "none")
    left = "(" if meta["lo_open"] else "["
    right = ")" if meta["hi_open"] else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def config_keys(table: str | None = None) -> list[KeyDoc]:
    """Every key of the experiment config (of one ``[table]`` when given): default, what is allowed, what it does.

    Raises
    ------
    ConfigError
        When ``table`` is not a table of the config.
    """
    hints = typing.get_type_hints(ExperimentConfig)
    tables = [f.name for f in dataclasses.fields(ExperimentConfig) if dataclasses.is_dataclass(hints[f.name])]
    if table is not None and table not in tables:
        near = difflib.get_close_matches(table, tables, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"no config table {table!r}{hint} (tables: {', '.join(tables)}; none: every key)")
    out: list[KeyDoc] = []

    def walk(cls: Any, prefix: str) -> None:
        types_of = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = types_of[f.name]
            if dataclasses.is_dataclass(tp):
                if table is None or prefix or f.name == table:
                    walk(tp, f"{prefix}{f.name}.")
                continue
            if table is not None and not prefix:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out.append(KeyDoc(prefix + f.name, default, _allowed(f.metadata, tp), f.metadata.get("doc", "")))

    walk(ExperimentConfig, "")
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` with a TOML value (``0.9``, ``true``, ``[0, 1]``, ``"x"``); bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.sparsity=0.995")
    key, raw = (s.strip() for s in text.split("=", 1))
    if not key:
        raise ConfigError(f"override {text!r} names no key; it must look like key=value, e.g. train.sparsity=0.995")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def parse_overrides(text: str) -> dict[str, Any]:
    """Parse ``"train.sparsity=0.99 analysis.classes=[0, 1]; rounds=5"`` (spaces or ``;`` between pairs)."""
    pairs = [p for p in re.split(r"[;\s]+(?=[A-Za-z_][\w.-]*\s*=)", text.strip().strip(";")) if p.strip()]
    return dict(parse_override(p.strip().rstrip(";")) for p in pairs)


def apply_overrides(table: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of nested ``table`` with dotted-key ``overrides`` applied."""
    out = json.loads(json.dumps(table))  # deep copy of plain data
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted!r}: {p!r} is a value, not a table")
            node = child
        node[leaf] = value
    return out


# ---------------------------------------------------------------------- experiment files


def experiments_dir() -> Path:
    """Folder of the bundled experiments: ``$FEDMI_EXPERIMENTS``, else the package's ``fedmi_flower.experiments``.

    The checkout's top-level ``experiments/`` folder, installed inside the package as data (a
    wheel) or mapped onto it (an editable install, a checkout on ``PYTHONPATH``).
    """
    env = os.environ.get(EXPERIMENTS_ENV)
    if env:
        return Path(env)
    import importlib

    try:
        bundled = importlib.import_module(f"{__package__}.experiments")
    except ImportError:
        return Path(__file__).resolve().parent / "experiments"  # listed as empty, with its hint
    return Path(next(iter(bundled.__path__)))


def list_experiments() -> dict[str, Path]:
    """Bundled experiments by name."""
    folder = experiments_dir()
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def experiment_path(name_or_path: str) -> Path:
    """Resolve an experiment name (``quickstart``) or a TOML path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"experiment file {path} does not exist")
        return path
    known = list_experiments()
    if name_or_path not in known:
        near = difflib.get_close_matches(name_or_path, list(known), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(
            f"unknown experiment {name_or_path!r}{hint}; "
            f"`fedmi list` shows {', '.join(known) or 'none (no experiments folder found)'}"
        )
    return known[name_or_path]


def _read_experiment(name_or_path: str) -> tuple[Path, dict[str, Any], dict[str, list[Any]]]:
    """Read an experiment file; return its path, its table and its ``[sweep]`` table."""
    path = experiment_path(name_or_path)
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    table.setdefault("name", path.stem)
    sweep = table.pop("sweep", {})
    if not isinstance(sweep, dict) or any(not isinstance(v, list) or not v for v in sweep.values()):
        raise ConfigError(
            f'{path}: [sweep] must map dotted keys to non-empty lists of values, e.g. "train.sparsity" = [0.95, 0.99]'
        )
    return path, table, sweep


def load_experiment(name_or_path: str, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Load an experiment file, apply dotted-key overrides, validate.

    A ``[sweep]`` table is ignored here (the base experiment is returned); see
    :func:`load_sweep`.

    Raises
    ------
    ConfigError
        On an unreadable file, an unknown key or a value out of range.
    """
    path, table, _ = _read_experiment(name_or_path)
    return ExperimentConfig.from_dict(apply_overrides(table, overrides or {}), str(path))


def _label(value: Any) -> str:
    return json.dumps(value).replace(" ", "").replace('"', "")


def point_name(name: str, point: Mapping[str, Any]) -> str:
    """A sweep point's run name: ``name`` and each swept key's last part with its value, ``iid-sparsity=0.95``."""
    return "-".join([name] + [f"{k.rsplit('.', 1)[-1]}={_label(v)}" for k, v in point.items()])


def load_sweep(
    name_or_path: str,
    overrides: Mapping[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    sweep: Mapping[str, list[Any]] | None = None,
) -> list[ExperimentConfig]:
    """Load an experiment as one config per point of its ``[sweep]`` (one config without a sweep).

    A swept key that ``overrides`` also sets is not swept. ``seeds`` adds (or
    replaces) ``seed`` as the last swept key: every point runs once per seed. Each
    config is named ``<experiment>-<key>=<value>`` after the swept values, e.g.
    ``sparsity-ablation-sparsity=0.95-seed=1``. ``sweep`` replaces (or adds) swept keys' values, as a
    study's shorter settings do.
    """
    overrides = dict(overrides or {})
    path, table, swept = _read_experiment(name_or_path)
    if sweep and any(not isinstance(v, list) or not v for v in sweep.values()):
        raise ConfigError(f"{path}: a replacement sweep must map dotted keys to non-empty lists of values")
    sweep = {**swept, **(sweep or {})}
    if seeds is not None:
        if "seed" in overrides:
            raise ConfigError(
                f"{path}: seed is set both by an override ({overrides['seed']!r}) and by "
                f"seeds {list(seeds)}; give one of them"
            )
        sweep = {k: v for k, v in sweep.items() if k != "seed"} | {"seed": list(seeds)}
    sweep = {k: v for k, v in sweep.items() if k not in overrides}
    configs = []
    for values in itertools.product(*sweep.values()):
        point = dict(zip(sweep, values))
        source = f"{path} with --set {', '.join(overrides)}" if overrides else str(path)
        config = ExperimentConfig.from_dict(apply_overrides(table, {**point, **overrides}), source)
        if point:
            config.name = point_name(config.name, point)
        configs.append(config)
    return configs
