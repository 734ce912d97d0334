"""The server's analysis of one round: every circuit-preservation view of paper section 2.3.

Given the aggregated global model and the clients' reports, :class:`RoundAnalyst`
discovers the global model's circuit of each analysed class once (on the server's
probe split), scores global and local circuits in one batched evaluation on the
evaluation split, and computes inter-client IoU, intra-client stability against each
client's previous report, local-global IoU and cross-evaluation. It keeps the state
that stability needs (each client's last circuits) and can save and restore it.

Plain PyTorch and Python: no Flower type appears here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping, Sequence

from .circuits import Circuit, CircuitScores, circuit_size, discover_circuits, evaluate_circuits
from .config import ExperimentConfig
from .data import ImageSplit
from .metrics import MEAN, class_pair_iou, inter_client_iou, intra_client_stability, local_global_iou, nanmean
from .model import SimpleCNN, evaluate
from .protocol import ClientReport
from .seeding import derive_seed
from .sparsity import sparsity_report

COLLAPSE_THRESHOLD = 0.1
"""A local circuit below this sufficiency on the global weights counts as collapsed."""


def _scores_dict(s: CircuitScores) -> dict[str, float | int]:
    return {"sufficiency": s.sufficiency, "specificity": s.specificity, "necessity": s.necessity, "num_target": s.num_target}


def _circuit_json(circuits: Mapping[int, Circuit]) -> dict[str, Circuit]:
    return {str(c): circ for c, circ in sorted(circuits.items())}


class RoundAnalyst:
    """Analyses rounds for one run and remembers what the next round's stability needs.

    Parameters
    ----------
    config : ExperimentConfig
        The experiment (discovery settings, analysed classes, seed).
    probe : ImageSplit
        Server data the global circuits are discovered on.
    evaluation : ImageSplit
        Server data every score and accuracy is measured on.
    """

    def __init__(self, config: ExperimentConfig, probe: ImageSplit, evaluation: ImageSplit) -> None:
        self.config = config
        self.probe = probe
        self.evaluation = evaluation
        # partition id -> (round, circuits) of the client's last report
        self.previous: dict[int, tuple[int, dict[int, Circuit]]] = {}

    # ------------------------------------------------------------------ state for checkpoints

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the last circuits of every client."""
        return {str(pid): {"round": r, "circuits": _circuit_json(c)} for pid, (r, c) in self.previous.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.previous = {
            int(pid): (int(v["round"]), {int(c): circ for c, circ in v["circuits"].items()}) for pid, v in state.items()
        }

    # ------------------------------------------------------------------ the analysis

    def classes_to_analyse(self, reports: Sequence[ClientReport]) -> list[int]:
        """The configured classes, or every class some client reported a circuit for."""
        if self.config.analysis.classes is not None:
            return sorted(set(self.config.analysis.classes))
        return sorted({c for r in reports for c in r.circuits})

    def analyse(self, server_round: int, model: SimpleCNN, reports: Sequence[ClientReport]) -> dict[str, Any]:
        """Analyse one round; return its record (JSON-able, NaN where a value is undefined).

        ``reports`` must hold validated reports with distinct partition ids.
        """
        began = time.perf_counter()
        device = next(model.parameters()).device
        classes = self.classes_to_analyse(reports)
        probe_classes = [c for c in classes if bool((self.probe.labels == c).any())]
        disc = self.config.discovery
        t0 = time.perf_counter()
        global_circuits = (
            discover_circuits(
                model,
                self.probe.to(device),
                probe_classes,
                seed=derive_seed(self.config.seed, "server-discovery", server_round),
                **dataclasses.asdict(disc),
            )
            if probe_classes
            else {}
        )
        t_discovery = time.perf_counter() - t0

        # One batched evaluation: global circuits, then every local circuit on the global weights.
        t0 = time.perf_counter()
        pairs: list[tuple[int, Circuit]] = list(global_circuits.items())
        keys: list[tuple[int, int]] = []
        for r in reports:
            for cls, circ in sorted(r.circuits.items()):
                pairs.append((cls, circ))
                keys.append((r.partition_id, cls))
        scores = evaluate_circuits(model, self.evaluation, pairs, ablation=disc.ablation)
        global_scores = dict(zip(global_circuits, scores[: len(global_circuits)]))
        cross = dict(zip(keys, scores[len(global_circuits) :]))
        accuracy = evaluate(model, self.evaluation)
        t_evaluation = time.perf_counter() - t0

        record: dict[str, Any] = {"round": int(server_round), "classes": classes}
        record["clients"] = {
            str(r.partition_id): {
                "num_examples": r.num_examples,
                "train_loss": r.train_loss,
                "train_accuracy": r.train_accuracy,
                "sparsity": r.sparsity,
                "timings": r.timings,
                "class_counts": r.class_counts,
                "device": r.device,
                "circuits": _circuit_json(r.circuits),
                "circuit_sizes": {str(c): circuit_size(circ) for c, circ in sorted(r.circuits.items())},
                "local_scores": {str(c): s for c, s in sorted(r.local_scores.items())},
                "discovery_steps": {str(c): n for c, n in sorted(r.discovery_steps.items())},
            }
            for r in sorted(reports, key=lambda r: r.partition_id)
        }
        record["global"] = {
            "accuracy": accuracy.accuracy,
            "loss": accuracy.loss,
            "per_class_accuracy": {str(c): a for c, a in accuracy.per_class_accuracy.items()},
            "sparsity": sparsity_report(model).overall,
            "circuits": _circuit_json(global_circuits),
            "circuit_sizes": {str(c): circuit_size(circ) for c, circ in sorted(global_circuits.items())},
            "scores": {str(c): _scores_dict(s) for c, s in sorted(global_scores.items())},
        }
        record["inter_client_iou"] = {}
        for cls in classes:
            holders = {r.partition_id: r.circuits[cls] for r in reports if cls in r.circuits}
            entry: dict[str, Any] = dict(inter_client_iou(holders))
            entry["clients"] = sorted(holders)
            record["inter_client_iou"][str(cls)] = entry
        record["class_pair_iou"] = {f"{a}-{b}": v for (a, b), v in class_pair_iou({r.partition_id: r.circuits for r in reports}).items()}
        record["local_global_iou"] = {
            str(r.partition_id): {str(c): local_global_iou(circ, global_circuits[c]) for c, circ in sorted(r.circuits.items()) if c in global_circuits}
            for r in reports
        }
        record["stability"] = {}
        for r in reports:
            if r.partition_id not in self.previous:
                continue
            prev_round, prev = self.previous[r.partition_id]
            record["stability"][str(r.partition_id)] = {
                str(c): {**intra_client_stability(circ, prev[c]), "previous_round": prev_round} for c, circ in sorted(r.circuits.items()) if c in prev
            }
        record["cross_eval"] = {
            str(pid): {str(c): _scores_dict(cross[(pid, c)]) for (p, c) in keys if p == pid} for pid in sorted({p for p, _ in keys})
        }
        for r in reports:
            self.previous[r.partition_id] = (int(server_round), dict(r.circuits))
        record["summary"] = self.summarise(record)
        record["timings"] = {"global_discovery": t_discovery, "evaluation": t_evaluation, "analysis": time.perf_counter() - began}
        return record

    @staticmethod
    def summarise(record: Mapping[str, Any]) -> dict[str, float | int]:
        """Scalar summaries of a round record (what Flower metrics and the summary CSV carry)."""
        cross = [s for per_class in record["cross_eval"].values() for s in per_class.values()]
        local_sizes = [n for c in record["clients"].values() for n in c["circuit_sizes"].values()]
        suff = [s["sufficiency"] for s in cross]
        return {
            "clients": len(record["clients"]),
            "global_accuracy": record["global"]["accuracy"],
            "global_loss": record["global"]["loss"],
            "inter_client_iou": nanmean(v[MEAN] for v in record["inter_client_iou"].values()),
            "class_pair_iou": nanmean(v[MEAN] for v in record["class_pair_iou"].values()),
            "local_global_iou": nanmean(v[MEAN] for per in record["local_global_iou"].values() for v in per.values()),
            "stability": nanmean(v[MEAN] for per in record["stability"].values() for v in per.values()),
            "cross_sufficiency": nanmean(suff),
            "cross_specificity": nanmean(s["specificity"] for s in cross),
            "cross_collapsed": sum(1 for v in suff if not math.isnan(v) and v < COLLAPSE_THRESHOLD),
            "global_circuit_channels": nanmean(float(v) for v in record["global"]["circuit_sizes"].values()),
            "local_circuit_channels": nanmean(float(v) for v in local_sizes),
            "empty_local_circuits": sum(1 for v in local_sizes if v == 0),
        }
