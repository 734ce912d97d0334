"""One round on the server, free of Flower's types: screening, seeded sampling, the recorder and its listeners.

The two strategy adapters (``strategies/circuit_analysis_mixin.py`` for Flower's legacy
API, ``strategies/circuit_message_mixin.py`` for the Message API) turn what their API
hands them into :class:`Update` objects, call :func:`screen_updates`, let the parent
strategy aggregate the accepted ones, and give the new global weights to a
:class:`RoundRecorder`, which analyses them, writes the run directory and the checkpoint
(the round's commit point) and notifies its listeners (the console line, TensorBoard).
Each step here is a plain function or object on numpy arrays and mappings, tested
without Flower (tests/test_round_core.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.nn as nn

from fedmi_flower.analysis.counterfactual import Reaggregate
from fedmi_flower.analysis.progress import RoundProgress
from fedmi_flower.analysis.round_analyst import RoundAnalyst
from fedmi_flower.config import ExperimentConfig, make_model
from fedmi_flower.records.results import Checkpoint, RunDirectory
from fedmi_flower.records.round_record import Failure, Rejection, RoundRecord, SilentClient, View
from fedmi_flower.science.disjoint import class_unions
from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.science.model import set_weights
from fedmi_flower.science.seeding import numpy_rng
from fedmi_flower.wire.protocol import (
    ClientReport,
    PayloadError,
    encode_circuits,
    fit_instructions,
    payload_bytes,
    report_from_metrics,
)

logger = logging.getLogger("flwr")  # Flower's logger: the run's log and console carry these lines as Flower's own

RoundListener = Callable[[RoundRecord], None]

CONSOLE_KEY = "fedmi_console"
"""A log record whose ``extra`` sets this key is one of fedmi's own lines: shown on a quiet console too."""


@dataclass
class Update:
    """One client's reply to a training round, as the core sees it under either API.

    Attributes
    ----------
    node : str
        The node that sent it (Flower's node or client id).
    num_examples : object
        The example count it claims (checked: Flower weights averages by it).
    report : Mapping[str, Any]
        Its report (partition id, circuits, scores) as the wire carries it.
    decode : Callable[[], list[np.ndarray]]
        Decodes its weights (raises on a corrupt payload); called once, by screening.
    """

    node: str
    num_examples: object
    report: Mapping[str, Any]
    decode: Callable[[], list[np.ndarray]]
    arrays: list[np.ndarray] | None = None


@dataclass
class Screening:
    """What :func:`screen_updates` decided, update by update (indices into its input)."""

    accepted: list[int] = field(default_factory=list)
    """Updates whose weights are aggregated, in partition order."""
    reports: list[tuple[int, ClientReport]] = field(default_factory=list)
    """Accepted updates whose reports decode: their circuits enter the analysis."""
    circuits_refused: set[int] = field(default_factory=set)
    """Accepted updates whose reports do not decode: no rule that reads circuits may see them."""
    rejected: list[Rejection] = field(default_factory=list)


def round_instructions(
    experiment: ExperimentConfig, server_round: int, analyst: RoundAnalyst, template: nn.Module
) -> dict[str, bool | int | float | str | bytes]:
    """The fit config of a round under either API: the experiment's settings and, under ``train.disjoint =
    "circuits"``, every class's union of the clients' last reported circuits that were not degenerate (a client
    not sampled last round counts with its latest report; round 1 sends none)."""
    packed = None
    if experiment.train.disjoint == "circuits" and analyst.previous:
        latest = {pid: circuits for pid, (_, circuits) in analyst.previous.items()}
        unions = class_unions(latest, analyst.previous_degenerate)
        packed = encode_circuits(unions, site_sizes(template)) if unions else None
    return fit_instructions(experiment, server_round, packed)


def screen_weights(update: Update, template: nn.Module) -> list[np.ndarray]:
    """The update's weights, decoded and loaded into ``template``; raise ``PayloadError`` (shape, dtype, NaN)."""
    try:
        arrays = update.decode()
    except Exception as err:  # a corrupt byte string fails deep inside numpy
        raise PayloadError(f"weights do not decode: {err}") from None
    try:
        set_weights(template, arrays)
    except ValueError as err:
        raise PayloadError(f"weights rejected: {err}") from None
    return arrays


