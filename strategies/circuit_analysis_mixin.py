"""CircuitAnalysisMixin: gives any FedAvg-derived Flower strategy the circuit analysis."""

from __future__ import annotations

import time
import traceback
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, Scalar, log, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from fedmi_flower.analysis import RoundAnalyst
from fedmi_flower.config import ExperimentConfig
from fedmi_flower.model import SimpleCNN, build_model, set_weights
from fedmi_flower.protocol import ClientReport, PayloadError, fit_instructions, report_from_metrics
from fedmi_flower.results import RunDirectory

Result = tuple[ClientProxy, FitRes]


class CircuitAnalysisMixin:
    """Circuit analysis inside ``aggregate_fit``, for a strategy derived from ``FedAvg``.

    Put it first among the bases, ``class CircuitFedProx(CircuitAnalysisMixin, FedProx)``,
    so that it wraps the parent's aggregation: it screens the clients' results, lets
    the parent aggregate the valid ones, then analyses the new global model with a
    :class:`~fedmi_flower.analysis.RoundAnalyst` and writes the round to the run
    directory. It also adds the experiment's fit instructions to every ``FitIns``.

    Parameters
    ----------
    experiment : ExperimentConfig
        The experiment being run.
    analyst : RoundAnalyst
        Holds the server's probe and evaluation data and the analysis state.
    run_dir : RunDirectory
        Where round records and weights go.
    **kwargs
        Passed to the parent strategy.
    """

    def __init__(self, *args: Any, experiment: ExperimentConfig, analyst: RoundAnalyst, run_dir: RunDirectory, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.experiment = experiment
        self.analyst = analyst
        self.run_dir = run_dir
        self.template: SimpleCNN = build_model()
        self._round_started = time.perf_counter()

    # ------------------------------------------------------------------ hooks

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """The parent's fit instructions, under the experiment's settings for this round.

        Raises ``RuntimeError`` when fewer SuperNodes than the experiment's clients connect
        within ``strategy.wait_for_clients`` seconds (Flower itself would wait a day).
        """
        self._round_started = time.perf_counter()
        wanted = self.experiment.clients
        if not client_manager.wait_for(wanted, timeout=int(self.experiment.strategy.wait_for_clients)):
            raise RuntimeError(
                f"experiment {self.experiment.name!r} needs {wanted} clients but only {client_manager.num_available()} SuperNodes "
                f"connected within {self.experiment.strategy.wait_for_clients:.0f} s; give the federation {wanted} SuperNodes "
                f"(simulation: options.num-supernodes = {wanted} in the SuperLink connection of FLWR_HOME/config.toml) "
                f"or set clients = {client_manager.num_available()}"
            )
        pairs = super().configure_fit(server_round, parameters, client_manager)  # type: ignore[misc]
        ours = fit_instructions(self.experiment, server_round)
        return [(proxy, FitIns(ins.parameters, {**ours, **ins.config})) for proxy, ins in pairs]

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
        return report_from_metrics(res.metrics, res.num_examples, num_clients=self.experiment.clients, layer_sizes=self.template.layer_sizes)

    def keep_round_weights(self, server_round: int, arrays: list[np.ndarray], accepted: list[Result], reports: list[ClientReport]) -> None:
        """Write the round's global weights and the local weights of every client whose circuits were accepted.

        Circuit graphs (paper Fig. 11-13) read a circuit's edges from the weights it was
        found on: a client's are the weights it sent with its report.
        """
        wanted = {r.partition_id for r in reports}
        local: dict[int, list[np.ndarray]] = {}
        for _, res in accepted:
            try:
                pid = self.screen_report(res).partition_id
            except PayloadError:
                continue
            if pid in wanted and pid not in local:  # the first claim on a partition is the one analysed
                local[pid] = parameters_to_ndarrays(res.parameters)
        self.run_dir.write_round_weights(server_round, arrays, local)

    def on_round_end(self, server_round: int, record: dict[str, Any]) -> None:
        """Called with every finished round record; logs a one-line progress summary."""
        s = record.get("summary", {})
        log(
            INFO,
            "[round %d/%d] %d/%d clients reported (%d failed, %d rejected) | global acc %.3f | inter-client IoU %.2f | "
            "local-global IoU %.2f | stability %.2f | cross-eval suff %.2f spec %.2f | %.1f s",
            server_round,
            self.experiment.rounds,
            s.get("clients", 0),
            record["sampled"],
            len(record["failures"]),
            len(record["rejected"]),
            s.get("global_accuracy", float("nan")),
            s.get("inter_client_iou", float("nan")),
            s.get("local_global_iou", float("nan")),
            s.get("stability", float("nan")),
            s.get("cross_sufficiency", float("nan")),
            s.get("cross_specificity", float("nan")),
            record["timings"].get("round", float("nan")),
        )

    # ------------------------------------------------------------------ aggregation

    def aggregate_fit(self, server_round: int, results: list[Result], failures: list[Result | BaseException]) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Screen results, aggregate with the parent strategy, analyse the global model, record the round."""
        began = time.perf_counter()
        accepted: list[Result] = []
        reports: list[ClientReport] = []
        rejected: list[dict[str, Any]] = []
        claimed: set[int] = set()
        for proxy, res in results:
            try:
                self.screen_weights(res)
            except PayloadError as err:
                rejected.append({"client": proxy.cid, "reason": str(err), "weights_aggregated": False})
                log(WARNING, "round %d: client %s rejected, its weights are not aggregated: %s", server_round, proxy.cid, err)
                continue
            accepted.append((proxy, res))
            try:
                report = self.screen_report(res)
                if report.partition_id in claimed:
                    raise PayloadError(f"partition_id {report.partition_id} was already reported this round")
                claimed.add(report.partition_id)
                reports.append(report)
            except PayloadError as err:
                rejected.append({"client": proxy.cid, "reason": str(err), "weights_aggregated": True})
                log(WARNING, "round %d: circuits of client %s skipped (weights aggregated): %s", server_round, proxy.cid, err)

        parameters, metrics = super().aggregate_fit(server_round, accepted, failures)  # type: ignore[misc]
        failure_notes = [{"client": f[0].cid, "error": f"status {f[1].status.code.name}: {f[1].status.message}"} if isinstance(f, tuple) else {"client": None, "error": repr(f)} for f in failures]
        if parameters is None:
            log(WARNING, "round %d: no aggregate (%d accepted, %d failures); the global model is unchanged", server_round, len(accepted), len(failures))
            return None, {}

        arrays = parameters_to_ndarrays(parameters)
        model = build_model()
        set_weights(model, arrays)
        model.to(self.analyst.evaluation.images.device)
        try:
            record = self.analyst.analyse(server_round, model, reports)
        except Exception:  # a bug in the analysis must not lose the training run
            log(WARNING, "round %d: circuit analysis failed, training goes on:\n%s", server_round, traceback.format_exc())
            record = {"round": server_round, "analysis_error": traceback.format_exc(), "timings": {}}
        record["sampled"] = len(results) + len(failures)
        record["failures"] = failure_notes
        record["rejected"] = rejected
        record.setdefault("timings", {})["server"] = time.perf_counter() - began
        record["timings"]["round"] = time.perf_counter() - self._round_started
        self.keep_round_weights(record["round"], arrays, accepted, reports)
        self.run_dir.append_round(record)
        self.run_dir.write_weights(arrays, server_round)
        self.on_round_end(server_round, record)
        summary = {k: v for k, v in record.get("summary", {}).items() if isinstance(v, (int, float)) and np.isfinite(v)}
        return ndarrays_to_parameters(arrays), {**metrics, **summary}
