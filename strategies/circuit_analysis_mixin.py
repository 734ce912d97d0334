"""CircuitAnalysisMixin: gives any FedAvg-derived Flower strategy the circuit analysis."""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from logging import WARNING
from typing import Any

import numpy as np
import torch.nn as nn
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from fedmi_flower.analysis.round_analyst import RoundAnalyst
from fedmi_flower.analysis.round_core import (
    ConsoleLine,
    RoundOutcome,
    RoundRecorder,
    Update,
    clients_missing,
    not_aggregated_reason,
    round_instructions,
    screen_updates,
    summary_metrics,
)
from fedmi_flower.config import ExperimentConfig, make_model
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.records.round_record import Failure, RoundRecord, SilentClient

from .counting_proxy import CountingProxy
from .seeded_client_manager import SeededClientManager

Result = tuple[ClientProxy, FitRes]


def describe_failure(failure: Result | BaseException) -> str:
    """One readable line for a failed client: its own exception message, not Ray's traceback around it."""
    if isinstance(failure, tuple):
        return f"status {failure[1].status.code.name}: {failure[1].status.message}"
    text = str(failure)
    # Simulation wraps the client's exception as "... Exception X occurred. Message: <msg>'>) ..." (escaped).
    found = re.findall(r"Message: (.+?)\\*'>\)", text)
    if found:
        return found[-1].replace("\\'", "'").replace("\\n", " ").strip()
    return f"{type(failure).__name__}: {text}"[:500]


# Attributes in which Flower's strategies keep state across rounds (FedOpt family, FedAvgM).
STATE_ATTRIBUTES = ("current_weights", "m_t", "v_t", "momentum_vector")


