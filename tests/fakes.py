"""Stand-ins for Flower's side of a round: client proxies, FitRes objects and a strategy on planted data."""

from __future__ import annotations

import numpy as np
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.client_proxy import ClientProxy
from planted import PLANTED, bright_images, concat, planted_model

from fedmi_flower.analysis.round_analyst import RoundAnalyst
from fedmi_flower.config import ExperimentConfig
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.model import get_weights
from fedmi_flower.strategies import build_strategy
from fedmi_flower.wire.protocol import ClientReport, report_to_metrics

SIZES = {"conv1": 32, "conv2": 64, "conv3": 128}
P3, P8 = PLANTED[3], PLANTED[8]
ROUND1 = {
    0: {3: P3, 8: P8},
    1: {3: {"conv1": [5, 6], "conv2": [10], "conv3": [20, 21]}},
    2: {3: {"conv1": [], "conv2": [], "conv3": [20]}, 8: {"conv1": [17], "conv2": [41, 42], "conv3": []}},
}


class Proxy(ClientProxy):
    """A stand-in for a connected client: only its id matters to aggregate_fit."""

    def get_properties(self, *a, **k):  # pragma: no cover - never called
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


def fit_res(
    pid: int, client_circuits, weights=None, num_examples: int = 100, node: str | None = None, **metric_patch
) -> tuple[Proxy, FitRes]:
    """A client's result: its circuits, weights (the planted model's by default), example count and node id."""
    weights = get_weights(planted_model()) if weights is None else weights
    report = ClientReport(
        partition_id=pid,
        num_examples=max(1, num_examples),
        circuits=client_circuits,
        train_loss=0.1,
        train_accuracy=0.9,
        sparsity=0.99,
    )
    metrics = {**report_to_metrics(report, SIZES), **metric_patch}
    return Proxy(node or f"node-{pid}"), FitRes(
        Status(Code.OK, ""), ndarrays_to_parameters(weights), num_examples, metrics
    )


def distinct_weights(pid: int) -> list:
    """Weights that differ per client: the planted model's, every tensor shifted by a client-specific amount."""
    g = np.random.default_rng(100 + pid)
    return [(w + g.normal(0.0, 0.1, w.shape)).astype(np.float32) for w in get_weights(planted_model())]


def server_data() -> ImageSplit:
    dark = ImageSplit(torch.zeros(100, 1, 28, 28), torch.zeros(100, dtype=torch.int64))
    return concat(bright_images(50, 3, seed=1), bright_images(50, 8, seed=1), dark)


ROBUSTNESS_STEPS = ("stitching", "cka", "second_method", "ablations")


def make_strategy(tmp_path, name="fedavg", steps=100, folder=None, partition_sizes=None, rounds=2, **config_patch):
    """A circuit strategy over the planted model and server data.

    ``partition_sizes`` is what the server knows of each client. The planted model answers
    its default class for every bright image and its planted circuits answer their class
    for every one: circuits of the paper's objective, which these bookkeeping tests pin
    (the faithful objective rightly finds them empty; tests/test_faithful.py).
    """
    table = {
        "clients": 3,
        "rounds": rounds,
        "strategy": {"name": name},
        # The robustness steps (issue 27) are measured by their own tests; off here, they keep these tests fast.
        "analysis": {"classes": [3, 8], **{step: False for step in ROBUSTNESS_STEPS}},
        "discovery": {"steps": steps, "objective": "paper"},
    }
    for key, value in config_patch.items():
        if isinstance(value, dict):
            table.setdefault(key, {}).update(value)
        else:
            table[key] = value
    config = ExperimentConfig.from_dict(table)
    data = server_data()
    analyst = RoundAnalyst(config, probe=data, evaluation=data)
    run_dir = RunDirectory(tmp_path / (folder or name)).create()
    strategy = build_strategy(
        config,
        analyst=analyst,
        run_dir=run_dir,
        initial_arrays=get_weights(planted_model()),
        partition_sizes=partition_sizes,
    )
    return strategy, run_dir
