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
from .memory import return_large_blocks_to_os
from .model import build_model, get_weights
from .results import Checkpoint, RunDirectory
from .seeding import derive_seed


def default_run_dir(config: ExperimentConfig) -> Path:
    """``runs/<experiment>-<date>-<time>``."""
    return Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def server_device(config: ExperimentConfig) -> torch.device:
    """CUDA for the server's analysis when available and not ruled out by the config."""
    if config.resources.device != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def prepare_run(config: ExperimentConfig, out: str | Path | None, data_root: str | None, resume: bool = False) -> tuple[RunDirectory, RoundAnalyst, list[np.ndarray], Checkpoint | None]:
    """Create (or reopen, to resume) the run directory, load the server's data, get the global model.

    Returns the run directory, the analyst, the global weights to start from (the
    seed's initialisation, or the checkpoint's) and the checkpoint when resuming.
    """
    return_large_blocks_to_os()
    run_dir = RunDirectory(out or default_run_dir(config))
    checkpoint = None
    if resume:
        if not run_dir.path.is_dir():
            raise FileNotFoundError(f"cannot resume {run_dir.path}: no such run directory")
        saved = run_dir.read_config()
        if saved != config:
            raise ValueError(f"cannot resume {run_dir.path}: its config.toml differs from the config given; resume with the run's own config")
        checkpoint = run_dir.read_checkpoint()
        run_dir.truncate_rounds(checkpoint.server_round if checkpoint else 0)
    else:
        run_dir.create()
        run_dir.write_config(config)
    train_labels = load_labels(config.data.dataset, True, data_root)
    test_labels = load_labels(config.data.dataset, False, data_root)
    partitions = experiment_partitions(config.data, config.clients, config.seed, data_root)
    probe_idx, eval_idx = server_splits(test_labels, config.data.probe_fraction, config.seed, config.data.eval_per_class)
    if not resume:
        run_dir.write_partitions(partitions, probe_idx, eval_idx, train_labels)
    device = server_device(config)
    probe = load_split(config.data.dataset, False, data_root, probe_idx).to(device)
    evaluation = load_split(config.data.dataset, False, data_root, eval_idx).to(device)
    floor_rows = None
    if config.analysis.noise_floor:  # the local-global noise floor needs one client's rows on the server
        floor_rows = load_split(config.data.dataset, True, data_root, partitions[config.analysis.floor_client].train).to(device)
    analyst = RoundAnalyst(config, probe, evaluation, floor_rows)
    if checkpoint is not None:
        analyst.load_state_dict(checkpoint.analyst_state)
        weights = checkpoint.weights
    else:
        weights = get_weights(build_model(seed=derive_seed(config.seed, "init")))
    return run_dir, analyst, weights, checkpoint


def build_components(run_config: Mapping[str, Any]) -> ServerAppComponents:
    """Strategy and server config for a run config (``resume`` continues the run in ``out``)."""
    config = ExperimentConfig.from_run_config(run_config)
    resume = str(run_config.get("resume", "")).lower() in ("1", "true", "yes")
    run_dir, analyst, weights, checkpoint = prepare_run(config, run_config.get("out") or None, run_config.get("data-root") or None, resume)
    done = checkpoint.server_round if checkpoint else 0
    if done >= config.rounds:
        raise ValueError(f"{run_dir.path} already finished all {config.rounds} rounds; nothing to resume")
    log(INFO, "fedmi: experiment %r, %d clients x %d rounds, strategy %s; %s %s", config.name, config.clients, config.rounds, config.strategy.name,
        f"resuming after round {done} in" if resume else "writing", run_dir.path.resolve())
    parts = run_dir.read_partitions()["clients"]
    strategy = build_strategy(
        config,
        analyst=analyst,
        run_dir=run_dir,
        initial_parameters=ndarrays_to_parameters(weights),
        start_round=done,
        partition_sizes={int(pid): len(c["train"]) for pid, c in parts.items()},
        holdout_sizes={int(pid): len(c["holdout"]) for pid, c in parts.items()},
    )
    if checkpoint is not None:
        strategy.load_strategy_state(checkpoint.strategy_state)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=config.rounds - done))


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
