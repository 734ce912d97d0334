"""CircuitClient: sparse local training plus per-class circuit discovery, as a Flower NumPyClient."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar

from fedmi_flower.config import AnalysisConfig, ExperimentConfig
from fedmi_flower.science.circuits import (
    Circuit,
    evaluate_circuits,
)
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.discovery import DiscoveryJob
from fedmi_flower.science.disjoint import budget_occupied, occupied_by_others
from fedmi_flower.science.faithfulness_curve import CURVE_ROWS_PER_CLASS, cpr_cmd, faithfulness_curves
from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.science.metrics import circuit_iou
from fedmi_flower.science.model import evaluate, get_weights, set_weights
from fedmi_flower.science.seeding import derive_seed, torch_generator
from fedmi_flower.science.sparsity import sparsity_report, train_sparse
from fedmi_flower.wire.protocol import ClientReport, FitInstructions, decode_circuits, report_to_metrics

from .faults import InjectedFailure, should_fail


class CircuitClient(NumPyClient):
    """One client: trains a weight-sparse CNN on its data and finds a circuit per class.

    Parameters
    ----------
    partition_id : int
        Which partition this client holds; reported with every fit.
    train, holdout : ImageSplit
        The client's training rows and its held-out rows (for ``evaluate`` and for
        scoring its own circuits). Both are moved to ``device`` once.
    device : torch.device
        Where training and discovery run: CUDA when present, else CPU.
    model_factory : callable
        Builds a fresh model of the run (``make_model(config)``); the weights the server
        sends are loaded into it.
    num_classes : int
        Classes of the dataset.
    reference : ImageSplit or callable, optional
        The run's reference images, or a function that loads them (called once, on first
        use). They are the other images of the faithful objective for a client that holds
        one class (or for every client, with ``discovery.negatives = "reference"``), and,
        under any objective, the images of other classes a one-class client's circuits are
        scored on (:meth:`local_eval_split`). A loader spares the clients that need none
        (several classes of their own under the paper's objective) reading them.
    """

    def __init__(
        self,
        partition_id: int,
        train: ImageSplit,
        holdout: ImageSplit,
        device: torch.device | str = "cpu",
        reference: ImageSplit | Callable[[], ImageSplit] | None = None,
        *,
        model_factory: Callable[[], nn.Module],
        num_classes: int,
    ) -> None:
        self.partition_id = int(partition_id)
        self.model_factory = model_factory
        self.device = torch.device(device)
        self.train = train.to(self.device)
        self.holdout = holdout.to(self.device)
        self.num_classes = num_classes
        self._reference = reference.to(self.device) if isinstance(reference, ImageSplit) else None
        self._load_reference = None if isinstance(reference, ImageSplit) else reference
        self.class_counts = self.train.class_counts(num_classes)

    @property
    def reference(self) -> ImageSplit | None:
        """The run's reference images on this client's device, loaded on first use; None when it was given none."""
        if self._reference is None and self._load_reference is not None:
            self._reference = self._load_reference().to(self.device)
            self._load_reference = None
        return self._reference

    def _model(self, parameters: NDArrays) -> nn.Module:
        model = self.model_factory()
        model.to(self.device)
        set_weights(model, parameters)
        return model

    def fill_means(self, model: nn.Module, cfg: ExperimentConfig) -> dict[str, torch.Tensor] | None:
        """Channel means for mean ablation, measured on the run's reference images.

        The server measures the global model's on the same images, so a circuit's verdict on
        its own model and on the global weights differ by the weights alone, not by what a
        closed channel outputs (means over a 2-class client's own rows would carry its classes).
        """
        recipe = cfg.discovery.recipe()
        if recipe.ablation != "mean":  # before touching self.reference, which loads it
            return None
        return recipe.fill(model, self.reference if self.reference is not None else self.train)

    def negatives(self, cfg: ExperimentConfig, data: ImageSplit) -> ImageSplit | None:
        """The other images the faithful objective shows this client's circuits: None means its own rows.

        The reference set replaces them with ``discovery.negatives = "reference"``, or
        when ``data`` holds a single class (1-class non-IID), where there are none.
        """
        held = sum(1 for n in data.class_counts(self.num_classes) if n >= cfg.analysis.min_class_examples)
        if not cfg.discovery.uses_reference(held):
            return None
        if self.reference is None:
            raise ValueError(
                f"client {self.partition_id} needs reference images for the faithful objective "
                f"(discovery.negatives = {cfg.discovery.negatives!r}, classes held: "
                f"{torch.unique(data.labels).tolist()}), but the ClientApp gave it none"
            )
        return self.reference

    def analysed_classes(self, analysis: AnalysisConfig) -> list[int]:
        """Classes this client finds circuits for: those asked for that it holds enough of."""
        wanted = range(self.num_classes) if analysis.classes is None else analysis.classes
        return [c for c in sorted(set(wanted)) if self.class_counts[c] >= analysis.min_class_examples]

    def local_eval_split(self, seed: int, max_rows: int = 2000) -> ImageSplit:
        """Where a client scores its own circuits.

        Its held-out rows, or (holding none out) up to ``max_rows`` of its training rows, a
        seeded sample; with the reference images beside them when those rows hold one
        class, where specificity and the "not the class" side of faithfulness would
        otherwise rest on nothing. That holds under any objective: the paper's discovery
        sees target images only, but its circuits are scored like every other (without
        images of other classes a one-class client's circuits could never be ``working``).
        Rows that hold other classes are scored alone, as they always were.
        """
        if len(self.holdout):
            rows = self.holdout
        elif len(self.train) <= max_rows:
            rows = self.train
        else:
            g = torch_generator(seed, "local-eval", self.partition_id)
            rows = self.train.subset(torch.randperm(len(self.train), generator=g)[:max_rows].sort().values)
        # Labels first: the reference set is loaded only by a client whose rows lack other classes.
        if len(torch.unique(rows.labels)) < 2 and (reference := self.reference) is not None:
            rows = ImageSplit(torch.cat([rows.images, reference.images]), torch.cat([rows.labels, reference.labels]))
        return rows

    def kept_off(self, model: nn.Module, cfg: ExperimentConfig, class_circuits: bytes) -> Circuit:
        """The channels this client's training keeps off (``train.disjoint``, science/disjoint.py): those other
        clients' circuits of classes it does not hold used, as the server sent them, or the other classes' channel
        blocks; none when the rule is off or the server sent no circuits yet."""
        held = [c for c, n in enumerate(self.class_counts) if n > 0]
        sizes = site_sizes(model)
        if cfg.train.disjoint == "budget":
            return budget_occupied(sizes, held, self.num_classes)
        if cfg.train.disjoint == "circuits" and class_circuits:
            return occupied_by_others(decode_circuits(class_circuits, sizes, self.num_classes), held)
        return {}

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """The partition this node holds (the server samples clients by it)."""
        return {"partition_id": self.partition_id}

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return get_weights(self.model_factory())

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train, discover circuits, score them locally; return weights, size and the report."""
        began = time.perf_counter()
        orders = FitInstructions.parse(config)
        cfg, rnd, pid = orders.config, orders.server_round, self.partition_id
        if should_fail(cfg.faults, cfg.seed, rnd, pid):
            raise InjectedFailure(f"client {pid} fails in round {rnd}, as the experiment's [faults] table asks")
        model = self._model(parameters)

        t0 = time.perf_counter()
        stats = train_sparse(
            model,
            self.train,
            epochs=cfg.train.epochs,
            lr=cfg.train.lr,
            batch_size=cfg.train.batch_size,
            sparsity=cfg.train.sparsity or None,
            min_per_neuron=cfg.train.min_per_neuron,
            anneal_fraction=cfg.train.anneal_fraction,
            generator=torch_generator(cfg.seed, "train", rnd, pid),
            proximal_mu=orders.proximal_mu,
            scope=cfg.train.sparsity_scope,
            anneal=cfg.train.anneal == "every_round" or rnd <= 1,
            keep_off=self.kept_off(model, cfg, orders.class_circuits),
            keep_off_lambda=cfg.train.disjoint_lambda,
            restricted_alpha=cfg.train.restricted_softmax,
            frozen_head=cfg.train.frozen_head,
        )
        t_train = time.perf_counter() - t0

        # The floor client's second discovery (its seed floor) runs in the same loop as its first (issue 29):
        # t_discovery holds both, t_floor only the comparison.
        t0 = time.perf_counter()
        classes = self.analysed_classes(cfg.analysis)
        means = self.fill_means(model, cfg)
        jobs = []
        if classes:
            seed = derive_seed(cfg.seed, "client-discovery", rnd, pid)
            jobs.append(DiscoveryJob(self.train, classes, seed, self.negatives(cfg, self.train)))
            if cfg.analysis.noise_floor and pid == cfg.analysis.floor_client:
                jobs.append(self.floor_job(cfg, rnd, classes))
        found = cfg.discovery.recipe().find_jobs(model, jobs, means=means)
        circuits, steps_run, learned = found[0] if found else ({}, [], {})
        t_discovery = time.perf_counter() - t0
        t0 = time.perf_counter()
        floor = self.seed_floor(circuits, jobs[1], found[1][0]) if len(jobs) > 1 else {}
        t_floor = time.perf_counter() - t0

        t0 = time.perf_counter()
        local_scores = {}
        if cfg.analysis.evaluate_local and circuits:
            rows = self.local_eval_split(cfg.seed)
            ablation = cfg.discovery.resolved_ablation
            scored = evaluate_circuits(model, rows, list(circuits.items()), ablation=ablation, means=means)
            local_scores = dict(zip(circuits, scored))
            if cfg.analysis.integrated_faithfulness:
                # The server's grid and rows per class, so that a local CPR reads like the global model's.
                curve_rows = rows.first_per_class(CURVE_ROWS_PER_CLASS)
                curves = faithfulness_curves(model, curve_rows, learned, classes, ablation=ablation, means=means)
                for cls, curve in curves.items():
                    if cls in local_scores:
                        local_scores[cls].cpr, local_scores[cls].cmd = cpr_cmd(curve)
        t_evaluate = time.perf_counter() - t0

        achieved = sparsity_report(model)
        report = ClientReport(
            partition_id=pid,
            num_examples=len(self.train),
            circuits=circuits,
            train_loss=stats.loss,
            train_accuracy=stats.accuracy,
            sparsity=achieved.overall,
            sparsity_per_tensor=achieved.per_tensor,
            noise_floor=floor,
            timings={
                "t_train": t_train,
                "t_discovery": t_discovery,
                "t_floor": t_floor,
                "t_evaluate": t_evaluate,
                "t_total": time.perf_counter() - began,
            },
            class_counts=self.class_counts,
            local_scores=local_scores,
            discovery_steps=dict(zip(classes, steps_run)),
            device=str(self.device),
        )
        return get_weights(model), len(self.train), report_to_metrics(report, site_sizes(model))

    def floor_job(self, cfg: ExperimentConfig, rnd: int, classes: list[int]) -> DiscoveryJob:
        """The discovery of this client's noise floor: the same classes found again on a bootstrap of its rows with
        another seed (those classes the redraw still holds)."""
        seed = derive_seed(cfg.seed, "client-floor", rnd, self.partition_id)
        redraw = self.train.subset(
            torch.randint(len(self.train), (len(self.train),), generator=torch_generator(seed, "bootstrap"))
            .sort()
            .values
        )
        held = [c for c in classes if bool((redraw.labels == c).any())]
        return DiscoveryJob(redraw, held, seed, self.negatives(cfg, redraw))

    @staticmethod
    def seed_floor(
        circuits: dict[int, Circuit], job: DiscoveryJob, again: dict[int, Circuit]
    ) -> dict[int, dict[str, float]]:
        """This client's noise floor: its circuits against the same model's found again by ``job`` (:meth:`floor_job`).

        Stability and inter-client IoU compare circuits found with different seeds on
        different draws; this is their IoU when the model has not changed at all.
        """
        return {c: circuit_iou(circuits[c], again[c]) for c in job.classes}

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        """Loss and accuracy of the global model on this client's held-out rows."""
        result = evaluate(self._model(parameters), self.holdout, num_classes=self.num_classes)
        loss = result.loss if np.isfinite(result.loss) else 0.0
        return float(loss), result.num_examples, {"accuracy": result.accuracy, "partition_id": self.partition_id}