class CircuitAnalysisMixin:
    """Circuit analysis inside ``aggregate_fit``, for a strategy derived from ``FedAvg``.

    Put it first among the bases, ``class CircuitFedProx(CircuitAnalysisMixin, FedProx)``,
    so that it wraps the parent: it screens the clients' results, lets the parent
    aggregate the valid ones, analyses the new global model with a
    :class:`~fedmi_flower.analysis.round_analyst.RoundAnalyst`, and writes the round and a checkpoint
    to the run directory. It adds the experiment's fit instructions to every
    ``FitIns`` and samples clients reproducibly (:class:`SeededClientManager`).

    Parameters
    ----------
    experiment : ExperimentConfig
        The experiment being run.
    analyst : RoundAnalyst
        Holds the server's probe and evaluation data and the analysis state.
    run_dir : RunDirectory
        Where round records, weights and checkpoints go.
    start_round : int
        Rounds already finished (a resumed run): Flower counts from 1 again, the
        parent strategy and every record see the true round.
    **kwargs
        Passed to the parent strategy; ``initial_parameters`` is required.
    """

    def __init__(
        self,
        *args: Any,
        experiment: ExperimentConfig,
        analyst: RoundAnalyst,
        run_dir: RunDirectory,
        start_round: int = 0,
        partition_sizes: Mapping[int, int] | None = None,
        holdout_sizes: Mapping[int, int] | None = None,
        round_listeners: Sequence[Callable[[RoundRecord], None]] = (),
        **kwargs: Any,
    ) -> None:
        """``round_listeners`` are called with every finished round's record (and closed, where they have a
        ``close``, after the experiment's last round), after its console line; the other arguments are the
        parent strategy's."""
        super().__init__(*args, **kwargs)
        self.experiment = experiment
        self.analyst = analyst
        self.run_dir = run_dir
        self.recorder = RoundRecorder(experiment, analyst, run_dir, [ConsoleLine(experiment.rounds), *round_listeners])
        self.round_offset = start_round
        self.partition_sizes = dict(partition_sizes) if partition_sizes is not None else None
        self.holdout_sizes = dict(holdout_sizes) if holdout_sizes is not None else None
        self.template: nn.Module = make_model(experiment)
        self._current: Parameters = kwargs["initial_parameters"]
        self._partition_of: dict[str, int] = {}
        self._sampled: list[str] = []

    # ------------------------------------------------------------------ state

    def strategy_state(self) -> dict[str, list[np.ndarray]]:
        """The parent strategy's cross-round state (server optimiser moments, momentum)."""
        state = {
            name: [np.asarray(a) for a in getattr(self, name)] for name in STATE_ATTRIBUTES if getattr(self, name, None)
        }
        if isinstance(
            getattr(self, "initial_parameters", None), Parameters
        ):  # FedAvgM keeps its reference weights here
            state["initial_parameters"] = parameters_to_ndarrays(self.initial_parameters)  # type: ignore[attr-defined]
        return state

    def load_strategy_state(self, state: dict[str, list[np.ndarray]]) -> None:
        """Restore :meth:`strategy_state` output."""
        for name, arrays in state.items():
            setattr(
                self,
                name,
                ndarrays_to_parameters(arrays) if name == "initial_parameters" else [np.array(a) for a in arrays],
            )

    # ------------------------------------------------------------------ hooks

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """The parent's fit instructions under the experiment's, sampled reproducibly.

        Raises ``RuntimeError`` when fewer SuperNodes than the experiment's clients connect
        within ``strategy.wait_for_clients`` seconds (Flower itself would wait a day).
        """
        rnd = server_round + self.round_offset
        self.recorder.start_round()
        self._current = parameters
        wanted = self.experiment.clients
        if not client_manager.wait_for(wanted, timeout=int(self.experiment.strategy.wait_for_clients)):
            raise RuntimeError(clients_missing(self.experiment, client_manager.num_available()))
        sampler = SeededClientManager(client_manager, self.experiment.seed, rnd, self._partition_of)
        pairs = super().configure_fit(rnd, parameters, sampler)  # type: ignore[misc]
        ours = round_instructions(self.experiment, rnd, self.analyst, self.template)
        self._sampled = [proxy.cid for proxy, _ in pairs]
        # Every sampled node's partition, so that a result claiming another's is caught (asked once per node).
        sampler.partitions({proxy.cid: proxy for proxy, _ in pairs})
        self.recorder.progress.start(rnd, len(pairs), began=self.recorder.round_started)
        done = self.recorder.progress.client_done
        return [(CountingProxy(proxy, done), FitIns(ins.parameters, {**ours, **ins.config})) for proxy, ins in pairs]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        rnd = server_round + self.round_offset
        sampler = SeededClientManager(client_manager, self.experiment.seed, rnd, self._partition_of)
        return super().configure_evaluate(rnd, parameters, sampler)  # type: ignore[misc]

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The parent's example-weighted evaluation over the clients whose example counts can be trusted.

        A client without held-out rows reports ``num_examples = 0``; Flower's weighted
        average would divide by zero when every client does. A count that is not a
        positive integer, or differs from the held-out rows of the node's partition as
        the server knows them, leaves that client out of the average (logged).
        """
        counted = []
        for proxy, res in results:
            n = res.num_examples
            pid = self._partition_of.get(proxy.cid, res.metrics.get("partition_id"))
            expected = self.holdout_sizes.get(pid) if self.holdout_sizes is not None and isinstance(pid, int) else None
            trusted = isinstance(n, int) and not isinstance(n, bool) and n >= 1 and expected in (None, n)
            if not trusted:
                if n != 0 or expected not in (
                    None,
                    0,
                ):  # a client with no held-out rows has nothing to say: not worth a warning
                    log(
                        WARNING,
                        "evaluation of client %s left out: num_examples = %r (its partition holds out %s rows)",
                        proxy.cid,
                        n,
                        expected,
                    )
                continue
            counted.append((proxy, res))
        if not counted:
            return None, {}
        return super().aggregate_evaluate(server_round + self.round_offset, counted, failures)  # type: ignore[misc]

    # ------------------------------------------------------------------ aggregation

    def _reaggregate(self, rnd: int, accepted: list[Result]) -> Callable[[int], list[np.ndarray] | None]:
        """The parent's aggregation of this round's accepted results without one partition, leaving the strategy
        as the real aggregation left it (its attributes are restored after each call: FedAdam's moments, ...)."""

        def without(pid: int) -> list[np.ndarray] | None:
            # Screening vouched for each accepted result's partition_id.
            others = [(proxy, res) for proxy, res in accepted if res.metrics.get("partition_id") != pid]
            if len(others) == len(accepted) or not others:
                return None
            saved = dict(self.__dict__)
            try:
                parameters, _ = super(CircuitAnalysisMixin, self).aggregate_fit(rnd, others, [])  # type: ignore[misc]
            finally:
                self.__dict__.clear()
                self.__dict__.update(saved)
            return None if parameters is None else parameters_to_ndarrays(parameters)

        return without

    def aggregate_fit(
        self, server_round: int, results: list[Result], failures: list[Result | BaseException]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Screen results, aggregate with the parent strategy, then record the round (:class:`RoundRecorder`).

        A round the parent does not aggregate (no valid result, or failures with
        ``accept_failures = false``) keeps the global model; it is still recorded, with
        ``aggregated: false``, the reason, and the analysis of the unchanged model.
        """
        rnd = server_round + self.round_offset
        began = time.perf_counter()
        updates = [
            Update(proxy.cid, res.num_examples, res.metrics, functools.partial(parameters_to_ndarrays, res.parameters))
            for proxy, res in results
        ]
        screening = screen_updates(
            rnd,
            updates,
            experiment=self.experiment,
            template=self.template,
            partition_of=self._partition_of,
            partition_sizes=self.partition_sizes,
        )
        accepted = []
        for i in screening.accepted:
            proxy, res = results[i]
            if i in screening.circuits_refused:  # untrusted circuits: no rule that reads circuits sees them
                res = dataclasses.replace(res, metrics={k: v for k, v in res.metrics.items() if k != "circuits"})
            accepted.append((proxy, res))
        parameters, metrics = super().aggregate_fit(rnd, accepted, failures)  # type: ignore[misc]
        # Flower reports an exception without its client: name the sampled clients that did not answer.
        answered = {proxy.cid for proxy, _ in results} | {f[0].cid for f in failures if isinstance(f, tuple)}
        silent = [SilentClient(cid, self._partition_of.get(cid)) for cid in self._sampled if cid not in answered]
        # Every client sampled this round: those that answered or failed by name, and the silent ones. A failure
        # Flower reports without its client is one of the silent clients (named above), so it is not counted twice.
        bare = sum(1 for f in failures if not isinstance(f, tuple))
        aggregated = parameters is not None
        outcome = RoundOutcome(
            arrays=parameters_to_ndarrays(parameters if aggregated else self._current),
            aggregated=aggregated,
            reports=[(report, updates[i].arrays or []) for i, report in screening.reports] if aggregated else [],
            rejected=screening.rejected,
            failures=[Failure(f[0].cid if isinstance(f, tuple) else None, describe_failure(f)) for f in failures],
            silent=silent,
            sampled=len(set(self._sampled) | answered) + max(0, bare - len(silent)),
            strategy_state=self.strategy_state(),
            not_aggregated_because=None if aggregated else not_aggregated_reason(len(accepted), len(failures)),
            reaggregate=self._reaggregate(rnd, accepted) if aggregated else None,
            start_arrays=parameters_to_ndarrays(self._current),
        )
        record = self.recorder.record(rnd, outcome, began)
        return (ndarrays_to_parameters(outcome.arrays) if aggregated else None), {
            **(metrics if aggregated else {}),
            **summary_metrics(record),
        }