def screen_examples(
    update: Update, clients: int, known_partition: int | None, partition_sizes: Mapping[int, int] | None
) -> int:
    """The partition an update counts for; raise ``PayloadError`` if its claim or example count cannot be trusted.

    Flower weights every average by the example count, so it is checked before the
    weights are aggregated: a positive integer, equal to the training rows of the
    partition when the server knows them. The partition is the one the node told the
    server when asked (``known_partition``); the report's ``partition_id`` must agree.
    """
    n = update.num_examples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PayloadError(f"num_examples = {n!r} must be a positive integer; the weights are not aggregated")
    claim = update.report.get("partition_id")
    if isinstance(claim, bool) or not isinstance(claim, int) or not 0 <= claim < clients:
        raise PayloadError(f"partition_id = {claim!r} must be an integer in 0..{clients - 1}")
    if known_partition is not None and known_partition != claim:
        raise PayloadError(f"claims partition {claim}, but this node holds partition {known_partition}")
    if partition_sizes is not None and partition_sizes.get(claim) != n:
        raise PayloadError(
            f"num_examples = {n}, but partition {claim} has {partition_sizes.get(claim)} training examples"
        )
    return claim


def screen_updates(
    rnd: int,
    updates: Sequence[Update],
    *,
    experiment: ExperimentConfig,
    template: nn.Module,
    partition_of: Mapping[str, int],
    partition_sizes: Mapping[int, int] | None = None,
) -> Screening:
    """Split a round's updates into those to aggregate, the valid reports and the rejections.

    An update's weights are aggregated only when they load into the model, its example
    count is trusted (:func:`screen_examples`) and no other update claims its
    partition. Two updates claiming one partition that the server cannot tell apart
    are both rejected, whatever their order of arrival. A report that does not decode
    loses its circuits only: its weights were already vouched for. Decoded weights are
    kept on each update (``arrays``).
    """
    out = Screening()

    def reject(update: Update, reason: str, aggregated: bool) -> None:
        out.rejected.append(Rejection(update.node, reason, aggregated))
        if aggregated:
            logger.warning("round %d: circuits of client %s skipped (weights aggregated): %s", rnd, update.node, reason)
        else:
            logger.warning("round %d: client %s rejected, its weights are not aggregated: %s", rnd, update.node, reason)

    claims: dict[int, list[int]] = {}
    for i, update in enumerate(updates):
        try:
            update.arrays = screen_weights(update, template)
            pid = screen_examples(update, experiment.clients, partition_of.get(update.node), partition_sizes)
        except PayloadError as err:
            reject(update, str(err), False)
            continue
        claims.setdefault(pid, []).append(i)
    for pid, claimants in sorted(claims.items()):
        if len(claimants) > 1:
            nodes = ", ".join(sorted(updates[i].node for i in claimants))
            for i in claimants:
                reject(
                    updates[i],
                    f"partition {pid} is claimed by several nodes ({nodes}) and the server cannot tell which holds it",
                    False,
                )
            continue
        (i,) = claimants
        update = updates[i]
        try:
            report = report_from_metrics(
                update.report,
                update.num_examples,  # type: ignore[arg-type]  # checked by screen_examples
                num_clients=experiment.clients,
                layer_sizes=site_sizes(template),
                num_classes=experiment.num_classes,
            )
            weights_bytes = sum(int(a.nbytes) for a in update.arrays or [])
            out.reports.append(
                (i, dataclasses.replace(report, report_bytes=payload_bytes(update.report), weights_bytes=weights_bytes))
            )
        except PayloadError as err:
            reject(update, str(err), True)
            out.circuits_refused.add(i)
        out.accepted.append(i)
    out.rejected.sort(key=lambda r: r.client)
    return out


def sample_partitions(seed: int, rnd: int, partitions: Sequence[int], k: int) -> list[int]:
    """``k`` of ``partitions`` chosen from the stream of ``(seed, round)``, in partition order.

    Flower samples node ids, which a simulation draws afresh every run; sampling by
    partition makes partial participation reproducible under either API.
    """
    ids = sorted(partitions)
    if k >= len(ids):
        return ids
    chosen = numpy_rng(seed, "client-sampling", rnd).choice(len(ids), size=k, replace=False)
    return [ids[i] for i in sorted(chosen)]


def clients_missing(experiment: ExperimentConfig, available: int) -> str:
    """The error when fewer nodes than the experiment's clients connected in time: what to change."""
    wanted = experiment.clients
    return (
        f"experiment {experiment.name!r} needs {wanted} clients but only {available} SuperNodes "
        f"connected within {experiment.strategy.wait_for_clients:.0f} s; give the federation {wanted} SuperNodes "
        f"(simulation: options.num-supernodes = {wanted} in the SuperLink connection of FLWR_HOME/config.toml) "
        f"or set clients = {available}"
    )


