"""Circuit discovery as one recipe (paper section 2.2, phase B, Eq. 3): a gate, an objective and a short loop.

:class:`Discovery` holds every knob of discovery and is the one recipe clients, the
server's analysis and the frontier follow (the config builds it:
``DiscoveryConfig.recipe()``): which images a class's other side comes from, which
channel means fill an ablated channel, and the optimisation itself. The optimisation is
a gate (:class:`StraightThroughGate`, :class:`AnnealedGate`), an objective
(:class:`PaperObjective`, :class:`FaithfulObjective`) and an optional
:class:`EarlyStop`, run by :meth:`Discovery.learn`; the module docstring of
:mod:`fedmi_flower.science.circuits` says what the objectives ask.

All requested classes are discovered in one optimisation loop: every class has its own
gate set, every image is gated by its own class's gates, and each class's loss term
touches only its own scores. Adam acts element-wise, so this equals running the classes
one by one on the same batches, at the cost of one larger batch per step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedmi_flower.science.circuits import (
    Circuit,
    HeavisideSTE,
    _ablation_fill,
    _concat,
    _draws,
    _faithful_loss,
    _FrozenWeights,
    _model_decisions,
    _negative_pool,
    _other_rows,
    _rows,
    _stem_cache,
    _stem_cache_fits,
    channel_means,
    circuits_from_scores,
    earliest_gate_change,
    smallest_faithful_circuit,
)
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.hook_points import head as run_head
from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.science.hook_points import stem as run_stem
from fedmi_flower.science.objectives import ABLATIONS, GATES, OBJECTIVES, objective_setting
from fedmi_flower.science.seeding import torch_generator

Scores = dict[str, torch.Tensor]


# ---------------------------------------------------------------------- gates


class StraightThroughGate:
    """Heaviside(score) forward, the sigmoid's derivative backward (Eq. 3)."""

    def __call__(self, score: torch.Tensor, step: int) -> torch.Tensor:
        return HeavisideSTE.apply(score)

    def open_probability(self, score: torch.Tensor) -> torch.Tensor:
        """What the L0 term sums: each gate's (relaxed) probability of being open."""
        return torch.sigmoid(score)


