"""Flower ServerApp: ``server_fn`` builds the experiment's strategy with the circuit analysis.

The run config names the experiment (``experiment`` plus dotted overrides, or the
whole flattened config), the run directory (``out``) and the data root
(``data-root``). The server loads only the test split: half of it (``probe_fraction``)
for discovering the global circuits, the rest for every score and accuracy.
"""

from __future__ import annotations

from logging import INFO
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from flwr.common import Context, log, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from strategies import build_strategy

from .analysis import RoundAnalyst
from .config import ExperimentConfig
from .data import experiment_partitions, load_labels, load_split, server_splits
from .model import build_model, get_weights
from .results import RunDirectory
from .seeding import derive_seed


def default_run_dir(config: ExperimentConfig) -> Path:
    """``runs/<experiment>-<date>-<time>``."""
    return Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def server_device(config: ExperimentConfig) -> torch.device:
    """CUDA for the server's analysis when available and not ruled out by the config."""
    if config.resources.device != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def prepare_run(config: ExperimentConfig, out: str | Path | None, data_root: str | None) -> tuple[RunDirectory, RoundAnalyst, list[np.ndarray]]:
    """Create the run directory, load the server's data, initialise the global model.

    Returns the run directory, the analyst and the initial weights (from the seed).
    """
    run_dir = RunDirectory(out or default_run_dir(config)).create()
    run_dir.write_config(config)
    train_labels = load_labels(config.data.dataset, True, data_root)
    test_labels = load_labels(config.data.dataset, False, data_root)
    partitions = experiment_partitions(config.data, config.clients, config.seed, data_root)
    probe_idx, eval_idx = server_splits(test_labels, config.data.probe_fraction, config.seed, config.data.eval_per_class)
    run_dir.write_partitions(partitions, probe_idx, eval_idx, train_labels)
    device = server_device(config)
    probe = load_split(config.data.dataset, False, data_root, probe_idx).to(device)
    evaluation = load_split(config.data.dataset, False, data_root, eval_idx).to(device)
    weights = get_weights(build_model(seed=derive_seed(config.seed, "init")))
    return run_dir, RoundAnalyst(config, probe, evaluation), weights


def build_components(run_config: Mapping[str, Any]) -> ServerAppComponents:
    """Strategy and server config for a run config."""
    config = ExperimentConfig.from_run_config(run_config)
    run_dir, analyst, weights = prepare_run(config, run_config.get("out") or None, run_config.get("data-root") or None)
    log(INFO, "fedmi: experiment %r, %d clients x %d rounds, strategy %s; writing %s", config.name, config.clients, config.rounds, config.strategy.name, run_dir.path.resolve())
    strategy = build_strategy(config, analyst=analyst, run_dir=run_dir, initial_parameters=ndarrays_to_parameters(weights))
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=config.rounds))


def server_fn(context: Context) -> ServerAppComponents:
    """Flower entry point."""
    return build_components(context.run_config)


def make_server_app(run_config: Mapping[str, Any]) -> ServerApp:
    """A ServerApp bound to a run config (the in-process simulation passes the config this way)."""
    bound = dict(run_config)

    def bound_server_fn(context: Context) -> ServerAppComponents:
        return build_components({**bound, **context.run_config})

    return ServerApp(server_fn=bound_server_fn)


app = ServerApp(server_fn=server_fn)
