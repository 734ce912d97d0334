"""Flower ServerApp: ``server_fn`` builds the experiment's strategy with the circuit analysis.

The run config names the experiment (``experiment`` plus dotted overrides, or the
whole flattened config), the run directory (``out``) and the data root
(``data-root``). The server loads only the test split: half of it (``probe_fraction``)
for discovering the global circuits, the rest for every score and accuracy.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import Context, log
from flwr.common.logger import FLOWER_LOGGER
from flwr.server import ServerAppComponents, ServerConfig
from flwr.server.compat import start_grid
from flwr.serverapp import Grid, ServerApp

from fedmi_flower.analysis.reference import reference_of
from fedmi_flower.analysis.round_analyst import RoundAnalyst
from fedmi_flower.apps.console import install_console
from fedmi_flower.apps.device import pick_device
from fedmi_flower.apps.memory import return_large_blocks_to_os
from fedmi_flower.apps.prompt_grid import prompt
from fedmi_flower.config import ExperimentConfig, make_model
from fedmi_flower.records.results import Checkpoint, RunDirectory, default_run_dir
from fedmi_flower.science.data import ImageSplit, experiment_partitions, load_labels, load_split, server_splits
from fedmi_flower.science.model import get_weights
from fedmi_flower.science.seeding import derive_seed
from fedmi_flower.strategies import (
    CONSOLE_KEY,
    CircuitAnalysisMixin,
    CircuitMessageMixin,
    build_strategy,
    qualified_name,
    speaks_message_api,
    strategy_class,
)
from fedmi_flower.views.tensorboard import TensorBoardScalars


def prepare_run(
    config: ExperimentConfig, out: str | Path | None, data_root: str | None, resume: bool = False
) -> tuple[RunDirectory, RoundAnalyst, list[np.ndarray], Checkpoint | None]:
    """Create (or reopen, to resume) the run directory, load the server's data, get the global model.

    Returns the run directory, the analyst, the global weights to start from (the
    seed's initialisation, or the checkpoint's) and the checkpoint when resuming.
    """
    return_large_blocks_to_os()
    run_dir = RunDirectory(out or default_run_dir(config.name))
    checkpoint = None
    if resume:
        if not run_dir.path.is_dir():
            raise FileNotFoundError(f"cannot resume {run_dir.path}: no such run directory")
        saved = run_dir.read_config()
        if saved != config:
            raise ValueError(
                f"cannot resume {run_dir.path}: its config.toml differs from the config "
                "given; resume with the run's own config"
            )
        checkpoint = run_dir.read_checkpoint()
        run_dir.truncate_rounds(checkpoint.server_round if checkpoint else 0)
    else:
        run_dir.create()
        run_dir.write_config(config)
    train_labels = load_labels(config.data.dataset, True, data_root)
    test_labels = load_labels(config.data.dataset, False, data_root)
    partitions = experiment_partitions(dataclasses.asdict(config.data), config.clients, config.seed, data_root)
    probe_idx, eval_idx = server_splits(
        test_labels, config.data.probe_fraction, config.seed, config.data.eval_per_class
    )
    if not resume:
        run_dir.write_partitions(partitions, probe_idx, eval_idx, train_labels, config.num_classes)
    device = pick_device(config.resources.device)
    probe = load_split(config.data.dataset, False, data_root, probe_idx).to(device)
    evaluation = load_split(config.data.dataset, False, data_root, eval_idx).to(device)
    client_rows = None
    if config.analysis.noise_floor:  # the local-global noise floor needs clients' rows on the server

        @functools.cache
        def client_rows(pid: int) -> ImageSplit | None:
            if not 0 <= pid < len(partitions):
                return None
            return load_split(config.data.dataset, True, data_root, partitions[pid].train).to(device)

    reference = reference_of(config, data_root)
    population = np.bincount(
        train_labels[np.concatenate([np.asarray(p.train, dtype=np.int64) for p in partitions])],
        minlength=config.num_classes,
    ).tolist()
    analyst = RoundAnalyst(
        config,
        probe,
        evaluation,
        client_rows,
        reference.to(device) if reference is not None else None,
        population_counts=population,
    )
    if checkpoint is not None:
        analyst.load_state_dict(checkpoint.analyst_state)
        weights = checkpoint.weights
    else:
        weights = get_weights(make_model(config, seed=derive_seed(config.seed, "init")))
    return run_dir, analyst, weights, checkpoint


HISTORY_LOG = "flower-history.log"
"""Where Flower's end-of-run metrics history goes, in the run directory."""