class HardConcreteGate:
    """The hard-concrete gate of Louizos et al. (2018), "Learning Sparse Neural Networks through L0 Regularization".

    The score is the gate's log-alpha. Each step samples ``u ~ U(0, 1)`` per gate (from a
    generator seeded by discovery's seed) and opens it by
    ``clamp(sigmoid((log u - log(1 - u) + score) / beta) * (zeta - gamma) + gamma, 0, 1)``:
    stretched past 0 and 1 and clamped, so a gate is exactly closed or open with
    positive probability and the L0 norm is differentiable in expectation. The L0 term
    sums each gate's probability of being non-zero, ``sigmoid(score - beta log(-gamma / zeta))``.
    The deterministic gate, ``clamp(sigmoid(score) (zeta - gamma) + gamma, 0, 1) > 0.5``, is
    open exactly where the score is above zero, so circuits threshold scores at zero as
    the other gates' do.
    """

    def __init__(self, seed: int, beta: float = 2.0 / 3.0, gamma: float = -0.1, zeta: float = 1.1) -> None:
        self.beta, self.gamma, self.zeta = beta, gamma, zeta
        self.generator = torch_generator(seed, "hard-concrete")

    def __call__(self, score: torch.Tensor, step: int) -> torch.Tensor:
        u = torch.rand(score.shape, generator=self.generator).clamp(1e-6, 1 - 1e-6).to(score.device)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + score) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def open_probability(self, score: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(score - self.beta * math.log(-self.gamma / self.zeta))


@dataclass(frozen=True)
class AnnealedGate:
    """sigmoid(score / T), T geometric from ``start`` to ``end`` over ``steps`` (continuous sparsification)."""

    start: float
    end: float
    steps: int

    def __call__(self, score: torch.Tensor, step: int) -> torch.Tensor:
        t = self.start * (self.end / self.start) ** (step / max(self.steps - 1, 1))
        return torch.sigmoid(score / t)

    def open_probability(self, score: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(score)


# ---------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Objective:
    """A fit term over ``batch_per_class`` images of each class per step (and as many others, where it needs them)."""

    batch_per_class: int
    needs_others: ClassVar[bool] = False

    @property
    def images_per_class(self) -> int:
        return self.batch_per_class * (2 if self.needs_others else 1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, model_says: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class PaperObjective(Objective):
    """Eq. 3's fit term: cross-entropy on target-class images, a sum of per-class means."""

    def loss(self, logits: torch.Tensor, target: torch.Tensor, model_says: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(logits, target, reduction="sum") / self.batch_per_class


class FaithfulObjective(Objective):
    """The full model's decision about the class, on as many other images as target ones (a hinge on the margin)."""

    needs_others = True

    def loss(self, logits: torch.Tensor, target: torch.Tensor, model_says: torch.Tensor | None) -> torch.Tensor:
        assert model_says is not None, "the faithful objective compares with the model's own decisions"
        return _faithful_loss(logits, target, model_says) / self.images_per_class


# ---------------------------------------------------------------------- early stopping


class EarlyStop:
    """Retires a class whose gate pattern has not changed for ``patience`` steps (checked every ``every`` steps).

    Patience counts from :func:`~fedmi_flower.science.circuits.earliest_gate_change` at
    the soonest (before it no gate can have closed), never before ``min_steps``, and a
    class whose pattern is still the initial one is never retired.
    """

    def __init__(self, scores: Scores, patience: int, min_steps: int, every: int, first_change: int) -> None:
        self.patience, self.min_steps, self.every = patience, min_steps, every
        k = next(iter(scores.values())).shape[0]
        self.last = self._pattern(scores)
        self.initial = self.last.clone()
        self.last_change = torch.full((k,), first_change, dtype=torch.long)
        self.moved = torch.zeros(k, dtype=torch.bool)

    @staticmethod
    def _pattern(scores: Scores) -> torch.Tensor:
        return torch.cat([(s.detach() > 0) for s in scores.values()], dim=1).cpu()  # compared on the CPU

    def done(self, step: int, scores: Scores, active: torch.Tensor) -> torch.Tensor:
        """After ``step`` (0-based), the active classes that stop now (a bool mask; none between checks)."""
        if (step + 1) % self.every:
            return torch.zeros_like(active)
        pattern = self._pattern(scores)
        changed = (pattern != self.last).any(dim=1)
        self.last_change[changed] = step + 1
        self.last = pattern
        self.moved |= (pattern != self.initial).any(dim=1)
        stale = step + 1 - self.last_change >= self.patience
        return active & self.moved & ~changed & stale & (step + 1 >= self.min_steps)


# ---------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class DiscoveryJob:
    """One discovery on a model: the ``classes`` of ``data`` to find, with its seed and any other images.

    :meth:`Discovery.learn_jobs` runs several on one model in one loop; the fields are
    :meth:`Discovery.learn`'s arguments of the same names.
    """

    data: ImageSplit
    classes: Sequence[int]
    seed: int = 0
    negatives: ImageSplit | None = None

    def __post_init__(self) -> None:
        classes = [int(c) for c in self.classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes repeat: {classes}")
        object.__setattr__(self, "classes", classes)

    def to(self, device: torch.device) -> DiscoveryJob:
        negatives = self.negatives.to(device) if self.negatives is not None else None
        return DiscoveryJob(self.data.to(device), self.classes, self.seed, negatives)


@dataclass(frozen=True)
class Discovery:
    """Every knob of circuit discovery; ``None`` takes the objective's measured default (``OBJECTIVE_DEFAULTS``).

    Attributes
    ----------
    objective : {"paper", "faithful"}
        Eq. 3 (target images only), or the full model's own decision about c on target
        and other images.
    gate : {"straight-through", "annealed"}, optional
        Heaviside with a sigmoid gradient, or sigmoid(score / T) with T annealed from
        ``temperature_start`` to ``temperature_end``.
    steps, lr, l0_lambda, init_score : int, float, float, float
        Optimisation steps, Adam learning rate, L0 coefficient (``l0 * sum(sigmoid(score))``)
        and initial score (paper: 200, 0.1, 0.01, 2.0).
    batch_per_class : int, optional
        Images of each class per step (and as many others, for ``faithful``), drawn with
        replacement from a stream seeded by ``(seed, class)``.
    ablation : {"zero", "mean"}, optional
        What a closed channel outputs.
    target_faithfulness : float, optional
        The circuit is the smallest top-scored set that agrees with the model this often
        (:func:`~fedmi_flower.science.circuits.smallest_faithful_circuit`); None: scores above 0.
    negatives : {"own", "reference"}
        Where the other images come from: the discovery rows' other classes (the
        reference set when they hold one class), or always the reference set.
    patience, min_steps, check_every : int or None, int, int
        Early stopping (:class:`EarlyStop`); ``patience = None`` runs every step.
    """

    objective: str = "paper"
    gate: str | None = None
    steps: int = 200
    lr: float = 0.1
    l0_lambda: float | None = None
    init_score: float = 2.0
    temperature_start: float = 1.0
    temperature_end: float = 0.1
    batch_per_class: int | None = None
    ablation: str | None = None
    target_faithfulness: float | None = None
    negatives: str = "own"
    patience: int | None = None
    min_steps: int = 0
    check_every: int = 10

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("gate", "ablation", "l0_lambda", "batch_per_class"):
            object.__setattr__(self, name, objective_setting(self.objective, name, getattr(self, name)))
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {self.gate!r}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")

    def replace(self, **changes: object) -> Discovery:
        """A copy with some knobs changed (``None`` knobs of the new objective take its defaults)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ what discovery is given

    @property
    def wants_others(self) -> bool:
        """Whether discovery needs images other than the class's: the faithful objective, or a target faithfulness."""
        return self.objective == "faithful" or self.target_faithfulness is not None

    def uses_reference(self, classes_held: int) -> bool:
        """Whether discovery on rows of ``classes_held`` classes takes its other images from the reference set."""
        return self.wants_others and (self.negatives == "reference" or classes_held < 2)

    def fill(self, model: nn.Module, images: ImageSplit) -> dict[str, torch.Tensor] | None:
        """Channel means of ``model`` on ``images`` for mean ablation; None under zero ablation."""
        return channel_means(model, images) if self.ablation == "mean" else None

    def gate_function(self, seed: int = 0) -> StraightThroughGate | AnnealedGate | HardConcreteGate:
        if self.gate == "straight-through":
            return StraightThroughGate()
        if self.gate == "hard-concrete":
            return HardConcreteGate(seed)
        return AnnealedGate(self.temperature_start, self.temperature_end, self.steps)

    def objective_function(self) -> Objective:
        assert self.batch_per_class is not None
        if self.objective == "faithful":
            return FaithfulObjective(int(self.batch_per_class))
        return PaperObjective(int(self.batch_per_class))

    # ------------------------------------------------------------------ the optimisation

    def learn(
        self,
        model: nn.Module,
        data: ImageSplit,
        classes: Sequence[int],
        *,
        seed: int = 0,
        means: Mapping[str, torch.Tensor] | None = None,
        negatives: ImageSplit | None = None,
    ) -> tuple[Scores, list[int]]:
        """Optimise the gate scores of every class in ``classes`` in one loop; weights stay frozen.

        ``data``'s rows of each class are its target images; for the faithful objective
        the other images come from ``negatives`` (labels unused) or, without them, from
        ``data``'s rows of other classes among a fixed, seeded pool. ``means`` are the
        channel means for mean ablation (measured on ``data`` when omitted). Returns the
        final scores per site, shape (len(classes), channels), and the steps each class ran.
        """
        return self.learn_jobs(model, [DiscoveryJob(data, classes, seed, negatives)], means=means)[0]

    def learn_jobs(
        self, model: nn.Module, jobs: Sequence[DiscoveryJob], *, means: Mapping[str, torch.Tensor] | None = None
    ) -> list[tuple[Scores, list[int]]]:
        """:meth:`learn` for several discoveries on one model at once: one optimisation loop over every job's classes.

        Each job keeps its own images, draws, seed and other images, so each result equals
        that job's :meth:`learn` alone (Adam acts element-wise and each class's loss term
        touches only its own scores); together they share every step's pass and the
        one-off passes (stem cache, the model's own decisions). This is how the server
        finds the global circuits and their noise floors, and the floor client its
        circuits and its floor, in one call (issue 29). ``means`` fill the ablated
        channels of every job (measured on the first job's data when omitted). Jobs run one
        by one under the hard-concrete gate (its noise comes from one seed) and where
        together their stems would not fit the stem cache.
        """
        if not jobs:
            return []
        if self.gate == "hard-concrete" and len(jobs) > 1:
            return [self.learn_jobs(model, [job], means=means)[0] for job in jobs]
        gate, objective = self.gate_function(jobs[0].seed), self.objective_function()
        device = next(model.parameters()).device
        jobs = [job.to(device) for job in jobs]
        draws, pool = self._pooled_draws(jobs, objective, device)
        if len(jobs) > 1 and not _stem_cache_fits(model, pool.images, int(torch.unique(draws).numel())):
            # Together the jobs' stems outgrow the cache that each keeps alone, and recomputing every step's
            # stems costs more than one loop saves (a ResNet's 64-channel stem on CIFAR-10).
            return [self.learn_jobs(model, [job], means=means)[0] for job in jobs]
        fill = _ablation_fill(model, jobs[0].data, str(self.ablation), means)
        classes = [c for job in jobs for c in job.classes]
        k, per_class = len(classes), objective.images_per_class
        stems, draws = _stem_cache(model, pool.images, draws)
        owner = torch.arange(k, device=device).repeat_interleave(per_class)  # gate row of every image
        target = torch.as_tensor(classes, device=device, dtype=torch.long).repeat_interleave(per_class)
        model_says = (
            _model_decisions(model, pool.images, stems, draws, target) if objective.needs_others and k else None
        )

        scores = {
            site: torch.full((k, size), float(self.init_score), device=device, requires_grad=True)
            for site, size in site_sizes(model).items()
        }
        optimizer = torch.optim.Adam(scores.values(), lr=self.lr)
        stop = (
            EarlyStop(
                scores, self.patience, self.min_steps, self.check_every, earliest_gate_change(self.init_score, self.lr)
            )
            if self.patience is not None
            else None
        )
        active = torch.ones(k, dtype=torch.bool)
        steps_run = [self.steps] * k
        frozen: Scores = {}
        retired = torch.zeros(k, dtype=torch.bool, device=device)
        live = torch.arange(k, device=device)  # classes still optimised; changes only when one retires
        rows_live: torch.Tensor | slice = slice(None)
        l0 = float(self.l0_lambda)  # type: ignore[arg-type]
        with _FrozenWeights(model):
            for step in range(self.steps):
                if live.numel() == 0:
                    break
                idx = draws[step, live].flatten()
                if stems is None:
                    with torch.no_grad():
                        h = run_stem(model, pool.images[idx])
                else:
                    h = stems[idx]
                gate_rows = owner[rows_live]
                gates = {site: gate(s, step)[gate_rows] for site, s in scores.items()}
                logits = run_head(model, h, gates, fill)
                says = model_says[step, live].flatten() if model_says is not None else None
                fit = objective.loss(logits, target[rows_live], says)
                penalty = sum(gate.open_probability(s[live]).sum() for s in scores.values())
                loss = fit + l0 * penalty
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if frozen:  # Adam's momentum would still move retired rows: put them back.
                    with torch.no_grad():
                        for site, s in scores.items():
                            s[retired] = frozen[site][retired]
                done = stop.done(step, scores, active) if stop is not None else None
                if done is not None and done.any():
                    for c in torch.nonzero(done).flatten().tolist():
                        steps_run[c] = step + 1
                    active &= ~done
                    frozen = {site: s.detach().clone() for site, s in scores.items()}
                    retired = (~active).to(device)
                    live = torch.nonzero(active).flatten().to(device)
                    rows_live = torch.isin(owner, live)
        out, first = [], 0
        for job in jobs:
            rows = slice(first, first + len(job.classes))
            out.append(({site: s.detach()[rows] for site, s in scores.items()}, steps_run[rows]))
            first = rows.stop
        return out

    def _pooled_draws(
        self, jobs: Sequence[DiscoveryJob], objective: Objective, device: torch.device
    ) -> tuple[torch.Tensor, ImageSplit]:
        """Every job's draws, ``(steps, K, n)`` over all jobs' classes, into one pool of every job's images."""
        parts, draws, offset = [], [], 0
        for job in jobs:
            job_draws, job_pool = self._draws(job.data, list(job.classes), objective, job.negatives, job.seed, device)
            parts.append(job_pool)
            draws.append(job_draws + offset)
            offset += len(job_pool)
        pool = parts[0] if len(parts) == 1 else _concat(*parts)
        return torch.cat(draws, dim=1), pool

    def _draws(
        self,
        data: ImageSplit,
        classes: list[int],
        objective: Objective,
        negatives: ImageSplit | None,
        seed: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, ImageSplit]:
        """Every step's image rows, ``(steps, K, n)``, into one pool: ``data``'s rows, then any ``negatives``."""
        # Other images come after data's rows in one pool, so that one stem cache serves both.
        pool = data if negatives is None or not objective.needs_others else _concat(data, negatives.to(device))
        negative_pool = _negative_pool(len(data), seed, device)
        n = objective.batch_per_class
        draws = []
        for cls in classes:
            if not bool((data.labels == cls).any()):
                raise ValueError(f"class {cls} has no examples in the discovery data")
            rows = [_draws(_rows(data.labels, cls), self.steps, n, seed, "discovery", cls)]
            if objective.needs_others:
                if negatives is not None:
                    reference = torch.arange(len(data), len(pool), device=device)
                    rows.append(_draws(reference, self.steps, n, seed, "negatives", cls))
                elif bool((data.labels != cls).any()):
                    others = _other_rows(data.labels, negative_pool, cls)
                    rows.append(_draws(others, self.steps, n, seed, "negatives", cls))
                else:
                    raise ValueError(
                        f"the faithful objective needs images other than class {cls}'s, and the data holds class "
                        f"{cls} only: give negatives (discovery.negatives = 'reference')"
                    )
            draws.append(torch.cat(rows, dim=1))
        if not draws:
            return torch.empty(self.steps, 0, objective.images_per_class, dtype=torch.long, device=device), pool
        return torch.stack(draws, dim=1), pool

    def find(
        self,
        model: nn.Module,
        data: ImageSplit,
        classes: Sequence[int],
        *,
        seed: int = 0,
        means: Mapping[str, torch.Tensor] | None = None,
        negatives: ImageSplit | None = None,
    ) -> tuple[dict[int, Circuit], list[int]]:
        """Every class's circuit: :meth:`learn` the scores, then threshold them or find the smallest faithful set.

        Returns ``({class: circuit}, steps_run)``.
        """
        circuits, steps_run, _ = self.find_scored(model, data, classes, seed=seed, means=means, negatives=negatives)
        return circuits, steps_run

    def find_scored(
        self,
        model: nn.Module,
        data: ImageSplit,
        classes: Sequence[int],
        *,
        seed: int = 0,
        means: Mapping[str, torch.Tensor] | None = None,
        negatives: ImageSplit | None = None,
    ) -> tuple[dict[int, Circuit], list[int], Scores]:
        """:meth:`find`, with the learned gate scores (one row per class) it chose the circuits from."""
        return self.find_jobs(model, [DiscoveryJob(data, classes, seed, negatives)], means=means)[0]

    def find_jobs(
        self, model: nn.Module, jobs: Sequence[DiscoveryJob], *, means: Mapping[str, torch.Tensor] | None = None
    ) -> list[tuple[dict[int, Circuit], list[int], Scores]]:
        """:meth:`find_scored` of every job, learned together (:meth:`learn_jobs`).

        Returns ``[(circuits, steps_run, scores)]``, one per job.
        """
        found = []
        for job, (scores, steps_run) in zip(jobs, self.learn_jobs(model, jobs, means=means)):
            if self.target_faithfulness is None:
                found.append((circuits_from_scores(scores, job.classes), steps_run, scores))
                continue
            circuits = {
                cls: smallest_faithful_circuit(
                    model,
                    job.data,
                    scores,
                    row,
                    cls,
                    self.target_faithfulness,
                    ablation=str(self.ablation),
                    means=means,
                    negatives=job.negatives,
                    seed=job.seed,
                )
                for row, cls in enumerate(job.classes)
            }
            found.append((circuits, steps_run, scores))
        return found


# ---------------------------------------------------------------------- the functions of earlier versions


def learn_gate_scores(
    model: nn.Module,
    data: ImageSplit,
    classes: Sequence[int],
    *,
    seed: int = 0,
    means: Mapping[str, torch.Tensor] | None = None,
    negatives: ImageSplit | None = None,
    **knobs: object,
) -> tuple[Scores, list[int]]:
    """:meth:`Discovery.learn` of a recipe with ``knobs`` (the fields of :class:`Discovery`)."""
    recipe = Discovery(**knobs)  # type: ignore[arg-type]
    return recipe.learn(model, data, classes, seed=seed, means=means, negatives=negatives)


def find_circuits(
    model: nn.Module,
    data: ImageSplit,
    classes: Sequence[int],
    *,
    seed: int = 0,
    means: Mapping[str, torch.Tensor] | None = None,
    negatives: ImageSplit | None = None,
    **knobs: object,
) -> tuple[dict[int, Circuit], list[int]]:
    """:meth:`Discovery.find` of a recipe with ``knobs`` (the fields of :class:`Discovery`)."""
    recipe = Discovery(**knobs)  # type: ignore[arg-type]
    return recipe.find(model, data, classes, seed=seed, means=means, negatives=negatives)


def discover_circuits(
    model: nn.Module, data: ImageSplit, classes: Sequence[int], **settings: object
) -> dict[int, Circuit]:
    """Discover the circuit of every class in ``classes`` on ``data``: ``{class: circuit}`` (:func:`find_circuits`)."""
    return find_circuits(model, data, classes, **settings)[0]  # type: ignore[arg-type]
