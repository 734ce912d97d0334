"""Run an experiment in this process on Flower's simulation runtime (Ray virtual clients)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from fedmi_flower.apps.client_app import make_client_app
from fedmi_flower.apps.console import run_console
from fedmi_flower.apps.memory import return_large_blocks_to_os
from fedmi_flower.apps.server_app import make_server_app
from fedmi_flower.config import ExperimentConfig
from fedmi_flower.records.results import RunDirectory, default_run_dir
from fedmi_flower.science.data import load_labels


def backend_config(config: ExperimentConfig, verbose: bool = False) -> dict[str, Any]:
    """Ray backend settings: each virtual client gets the config's CPU and GPU share.

    Ray joins an existing cluster when ``RAY_ADDRESS`` is set; otherwise it starts a
    local one sized to this machine. The clients' own output (Ray prefixes it with the
    actor's pid) reaches the console only with ``verbose``: what matters of it, a
    client's exception, reaches the strategy, which names it; the rest stays in Ray's
    session logs (``/tmp/ray/session_latest/logs``).
    """
    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose}
    if not os.environ.get("RAY_ADDRESS"):
        init_args["num_cpus"] = os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": config.resources.client_cpus, "num_gpus": config.resources.client_gpus},
        "init_args": init_args,
    }


def simulate(
    config: ExperimentConfig,
    out: str | os.PathLike | None = None,
    data_root: str | None = None,
    verbose: bool = False,
    resume: bool = False,
) -> Path:
    """Run ``config`` as a Flower simulation; return the run directory.

    With ``resume``, continue the run in ``out`` after its last checkpoint.

    The ServerApp runs in this process (the circuit analysis with it); every client
    runs in a Ray actor with ``resources.client_cpus`` CPUs (its torch threads) and
    ``resources.client_gpus`` of a GPU.
    """
    return_large_blocks_to_os()  # before Ray starts, so that its workers inherit the setting
    # Fail on a missing dataset here, with the loader's message, before Ray starts.
    load_labels(config.data.dataset, True, data_root)
    load_labels(config.data.dataset, False, data_root)
    run_dir = Path(out) if out else default_run_dir(config.name)
    if not resume:
        RunDirectory(run_dir).check_new()  # before Ray starts (the ServerApp checks again)
    run_config = {**config.to_run_config(), "out": str(run_dir), "resume": resume}
    if data_root:
        run_config["data-root"] = str(data_root)
    with run_console(run_dir, verbose), warnings.catch_warnings():
        # run_simulation is Flower's in-process entry point; `flwr run` is the other one.
        warnings.filterwarnings("ignore", message=".*run_simulation.*deprecated", category=DeprecationWarning)
        # Ray's notice about a future default; the current one (hide GPUs from clients given no GPU share)
        # is what we want.
        warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*", category=FutureWarning)
        run_simulation(
            server_app=make_server_app(run_config),
            client_app=make_client_app(run_config),
            num_supernodes=config.clients,
            backend_config=backend_config(config, verbose),
            verbose_logging=verbose,
        )
    return run_dir
