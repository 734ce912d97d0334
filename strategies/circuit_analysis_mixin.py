"""CircuitAnalysisMixin: gives any FedAvg-derived Flower strategy the circuit analysis."""

from __future__ import annotations

import dataclasses
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from logging import INFO, WARNING
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
from fedmi_flower.config import ExperimentConfig, make_model
from fedmi_flower.records.results import Checkpoint, RunDirectory
from fedmi_flower.records.round_record import Failure, Rejection, RoundRecord, SilentClient, View
from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.science.model import set_weights
from fedmi_flower.wire.protocol import ClientReport, PayloadError, fit_instructions, report_from_metrics

from .seeded_client_manager import SeededClientManager

CONSOLE_KEY = "fedmi_console"
"""A log record whose ``extra`` sets this key is one of fedmi's own lines: shown on a quiet console too."""

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
        ``close``, after the experiment's last round); the other arguments are the parent strategy's."""
        super().__init__(*args, **kwargs)
        self.round_listeners = list(round_listeners)
        self.experiment = experiment
        self.analyst = analyst
        self.run_dir = run_dir
        self.round_offset = start_round
        self.partition_sizes = dict(partition_sizes) if partition_sizes is not None else None
        self.holdout_sizes = dict(holdout_sizes) if holdout_sizes is not None else None
        self.template: nn.Module = make_model(experiment)
        self._current: Parameters = kwargs["initial_parameters"]
        self._partition_of: dict[str, int] = {}
        self._sampled: list[str] = []
        self._round_started = time.perf_counter()

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
        self._round_started = time.perf_counter()
        self._current = parameters
        wanted = self.experiment.clients
        if not client_manager.wait_for(wanted, timeout=int(self.experiment.strategy.wait_for_clients)):
            raise RuntimeError(
                f"experiment {self.experiment.name!r} needs {wanted} clients "
                f"but only {client_manager.num_available()} SuperNodes "
                f"connected within {self.experiment.strategy.wait_for_clients:.0f} s; "
                f"give the federation {wanted} SuperNodes "
                f"(simulation: options.num-supernodes = {wanted} in the SuperLink connection of FLWR_HOME/config.toml) "
                f"or set clients = {client_manager.num_available()}"
            )
        sampler = SeededClientManager(client_manager, self.experiment.seed, rnd, self._partition_of)
        pairs = super().configure_fit(rnd, parameters, sampler)  # type: ignore[misc]
        ours = fit_instructions(self.experiment, rnd)
        self._sampled = [proxy.cid for proxy, _ in pairs]
        # Every sampled node's partition, so that a result claiming another's is caught (asked once per node).
        sampler.partitions({proxy.cid: proxy for proxy, _ in pairs})
        return [(proxy, FitIns(ins.parameters, {**ours, **ins.config})) for proxy, ins in pairs]

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

    def screen_weights(self, res: FitRes) -> None:
        """Raise ``PayloadError`` if the weights cannot be loaded into the model (shape, dtype, NaN)."""
        try:
            arrays = parameters_to_ndarrays(res.parameters)
        except Exception as err:  # a corrupt byte string fails deep inside numpy
            raise PayloadError(f"weights do not decode: {err}") from None
        try:
            set_weights(self.template, arrays)
        except ValueError as err:
            raise PayloadError(f"weights rejected: {err}") from None

    def screen_report(self, res: FitRes) -> ClientReport:
        """Decode and validate the client's report; raise ``PayloadError`` naming what is wrong."""
        return report_from_metrics(
            res.metrics,
            res.num_examples,
            num_clients=self.experiment.clients,
            layer_sizes=site_sizes(self.template),
            num_classes=self.experiment.num_classes,
        )

    def keep_round_weights(
        self, server_round: int, arrays: list[np.ndarray], local: Mapping[int, list[np.ndarray]]
    ) -> None:
        """Write the round's global weights and the local weights of every client whose circuits were accepted.

        Circuit graphs (paper Fig. 11-13) read a circuit's edges from the weights it was
        found on: a client's are the weights it sent with its report.
        """
        self.run_dir.write_round_weights(server_round, arrays, dict(local))

    def on_round_end(self, server_round: int, record: RoundRecord) -> None:
        """Called with every finished round record; logs a one-line progress summary and calls the round listeners.

        Each IoU is followed by its scale: ``[floor F, chance C]``, the noise floor of
        the view over the view's own non-degenerate classes (``floor F on k/n`` when only
        k of the n classes or pairs behind the view have a floor; ``vs V`` when the view's
        non-degenerate mean over exactly those entries, which the floor is compared with,
        differs from the plain mean printed first) and the chance level of
        random circuits of the same sizes (the pairs behind each mean are in the record).
        Then faithfulness (agreement of each circuit's decision with its model's) and how
        many circuits are degenerate (empty, of a class the model does not recognise,
        always-target or never-target), the random-weight control's too.
        """
        s = record.summary

        def num(value: float, digits: int = 2) -> str:
            return "null" if value != value else f"{value:.{digits}f}"  # NaN as rounds.jsonl spells it

        def scaled(view: View, named: bool = False) -> str:
            floor, chance = num(s.view_floor(view)), num(s.view_chance(view))
            covers, entries = s.view_floor_coverage(view)
            if covers < entries and floor != "null":  # the floor is measured for some of the view's classes only
                floor += f" on {covers}/{entries}"
            against = s.view_against_floor(view)
            if floor != "null" and abs(against - s.view(view)) >= 0.005:  # degenerate circuits or uncovered entries
                floor += f" vs {num(against)}"
            return f"{num(s.view(view))} [{'floor ' if named else ''}{floor}, {'chance ' if named else ''}{chance}]"

        aligned = ""
        if record.aligned_inter_client_iou or record.aligned_local_global_iou:
            aligned = (
                f" | aligned inter-client {num(s.aligned_inter_client_iou)} local-global "
                f"{num(s.aligned_local_global_iou)}, {num(s.channels_moved, 0)} channels moved"
            )
        failed, refused = len(record.failures), len(record.rejected)
        trouble = [f"{failed} failed"] * bool(failed) + [f"{refused} rejected"] * bool(refused)
        control = record.control
        log(
            INFO,
            "[round %d/%d] %d/%d clients%s%s | acc %s | IoU inter-client %s | local-global %s | stability %s%s | "
            "faith local %s global %s | cross-eval suff %s spec %s faith %s, preserved %d/%d | "
            "degenerate %d/%d local, %d/%d global, %s control | %.1f s",
            server_round,
            self.experiment.rounds,
            s.clients,
            record.sampled,
            f" ({', '.join(trouble)})" if trouble else "",
            "" if record.aggregated else " NOT AGGREGATED",
            num(s.global_accuracy, 3),
            scaled(View.INTER_CLIENT_IOU, named=True),
            scaled(View.LOCAL_GLOBAL_IOU),
            scaled(View.STABILITY),
            aligned,
            num(s.local_faithfulness),
            num(s.global_faithfulness),
            num(s.cross_sufficiency),
            num(s.cross_specificity),
            num(s.cross_faithfulness),
            s.cross_preserved,
            s.cross_working_locally,
            s.degenerate_local,
            sum(len(c.circuits) for c in record.clients.values()),
            s.degenerate_global,
            len(record.global_model.circuits),
            f"{s.control_degenerate}/{len(control.circuits)}" if control is not None else "no",
            record.timings.round,
            extra={CONSOLE_KEY: True},
        )
        last = server_round >= self.experiment.rounds
        for listener in self.round_listeners:  # e.g. TensorBoard scalars (logging.tensorboard)
            try:  # a listener that fails (a full disk) must not lose the run: the records are written already
                listener(record)
                if last and hasattr(listener, "close"):
                    listener.close()
            except Exception:
                log(
                    WARNING,
                    "round %d: a round listener failed, the run goes on:\n%s",
                    server_round,
                    traceback.format_exc(),
                )

    # ------------------------------------------------------------------ aggregation

    def screen_examples(self, proxy: ClientProxy, res: FitRes) -> int:
        """The partition a result counts for; raise ``PayloadError`` if its claim or example count cannot be trusted.

        Flower weights every average by ``FitRes.num_examples``, so the count is checked
        before the weights are aggregated: a positive integer, equal to the training rows
        of the partition when the server knows them. The partition is the one the node
        told the server (``get_properties``) when the server asked; the report's
        ``partition_id`` must agree with it.
        """
        n = res.num_examples
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PayloadError(f"num_examples = {n!r} must be a positive integer; the weights are not aggregated")
        claim = res.metrics.get("partition_id")
        if isinstance(claim, bool) or not isinstance(claim, int) or not 0 <= claim < self.experiment.clients:
            raise PayloadError(f"partition_id = {claim!r} must be an integer in 0..{self.experiment.clients - 1}")
        known = self._partition_of.get(proxy.cid)
        if known is not None and known != claim:
            raise PayloadError(f"claims partition {claim}, but this node holds partition {known}")
        if self.partition_sizes is not None and self.partition_sizes.get(claim) != n:
            raise PayloadError(
                f"num_examples = {n}, but partition {claim} has {self.partition_sizes.get(claim)} training examples"
            )
        return claim

    def _screen(
        self, rnd: int, results: list[Result]
    ) -> tuple[list[Result], list[tuple[ClientReport, FitRes]], list[Rejection]]:
        """Split results into those to aggregate, the valid reports (with the result each came in), and the rejections.

        A result's weights are aggregated only when they load into the model, its example
        count is trusted (:meth:`screen_examples`) and no other result claims its
        partition. Two results claiming one partition that the server cannot tell apart
        are both rejected, whatever their order of arrival. A report that does not decode
        loses its circuits only: its weights were already vouched for, and its result goes
        to the parent strategy without its circuits.
        """
        rejected: list[Rejection] = []

        def reject(proxy: ClientProxy, reason: str, aggregated: bool) -> None:
            rejected.append(Rejection(proxy.cid, reason, aggregated))
            if aggregated:
                log(WARNING, "round %d: circuits of client %s skipped (weights aggregated): %s", rnd, proxy.cid, reason)
            else:
                log(WARNING, "round %d: client %s rejected, its weights are not aggregated: %s", rnd, proxy.cid, reason)

        claims: dict[int, list[Result]] = {}
        for proxy, res in results:
            try:
                self.screen_weights(res)
                pid = self.screen_examples(proxy, res)
            except PayloadError as err:
                reject(proxy, str(err), False)
                continue
            claims.setdefault(pid, []).append((proxy, res))
        accepted: list[Result] = []
        reported: list[tuple[ClientReport, FitRes]] = []
        for pid, claimants in sorted(claims.items()):
            if len(claimants) > 1:
                nodes = ", ".join(sorted(proxy.cid for proxy, _ in claimants))
                for proxy, _ in claimants:
                    reject(
                        proxy,
                        f"partition {pid} is claimed by several nodes ({nodes}) and the "
                        "server cannot tell which holds it",
                        False,
                    )
                continue
            ((proxy, res),) = claimants
            try:
                reported.append((self.screen_report(res), res))
            except PayloadError as err:
                reject(proxy, str(err), True)
                # Its circuits are untrusted: no aggregation rule that reads circuits (modularfedavg) sees them.
                res = dataclasses.replace(res, metrics={k: v for k, v in res.metrics.items() if k != "circuits"})
            accepted.append((proxy, res))
        rejected.sort(key=lambda r: r.client)
        return accepted, reported, rejected

    def aggregate_fit(
        self, server_round: int, results: list[Result], failures: list[Result | BaseException]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Screen results, aggregate with the parent strategy, analyse the global model, record the round.

        A round the parent does not aggregate (no valid result, or failures with
        ``accept_failures = false``) keeps the global model; it is still recorded, with
        ``aggregated: false``, the reason, and the analysis of the unchanged model.
        """
        rnd = server_round + self.round_offset
        began = time.perf_counter()
        accepted, reported, rejected = self._screen(rnd, results)
        parameters, metrics = super().aggregate_fit(rnd, accepted, failures)  # type: ignore[misc]
        # Flower reports an exception without its client: name the sampled clients that did not answer.
        answered = {proxy.cid for proxy, _ in results} | {f[0].cid for f in failures if isinstance(f, tuple)}
        silent = [SilentClient(cid, self._partition_of.get(cid)) for cid in self._sampled if cid not in answered]
        failure_notes = [Failure(f[0].cid if isinstance(f, tuple) else None, describe_failure(f)) for f in failures]
        for note in failure_notes:
            who = f"client {note.client}" if note.client is not None else "a client"
            log(WARNING, "round %d: %s failed, its update is left out: %s", rnd, who, note.error)
        aggregated = parameters is not None
        reason = None
        if not aggregated:
            reason = (
                "no valid result" if not accepted else f"{len(failures)} client(s) failed and accept_failures is false"
            )
            log(WARNING, "round %d: not aggregated (%s); the global model is unchanged", rnd, reason)
            parameters, metrics, reported = self._current, {}, []
        arrays = parameters_to_ndarrays(parameters)
        model = make_model(self.experiment)
        set_weights(model, arrays)
        model.to(self.analyst.evaluation.images.device)
        # The weights each accepted report's circuits were found on (aligned IoU, circuit graphs).
        local = {report.partition_id: parameters_to_ndarrays(res.parameters) for report, res in reported}
        try:
            record = self.analyst.analyse(rnd, model, [report for report, _ in reported], local)
        except Exception:  # a bug in the analysis must not lose the training run
            log(WARNING, "round %d: circuit analysis failed, training goes on:\n%s", rnd, traceback.format_exc())
            record = RoundRecord(round=rnd, analysis_error=traceback.format_exc())
        if record.alignment_error is not None:
            log(WARNING, "round %d: aligned IoU failed, the other views stand:\n%s", rnd, record.alignment_error)
        record.aggregated = aggregated
        record.not_aggregated_because = reason
        # Every client sampled this round: those that answered or failed by name, and the silent ones. A failure
        # Flower reports without its client is one of the silent clients (named above), so it is not counted twice.
        bare = sum(1 for f in failures if not isinstance(f, tuple))
        record.sampled = len(set(self._sampled) | answered) + max(0, bare - len(silent))
        record.failures = failure_notes
        record.silent_clients = silent
        record.rejected = rejected
        record.timings.server = time.perf_counter() - began
        record.timings.round = time.perf_counter() - self._round_started
        self.keep_round_weights(record.round, arrays, local)
        self.run_dir.append_round(record)
        self.run_dir.write_weights(arrays, rnd)
        # The checkpoint is the round's commit point: written last.
        self.run_dir.write_checkpoint(
            Checkpoint(rnd, arrays, self.strategy_state(), self.analyst.state_dict(), self.experiment.seed)
        )
        self.on_round_end(rnd, record)
        summary = {k: v for k, v in record.summary.scalars().items() if np.isfinite(v)}
        return (ndarrays_to_parameters(arrays) if aggregated else None), {**metrics, **summary}
