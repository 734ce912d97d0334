"""Flower ClientApp: ``client_fn`` builds a CircuitClient for the node's partition.

The node's ``partition-id`` and ``num-partitions`` come from its node config (set by
the simulation, or by ``flower-supernode --node-config``); the experiment comes from
the run config. A node loads only its own partition: it recomputes the partition from
the experiment's scheme and seed, never receiving the partition map from the server.
The data root is the node config's ``data-root``, else the run config's, else
``$FEDMI_DATA_ROOT``, else ``./data``. The run's reference set is derived from the seed
by each node as well (from the test split), when the node first needs it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import Client
from flwr.clientapp import ClientApp

from fedmi_flower.analysis.reference import reference_images
from fedmi_flower.apps.device import pick_device
from fedmi_flower.apps.memory import return_large_blocks_to_os
from fedmi_flower.clients import CircuitClient
from fedmi_flower.config import ExperimentConfig, make_model
from fedmi_flower.science.data import ImageSplit, experiment_partitions, load_split
from fedmi_flower.wire.protocol import scalars


def data_root_of(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> str | None:
    """The node's data root, else the run's; None lets the loader use ``$FEDMI_DATA_ROOT`` or ``./data``."""
    root = node_config.get("data-root") or run_config.get("data-root")
    return str(root) if root else None


def build_client(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> CircuitClient:
    """Build the CircuitClient of the node described by ``node_config``."""
    config = ExperimentConfig.from_run_config(run_config)
    try:
        pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError as err:
        raise ValueError(
            f"node config lacks {err}; start the SuperNode with --node-config "
            f'"partition-id=0 num-partitions={config.clients}"'
        ) from None
    if n != config.clients:
        raise ValueError(
            f"this node belongs to a federation of {n} partitions but experiment {config.name!r} has "
            f"clients = {config.clients}; make them match"
        )
    if not 0 <= pid < n:
        raise ValueError(f"partition-id {pid} is outside 0..{n - 1}")
    torch.set_num_threads(max(1, int(config.resources.client_cpus)))
    return_large_blocks_to_os()
    root = data_root_of(run_config, node_config)
    part = experiment_partitions(dataclasses.asdict(config.data), config.clients, config.seed, root)[pid]
    train = load_split(config.data.dataset, True, root, part.train)
    holdout = load_split(config.data.dataset, True, root, part.holdout)
    device = pick_device(config.resources.device)
    # The reference set: discovery's other images and the common channel means when the run's discovery needs
    # them (loaded now, so that a node lacking the test split fails before it trains), else loaded when first
    # used: under any objective the other classes a one-class client's circuits are scored on. A client with
    # classes of its own under the paper's objective never reads it.
    reference: ImageSplit | Callable[[], ImageSplit] = (
        reference_images(config, root)
        if config.discovery.needs_reference
        else functools.partial(reference_images, config, root)
    )
    return CircuitClient(
        pid,
        train,
        holdout,
        device,
        reference=reference,
        model_factory=functools.partial(make_model, config),
        num_classes=config.num_classes,
    )


def client_fn(context: Context) -> Client:
    """The legacy API's entry point: one CircuitClient per node and message."""
    return build_client(context.run_config, context.node_config).to_client()


legacy_app = ClientApp(client_fn=client_fn)
"""The ClientApp of ``strategy.api = "legacy"``: Flower turns its messages into ``NumPyClient`` calls."""

message_app = ClientApp()
"""The ClientApp of ``strategy.api = "message"`` (contents: :mod:`fedmi_flower.strategies.message_strategy`)."""


@message_app.query()
def partition(message: Message, context: Context) -> Message:
    """The node's partition id, which the server samples by; nothing is loaded to answer it."""
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"properties": ConfigRecord({"partition_id": pid})}), reply_to=message)


@message_app.train()
def train(message: Message, context: Context) -> Message:
    """Sparse local training and circuit discovery on the node's partition: weights, example count, report."""
    client = build_client(context.run_config, context.node_config)
    weights, n, report = client.fit(
        message.content.array_records["arrays"].to_numpy_ndarrays(), scalars(message.content.config_records["config"])
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(weights),
            "metrics": MetricRecord({"num-examples": n}),
            "report": ConfigRecord(dict(report.items())),
        }
    )
    return Message(content, reply_to=message)


LEGACY_CONTENT = ("fitins.", "evaluateins.", "getpropertiesins.", "getparametersins.")
"""Prefixes of the records Flower's compat layer puts in a legacy API message (``flwr.common.recorddict_compat``)."""


class _ByStrategyApi(ClientApp):
    """The node's ClientApp: a message of the legacy API goes to :data:`legacy_app`, any other to :data:`message_app`.

    One component in ``pyproject.toml`` serves both APIs, and the server's strategy class
    (built-in or named by import path) decides the API, so the node tells them apart by
    what a message carries: Flower's compat layer wraps legacy instructions in records
    named ``fitins.*``, ``getpropertiesins.*``, ...
    """

    def __call__(self, message: Message, context: Context) -> Message:
        legacy = any(key.startswith(LEGACY_CONTENT) for key in message.content)
        return (legacy_app if legacy else message_app)(message, context)


app = _ByStrategyApi()