@dataclass
class RoundOutcome:
    """What the adapter knows of a round after its parent strategy aggregated (or did not)."""

    arrays: list[np.ndarray]
    """The global weights after the round (the previous ones when not aggregated)."""
    aggregated: bool
    reports: list[tuple[ClientReport, list[np.ndarray]]]
    """Each accepted report with the weights its circuits were found on."""
    rejected: list[Rejection]
    failures: list[Failure]
    silent: list[SilentClient]
    sampled: int
    strategy_state: dict[str, list[np.ndarray]]
    not_aggregated_because: str | None = None
    reaggregate: Reaggregate | None = None
    """The round's aggregation rule applied again without one partition (counterfactual aggregation)."""
    start_arrays: list[np.ndarray] | None = None
    """The global weights the round started from."""


class RoundRecorder:
    """Analyses a round's global model, writes the run directory and checkpoint, and tells the listeners.

    Parameters
    ----------
    experiment : ExperimentConfig
        The experiment being run.
    analyst : RoundAnalyst
        The server's probe and evaluation data and the analysis state.
    run_dir : RunDirectory
        Where round records, weights and checkpoints go.
    listeners : Sequence[RoundListener]
        Called with every finished round's record, in order (and closed, where they have
        a ``close``, after the experiment's last round). A listener that fails is logged
        and the run goes on: the round is on disk before any listener runs.
    """

    def __init__(
        self,
        experiment: ExperimentConfig,
        analyst: RoundAnalyst,
        run_dir: RunDirectory,
        listeners: Sequence[RoundListener] = (),
    ) -> None:
        self.experiment = experiment
        self.analyst = analyst
        self.run_dir = run_dir
        self.listeners = list(listeners)
        self.round_started = time.perf_counter()
        self.progress = RoundProgress(experiment.rounds)
        analyst.on_step = self.progress.phase

    def start_round(self) -> None:
        """Mark the start of a round (its ``timings.round`` counts from here)."""
        self.round_started = time.perf_counter()

    def record(self, rnd: int, outcome: RoundOutcome, server_began: float) -> RoundRecord:
        """Analyse, write and announce round ``rnd``; return its record.

        Parameters
        ----------
        rnd : int
            The true round (a resumed run's rounds continue the numbering).
        outcome : RoundOutcome
            The round as the adapter saw it.
        server_began : float
            ``time.perf_counter()`` when the server's part of the round began.
        """
        for note in outcome.failures:
            who = f"client {note.client}" if note.client is not None else "a client"
            logger.warning("round %d: %s failed, its update is left out: %s", rnd, who, note.error)
        if not outcome.aggregated:
            logger.warning(
                "round %d: not aggregated (%s); the global model is unchanged", rnd, outcome.not_aggregated_because
            )
        self.progress.phase("aggregating")
        model = make_model(self.experiment)
        set_weights(model, outcome.arrays)
        model.to(self.analyst.evaluation.images.device)
        # The weights each accepted report's circuits were found on (aligned IoU, circuit graphs).
        local = {report.partition_id: arrays for report, arrays in outcome.reports}
        try:
            record = self.analyst.analyse(
                rnd,
                model,
                [report for report, _ in outcome.reports],
                local,
                reaggregate=outcome.reaggregate,
                start_weights=outcome.start_arrays,
            )
        except Exception:  # a bug in the analysis must not lose the training run
            logger.warning("round %d: circuit analysis failed, training goes on:\n%s", rnd, traceback.format_exc())
            record = RoundRecord(round=rnd, analysis_error=traceback.format_exc())
        for name, error in record.step_errors.items():
            logger.warning("round %d: analysis step %s failed, the other views stand:\n%s", rnd, name, error)
        record.aggregated = outcome.aggregated
        record.not_aggregated_because = outcome.not_aggregated_because
        record.sampled = outcome.sampled
        record.failures = outcome.failures
        record.silent_clients = outcome.silent
        record.rejected = outcome.rejected
        record.timings.server = time.perf_counter() - server_began
        record.timings.round = time.perf_counter() - self.round_started
        self.run_dir.write_round_weights(record.round, outcome.arrays, local)
        self.run_dir.append_round(record)
        self.run_dir.write_weights(outcome.arrays, rnd)
        # The checkpoint is the round's commit point: written last.
        self.run_dir.write_checkpoint(
            Checkpoint(rnd, outcome.arrays, outcome.strategy_state, self.analyst.state_dict(), self.experiment.seed)
        )
        self.progress.end()
        self.notify(rnd, record)
        return record

    def notify(self, rnd: int, record: RoundRecord) -> None:
        """Call every listener with the record; close them after the experiment's last round."""
        last = rnd >= self.experiment.rounds
        for listener in self.listeners:
            try:  # a listener that fails (a full disk) must not lose the run: the records are written already
                listener(record)
                if last and hasattr(listener, "close"):
                    listener.close()
            except Exception:
                logger.warning("round %d: a round listener failed, the run goes on:\n%s", rnd, traceback.format_exc())


