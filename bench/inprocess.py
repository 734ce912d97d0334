"""Federated rounds in this process, without Flower's runtime: for timing the work itself.

The clients are the real :class:`fedmi_flower.clients.CircuitClient` objects, built by the ClientApp's
own ``build_client`` (device, data and reference images as a SuperNode would load them),
and the server side is the real strategy: ``configure_fit`` samples and instructs,
``aggregate_fit`` aggregates and runs the full circuit analysis. Only the messaging (Ray
actors, gRPC) is left out, and clients run one after another. Used by bench_round.py (one
round on 2 CPU cores) and gpu_experiment.py (whole experiments on a GPU machine, where Ray
is not installed).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from flwr.client import NumPyClient
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fedmi_flower.apps.client_app import build_client
from fedmi_flower.apps.server_app import prepare_run
from fedmi_flower.config import ExperimentConfig
from fedmi_flower.strategies import build_strategy


class _LocalProxy(ClientProxy):
    """A node whose client lives in this process: Flower's messages become method calls."""

    def __init__(self, cid: str, client: NumPyClient) -> None:
        super().__init__(cid)
        self.client = client

    def get_properties(self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None) -> GetPropertiesRes:
        return GetPropertiesRes(Status(Code.OK, ""), self.client.get_properties(ins.config))

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        weights, n, metrics = self.client.fit(parameters_to_ndarrays(ins.parameters), ins.config)
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), n, metrics)

    def _unused(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    get_parameters = evaluate = reconnect = _unused


def run_in_process(
    config: ExperimentConfig, out: Path, data_root: str | None = None, rounds: int | None = None
) -> list[dict]:
    """Run ``rounds`` (default: all of ``config``'s) rounds into run directory ``out``.

    Returns each round's record plus ``wall``: ``clients`` (all fits, one after another),
    ``server`` (aggregation and analysis), ``setup`` (data loading; first round only)
    and ``total`` (the round, from sampling to its record).
    """
    began = time.perf_counter()
    run_dir, analyst, weights, _ = prepare_run(config, out, data_root)
    strategy = build_strategy(config, analyst=analyst, run_dir=run_dir, initial_arrays=weights)
    run_config = {**config.to_run_config(), **({"data-root": data_root} if data_root else {})}
    manager = SimpleClientManager()
    threads = torch.get_num_threads()  # build_client sets a Ray actor's share; clients here run one at a time
    for pid in range(config.clients):
        node = {"partition-id": pid, "num-partitions": config.clients}
        manager.register(_LocalProxy(f"node-{pid}", build_client(run_config, node)))
    torch.set_num_threads(threads)
    setup = time.perf_counter() - began
    parameters = ndarrays_to_parameters(weights)
    records = []
    for rnd in range(1, (rounds or config.rounds) + 1):
        t0 = time.perf_counter()
        pairs = strategy.configure_fit(rnd, parameters, manager)
        results = [(proxy, proxy.fit(ins, None, rnd)) for proxy, ins in pairs]
        t_clients = time.perf_counter() - t0
        t1 = time.perf_counter()
        aggregated, _ = strategy.aggregate_fit(rnd, results, [])
        parameters = aggregated or parameters
        t_server = time.perf_counter() - t1
        record = run_dir.read_rounds()[-1].to_json()
        record["wall"] = {
            "setup": setup if rnd == 1 else 0.0,
            "clients": t_clients,
            "server": t_server,
            "total": time.perf_counter() - t0,
        }
        records.append(record)
    return records


def run_round_in_process(config: ExperimentConfig, out: Path, data_root: str | None = None) -> dict:
    """Run round 1 of ``config``; return its record plus wall-clock timings (see :func:`run_in_process`)."""
    return run_in_process(config, out, data_root, rounds=1)[0]