class HistoryToFile(logging.Filter):
    """Send Flower's end-of-run metrics history to a file instead of the console.

    At the end of a run Flower logs its whole ``History`` (every metric of every round,
    dozens of lines) after the one-line summary a user reads; the same numbers are in
    ``rounds.jsonl`` and ``summary.csv``. Flower logs each line of it with the format
    ``"\t%s"``, which nothing else uses: those records go to ``path``.
    """

    HISTORY_FORMAT = "\t%s"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.HISTORY_FORMAT:
            return True
        with open(self.path, "a") as fh:
            fh.write(record.getMessage().removeprefix("\t") + "\n")
        return False

    @classmethod
    def install(cls, path: Path) -> None:
        """Divert the history to ``path`` (replacing an earlier run's filter in this process)."""
        for old in [f for f in FLOWER_LOGGER.filters if isinstance(f, cls)]:
            FLOWER_LOGGER.removeFilter(old)
        FLOWER_LOGGER.addFilter(cls(path))


def build_components(run_config: Mapping[str, Any]) -> ServerAppComponents:
    """Strategy and server config for a run config (``resume`` continues the run in ``out``)."""
    config = ExperimentConfig.from_run_config(run_config)
    resume = str(run_config.get("resume", "")).lower() in ("1", "true", "yes")
    run_dir, analyst, weights, checkpoint = prepare_run(
        config, run_config.get("out") or None, run_config.get("data-root") or None, resume
    )
    console = str(run_config.get("console") or "")
    if console in ("quiet", "verbose"):  # `fedmi run`: this process's output is what its user reads
        install_console(run_dir.path, verbose=console == "verbose")
        # Ray's notice about a future default; the current one (hide GPUs from clients given no GPU share) is ours.
        warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*", category=FutureWarning)
    done = checkpoint.server_round if checkpoint else 0
    if done >= config.rounds:
        raise ValueError(f"{run_dir.path} already finished all {config.rounds} rounds; nothing to resume")
    base = strategy_class(config)
    run_dir.write_strategy(
        {
            "name": config.strategy.name,
            "class": qualified_name(base),
            "api": "message" if speaks_message_api(base) else "legacy",
        }
    )
    log(
        INFO,
        "fedmi: experiment %r, %d clients x %d rounds, strategy %s; %s %s",
        config.name,
        config.clients,
        config.rounds,
        config.strategy.name if base.__module__.startswith(("flwr.", "fedmi_flower.")) else qualified_name(base),
        f"resuming after round {done} in" if resume else "writing",
        run_dir.path.resolve(),
        extra={CONSOLE_KEY: True},
    )
    HistoryToFile.install(run_dir.path / HISTORY_LOG)
    parts = run_dir.read_partitions()["clients"]
    strategy = build_strategy(
        config,
        analyst=analyst,
        run_dir=run_dir,
        initial_arrays=weights,
        start_round=done,
        partition_sizes={int(pid): len(c["train"]) for pid, c in parts.items()},
        holdout_sizes={int(pid): len(c["holdout"]) for pid, c in parts.items()},
        round_listeners=[TensorBoardScalars(config.logging.tensorboard, run_dir.path.name)]
        if config.logging.tensorboard
        else [],
    )
    if console in ("quiet", "verbose"):  # `fedmi run` follows the stream: it draws the live progress line
        strategy.recorder.progress.enabled = True
    if checkpoint is not None:
        strategy.load_strategy_state(checkpoint.strategy_state)
    return ServerAppComponents(
        strategy=strategy,
        config=ServerConfig(num_rounds=config.rounds - done, round_timeout=config.strategy.round_timeout),
    )


def server_fn(context: Context) -> ServerAppComponents:
    """The legacy API's entry point (``ServerApp(server_fn=server_fn)``): the strategy and server config."""
    return build_components(context.run_config)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: the experiment's rounds under the strategy API its config names (``strategy.api``).

    A legacy strategy (``flwr.server.strategy.FedAvg`` with :class:`CircuitAnalysisMixin`,
    ``aggregate_fit``) runs in Flower's compat loop, as ``ServerApp(server_fn=server_fn)``
    would; a Message-API one (``flwr.serverapp.strategy.FedAvg`` with
    :class:`CircuitMessageMixin`, ``aggregate_train``) runs its own ``Strategy.start``. The
    round core and the records are the same.
    """
    grid = prompt(grid)  # on the deployment runtime, replies collected within 1 s, not 3 s (PromptGrid)
    components = build_components(context.run_config)
    strategy, server_config = components.strategy, components.config
    assert server_config is not None
    if isinstance(strategy, CircuitMessageMixin):
        timeout = server_config.round_timeout or 3600.0
        strategy.start(grid, strategy.initial_arrays(), num_rounds=server_config.num_rounds, timeout=timeout)
    else:
        assert isinstance(strategy, CircuitAnalysisMixin)
        start_grid(grid=grid, strategy=strategy, config=server_config)
