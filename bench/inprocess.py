"""One federated round in this process, without Flower's runtime: for timing the work itself.

The clients are the real :class:`clients.CircuitClient` objects and the server side is
the real strategy (``aggregate_fit`` with the full circuit analysis); only the
messaging (Ray actors, gRPC) is left out, and clients run one after another.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.client_proxy import ClientProxy

from clients import CircuitClient
from fedmi_flower.apps.server_app import prepare_run
from fedmi_flower.config import ExperimentConfig
from fedmi_flower.science.data import experiment_partitions, load_split
from fedmi_flower.wire.protocol import fit_instructions
from strategies import build_strategy


class _Node(ClientProxy):
    """Only the id of a node matters to ``aggregate_fit``."""

    def _unused(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    get_properties = get_parameters = fit = evaluate = reconnect = _unused


def run_round_in_process(config: ExperimentConfig, out: Path, data_root: str | None = None) -> dict:
    """Run round 1 of ``config``; return the round record plus wall-clock timings.

    ``timings`` in the returned dict: ``clients`` (all fits, sequential), ``server``
    (aggregation and analysis), ``setup`` (data loading) and ``total``.
    """
    began = time.perf_counter()
    run_dir, analyst, weights, _ = prepare_run(config, out, data_root)
    strategy = build_strategy(
        config, analyst=analyst, run_dir=run_dir, initial_parameters=ndarrays_to_parameters(weights)
    )
    parts = experiment_partitions(dataclasses.asdict(config.data), config.clients, config.seed, data_root)
    clients = [
        CircuitClient(
            pid,
            load_split(config.data.dataset, True, data_root, p.train),
            load_split(config.data.dataset, True, data_root, p.holdout),
        )
        for pid, p in enumerate(parts)
    ]
    setup = time.perf_counter() - began
    instructions = fit_instructions(config, 1)
    t0 = time.perf_counter()
    results = []
    for client in clients:
        new_weights, n, metrics = client.fit(weights, instructions)
        results.append(
            (
                _Node(str(client.partition_id)),
                FitRes(Status(Code.OK, ""), ndarrays_to_parameters(new_weights), n, metrics),
            )
        )
    t_clients = time.perf_counter() - t0
    t0 = time.perf_counter()
    strategy.aggregate_fit(1, results, [])
    t_server = time.perf_counter() - t0
    record = run_dir.read_rounds()[-1].to_json()
    record["wall"] = {"setup": setup, "clients": t_clients, "server": t_server, "total": time.perf_counter() - began}
    return record
