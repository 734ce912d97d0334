"""Stand-ins for Flower's side of a round: client proxies, FitRes objects and a strategy on planted data."""

from __future__ import annotations

import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.client_proxy import ClientProxy

from fedmi_flower.analysis import RoundAnalyst
from fedmi_flower.config import ExperimentConfig
from fedmi_flower.data import ImageSplit
from fedmi_flower.model import get_weights
from fedmi_flower.protocol import ClientReport, report_to_metrics
from fedmi_flower.results import RunDirectory
from planted import PLANTED, bright_images, concat, planted_model
from strategies import build_strategy

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


def fit_res(pid: int, client_circuits, weights=None, **metric_patch) -> tuple[Proxy, FitRes]:
    weights = get_weights(planted_model()) if weights is None else weights
    report = ClientReport(partition_id=pid, num_examples=100, circuits=client_circuits, train_loss=0.1, train_accuracy=0.9, sparsity=0.99)
    metrics = {**report_to_metrics(report, SIZES), **metric_patch}
    return Proxy(f"node-{pid}"), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 100, metrics)


def server_data() -> ImageSplit:
    dark = ImageSplit(torch.zeros(100, 1, 28, 28), torch.zeros(100, dtype=torch.int64))
    return concat(bright_images(50, 3, seed=1), bright_images(50, 8, seed=1), dark)


def make_strategy(tmp_path, name="fedavg", steps=100, folder=None):
    config = ExperimentConfig.from_dict({"clients": 3, "rounds": 2, "strategy": {"name": name}, "analysis": {"classes": [3, 8]}, "discovery": {"steps": steps}})
    data = server_data()
    analyst = RoundAnalyst(config, probe=data, evaluation=data)
    run_dir = RunDirectory(tmp_path / (folder or name)).create()
    return build_strategy(config, analyst=analyst, run_dir=run_dir, initial_parameters=ndarrays_to_parameters(get_weights(planted_model()))), run_dir
