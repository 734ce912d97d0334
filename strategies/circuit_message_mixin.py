"""CircuitMessageMixin: any strategy of Flower's Message API (``flwr.serverapp.strategy``) with the circuit analysis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedmi_flower.analysis.round_analyst import RoundAnalyst
from fedmi_flower.analysis.round_core import (
    ConsoleLine,
    RoundOutcome,
    RoundRecorder,
    Update,
    clients_missing,
    not_aggregated_reason,
    round_instructions,
    sample_partitions,
    screen_updates,
    state_arrays,
    summary_metrics,
)
from fedmi_flower.config import ExperimentConfig, make_model
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.records.round_record import Failure, RoundRecord, SilentClient
from fedmi_flower.wire.protocol import scalars

# Attributes in which Flower's Message-API strategies keep state across rounds (FedOpt family, FedAvgM).
STATE_ATTRIBUTES = ("current_arrays", "m_t", "v_t", "momentum_vector")


class _SampledGrid:
    """The grid as the parent strategy sees it in ``configure_train``: only the nodes this round sampled.

    The parent samples every node it is shown (it is built with ``fraction_train = 1``), so
    the sample is the seeded one of :func:`~fedmi_flower.analysis.round_core.sample_partitions`,
    the same under both APIs.
    """

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid = grid
        self._nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class CircuitMessageMixin:
    """Circuit analysis after ``aggregate_train``, for a strategy of Flower's Message API.

    Put it first among the bases, ``class CircuitFedProx(CircuitMessageMixin, FedProx)``:
    the way Flower's own FedMedian overrides one hook, it overrides ``aggregate_train``,
    screens the replies (:func:`~fedmi_flower.analysis.round_core.screen_updates`), calls
    the parent on the accepted ones, and hands the new global weights to a
    :class:`~fedmi_flower.analysis.round_core.RoundRecorder`. ``configure_train`` adds the
    experiment's fit instructions to the parent's config and samples nodes by partition
    from the run's seed. No legacy object (``ClientProxy``, ``FitRes``) is built.

    Message contents: train, server to client: the parent's (``arrays``, ``config``).
    Client to server: ``arrays`` (the local weights), ``metrics`` (``num-examples``),
    ``report`` (ConfigRecord, the client's report as :mod:`fedmi_flower.wire.protocol`
    encodes it). Query, server to client: empty; client to server: ``properties``
    (``partition_id``), asked once per node.

    Parameters
    ----------
    experiment, analyst, run_dir, start_round, partition_sizes, holdout_sizes, round_listeners
        As :class:`~fedmi_flower.strategies.CircuitAnalysisMixin`'s.
    initial_arrays : list[np.ndarray]
        The global model the run starts from.
    query_timeout : float
        Seconds to wait for the nodes' answers to the partition query.
    **kwargs
        Passed to the parent strategy.
    """

    def __init__(
        self,
        *args: Any,
        experiment: ExperimentConfig,
        analyst: RoundAnalyst,
        run_dir: RunDirectory,
        initial_arrays: list[np.ndarray],
        start_round: int = 0,
        partition_sizes: Mapping[int, int] | None = None,
        holdout_sizes: Mapping[int, int] | None = None,
        round_listeners: Sequence[Callable[[RoundRecord], None]] = (),
        query_timeout: float = 600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.experiment = experiment
        self.analyst = analyst
        self.run_dir = run_dir
        self.recorder = RoundRecorder(experiment, analyst, run_dir, [ConsoleLine(experiment.rounds), *round_listeners])
        self.round_offset = start_round
        self.partition_sizes = dict(partition_sizes) if partition_sizes is not None else None
        self.holdout_sizes = dict(holdout_sizes) if holdout_sizes is not None else None
        self.query_timeout = query_timeout
        self.template = make_model(experiment)
        self._current = [np.asarray(a) for a in initial_arrays]
        self._partition_of: dict[int, int] = {}
        self._sampled: list[int] = []

    def initial_arrays(self) -> ArrayRecord:
        """The global model the run starts from (the seed's, or a checkpoint's)."""
        return ArrayRecord(self._current)

    # ------------------------------------------------------------------ state

    def strategy_state(self) -> dict[str, list[np.ndarray]]:
        """The parent strategy's cross-round state, keyed ``attribute:kind`` (list, dict or ArrayRecord)."""
        state = {}
        for name in STATE_ATTRIBUTES:
            value = getattr(self, name, None)
            arrays = state_arrays(value)
            if arrays is not None:
                kind = (
                    "arrayrecord" if isinstance(value, ArrayRecord) else "dict" if isinstance(value, dict) else "list"
                )
                state[f"{name}:{kind}"] = arrays
        return state

    def load_strategy_state(self, state: dict[str, list[np.ndarray]]) -> None:
        """Restore :meth:`strategy_state` output (dict keys are ArrayRecord's, ``"0"``, ``"1"``, ...)."""
        for key, arrays in state.items():
            name, _, kind = key.partition(":")
            copies = [np.array(a) for a in arrays]
            value: Any = copies
            if kind == "dict":
                value = {str(i): a for i, a in enumerate(copies)}
            elif kind == "arrayrecord":
                value = ArrayRecord(copies)
            setattr(self, name, value)

    # ------------------------------------------------------------------ train

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The parent's train messages, for the nodes sampled by partition, with the experiment's instructions.

        Raises ``RuntimeError`` when fewer nodes than the experiment's clients connect
        within ``strategy.wait_for_clients`` seconds.
        """
        rnd = server_round + self.round_offset
        self.recorder.start_round()
        self._current = arrays.to_numpy_ndarrays()
        s = self.experiment.strategy
        deadline = time.monotonic() + s.wait_for_clients
        while len(nodes := sorted(grid.get_node_ids())) < self.experiment.clients:
            if time.monotonic() > deadline:
                raise RuntimeError(clients_missing(self.experiment, len(nodes)))
            time.sleep(1.0)
        wanted = max(int(len(nodes) * s.fraction_fit), s.min_fit_clients or 1)
        partitions = self.ask_partitions(grid, nodes)
        if wanted >= len(nodes):
            chosen = nodes
        else:
            node_of = {pid: node for node, pid in partitions.items()}
            chosen = [node_of[pid] for pid in sample_partitions(self.experiment.seed, rnd, list(node_of), wanted)]
        self._sampled = chosen
        ours = ConfigRecord({**round_instructions(self.experiment, rnd, self.analyst, self.template), **dict(config)})
        messages = list(super().configure_train(rnd, arrays, ours, _SampledGrid(grid, chosen)))  # type: ignore[misc]
        # The Message API hands the replies over all at once: the live line counts no clients while they train.
        self.recorder.progress.start(rnd, len(messages), counted=False, began=self.recorder.round_started)
        return messages

    def ask_partitions(self, grid: Grid, nodes: list[int]) -> dict[int, int]:
        """Each node's partition id (asked once per node, all at once); nodes that claim one partition together
        are left out, as are nodes that do not answer."""
        unknown = [n for n in nodes if n not in self._partition_of]

        def ask(node: int) -> int:
            query = Message(RecordDict({"config": ConfigRecord({})}), node, MessageType.QUERY)
            replies = list(grid.send_and_receive([query], timeout=self.query_timeout))
            if len(replies) != 1 or replies[0].has_error():
                reason = replies[0].error.reason if replies else f"no reply within {self.query_timeout:g} s"
                raise RuntimeError(reason)
            return int(replies[0].content.config_records["properties"]["partition_id"])  # type: ignore[arg-type]

        with ThreadPoolExecutor(max_workers=min(32, max(1, len(unknown)))) as pool:
            futures = {node: pool.submit(ask, node) for node in unknown}
        for node in unknown:
            try:
                self._partition_of[node] = futures[node].result()
            except Exception as err:  # an unreachable node is simply not sampled this round
                log(WARNING, "node %s did not tell its partition id (%s); it is not sampled this round", node, err)
        claimed: dict[int, list[int]] = {}
        for node in nodes:
            if node in self._partition_of:
                claimed.setdefault(self._partition_of[node], []).append(node)
        for pid, owners in claimed.items():
            if len(owners) > 1:
                named = ", ".join(map(str, owners))
                log(WARNING, "nodes %s all say they hold partition %d; none of them is sampled", named, pid)
        return {owners[0]: pid for pid, owners in claimed.items() if len(owners) == 1}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, let the parent aggregate the accepted ones, then record the round."""
        rnd = server_round + self.round_offset
        began = time.perf_counter()
        replies = list(replies)
        failures: list[Failure] = []
        updates: list[Update] = []
        kept: list[Message] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                failures.append(Failure(str(node), reply.error.reason or f"error code {reply.error.code}"))
            elif node not in self._sampled:
                failures.append(Failure(str(node), f"a train reply from node {node}, which was not sampled"))
            else:
                updates.append(_update(reply))
                kept.append(reply)
        screening = screen_updates(
            rnd,
            updates,
            experiment=self.experiment,
            template=self.template,
            partition_of={str(n): p for n, p in self._partition_of.items()},
            partition_sizes=self.partition_sizes,
        )
        accepted = []
        for i in screening.accepted:
            if i in screening.circuits_refused:  # untrusted circuits: no rule that reads circuits sees them
                report = kept[i].content.config_records.get("report")
                if report is not None:
                    report.pop("circuits", None)
            accepted.append(kept[i])
        arrays: ArrayRecord | None = None
        metrics: MetricRecord | None = None
        if accepted and not (failures and not self.experiment.strategy.accept_failures):
            arrays, metrics = super().aggregate_train(rnd, accepted)  # type: ignore[misc]
        answered = {reply.metadata.src_node_id for reply in replies}
        aggregated = arrays is not None
        outcome = RoundOutcome(
            arrays=arrays.to_numpy_ndarrays() if arrays is not None else self._current,
            aggregated=aggregated,
            reports=[(report, updates[i].arrays or []) for i, report in screening.reports] if aggregated else [],
            rejected=screening.rejected,
            failures=failures,
            silent=[SilentClient(str(n), self._partition_of.get(n)) for n in self._sampled if n not in answered],
            sampled=len(set(self._sampled) | answered),
            strategy_state=self.strategy_state(),
            not_aggregated_because=None if aggregated else not_aggregated_reason(len(accepted), len(failures)),
            reaggregate=self._reaggregate(rnd, accepted, [updates[i] for i in screening.accepted])
            if aggregated
            else None,
        )
        record = self.recorder.record(rnd, outcome, began)
        numbers = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return arrays, MetricRecord({**numbers, **summary_metrics(record)})

    def _reaggregate(
        self, rnd: int, accepted: list[Message], updates: list[Update]
    ) -> Callable[[int], list[np.ndarray] | None]:
        """The parent's aggregation of this round's accepted replies without one partition, leaving the strategy as
        the real aggregation left it (its attributes are restored after each call)."""
        partition = [u.report.get("partition_id") for u in updates]  # screening vouched for each

        def without(pid: int) -> list[np.ndarray] | None:
            others = [reply for reply, p in zip(accepted, partition) if p != pid]
            if len(others) == len(accepted) or not others:
                return None
            saved = dict(self.__dict__)
            try:
                arrays, _ = super(CircuitMessageMixin, self).aggregate_train(rnd, others)  # type: ignore[misc]
            finally:
                self.__dict__.clear()
                self.__dict__.update(saved)
            return None if arrays is None else arrays.to_numpy_ndarrays()

        return without

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # every evaluation is the server's, inside aggregate_train (config refuses fraction_evaluate > 0)


def _update(reply: Message) -> Update:
    """A train reply as the core's :class:`Update`; what is missing or malformed fails in screening, named."""
    content = reply.content
    counts = list(content.metric_records.values())
    report = content.config_records.get("report")

    def decode() -> list[np.ndarray]:
        (weights,) = content.array_records.values()
        return weights.to_numpy_ndarrays()

    return Update(
        node=str(reply.metadata.src_node_id),
        num_examples=counts[0].get("num-examples") if len(counts) == 1 else None,
        report=scalars(report) if report is not None else {},
        decode=decode,
    )