def round_line(record: RoundRecord, rounds: int) -> str:
    """The round's one-line progress summary, as the console prints it.

    Each IoU is followed by its scale: ``[floor F, chance C]``, the noise floor of the view
    over the view's own non-degenerate classes (``floor F on k/n`` when only k of the n
    classes or pairs behind the view have a floor; ``vs V`` when the view's
    non-degenerate mean over exactly those entries, which the floor is compared with,
    differs from the plain mean printed first) and the chance level of random circuits
    of the same sizes (the pairs behind each mean are in the record). Then faithfulness
    (agreement of each circuit's decision with its model's) and how many circuits are
    degenerate (empty, of a class the model does not recognise, always-target or
    never-target), the random-weight control's too.
    """
    s = record.summary

    def num(value: float, digits: int = 2) -> str:
        return "null" if value != value else f"{value:.{digits}f}"  # NaN as rounds.jsonl spells it

    def scaled(view: View, named: bool = False) -> str:
        numbers = s.view(view)
        floor, chance = num(numbers.floor), num(numbers.chance)
        covers, entries = numbers.floor_covers, numbers.entries
        if covers < entries and floor != "null":  # the floor is measured for some of the view's classes only
            floor += f" on {covers}/{entries}"
        against = s.against_floor(view)
        if floor != "null" and abs(against - numbers.mean) >= 0.005:  # degenerate circuits or uncovered entries
            floor += f" vs {num(against)}"
        return f"{num(numbers.mean)} [{'floor ' if named else ''}{floor}, {'chance ' if named else ''}{chance}]"

    aligned = ""
    if record.aligned_inter_client_iou or record.aligned_local_global_iou:
        aligned = (
            f" | aligned inter-client {num(s.aligned_inter_client_iou.mean)} local-global "
            f"{num(s.aligned_local_global_iou.mean)}, {num(s.channels_moved, 0)} channels moved"
        )
    failed, refused = len(record.failures), len(record.rejected)
    trouble = [f"{failed} failed"] * bool(failed) + [f"{refused} rejected"] * bool(refused)
    noted = f" ({', '.join(trouble)})" if trouble else ""
    control = record.control
    return (
        f"[round {record.round}/{rounds}] {s.clients}/{record.sampled} clients"
        f"{noted}{'' if record.aggregated else ' NOT AGGREGATED'}"
        f" | acc {num(s.global_accuracy, 3)} | IoU inter-client {scaled(View.INTER_CLIENT_IOU, named=True)}"
        f" | local-global {scaled(View.LOCAL_GLOBAL_IOU)} | stability {scaled(View.STABILITY)}{aligned}"
        f" | faith local {num(s.local_faithfulness)} global {num(s.global_faithfulness)}"
        f" | cross-eval suff {num(s.cross_sufficiency)} spec {num(s.cross_specificity)}"
        f" faith {num(s.cross_faithfulness)}, preserved {s.cross_preserved}/{s.cross_working_locally}"
        f" | degenerate {s.degenerate_local}/{sum(len(c.circuits) for c in record.clients.values())} local,"
        f" {s.degenerate_global}/{len(record.global_model.circuits)} global,"
        f" {f'{s.control_degenerate}/{len(control.circuits)}' if control is not None else 'no'} control"
        f" | {record.timings.round:.1f} s"
    )


class ConsoleLine:
    """The listener that logs :func:`round_line` as one of fedmi's own console lines."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def __call__(self, record: RoundRecord) -> None:
        logger.info("%s", round_line(record, self.rounds), extra={CONSOLE_KEY: True})


def summary_metrics(record: RoundRecord) -> dict[str, float]:
    """The record's summary scalars that are finite: what a strategy returns as its round metrics."""
    return {k: v for k, v in record.summary.scalars().items() if np.isfinite(v)}


def not_aggregated_reason(accepted: int, failures: int) -> str:
    """Why a parent strategy returned no weights."""
    return "no valid result" if not accepted else f"{failures} client(s) failed and accept_failures is false"


def state_arrays(value: Any) -> list[np.ndarray] | None:
    """A strategy attribute's arrays for the checkpoint (a list, a dict, or an object with ``to_numpy_ndarrays``)."""
    if value is None:
        return None
    if hasattr(value, "to_numpy_ndarrays"):
        return [np.asarray(a) for a in value.to_numpy_ndarrays()]
    if isinstance(value, Mapping):
        return [np.asarray(v) for v in value.values()]
    if isinstance(value, (list, tuple)) and all(isinstance(a, np.ndarray) for a in value):
        return [np.asarray(a) for a in value]
    return None
