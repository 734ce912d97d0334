"""The server's analysis of one round: every circuit-preservation view of paper section 2.3, with its scale.

Given the aggregated global model and the clients' reports, :class:`RoundAnalyst`
discovers the global model's circuit of each analysed class once (on the server's
probe split), scores global and local circuits in one batched evaluation on the
evaluation split, and computes inter-client IoU, intra-client stability (round t
against round t-1 only), local-global IoU and cross-evaluation. It keeps the state
that stability needs (each client's last circuits) and can save and restore it.

Every IoU view comes with its scale (DESIGN.md, "Measurement has a scale"):

- the **chance level**: the expected IoU of random channel sets of the same sizes in
  the same layers (:func:`~fedmi_flower.metrics.chance_circuit_iou`), averaged over the
  same pairs as the view;
- the **noise floor**: the IoU of the same model's circuit found twice the way the view
  compares circuits. ``seed``: the global model on a bootstrap redraw of the probe rows
  with another seed (the floor of inter-client IoU). ``source``: the global model on
  one client's training rows against the probe rows (the floor of local-global IoU,
  which compares circuits found on different data). ``clients``: the floor client's
  own model found twice on another draw of its own rows with another seed, as that
  client reports it (the floor of stability, which compares a client's circuits found
  on its rows with different seeds). Each floor is one draw per round: a difference of
  a few hundredths from it is within its own noise;
- ``pairs``: the number of defined pairs behind every mean.

Plain PyTorch and Python: no Flower type appears here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Any, Mapping, Sequence

import torch

from .circuits import Circuit, CircuitScores, circuit_size, discover_circuits, evaluate_circuits
from .config import ExperimentConfig
from .data import ImageSplit
from .metrics import MEAN, chance_circuit_iou, circuit_iou, class_pairs, defined_pairs, mean_entries, nanmean
from .model import SimpleCNN, evaluate
from .protocol import ClientReport
from .seeding import derive_seed, torch_generator
from .sparsity import sparsity_report
from .verdicts import COLLAPSE_THRESHOLD, circuit_verdict

__all__ = ["COLLAPSE_THRESHOLD", "RoundAnalyst"]


def _scores_dict(s: CircuitScores) -> dict[str, float | int]:
    return {"sufficiency": s.sufficiency, "specificity": s.specificity, "necessity": s.necessity, "num_target": s.num_target}


def _circuit_json(circuits: Mapping[int, Circuit]) -> dict[str, Circuit]:
    return {str(c): circ for c, circ in sorted(circuits.items())}


def bootstrap(split: ImageSplit, seed: int) -> ImageSplit:
    """Another draw of the same rows: ``len(split)`` rows sampled with replacement, seeded."""
    g = torch_generator(seed, "bootstrap")
    return split.subset(torch.randint(len(split), (len(split),), generator=g).sort().values)


def compare(a: Circuit, b: Circuit, layer_sizes: Mapping[str, int]) -> dict[str, Any]:
    """IoU of two circuits per layer and mean, with the chance level of circuits of their sizes."""
    return {**circuit_iou(a, b), "chance": chance_circuit_iou(a, b, layer_sizes)}


def summarise_pairs(pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean IoU over compared pairs (per layer and over layers), their mean chance level, and how many pairs are defined."""
    return {**mean_entries(pairs), "chance": mean_entries([p["chance"] for p in pairs]), "pairs": defined_pairs(pairs)}


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
    floor_rows : ImageSplit, optional
        Training rows of partition ``config.analysis.floor_client``: the global model's
        circuits found on them against those found on ``probe`` give the source noise
        floor. Without them that floor is not measured.
    """

    def __init__(self, config: ExperimentConfig, probe: ImageSplit, evaluation: ImageSplit, floor_rows: ImageSplit | None = None) -> None:
        self.config = config
        self.probe = probe
        self.evaluation = evaluation
        self.floor_rows = floor_rows
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

    # ------------------------------------------------------------------ pieces of the analysis

    def classes_to_analyse(self, reports: Sequence[ClientReport]) -> list[int]:
        """The configured classes, or every class some client reported a circuit for."""
        if self.config.analysis.classes is not None:
            return sorted(set(self.config.analysis.classes))
        return sorted({c for r in reports for c in r.circuits})

    def discover(self, model: SimpleCNN, data: ImageSplit, classes: Sequence[int], purpose: str, server_round: int, min_rows: int = 1) -> dict[int, Circuit]:
        """The model's circuits of the ``classes`` that ``data`` holds at least ``min_rows`` of, with a seed for ``purpose``."""
        device = next(model.parameters()).device
        present = [c for c in classes if int((data.labels == c).sum()) >= min_rows]
        if not present:
            return {}
        settings = dataclasses.asdict(self.config.discovery)
        return discover_circuits(model, data.to(device), present, seed=derive_seed(self.config.seed, purpose, server_round), **settings)

    def noise_floor(self, model: SimpleCNN, global_circuits: Mapping[int, Circuit], server_round: int, reports: Sequence[ClientReport]) -> dict[str, Any]:
        """The noise floors of this round (see the module docstring); empty when ``analysis.noise_floor`` is off."""
        if not self.config.analysis.noise_floor or not global_circuits:
            return {}
        sizes = model.layer_sizes
        classes = sorted(global_circuits)
        redraw = bootstrap(self.probe, derive_seed(self.config.seed, "floor-bootstrap", server_round))
        again = self.discover(model, redraw, classes, "floor-discovery", server_round)
        floor: dict[str, Any] = {"seed": {str(c): compare(global_circuits[c], again[c], sizes) for c in classes if c in again}}
        if self.floor_rows is not None:
            # A client analyses only the classes it holds enough of; so does its floor.
            elsewhere = self.discover(model, self.floor_rows, classes, "floor-source", server_round, self.config.analysis.min_class_examples)
            floor["source"] = {str(c): compare(elsewhere[c], global_circuits[c], sizes) for c in classes if c in elsewhere}
            floor["source_client"] = self.config.analysis.floor_client
        # Only the floor client was asked for its own floor; anything another client sends is ignored.
        floor["clients"] = {
            str(r.partition_id): {str(c): v for c, v in sorted(r.noise_floor.items())}
            for r in reports
            if r.noise_floor and r.partition_id == self.config.analysis.floor_client
        }
        return floor

    def inter_client(self, classes: Sequence[int], reports: Sequence[ClientReport], sizes: Mapping[str, int]) -> dict[str, Any]:
        """Inter-client consistency (RQ1) per class: mean pairwise IoU of the holders' circuits, chance level, pair count."""
        out = {}
        for cls in classes:
            holders = {r.partition_id: r.circuits[cls] for r in reports if cls in r.circuits}
            pairs = [compare(a, b, sizes) for a, b in itertools.combinations(holders.values(), 2)]
            out[str(cls)] = {**summarise_pairs(pairs), "clients": sorted(holders)}
        return out

    def stability(self, server_round: int, reports: Sequence[ClientReport], sizes: Mapping[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Intra-client stability (RQ2): each client's circuit against its own of round t-1.

        Returns ``(stability, gaps)``. A client whose last report is older than t-1 (not
        sampled, failed or rejected in between) is no t-1 comparison: it goes to
        ``gaps``, with the round it was compared with, and stays out of every stability mean.
        """
        stable: dict[str, Any] = {}
        gaps: dict[str, Any] = {}
        for r in reports:
            if r.partition_id not in self.previous:
                continue
            prev_round, prev = self.previous[r.partition_id]
            entry = {str(c): {**compare(circ, prev[c], sizes), "previous_round": prev_round} for c, circ in sorted(r.circuits.items()) if c in prev}
            (stable if prev_round == server_round - 1 else gaps)[str(r.partition_id)] = entry
        return stable, gaps

    # ------------------------------------------------------------------ the analysis

    def analyse(self, server_round: int, model: SimpleCNN, reports: Sequence[ClientReport]) -> dict[str, Any]:
        """Analyse one round; return its record (JSON-able, NaN where a value is undefined).

        ``reports`` must hold validated reports with distinct partition ids.
        """
        began = time.perf_counter()
        classes = self.classes_to_analyse(reports)
        sizes = model.layer_sizes
        t0 = time.perf_counter()
        global_circuits = self.discover(model, self.probe, classes, "server-discovery", server_round)
        t_discovery = time.perf_counter() - t0
        t0 = time.perf_counter()
        floor = self.noise_floor(model, global_circuits, server_round, reports)
        t_floor = time.perf_counter() - t0

        # One batched evaluation: global circuits, then every local circuit on the global weights.
        t0 = time.perf_counter()
        pairs: list[tuple[int, Circuit]] = list(global_circuits.items())
        keys: list[tuple[int, int]] = []
        for r in reports:
            for cls, circ in sorted(r.circuits.items()):
                pairs.append((cls, circ))
                keys.append((r.partition_id, cls))
        scores = evaluate_circuits(model, self.evaluation, pairs, ablation=self.config.discovery.ablation)
        global_scores = dict(zip(global_circuits, scores[: len(global_circuits)]))
        cross = dict(zip(keys, scores[len(global_circuits) :]))
        accuracy = evaluate(model, self.evaluation)
        t_evaluation = time.perf_counter() - t0

        record: dict[str, Any] = {"round": int(server_round), "classes": classes}
        record["clients"] = {str(r.partition_id): self.client_entry(r) for r in sorted(reports, key=lambda r: r.partition_id)}
        achieved = sparsity_report(model)
        record["global"] = {
            "accuracy": accuracy.accuracy,
            "loss": accuracy.loss,
            "per_class_accuracy": {str(c): a for c, a in accuracy.per_class_accuracy.items()},
            "sparsity": achieved.overall,
            "sparsity_per_tensor": achieved.per_tensor,
            "circuits": _circuit_json(global_circuits),
            "circuit_sizes": {str(c): circuit_size(circ) for c, circ in sorted(global_circuits.items())},
            "scores": {str(c): _scores_dict(s) for c, s in sorted(global_scores.items())},
            "verdicts": {str(c): circuit_verdict(circuit_size(global_circuits[c]), s.sufficiency, s.specificity) for c, s in sorted(global_scores.items())},
        }
        record["noise_floor"] = floor
        record["inter_client_iou"] = self.inter_client(classes, reports, sizes)
        record["class_pair_iou"] = {
            f"{a}-{b}": summarise_pairs([compare(x, y, sizes) for x, y in found]) for (a, b), found in class_pairs({r.partition_id: r.circuits for r in reports}).items()
        }
        record["local_global_iou"] = {
            str(r.partition_id): {str(c): compare(circ, global_circuits[c], sizes) for c, circ in sorted(r.circuits.items()) if c in global_circuits}
            for r in reports
        }
        record["stability"], record["stability_gap"] = self.stability(server_round, reports, sizes)
        record["cross_eval"] = {
            str(r.partition_id): {str(c): self.cross_entry(r, c, cross[(r.partition_id, c)]) for c in sorted(r.circuits)} for r in reports if r.circuits
        }
        for r in reports:
            self.previous[r.partition_id] = (int(server_round), dict(r.circuits))
        record["summary"] = self.summarise(record)
        record["timings"] = {"global_discovery": t_discovery, "noise_floor": t_floor, "evaluation": t_evaluation, "analysis": time.perf_counter() - began}
        return record

    @staticmethod
    def client_entry(r: ClientReport) -> dict[str, Any]:
        """A client's part of the round record: what it reported, with its circuits' sizes and local verdicts."""
        sizes = {c: circuit_size(circ) for c, circ in sorted(r.circuits.items())}
        local = {str(c): circuit_verdict(sizes[c], r.local_scores.get(c, {}).get("sufficiency"), r.local_scores.get(c, {}).get("specificity")) for c in sizes}
        return {
            "num_examples": r.num_examples,
            "train_loss": r.train_loss,
            "train_accuracy": r.train_accuracy,
            "sparsity": r.sparsity,
            "sparsity_per_tensor": r.sparsity_per_tensor,
            "timings": r.timings,
            "class_counts": r.class_counts,
            "device": r.device,
            "circuits": _circuit_json(r.circuits),
            "circuit_sizes": {str(c): n for c, n in sizes.items()},
            "local_scores": {str(c): s for c, s in sorted(r.local_scores.items())},
            "local_verdicts": local,
            "discovery_steps": {str(c): n for c, n in sorted(r.discovery_steps.items())},
        }

    @staticmethod
    def cross_entry(r: ClientReport, cls: int, s: CircuitScores) -> dict[str, Any]:
        """Cross-evaluation of one local circuit on the global weights, with its verdict there and on its own model."""
        size = circuit_size(r.circuits[cls])
        local = r.local_scores.get(cls, {})
        return {
            **_scores_dict(s),
            "verdict": circuit_verdict(size, s.sufficiency, s.specificity),
            "local_verdict": circuit_verdict(size, local.get("sufficiency"), local.get("specificity")),
        }

    @staticmethod
    def summarise(record: Mapping[str, Any]) -> dict[str, float | int]:
        """Scalar summaries of a round record (what Flower metrics, the summary CSV and the progress line carry).

        Every IoU mean comes with ``<view>_pairs`` (defined pairs behind it),
        ``<view>_chance`` and the view's noise floor (``seed_floor`` for inter-client IoU,
        ``client_seed_floor`` for stability, ``source_floor`` for local-global IoU).
        """
        cross = [s for per_class in record["cross_eval"].values() for s in per_class.values()]
        local_sizes = [n for c in record["clients"].values() for n in c["circuit_sizes"].values()]
        inter = list(record["inter_client_iou"].values())
        lg = [v for per in record["local_global_iou"].values() for v in per.values()]
        stab = [v for per in record["stability"].values() for v in per.values()]
        floor = record.get("noise_floor") or {}
        client_floor = [v for per in (floor.get("clients") or {}).values() for v in per.values()]
        worked = [s for s in cross if s["local_verdict"] == "working"]
        out: dict[str, float | int] = {
            "clients": len(record["clients"]),
            "global_accuracy": record["global"]["accuracy"],
            "global_loss": record["global"]["loss"],
            "inter_client_iou": nanmean(v[MEAN] for v in inter),
            "inter_client_iou_pairs": sum(v["pairs"] for v in inter),
            "inter_client_iou_chance": nanmean(v["chance"][MEAN] for v in inter),
            "class_pair_iou": nanmean(v[MEAN] for v in record["class_pair_iou"].values()),
            "class_pair_iou_pairs": sum(v["pairs"] for v in record["class_pair_iou"].values()),
            "class_pair_iou_chance": nanmean(v["chance"][MEAN] for v in record["class_pair_iou"].values()),
            "local_global_iou": nanmean(v[MEAN] for v in lg),
            "local_global_iou_pairs": defined_pairs(lg),
            "local_global_iou_chance": nanmean(v["chance"][MEAN] for v in lg),
            "stability": nanmean(v[MEAN] for v in stab),
            "stability_pairs": defined_pairs(stab),
            "stability_chance": nanmean(v["chance"][MEAN] for v in stab),
            "stability_gaps": sum(len(per) for per in record["stability_gap"].values()),
            "seed_floor": nanmean(v[MEAN] for v in (floor.get("seed") or {}).values()),
            "source_floor": nanmean(v[MEAN] for v in (floor.get("source") or {}).values()),
            "client_seed_floor": nanmean(v[MEAN] for v in client_floor),
            "cross_sufficiency": nanmean(s["sufficiency"] for s in cross),
            "cross_specificity": nanmean(s["specificity"] for s in cross),
            # The paper's collapse (sufficiency alone, as the report and figures count it); the verdicts follow.
            "cross_collapsed": sum(1 for s in cross if not math.isnan(s["sufficiency"]) and s["sufficiency"] < COLLAPSE_THRESHOLD),
            "cross_working_locally": len(worked),
            "cross_preserved": sum(1 for s in worked if s["verdict"] == "working"),
            "cross_collapsed_after_working": sum(1 for s in worked if s["verdict"] == "collapsed"),
            "cross_indiscriminate": sum(1 for s in cross if s["verdict"] == "indiscriminate"),
            "global_circuit_channels": nanmean(float(v) for v in record["global"]["circuit_sizes"].values()),
            "local_circuit_channels": nanmean(float(v) for v in local_sizes),
            "empty_local_circuits": sum(1 for v in local_sizes if v == 0),
        }
        return out

