"""CircuitMessageStrategy: the circuit analysis as a strategy of Flower's Message API (``flwr.serverapp``).

Flower 1.21 introduced the Message API: a ServerApp with ``@app.main()`` runs a
``flwr.serverapp.strategy.Strategy`` over a ``Grid`` (``configure_train`` builds the
round's messages, ``aggregate_train`` folds the replies), and a ClientApp answers with
``@app.train()``. This strategy is that API's front for the same analysis core the
legacy strategies have: every round it asks the core (a legacy strategy from
:func:`fedmi_flower.strategies.build_strategy`, with :class:`CircuitAnalysisMixin`) to sample and
instruct, sends the instructions as messages, and hands the replies to the core's
``aggregate_fit``, which screens them, aggregates with the chosen rule and analyses the
new global model. Sampling, screening, aggregation, the analysis and the round records
are therefore those of ``strategy.api = "legacy"``, to the last digit (a test runs one
seed both ways); only the transport differs.

Message contents
----------------
train, server to client: ``arrays`` (ArrayRecord, the global weights), ``config``
(ConfigRecord, the fit instructions). Client to server: ``arrays`` (the local
weights), ``metrics`` (MetricRecord, ``num-examples``), ``report`` (ConfigRecord, the
client's report as :mod:`fedmi_flower.wire.protocol` encodes it).
query, server to client: empty; client to server: ``properties`` (ConfigRecord,
``partition_id``), asked once per node for seeded sampling by partition.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import (
    Code,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    Status,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.criterion import Criterion
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmi_flower.wire.protocol import scalars

from .circuit_analysis_mixin import CircuitAnalysisMixin, Result


class GridNode(ClientProxy):
    """A node of the Grid as the core sees a client: it answers ``get_properties`` through a query message."""

    def __init__(self, node_id: int, grid: Grid, timeout: float) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id
        self.grid = grid
        self.timeout = timeout

    def get_properties(self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None) -> GetPropertiesRes:
        query = Message(RecordDict({"config": ConfigRecord(dict(ins.config))}), self.node_id, MessageType.QUERY)
        replies = list(self.grid.send_and_receive([query], timeout=timeout or self.timeout))
        if len(replies) != 1 or replies[0].has_error():
            reason = replies[0].error.reason if replies else f"no reply within {timeout or self.timeout:g} s"
            raise RuntimeError(f"node {self.node_id} did not answer the partition query: {reason}")
        return GetPropertiesRes(Status(Code.OK, ""), scalars(replies[0].content.config_records["properties"]))

    def _legacy_only(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("under the Message API, the strategy sends train messages itself")

    get_parameters = fit = evaluate = reconnect = _legacy_only  # type: ignore[assignment]


class GridClientManager(ClientManager):
    """The Grid's nodes as the core's client manager (it samples them by partition, :class:`SeededClientManager`)."""

    def __init__(self, grid: Grid, nodes: dict[int, GridNode], timeout: float) -> None:
        self.grid = grid
        self.nodes = nodes  # kept across rounds: a node's partition is asked once
        self.timeout = timeout

    def all(self) -> dict[str, ClientProxy]:
        for node_id in self.grid.get_node_ids():
            self.nodes.setdefault(node_id, GridNode(node_id, self.grid, self.timeout))
        online = set(self.grid.get_node_ids())
        return {str(n): node for n, node in self.nodes.items() if n in online}

    def num_available(self) -> int:
        return len(list(self.grid.get_node_ids()))

    def wait_for(self, num_clients: int, timeout: int) -> bool:
        deadline = time.monotonic() + timeout
        while self.num_available() < num_clients:
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)
        return True

    def sample(
        self, num_clients: int, min_num_clients: int | None = None, criterion: Criterion | None = None
    ) -> list[ClientProxy]:
        raise NotImplementedError("the core samples through SeededClientManager, from all()")

    def register(self, client: ClientProxy) -> bool:
        return False  # nodes join through the SuperLink, not here

    def unregister(self, client: ClientProxy) -> None:
        return None


class CircuitMessageStrategy(Strategy):
    """A Message API strategy whose rounds the circuit-analysis core samples, aggregates and analyses.

    Parameters
    ----------
    core : CircuitAnalysisMixin
        The legacy-API strategy built for the experiment (any aggregation rule).
    timeout : float
        Seconds to wait for a node's reply to a query.
    """

    def __init__(self, core: CircuitAnalysisMixin, timeout: float = 600.0) -> None:
        self.core = core
        self.timeout = timeout
        self.nodes: dict[int, GridNode] = {}

    def summary(self) -> None:
        log(INFO, "\t├── circuit analysis core: %s", type(self.core).__name__)

    def initial_arrays(self) -> ArrayRecord:
        """The global model the run starts from, as the core holds it (the seed's, or a checkpoint's)."""
        parameters = self.core.initialize_parameters(None)  # type: ignore[attr-defined]
        return ArrayRecord(parameters_to_ndarrays(parameters))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        manager = GridClientManager(grid, self.nodes, self.timeout)
        pairs = self.core.configure_fit(server_round, ndarrays_to_parameters(arrays.to_numpy_ndarrays()), manager)
        messages = []
        for proxy, ins in pairs:
            weights = ArrayRecord(parameters_to_ndarrays(ins.parameters))
            content = RecordDict({"arrays": weights, "config": ConfigRecord(dict(ins.config))})
            messages.append(Message(content, int(proxy.cid), MessageType.TRAIN))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        results: list[Result] = []
        failures: list[Result | BaseException] = []
        for reply in replies:
            node = self.nodes.get(reply.metadata.src_node_id)
            if reply.has_error() or node is None:
                why = reply.error.reason if reply.has_error() else f"an unknown node {reply.metadata.src_node_id}"
                failures.append(RuntimeError(why))
                continue
            try:
                fit = FitRes(
                    Status(Code.OK, ""),
                    ndarrays_to_parameters(reply.content.array_records["arrays"].to_numpy_ndarrays()),
                    reply.content.metric_records["metrics"]["num-examples"],  # type: ignore[arg-type]
                    scalars(reply.content.config_records["report"]),
                )
            except (KeyError, TypeError, ValueError) as err:  # a malformed reply is that client's failure
                failures.append(ValueError(f"node {node.node_id} sent a malformed train reply: {err!r}"))
                continue
            results.append((node, fit))
        parameters, metrics = self.core.aggregate_fit(server_round, results, failures)
        numeric: dict[str, int | float | list[int] | list[float]] = {
            k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return _arrays(parameters), MetricRecord(numeric) if numeric else None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # every evaluation is the server's, inside aggregate_train (config refuses fraction_evaluate > 0)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None


def _arrays(parameters: Parameters | None) -> ArrayRecord | None:
    return None if parameters is None else ArrayRecord(parameters_to_ndarrays(parameters))
