"""The server's analysis of one round: every circuit-preservation view of paper section 2.3, with its scale.

Given the aggregated global model and the clients' reports, :class:`RoundAnalyst`
discovers the global model's circuit of each analysed class once (on the server's
probe split), scores global and local circuits in one batched evaluation on the
evaluation split, and computes inter-client IoU, intra-client stability (round t
against round t-1 only), local-global IoU and cross-evaluation. It keeps the state
that stability needs (each client's last circuits) and can save and restore it.

Every IoU view comes with its scale (README, "Reading the numbers"):

- the **chance level**: the expected IoU of random channel sets of the same sizes in
  the same layers (:func:`~fedmi_flower.science.metrics.chance_circuit_iou`), averaged over the
  same pairs as the view;
- the **noise floor**: the IoU of the same model's circuit found twice the way the view
  compares circuits. ``seed``: the global model on a bootstrap redraw of the probe rows
  with another seed (the floor of inter-client IoU). ``source``: the global model on
  a holder's training rows against the probe rows, per class, the floor client first and
  then whichever reporting client holds a class it lacks (the floor of local-global IoU,
  which compares circuits found on different data). ``clients``: the floor client's
  own model found twice on another draw of its own rows with another seed, as that
  client reports it (the floor of stability, which compares a client's circuits found
  on its rows with different seeds). Floors differ by class, so each view's summary
  floor is averaged over exactly the entries of its non-degenerate mean
  (:func:`view_floors`, :meth:`RoundRecord.floor_entries`). Each floor is one draw per
  round: a difference of a few hundredths from it is within its own noise;
- ``pairs``: the number of defined pairs behind every mean.

**Aligned IoU** (``analysis.alignment``): inter-client and local-global IoU again,
after each client's channels are matched to the global model's
(:mod:`fedmi_flower.science.alignment`) and its masks mapped into the global model's
channel indices. Raw IoU low and aligned IoU high means the same circuit in other
channels; both low, different circuits. A permutation moves masks without looking at
them, so the chance level of random circuits of the same sizes is unchanged.

Plain PyTorch and Python: no Flower type appears here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn as nn

from fedmi_flower.analysis.counterfactual import (
    Reaggregate,
    agreement_with_dominance,
    interference,
    overwrite_shares,
    restorer_moved_most,
)
from fedmi_flower.analysis.robustness import (
    ablation_verdicts,
    cascade,
    client_cka,
    label_randomised_model,
    second_method,
    stitched_circuits,
)
from fedmi_flower.config import ExperimentConfig, make_model
from fedmi_flower.records.round_record import (
    FLOOR_OF_VIEW,
    ClientEntry,
    CrossEvaluation,
    Dominance,
    GlobalEntry,
    IoU,
    NoiseFloor,
    RoundRecord,
    RoundSummary,
    RoundTimings,
    Scores,
    Step,
    View,
    ViewSummary,
)
from fedmi_flower.science.alignment import (
    Permutation,
    channels_moved,
    layout_of,
    map_circuit,
    match_all,
    site_permutation,
)
from fedmi_flower.science.circuits import (
    Circuit,
    CircuitScores,
    circuit_size,
    evaluate_circuits,
)
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.discovery import DiscoveryJob
from fedmi_flower.science.faithfulness_curve import CURVE_ROWS_PER_CLASS, cpr_cmd, faithfulness_curves, grid_sizes
from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.science.metrics import (
    MEAN,
    chance_circuit_iou,
    circuit_bloat,
    circuit_iou,
    class_pairs,
    defined_pairs,
    dominance,
    label_emd,
    mean_entries,
    nanmean,
    polysemantic_share,
    support_iou,
)
from fedmi_flower.science.model import evaluate, get_weights, set_weights, weight_names
from fedmi_flower.science.seeding import derive_seed, numpy_rng, torch_generator
from fedmi_flower.science.sparsity import prunable_weights, prune_, sparsity_report, train_sparse
from fedmi_flower.science.verdicts import COLLAPSE_THRESHOLD, circuit_verdict, degenerate_reason
from fedmi_flower.wire.protocol import ClientReport

T = TypeVar("T")

__all__ = ["COLLAPSE_THRESHOLD", "RoundAnalyst"]

ALIGNMENT_IMAGES = 512
"""Probe images that activation matching compares channels on."""


def _degenerate(size: int, s: Scores | CircuitScores | None, own_model: bool = True) -> str | None:
    if s is None:
        return degenerate_reason(size, None, None, None)
    return degenerate_reason(size, s.specificity, s.model_sufficiency, s.model_specificity, s.sufficiency, own_model)


def non_degenerate_part(r: ClientReport, degenerate: Mapping[int, str]) -> ClientReport:
    """The report with only its circuits that are not degenerate (for the IoU means over those)."""
    return dataclasses.replace(r, circuits={c: circ for c, circ in r.circuits.items() if c not in degenerate})


def bootstrap(split: ImageSplit, seed: int) -> ImageSplit:
    """Another draw of the same rows: ``len(split)`` rows sampled with replacement, seeded."""
    g = torch_generator(seed, "bootstrap")
    return split.subset(torch.randint(len(split), (len(split),), generator=g).sort().values)


def compare(a: Circuit, b: Circuit, layer_sizes: Mapping[str, int]) -> IoU:
    """IoU of two circuits per layer and mean, with the chance level of circuits of their sizes."""
    return IoU(circuit_iou(a, b, list(layer_sizes)), chance=chance_circuit_iou(a, b, layer_sizes))


def summarise_pairs(pairs: Sequence[IoU], sites: Sequence[str]) -> IoU:
    """Mean IoU over compared pairs (per site and over sites), their mean chance level, and how many
    pairs are defined (none: every value NaN).
    """
    return IoU(
        mean_entries([p.layers for p in pairs], sites),
        chance=mean_entries([p.chance or {} for p in pairs], sites),
        pairs=defined_pairs([p.layers for p in pairs]),
    )


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
    client_rows : callable, optional
        Training rows of a partition by its id (None where the server cannot load them):
        the global model's circuits found on a client's rows against those found on
        ``probe`` give the source noise floor of that client's classes. Without it that
        floor is not measured.
    reference : ImageSplit, optional
        The run's reference images (the faithful objective's other images where the
        discovery rows hold one class), as the clients have them.
    population_counts : sequence of int, optional
        Training images per class over every partition of the run (partitions.json): the
        distribution each client's label skew is measured against. Without it label skew
        is not measured.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        probe: ImageSplit,
        evaluation: ImageSplit,
        client_rows: Callable[[int], ImageSplit | None] | None = None,
        reference: ImageSplit | None = None,
        population_counts: Sequence[int] | None = None,
    ) -> None:
        self.config = config
        self.probe = probe
        self.evaluation = evaluation
        self.client_rows = client_rows
        self.population_counts = list(population_counts) if population_counts is not None else None
        self.reference = reference
        self.on_step: Callable[[str], None] = lambda name: None
        """Told the name of every analysis step as it begins (the live progress line)."""
        self._control: GlobalEntry | None = None
        self._label_control: GlobalEntry | None = None
        # partition id -> classes whose circuit in its last report was degenerate
        self.previous_degenerate: dict[int, set[int]] = {}
        # partition id -> (round, circuits) of the client's last report
        self.previous: dict[int, tuple[int, dict[int, Circuit]]] = {}

    # ------------------------------------------------------------------ state for checkpoints

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the last circuits of every client, and which of them were degenerate."""
        return {
            str(pid): {
                "round": r,
                "circuits": {str(c): circ for c, circ in sorted(circuits.items())},
                "degenerate_classes": sorted(self.previous_degenerate.get(pid, set())),
            }
            for pid, (r, circuits) in self.previous.items()
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.previous = {
            int(pid): (int(v["round"]), {int(c): circ for c, circ in v["circuits"].items()}) for pid, v in state.items()
        }
        self.previous_degenerate = {
            int(pid): {int(c) for c in v.get("degenerate_classes", [])} for pid, v in state.items()
        }

    # ------------------------------------------------------------------ pieces of the analysis

    def classes_to_analyse(self, reports: Sequence[ClientReport]) -> list[int]:
        """The configured classes, or every class some client reported a circuit for."""
        if self.config.analysis.classes is not None:
            return sorted(set(self.config.analysis.classes))
        return sorted({c for r in reports for c in r.circuits})

    def discover(
        self,
        model: nn.Module,
        data: ImageSplit,
        classes: Sequence[int],
        purpose: str,
        server_round: int,
        min_rows: int = 1,
    ) -> dict[int, Circuit]:
        """The model's circuits of the ``classes`` that ``data`` holds at least ``min_rows`` of, with a
        seed for ``purpose``.
        """
        return self.discover_scored(model, data, classes, purpose, server_round, min_rows)[0]

    def discover_scored(
        self,
        model: nn.Module,
        data: ImageSplit,
        classes: Sequence[int],
        purpose: str,
        server_round: int,
        min_rows: int = 1,
    ) -> tuple[dict[int, Circuit], dict[str, torch.Tensor], list[int]]:
        """:meth:`discover`, with the learned gate scores and the classes they are rows of."""
        job = self.discovery_job(data, classes, purpose, server_round, min_rows)
        if job is None:
            return {}, {}, []
        circuits, _, scores = self.find_jobs(model, [job])[0]
        return circuits, scores, list(job.classes)

    def discovery_job(
        self, data: ImageSplit, classes: Sequence[int], purpose: str, server_round: int, min_rows: int = 1
    ) -> DiscoveryJob | None:
        """The discovery of the ``classes`` that ``data`` holds at least ``min_rows`` of, with a seed for ``purpose``
        and the reference set as other images where the objective needs them; None when it holds none."""
        present = [c for c in classes if int((data.labels == c).sum()) >= min_rows]
        if not present:
            return None
        min_rows_held = self.config.analysis.min_class_examples
        use_reference = self.config.discovery.uses_reference(
            sum(1 for n in data.class_counts(self.config.num_classes) if n >= min_rows_held)
        )
        if use_reference and self.reference is None:
            raise ValueError("the faithful objective needs the reference set here, and the analyst was given none")
        seed = derive_seed(self.config.seed, purpose, server_round)
        return DiscoveryJob(data, present, seed, self.reference if use_reference else None)

    def find_jobs(
        self, model: nn.Module, jobs: Sequence[DiscoveryJob]
    ) -> list[tuple[dict[int, Circuit], list[int], dict[str, torch.Tensor]]]:
        """Every job's circuits on ``model``, learned in one loop (:meth:`Discovery.find_jobs`), with the model's own
        channel means filling ablated channels."""
        return self.config.discovery.recipe().find_jobs(model, jobs, means=self.fill_means(model))

    def noise_floor(
        self,
        model: nn.Module,
        global_circuits: Mapping[int, Circuit],
        server_round: int,
        reports: Sequence[ClientReport],
    ) -> NoiseFloor:
        """The noise floors of this round (see the module docstring): :meth:`floor_jobs` run, then compared.

        Unmeasured when ``analysis.noise_floor`` is off. :meth:`analyse` runs the floor's
        discoveries in one loop with the global circuits' instead (:meth:`global_circuits_and_floor`).
        """
        if not self.config.analysis.noise_floor or not global_circuits:
            return NoiseFloor(measured=False)
        planned = self.floor_jobs(sorted(global_circuits), server_round, reports)
        found = [circuits for circuits, _, _ in self.find_jobs(model, [job for _, job in planned])]
        return self.floor_from(planned, found, global_circuits, site_sizes(model), reports)

    def floor_from(
        self,
        planned: Sequence[tuple[int | None, DiscoveryJob]],
        found: Sequence[Mapping[int, Circuit]],
        global_circuits: Mapping[int, Circuit],
        sizes: Mapping[str, int],
        reports: Sequence[ClientReport],
    ) -> NoiseFloor:
        """The noise floors from the circuits ``found`` by the ``planned`` floor discoveries (:meth:`floor_jobs`)."""
        if not self.config.analysis.noise_floor or not global_circuits:
            return NoiseFloor(measured=False)
        if len(found) != len(planned):
            raise ValueError(f"{len(found)} sets of floor circuits for {len(planned)} planned floor discoveries")
        classes = sorted(global_circuits)
        floor = NoiseFloor()
        if self.client_rows is not None:
            floor.source, floor.source_clients = {}, {}
            floor.source_client = self.config.analysis.floor_client
        for (pid, _), circuits in zip(planned, found):
            for c in classes:
                if c not in circuits:
                    continue
                if pid is None:
                    floor.seed[c] = compare(global_circuits[c], circuits[c], sizes)
                    floor.seed_circuits[c] = circuits[c]
                elif floor.source is not None and c not in floor.source:
                    floor.source[c] = compare(circuits[c], global_circuits[c], sizes)
                    floor.source_clients[c] = pid
                    floor.source_circuits[c] = circuits[c]
        # Only the floor client was asked for its own floor; anything another client sends is ignored.
        floor.clients = {
            r.partition_id: {c: IoU(dict(v)) for c, v in sorted(r.noise_floor.items())}
            for r in reports
            if r.noise_floor and r.partition_id == self.config.analysis.floor_client
        }
        return floor

    def floor_jobs(
        self, classes: Sequence[int], server_round: int, reports: Sequence[ClientReport]
    ) -> list[tuple[int | None, DiscoveryJob]]:
        """The noise floor's discoveries on the global model of ``classes``, planned before any runs.

        ``(None, job)`` for the seed floor (a bootstrap redraw of the probe rows, another
        seed), then ``(partition, job)`` for the source floor on each client's rows that
        adds classes (:meth:`source_floor_clients`): whether a client adds a class depends
        on the rows it holds, not on what discovery finds, so every floor discovery is
        known before any runs and all of them can share one loop with the global circuits'.
        Empty when ``analysis.noise_floor`` is off.
        """
        if not self.config.analysis.noise_floor or not classes:
            return []
        redraw = bootstrap(self.probe, derive_seed(self.config.seed, "floor-bootstrap", server_round))
        jobs: list[tuple[int | None, DiscoveryJob]] = []
        seed_job = self.discovery_job(redraw, classes, "floor-discovery", server_round)
        if seed_job is not None:
            jobs.append((None, seed_job))
        if self.client_rows is None:
            return jobs
        covered: set[int] = set()
        # A client analyses only the classes it holds enough of; so does its floor.
        min_rows = self.config.analysis.min_class_examples
        for pid, candidates in self.source_floor_clients(reports, classes):
            wanted = [c for c in candidates if c not in covered]
            rows = self.client_rows(pid) if wanted else None
            job = self.discovery_job(rows, wanted, "floor-source", server_round, min_rows) if rows is not None else None
            if job is not None:
                jobs.append((pid, job))
                covered.update(job.classes)
        return jobs

    def source_floor_clients(
        self, reports: Sequence[ClientReport], classes: Sequence[int]
    ) -> list[tuple[int, list[int]]]:
        """Whose rows the source floor may be measured on, in order, and for which classes: ``[(partition, classes)]``.

        The floor client first, for every analysed class it reported a circuit of (every
        analysed class when it did not report); then each other reporting client, in
        partition order, for the classes it reported. :meth:`noise_floor` asks each in turn
        for the classes no client before it covered, so that every class some client holds
        gets a floor measured on a holder's rows: one discovery per client that adds a
        class (an IID round costs one; clients with disjoint classes one each).
        """
        first = self.config.analysis.floor_client
        held = {r.partition_id: [c for c in classes if c in r.circuits] for r in reports}
        order = [(first, held.get(first, list(classes)))]
        order += [(pid, held[pid]) for pid in sorted(held) if pid != first]
        return order

    @staticmethod
    def inter_client(
        classes: Sequence[int], reports: Sequence[ClientReport], sizes: Mapping[str, int]
    ) -> dict[int, IoU]:
        """Inter-client consistency (RQ1) per class.

        Mean pairwise IoU of the holders' circuits, chance level, pair count.
        """
        out = {}
        for cls in classes:
            holders = {r.partition_id: r.circuits[cls] for r in reports if cls in r.circuits}
            pairs = [compare(a, b, sizes) for a, b in itertools.combinations(holders.values(), 2)]
            out[cls] = dataclasses.replace(summarise_pairs(pairs, list(sizes)), clients=sorted(holders))
        return out

    @staticmethod
    def class_pair(reports: Sequence[ClientReport], sizes: Mapping[str, int]) -> dict[str, IoU]:
        """Class-pair IoU per pair of classes ``a-b``: class a's circuit on one client against class b's on another."""
        found = class_pairs({r.partition_id: r.circuits for r in reports})
        return {
            f"{a}-{b}": summarise_pairs([compare(x, y, sizes) for x, y in pairs], list(sizes))
            for (a, b), pairs in found.items()
        }

    @staticmethod
    def local_global(
        reports: Sequence[ClientReport], global_circuits: Mapping[int, Circuit], sizes: Mapping[str, int]
    ) -> dict[int, dict[int, IoU]]:
        """Local-global preservation: each client's circuit against the global model's circuit of its class."""
        return {
            r.partition_id: {
                c: compare(circ, global_circuits[c], sizes)
                for c, circ in sorted(r.circuits.items())
                if c in global_circuits
            }
            for r in reports
        }

    def stability(
        self,
        server_round: int,
        reports: Sequence[ClientReport],
        sizes: Mapping[str, int],
        without_degenerate: bool = False,
    ) -> tuple[dict[int, dict[int, IoU]], dict[int, dict[int, IoU]]]:
        """Intra-client stability (RQ2): each client's circuit against its own of round t-1.

        Returns ``(stability, gaps)``. A client whose last report is older than t-1 (not
        sampled, failed or rejected in between) is no t-1 comparison: it goes to
        ``gaps``, with the round it was compared with, and stays out of every stability mean.
        ``without_degenerate`` leaves out the previous round's degenerate circuits (the
        caller leaves out this round's).
        """
        stable: dict[int, dict[int, IoU]] = {}
        gaps: dict[int, dict[int, IoU]] = {}
        for r in reports:
            if r.partition_id not in self.previous:
                continue
            prev_round, prev = self.previous[r.partition_id]
            if without_degenerate:
                dropped = self.previous_degenerate.get(r.partition_id, set())
                prev = {c: circ for c, circ in prev.items() if c not in dropped}
            entry = {
                c: dataclasses.replace(compare(circ, prev[c], sizes), previous_round=prev_round)
                for c, circ in sorted(r.circuits.items())
                if c in prev
            }
            (stable if prev_round == server_round - 1 else gaps)[r.partition_id] = entry
        return stable, gaps

    def alignments(self, model: nn.Module, local_weights: Mapping[int, Sequence[np.ndarray]]) -> dict[int, Permutation]:
        """Each client's permutation of every site onto the global model's channels (``analysis.alignment``; none
        when off)."""
        how = self.config.analysis.alignment
        if how == "off":
            return {}
        reference = get_weights(model)
        images = self.probe.images[:ALIGNMENT_IMAGES].to(next(model.parameters()).device)
        spec = layout_of(model).spec
        found = match_all(model, reference, dict(sorted(local_weights.items())), how, images)
        return {pid: site_permutation(perm, spec) for pid, perm in found.items()}

    @staticmethod
    def aligned(reports: Sequence[ClientReport], alignments: Mapping[int, Permutation]) -> list[ClientReport]:
        """The reports of the aligned clients, their circuits in the global model's channel indices."""
        return [
            dataclasses.replace(
                r, circuits={c: map_circuit(circ, alignments[r.partition_id]) for c, circ in r.circuits.items()}
            )
            for r in reports
            if r.partition_id in alignments
        ]

    @staticmethod
    def skew_and_polysemanticity(
        reports: Sequence[ClientReport],
        clients: Mapping[int, ClientEntry],
        global_entry: GlobalEntry,
        sizes: Mapping[str, int],
        population: Sequence[int] | None = None,
    ) -> None:
        """Fill in each client's label skew and polysemantic shares, and the global model's share and bloat.

        Label skew is against ``population`` (every partition's training labels, as
        partitions.json counts them), so that it does not depend on who reported this
        round; NaN without it. Polysemanticity is compared like with like: each client's
        share over its own classes beside the global model's share over the same classes
        (pooling more classes raises the share by itself).
        """
        for r in reports:
            entry = clients[r.partition_id]
            if r.class_counts and population:
                entry.label_emd = label_emd(r.class_counts, population)
            entry.polysemantic_share = polysemantic_share(r.circuits, sizes)
            entry.global_polysemantic_share = polysemantic_share(
                {c: circ for c, circ in global_entry.circuits.items() if c in r.circuits}, sizes
            )
        global_entry.polysemantic_share = polysemantic_share(global_entry.circuits, sizes)
        global_entry.bloat = {
            c: circuit_bloat(n, [clients[r.partition_id].circuit_sizes[c] for r in reports if c in r.circuits])
            for c, n in sorted(global_entry.circuit_sizes.items())
            if any(c in r.circuits for r in reports)
        }

    @staticmethod
    def dominance_by_class(
        classes: Sequence[int], local_global: Mapping[int, Mapping[int, IoU]]
    ) -> dict[int, Dominance]:
        """Per class some client holds: which holder's circuit the global circuit follows, by local-global IoU."""
        out = {}
        for cls in classes:
            ious = {pid: per[cls].mean for pid, per in local_global.items() if cls in per}
            if ious:
                found = dominance(ious)
                out[cls] = Dominance(*found)
        return out

    def score(
        self, model: nn.Module, global_circuits: Mapping[int, Circuit], reports: Sequence[ClientReport]
    ) -> tuple[dict[int, CircuitScores], dict[tuple[int, int], CircuitScores]]:
        """Global circuits and every local circuit scored on the global weights, in one batched evaluation.

        Returns the global circuits' scores by class and the cross-evaluation by ``(client, class)``.
        """
        pairs: list[tuple[int, Circuit]] = list(global_circuits.items())
        keys: list[tuple[int, int]] = []
        for r in reports:
            for cls, circ in sorted(r.circuits.items()):
                pairs.append((cls, circ))
                keys.append((r.partition_id, cls))
        scores = evaluate_circuits(
            model,
            self.evaluation,
            pairs,
            ablation=self.config.discovery.resolved_ablation,
            means=self.fill_means(model),
        )
        return dict(zip(global_circuits, scores[: len(global_circuits)])), dict(
            zip(keys, scores[len(global_circuits) :])
        )

    @staticmethod
    def support_consensus(
        model: nn.Module, local_weights: Mapping[int, Sequence[np.ndarray]]
    ) -> tuple[IoU | None, IoU | None]:
        """Weight-support consensus: IoU of the clients' nonzero weights with each other and with the global model's.

        Per prunable tensor (every weight of two or more dimensions), with the chance level of
        random supports of the same sizes (:func:`~fedmi_flower.science.metrics.support_iou`);
        the mean over client pairs (inter-client) and over clients (local-global). The
        quantity sparse FL names "lack of consensus among the trained sparsity masks"
        (FLASH, Babakniya et al. 2023), beside circuit IoU, its channel-level counterpart.
        """
        names = weight_names(model)
        prunable = [names.index(n) for n in prunable_weights(model) if n in names]
        tensors = [names[i] for i in prunable]
        global_ = get_weights(model)

        def pair(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> IoU:
            values = {names[i]: support_iou(a[i], b[i]) for i in prunable}
            layers = {t: v for t, (v, _) in values.items()}
            chance = {t: c for t, (_, c) in values.items()}
            layers[MEAN], chance[MEAN] = nanmean(layers.values()), nanmean(chance.values())
            return IoU(layers, chance=chance)

        clients = sorted(local_weights)
        inter = [pair(local_weights[p], local_weights[q]) for p, q in itertools.combinations(clients, 2)]
        local_global = [pair(local_weights[p], global_) for p in clients]
        return (
            summarise_pairs(inter, tensors) if inter else None,
            summarise_pairs(local_global, tensors) if local_global else None,
        )

    ROBUSTNESS_ROWS_PER_CLASS = 64
    """Evaluation rows per class the robustness steps score on (:meth:`robustness`): they score many circuits again
    (stitched, attribution, under other ablations), and a verdict's thresholds (0.1, 0.5) are far wider than the
    sampling error of 64 rows; every verdict a step compares is scored on the same rows."""

    def curve_rows(self) -> ImageSplit:
        """The first :data:`~fedmi_flower.science.faithfulness_curve.CURVE_ROWS_PER_CLASS` evaluation rows of every
        class."""
        return self.rows_per_class(CURVE_ROWS_PER_CLASS)

    def rows_per_class(self, n: int) -> ImageSplit:
        """The first ``n`` evaluation rows of every class (the evaluation rows are already a seeded random draw)."""
        return self.evaluation.first_per_class(n)

    @staticmethod
    def overwrite_shares(
        model: nn.Module,
        record: RoundRecord,
        start: Sequence[np.ndarray],
        local: Mapping[int, Sequence[np.ndarray]],
        reports: Sequence[ClientReport],
    ) -> None:
        """Fill each collapsed circuit's ``overwrite_share``: every client's share of the change to its parameters."""
        layout = layout_of(model)
        counts = {r.partition_id: r.num_examples for r in reports if r.partition_id in local}
        for pid, per in record.interference.items():
            for cls, entry in per.items():
                circuit = record.clients[pid].circuits[cls]
                entry.overwrite_share = overwrite_shares(layout, start, {p: local[p] for p in counts}, counts, circuit)

    def score_on(
        self, weights: Sequence[np.ndarray], circuits: Sequence[tuple[int, int, Circuit]]
    ) -> list[CircuitScores]:
        """``(client, class, circuit)`` triples scored on a model holding ``weights`` (counterfactual aggregation)."""
        return self.score_circuits(self.model_with(weights), [(cls, circuit) for _, cls, circuit in circuits])

    def global_entry(
        self, model: nn.Module, circuits: Mapping[int, Circuit], scores: Mapping[int, CircuitScores]
    ) -> GlobalEntry:
        """The global model's part of the record.

        Accuracy on the evaluation rows, achieved sparsity, circuits, verdicts.
        """
        accuracy = evaluate(model, self.evaluation)
        achieved = sparsity_report(model)
        sizes = {c: circuit_size(circ) for c, circ in sorted(circuits.items())}
        return GlobalEntry(
            accuracy=accuracy.accuracy,
            loss=accuracy.loss,
            per_class_accuracy=dict(accuracy.per_class_accuracy),
            sparsity=achieved.overall,
            sparsity_per_tensor=dict(achieved.per_tensor),
            circuits=dict(sorted(circuits.items())),
            circuit_sizes=sizes,
            scores={c: s for c, s in sorted(scores.items())},
            verdicts={c: circuit_verdict(sizes[c], s.sufficiency, s.specificity) for c, s in sorted(scores.items())},
            degenerate={c: why for c in sizes if (why := _degenerate(sizes[c], scores.get(c))) is not None},
        )

    def fill_means(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Channel means of ``model`` for mean ablation, on the reference images the clients use too."""
        return self.config.discovery.recipe().fill(
            model, self.reference if self.reference is not None else self.evaluation
        )

    def control(self, classes: Sequence[int]) -> GlobalEntry | None:
        """The random-weight control (Adebayo et al. 2018): discovery on a model that was never trained.

        Same architecture, pruned to the run's sparsity the way training prunes, its circuits
        found on the probe rows and scored on the evaluation rows like the global model's.
        A discovery objective that "finds" working, faithful circuits here manufactures
        behaviour the model lacks; the model does not recognise any class, so every
        circuit should come out degenerate (by the model's own scores alone: the record's
        control also keeps each circuit's size and scores, what discovery made of it).
        Computed once per set of analysed classes (the model never changes) and repeated in
        every record; None when ``analysis.random_control`` is off.
        """
        if not self.config.analysis.random_control or not classes:
            return None
        if self._control is None or sorted(self._control.circuits) != sorted(classes):
            device = self.evaluation.images.device
            model = make_model(self.config, seed=derive_seed(self.config.seed, "random-control"))
            train = self.config.train
            if train.sparsity:
                prune_(model, train.sparsity, train.min_per_neuron, train.sparsity_scope)
            model.to(device)
            circuits, learned, present = self.discover_scored(model, self.probe, classes, "random-control", 0)
            scores, _ = self.score(model, circuits, [])
            control = self.global_entry(model, circuits, scores)
            if self.config.analysis.integrated_faithfulness and present:
                self.integrate(control, model, learned, present)
            self._control = control  # kept only whole: a failure above is tried again next round
        return self._control

    def integrate(
        self, entry: GlobalEntry, model: nn.Module, learned: Mapping[str, torch.Tensor], classes: Sequence[int]
    ) -> None:
        """Integrated faithfulness (issue 27 item 1): each class's faithfulness curve over the fixed grid of sizes,
        top channels of the learned scores, and its CPR and CMD, into ``entry``."""
        curves = faithfulness_curves(
            model,
            self.curve_rows(),
            learned,
            classes,
            ablation=self.config.discovery.resolved_ablation,
            means=self.fill_means(model),
        )
        entry.faithfulness_curve = curves
        entry.curve_sizes = grid_sizes(sum(site_sizes(model).values())) if curves else []
        for cls, curve in curves.items():
            entry.cpr[cls], entry.cmd[cls] = cpr_cmd(curve)

    # ------------------------------------------------------------------ the analysis

    def analyse(
        self,
        server_round: int,
        model: nn.Module,
        reports: Sequence[ClientReport],
        local_weights: Mapping[int, Sequence[np.ndarray]] | None = None,
        reaggregate: Reaggregate | None = None,
        start_weights: Sequence[np.ndarray] | None = None,
    ) -> RoundRecord:
        """Analyse one round; return its record (NaN where a value is undefined).

        ``reports`` must hold validated reports with distinct partition ids;
        ``local_weights``, by partition id, the weights each client's circuits were found
        on (for aligned IoU; without them aligned IoU is not measured); ``reaggregate``,
        the round's aggregation rule without one partition (counterfactual aggregation,
        ``analysis.counterfactual``; without it that step does not run); ``start_weights``,
        the global weights the round started from (each client's share of the change to a
        collapsed circuit's parameters).
        """
        began = time.perf_counter()
        classes = self.classes_to_analyse(reports)
        sizes = site_sizes(model)
        reports = sorted(reports, key=lambda r: r.partition_id)
        timings = RoundTimings()
        step_errors: dict[str, str] = {}

        def step(name: str, run: Callable[[], T], fallback: T) -> T:
            """Run one optional analysis step, timed into ``timings.<name>``; a failure costs that step only."""
            self.on_step(name.replace("_", " "))
            t0 = time.perf_counter()
            try:
                return run()
            except Exception:  # one view's failure must not cost the round's other views
                step_errors[name] = traceback.format_exc()
                return fallback
            finally:
                setattr(timings, name, time.perf_counter() - t0)

        # Global discovery and scoring are the round's analysis: their failure is the record's analysis_error.
        global_circuits, learned, present, floor = self.global_circuits_and_floor(
            model, classes, server_round, reports, timings, step_errors
        )
        self.on_step("evaluation")
        t0 = time.perf_counter()
        global_scores, cross = self.score(model, global_circuits, reports)
        global_entry = self.global_entry(model, global_circuits, global_scores)
        timings.evaluation = time.perf_counter() - t0
        if self.config.analysis.integrated_faithfulness and present:
            step(Step.INTEGRATED_FAITHFULNESS, lambda: self.integrate(global_entry, model, learned, present), None)
        control = step(Step.CONTROL, lambda: self.control(classes), None)
        no_alignment: dict[int, Permutation] = {}
        alignments = step(Step.ALIGNMENT, lambda: self.alignments(model, local_weights or {}), no_alignment)
        aligned = self.aligned(reports, alignments)

        stability, gaps = self.stability(server_round, reports, sizes)
        clients = {r.partition_id: self.client_entry(r) for r in reports}
        for pid, perm in alignments.items():
            if pid in clients:
                clients[pid].channels_moved = channels_moved(perm)
        self.skew_and_polysemanticity(reports, clients, global_entry, sizes, self.population_counts)
        local_global = self.local_global(reports, global_circuits, sizes)
        record = RoundRecord(
            round=int(server_round),
            classes=classes,
            clients=clients,
            global_model=global_entry,
            control=control,
            noise_floor=floor,
            inter_client_iou=self.inter_client(classes, reports, sizes),
            class_pair_iou=self.class_pair(reports, sizes),
            local_global_iou=local_global,
            dominance=self.dominance_by_class(classes, local_global),
            aligned_inter_client_iou=self.inter_client(classes, aligned, sizes) if alignments else {},
            aligned_local_global_iou=self.local_global(aligned, global_circuits, sizes) if alignments else {},
            stability=stability,
            stability_gap=gaps,
            cross_eval={
                r.partition_id: {c: self.cross_entry(r, c, cross[(r.partition_id, c)]) for c in sorted(r.circuits)}
                for r in reports
                if r.circuits
            },
            timings=timings,
            alignment_error=step_errors.get(Step.ALIGNMENT),
            step_errors=step_errors,
        )
        if local_weights:
            unmeasured: tuple[IoU | None, IoU | None] = (None, None)
            record.support_inter_client_iou, record.support_local_global_iou = step(
                Step.SUPPORT_CONSENSUS, lambda: self.support_consensus(model, local_weights), unmeasured
            )
        if self.config.analysis.counterfactual and reaggregate is not None:
            aggregated = [r.partition_id for r in reports]
            cap = self.config.analysis.counterfactual_clients
            if len(aggregated) > cap:  # many clients: a seeded draw of those left out in turn, said in the summary
                rng = numpy_rng(self.config.seed, "counterfactual", server_round)
                aggregated = sorted(int(p) for p in rng.choice(aggregated, size=cap, replace=False))
            record.interference_left_out = aggregated
            record.interference = step(
                Step.COUNTERFACTUAL,
                lambda: interference(
                    record.cross_eval,
                    {r.partition_id: r.circuits for r in reports},
                    aggregated,
                    reaggregate,
                    self.score_on,
                ),
                {},
            )
            if record.interference and start_weights is not None and local_weights:
                step(
                    Step.OVERWRITE_SHARES,
                    lambda: self.overwrite_shares(model, record, start_weights, local_weights, reports),
                    None,
                )
        self.robustness(server_round, model, record, reports, global_circuits, global_scores, local_weights or {}, step)
        # Every IoU view again over the circuits that are not degenerate (local ones on their own model).
        clean = [non_degenerate_part(r, clients[r.partition_id].degenerate) for r in reports]
        clean_global = {c: circ for c, circ in global_circuits.items() if c not in global_entry.degenerate}
        clean_stability, _ = self.stability(server_round, clean, sizes, without_degenerate=True)
        previous_degenerate = {pid: set(dead) for pid, dead in self.previous_degenerate.items()}
        clean_inter = self.inter_client(classes, clean, sizes)
        clean_lg = self.local_global(clean, clean_global, sizes)
        nondegenerate = {
            View.INTER_CLIENT_IOU: list(clean_inter.values()),
            View.CLASS_PAIR_IOU: list(self.class_pair(clean, sizes).values()),
            View.LOCAL_GLOBAL_IOU: [v for per in clean_lg.values() for v in per.values()],
            View.STABILITY: [v for per in clean_stability.values() for v in per.values()],
        }
        for r in reports:
            self.previous[r.partition_id] = (int(server_round), dict(r.circuits))
            self.previous_degenerate[r.partition_id] = set(clients[r.partition_id].degenerate)
        record.summary = self.summarise(record, nondegenerate)
        keyed: dict[View, Mapping[Any, IoU]] = {
            View.INTER_CLIENT_IOU: clean_inter,
            View.LOCAL_GLOBAL_IOU: {(p, c): v for p, per in clean_lg.items() for c, v in per.items()},
            View.STABILITY: {(p, c): v for p, per in clean_stability.items() for c, v in per.items()},
        }
        for view, parts in view_floors(record, keyed, previous_degenerate).items():
            record.summary.set_view(view, **parts)
        timings.analysis = time.perf_counter() - began
        return record

    def global_circuits_and_floor(
        self,
        model: nn.Module,
        classes: Sequence[int],
        server_round: int,
        reports: Sequence[ClientReport],
        timings: RoundTimings,
        step_errors: dict[str, str],
    ) -> tuple[dict[int, Circuit], dict[str, torch.Tensor], list[int], NoiseFloor]:
        """The global model's circuits (with their learned scores and classes) and the round's noise floor.

        The floor's discoveries run on the same model as the global circuits', so all of
        them share one optimisation loop (issue 29): ``timings.global_discovery`` is that
        loop, ``timings.noise_floor`` choosing the floor's rows and comparing. A failure of
        the floor costs the floor only: the global circuits are then found alone.
        """
        self.on_step("global discovery")
        began = time.perf_counter()
        job = self.discovery_job(self.probe, classes, "server-discovery", server_round)
        if job is None:
            timings.global_discovery = time.perf_counter() - began
            return {}, {}, [], NoiseFloor(measured=False)
        planned: list[tuple[int | None, DiscoveryJob]] = []
        floor_seconds = 0.0
        t0 = time.perf_counter()
        try:
            planned = self.floor_jobs(job.classes, server_round, reports)
            found = self.find_jobs(model, [job] + [j for _, j in planned])
        except Exception:  # the floor's failure must not cost the round its global circuits
            step_errors[Step.NOISE_FLOOR] = traceback.format_exc()
            planned = []
            found = self.find_jobs(model, [job])
        timings.global_discovery = time.perf_counter() - t0
        circuits, _, learned = found[0]
        floor = NoiseFloor()
        if Step.NOISE_FLOOR not in step_errors:
            self.on_step("noise floor")
            t0 = time.perf_counter()
            try:
                floor = self.floor_from(planned, [f for f, _, _ in found[1:]], circuits, site_sizes(model), reports)
            except Exception:
                step_errors[Step.NOISE_FLOOR] = traceback.format_exc()
            floor_seconds = time.perf_counter() - t0
        timings.noise_floor = floor_seconds
        return circuits, learned, list(job.classes), floor

    def robustness(
        self,
        server_round: int,
        model: nn.Module,
        record: RoundRecord,
        reports: Sequence[ClientReport],
        global_circuits: Mapping[int, Circuit],
        global_scores: Mapping[int, CircuitScores],
        local_weights: Mapping[int, Sequence[np.ndarray]],
        step: Callable[[str, Callable[[], Any], Any], Any],
    ) -> None:
        """The round's conclusions measured again (:mod:`fedmi_flower.analysis.robustness`), each an optional step."""
        analysis, seed = self.config.analysis, self.config.seed
        client_circuits = {r.partition_id: dict(r.circuits) for r in reports}
        rows = self.rows_per_class(self.ROBUSTNESS_ROWS_PER_CLASS)

        def score(on: nn.Module, circuits: Sequence[tuple[int, Circuit]]) -> list[CircuitScores]:
            return self.score_circuits(on, circuits, rows)

        client_models = (
            {pid: self.model_with(weights) for pid, weights in sorted(local_weights.items())}
            if analysis.cka or analysis.second_method
            else {}
        )
        if analysis.stitching:
            record.stitched = step(
                Step.STITCHING,
                lambda: stitched_circuits(model, client_circuits, record.classes, score),
                {},
            )
        if analysis.cka and client_models:
            images = (self.reference if self.reference is not None else self.evaluation).images
            record.cka = step(
                Step.CKA,
                lambda: client_cka(
                    model,
                    client_models,
                    images,
                    global_circuits,
                    client_circuits,
                    derive_seed(seed, "cka-halves", server_round),
                    untrained=make_model(self.config, seed=derive_seed(seed, "cka-untrained")).to(
                        self.evaluation.images.device
                    ),
                ),
                {},
            )
        if analysis.second_method:
            record.second_method = step(
                Step.SECOND_METHOD,
                lambda: second_method(
                    model,
                    self.probe,
                    global_circuits,
                    global_scores,
                    client_models,
                    {pid: client_circuits[pid] for pid in client_models},
                    site_sizes(model),
                    score,
                    fill=self.fill_means,
                    ablation=self.config.discovery.resolved_ablation,
                    curve_rows=self.curve_rows() if analysis.integrated_faithfulness else None,
                    negatives=None,
                    seed=derive_seed(seed, "attribution", server_round),
                ),
                None,
            )
        if analysis.ablations:
            record.ablation_verdicts = step(
                Step.ABLATIONS,
                lambda: ablation_verdicts(
                    model,
                    rows,
                    global_circuits,
                    client_circuits,
                    run_ablation=self.config.discovery.resolved_ablation,
                    means=self.fill_means(model),
                    resample_from=(self.reference if self.reference is not None else self.evaluation).images,
                    seed=derive_seed(seed, "resample", server_round),
                ),
                None,
            )
        if analysis.cascade and global_circuits:
            record.cascade = step(
                Step.CASCADE,
                lambda: cascade(
                    model,
                    global_circuits,
                    rows,
                    score,
                    derive_seed(seed, "cascade-init", server_round),
                ),
                None,
            )
        if analysis.label_control:
            record.label_control = step(Step.LABEL_CONTROL, lambda: self.label_control(record.classes), None)

    def model_with(self, weights: Sequence[np.ndarray]) -> nn.Module:
        """The run's model holding ``weights``, on the analysis device, in eval mode."""
        model = make_model(self.config)
        set_weights(model, list(weights))
        return model.to(self.evaluation.images.device).eval()

    def score_circuits(
        self, model: nn.Module, circuits: Sequence[tuple[int, Circuit]], rows: ImageSplit | None = None
    ) -> list[CircuitScores]:
        """``(class, circuit)`` pairs scored on ``model`` as every verdict of the run is: on the evaluation rows (or
        ``rows``), with the run's ablation (the model's own channel means for mean ablation)."""
        return evaluate_circuits(
            model,
            rows if rows is not None else self.evaluation,
            list(circuits),
            ablation=self.config.discovery.resolved_ablation,
            means=self.fill_means(model),
        )

    LABEL_CONTROL_EPOCHS = 5
    """Epochs the label-randomised control trains for on the probe rows: enough to fit shuffled labels in part,
    which a never-trained model (the random control) does not do at all."""

    def label_control(self, classes: Sequence[int]) -> GlobalEntry | None:
        """The label-randomised control (Adebayo et al. 2018): discovery on a model trained on shuffled labels.

        Same architecture and training recipe (sparsity included), trained for
        :attr:`LABEL_CONTROL_EPOCHS` epochs on the probe rows with their labels shuffled,
        its circuits found on the probe rows and scored on the evaluation rows like the
        global model's. It can only memorise, so it recognises no class on held-out rows
        and every circuit must come out degenerate. Trained once per run (per set of
        analysed classes) and repeated in every record.
        """
        if not classes:
            return None
        if self._label_control is None or sorted(self._label_control.circuits) != sorted(classes):
            train = self.config.train
            model = make_model(self.config, seed=derive_seed(self.config.seed, "label-control-init"))
            model.to(self.evaluation.images.device)

            def fit(m: nn.Module, rows: ImageSplit) -> None:
                train_sparse(
                    m,
                    rows,
                    epochs=self.LABEL_CONTROL_EPOCHS,
                    lr=train.lr,
                    batch_size=train.batch_size,
                    sparsity=train.sparsity or None,
                    min_per_neuron=train.min_per_neuron,
                    anneal_fraction=train.anneal_fraction,
                    generator=torch_generator(self.config.seed, "label-control-train"),
                    scope=train.sparsity_scope,
                )

            label_randomised_model(model, self.probe, fit, self.config.seed)
            circuits = self.discover(model, self.probe, classes, "label-control", 0)
            scores, _ = self.score(model, circuits, [])
            self._label_control = self.global_entry(model, circuits, scores)
        return self._label_control

    @staticmethod
    def client_entry(r: ClientReport) -> ClientEntry:
        """A client's part of the round record: what it reported, with its circuits' sizes and local verdicts."""
        sizes = {c: circuit_size(circ) for c, circ in sorted(r.circuits.items())}
        local = dict(sorted(r.local_scores.items()))
        return ClientEntry(
            num_examples=r.num_examples,
            train_loss=r.train_loss,
            train_accuracy=r.train_accuracy,
            sparsity=r.sparsity,
            sparsity_per_tensor=dict(r.sparsity_per_tensor),
            timings=dict(r.timings),
            class_counts=list(r.class_counts),
            device=r.device,
            circuits=dict(sorted(r.circuits.items())),
            circuit_sizes=sizes,
            local_scores=local,
            local_verdicts={c: circuit_verdict(n, *_local_scores(local, c)) for c, n in sizes.items()},
            discovery_steps=dict(sorted(r.discovery_steps.items())),
            degenerate={c: why for c, n in sizes.items() if (why := _degenerate(n, local.get(c))) is not None},
            report_bytes=r.report_bytes,
            weights_bytes=r.weights_bytes,
        )

    @staticmethod
    def cross_entry(r: ClientReport, cls: int, s: CircuitScores) -> CrossEvaluation:
        """Cross-evaluation of one local circuit on the global weights, with its verdict there and on its own model."""
        size = circuit_size(r.circuits[cls])
        return CrossEvaluation(
            **dataclasses.asdict(s),
            verdict=circuit_verdict(size, s.sufficiency, s.specificity),
            local_verdict=circuit_verdict(size, *_local_scores(r.local_scores, cls)),
            degenerate=_degenerate(size, s, own_model=False),
        )

    @staticmethod
    def summarise(record: RoundRecord, nondegenerate: Mapping[View, Sequence[IoU]] | None = None) -> RoundSummary:
        """Scalar summaries of a round record (what Flower metrics, the summary CSV and the progress line carry).

        Every IoU mean comes with its pair count, its chance level and the view's noise
        floor (:class:`~fedmi_flower.records.round_record.RoundSummary`); ``nondegenerate``
        holds each view's pairs of circuits that are not degenerate.
        """
        cross = [s for per_class in record.cross_eval.values() for s in per_class.values()]
        local_sizes = [n for c in record.clients.values() for n in c.circuit_sizes.values()]
        inter = list(record.inter_client_iou.values())
        pair = list(record.class_pair_iou.values())
        lg = [v for per in record.local_global_iou.values() for v in per.values()]
        aligned_inter = list(record.aligned_inter_client_iou.values())
        aligned_lg = [v for per in record.aligned_local_global_iou.values() for v in per.values()]
        moved = [sum(c.channels_moved.values()) for c in record.clients.values() if c.channels_moved]
        stab = [v for per in record.stability.values() for v in per.values()]
        worked = [s for s in cross if s.local_verdict == "working"]
        restored = sum(1 for per in record.interference.values() for e in per.values() if e.restored_by)
        support_inter, support_lg = record.support_inter_client_iou, record.support_local_global_iou
        clean = nondegenerate or {}
        return RoundSummary(
            clients=len(record.clients),
            report_bytes=nanmean(float(c.report_bytes) for c in record.clients.values() if c.report_bytes),
            report_to_weights=nanmean(
                c.report_bytes / c.weights_bytes for c in record.clients.values() if c.report_bytes and c.weights_bytes
            ),
            support_inter_client_iou=support_inter.mean if support_inter else math.nan,
            support_inter_client_iou_chance=support_inter.chance_mean if support_inter else math.nan,
            support_local_global_iou=support_lg.mean if support_lg else math.nan,
            support_local_global_iou_chance=support_lg.chance_mean if support_lg else math.nan,
            interference_collapsed=sum(len(per) for per in record.interference.values()),
            interference_restored=restored,
            interference_restorer_moved_most=restorer_moved_most(record.interference),
            interference_agrees_with_dominance=agreement_with_dominance(
                record.interference, {c: d.winner for c, d in record.dominance.items()}
            ),
            global_accuracy=record.global_model.accuracy,
            global_loss=record.global_model.loss,
            inter_client_iou=_view_summary(inter, True, clean.get(View.INTER_CLIENT_IOU)),
            class_pair_iou=_view_summary(pair, True, clean.get(View.CLASS_PAIR_IOU)),
            local_global_iou=_view_summary(lg, False, clean.get(View.LOCAL_GLOBAL_IOU)),
            aligned_inter_client_iou=_view_summary(aligned_inter, True),
            aligned_local_global_iou=_view_summary(aligned_lg, False),
            channels_moved=nanmean(float(m) for m in moved),
            mean_label_emd=nanmean(c.label_emd for c in record.clients.values()),
            circuit_bloat=nanmean(record.global_model.bloat.values()),
            polysemantic_local=nanmean(c.polysemantic_share for c in record.clients.values()),
            polysemantic_global=nanmean(c.global_polysemantic_share for c in record.clients.values()),
            dominance_lead=nanmean(d.lead for d in record.dominance.values()),
            dominance_entropy=nanmean(d.entropy for d in record.dominance.values()),
            stability=_view_summary(stab, False, clean.get(View.STABILITY)),
            stability_gaps=sum(len(per) for per in record.stability_gap.values()),
            cross_sufficiency=nanmean(s.sufficiency for s in cross),
            cross_specificity=nanmean(s.specificity for s in cross),
            # The paper's collapse (sufficiency alone, as the report and figures count it); the verdicts follow.
            cross_collapsed=sum(
                1 for s in cross if not math.isnan(s.sufficiency) and s.sufficiency < COLLAPSE_THRESHOLD
            ),
            cross_working_locally=len(worked),
            cross_preserved=sum(1 for s in worked if s.verdict == "working"),
            cross_collapsed_after_working=sum(1 for s in worked if s.verdict == "collapsed"),
            cross_indiscriminate=sum(1 for s in cross if s.verdict == "indiscriminate"),
            global_circuit_channels=nanmean(float(v) for v in record.global_model.circuit_sizes.values()),
            local_circuit_channels=nanmean(float(v) for v in local_sizes),
            empty_local_circuits=sum(1 for v in local_sizes if v == 0),
            # Faithfulness means leave degenerate circuits out, as the control's always did: an
            # empty circuit of a class the model has lost measures the model, not a mechanism.
            local_faithfulness=nanmean(
                s.faithfulness
                for c in record.clients.values()
                for cls, s in c.local_scores.items()
                if cls not in c.degenerate
            ),
            global_faithfulness=nanmean(
                s.faithfulness for c, s in record.global_model.scores.items() if c not in record.global_model.degenerate
            ),
            # Integrated faithfulness reads a ranking, not one cut of it: every class, degenerate or not (a curve
            # with an undefined point has no area, NaN, and drops out of the mean).
            global_cpr=nanmean(record.global_model.cpr.values()),
            global_cmd=nanmean(record.global_model.cmd.values()),
            local_cpr=nanmean(s.cpr for c in record.clients.values() for s in c.local_scores.values()),
            local_cmd=nanmean(s.cmd for c in record.clients.values() for s in c.local_scores.values()),
            control_cpr=nanmean(record.control.cpr.values()) if record.control is not None else math.nan,
            control_cmd=nanmean(record.control.cmd.values()) if record.control is not None else math.nan,
            cross_faithfulness=nanmean(
                s.faithfulness
                for pid, per in record.cross_eval.items()
                for cls, s in per.items()
                if s.degenerate is None and pid in record.clients and cls not in record.clients[pid].degenerate
            ),
            degenerate_local=sum(len(c.degenerate) for c in record.clients.values()),
            degenerate_global=len(record.global_model.degenerate),
            control_degenerate=len(record.control.degenerate) if record.control is not None else 0,
            control_faithfulness=nanmean(
                s.faithfulness for c, s in record.control.scores.items() if c not in record.control.degenerate
            )
            if record.control is not None
            else math.nan,
            **robustness_summary(record),
        )


def view_floors(
    record: RoundRecord,
    clean: Mapping[View, Mapping[Any, IoU]],
    previous_degenerate: Mapping[int, set[int]] | None = None,
) -> dict[View, dict[str, Any]]:
    """Each IoU view's noise floor over exactly the entries of its non-degenerate mean (README, "Reading the numbers").

    Floors differ by class (a model's circuit of one class is found again more reliably
    than another's), so a view's floor is the mean, over the entries
    :meth:`RoundRecord.floor_entries` gives (the classes or client-class pairs behind the
    view's non-degenerate mean), of the floor measured for each. ``clean`` holds each
    view's non-degenerate IoUs by the same keys; with them goes the view's mean over
    exactly the entries the floor covers (``*_against``: what the verdict "below the floor"
    compares), and how many of the view's entries the floor covers. NaN when none.
    """
    out: dict[View, dict[str, Any]] = {}
    for view in FLOOR_OF_VIEW:
        entries = [(key, f) for key, f in record.floor_entries(view, previous_degenerate) if key in clean[view]]
        covered = [(key, f) for key, f in entries if f is not None and not math.isnan(f.mean)]
        out[view] = dict(
            floor=nanmean(f.mean for _, f in covered),
            floor_covers=len(covered),
            floor_against=nanmean(clean[view][key].mean for key, _ in covered),
            entries=len(entries),
        )
    return out


def robustness_summary(record: RoundRecord) -> dict[str, Any]:
    """The summary of the round's robustness sections (:mod:`fedmi_flower.analysis.robustness`)."""
    working_classes = {cls for per in record.cross_eval.values() for cls, e in per.items() if e.verdict == "working"}
    stitched_working = [
        cls for cls, per in record.stitched.items() if any(s.verdict == "working" for s in per.values())
    ]
    ckas = list(record.cka.values())
    out: dict[str, Any] = dict(
        stitched_classes=len(record.stitched),
        stitched_working=len(stitched_working),
        stitched_working_no_client=sum(1 for cls in stitched_working if cls not in working_classes),
        cka=nanmean(v for e in ckas for v in e.sites.values()),
        cka_again=nanmean(v for e in ckas for v in e.again.values()),
        cka_chance=nanmean(v for e in ckas for v in e.chance.values()),
        cka_untrained=nanmean(v for e in ckas[:1] for v in e.untrained.values()),
        circuit_cka=nanmean(v for e in ckas for v in e.circuits.values()),
        circuit_cka_chance=nanmean(v for e in ckas for v in e.circuits_chance.values()),
    )
    method = record.second_method
    if method is not None:
        same, clients = list(method.same_size.values()), [e for per in method.clients.values() for e in per.values()]
        worked = [e for e in clients if e.own_verdict == "working"]
        sizes = record.global_model.circuit_sizes
        out.update(
            method_iou=nanmean(e.iou.mean for e in same if e.iou is not None),
            method_iou_chance=nanmean(e.iou.chance_mean for e in same if e.iou is not None),
            method_client_iou=nanmean(e.iou.mean for e in clients if e.iou is not None),
            method_client_iou_chance=nanmean(e.iou.chance_mean for e in clients if e.iou is not None),
            attribution_faithfulness=nanmean(e.own.faithfulness for e in same),
            attribution_size_ratio=nanmean(
                e.size / sizes[c] for c, e in method.same_faithfulness.items() if sizes.get(c)
            ),
            attribution_cpr=nanmean(method.cpr.values()),
            attribution_working_locally=len(worked),
            attribution_preserved=sum(1 for e in worked if e.global_verdict == "working"),
            attribution_collapsed_after_working=sum(1 for e in worked if e.global_verdict == "collapsed"),
            attribution_inter_client_iou=nanmean(v.mean for v in method.inter_client_iou.values()),
            attribution_inter_client_iou_chance=nanmean(v.chance_mean for v in method.inter_client_iou.values()),
        )
    if record.ablation_verdicts is not None:
        changed, compared = record.ablation_verdicts.changed()
        out.update(ablation_verdicts_changed=changed, ablation_verdicts_compared=compared)
    if record.cascade is not None and record.cascade.sufficiency:
        out.update(
            cascade_monotone=float(record.cascade.monotone), cascade_final_sufficiency=record.cascade.sufficiency[-1]
        )
    if record.label_control is not None:
        out.update(label_control_degenerate=len(record.label_control.degenerate))
    return out


def _view_summary(entries: Sequence[IoU], grouped: bool, nondegenerate: Sequence[IoU] | None = None) -> ViewSummary:
    """A view's mean, pairs and chance over ``entries``, and its mean over the ``nondegenerate`` ones. A view of
    means over groups (inter-client and class-pair IoU: ``grouped``) carries its own pair counts; a view of single
    pairs counts the defined ones."""

    def pairs(values: Sequence[IoU]) -> int:
        return sum(v.pairs or 0 for v in values) if grouped else defined_pairs([v.layers for v in values])

    clean = nondegenerate if nondegenerate is not None else ()
    return ViewSummary(
        mean=nanmean(v.mean for v in entries),
        pairs=pairs(entries),
        chance=nanmean(v.chance_mean for v in entries),
        nondegenerate=nanmean(v.mean for v in clean),
        nondegenerate_pairs=pairs(clean),
    )


def _local_scores(local: Mapping[int, Scores], cls: int) -> tuple[float | None, float | None]:
    """A client's own sufficiency and specificity of its class-``cls`` circuit (None when it sent none)."""
    s = local.get(cls)
    return (s.sufficiency, s.specificity) if s is not None else (None, None)
