"""Weight-sparse training: magnitude pruning with a per-neuron minimum (paper Eq. 1-2).

After every optimizer step each weight tensor (conv kernels and the linear layer;
biases stay dense) is pruned to its nonzero budget by magnitude. The target sparsity
is annealed linearly from 0 over the first half of the local steps and then held; a
final prune closes the phase. Each neuron (a conv filter, a linear row) keeps at
least ``min_per_neuron`` weights (Eq. 2) so that no unit goes dead.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedmi_flower.science.circuits import Circuit
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.disjoint import activation_penalty
from fedmi_flower.science.frozen_head import classifier
from fedmi_flower.science.hook_points import captured
from fedmi_flower.science.restricted_softmax import present_classes, restricted_logits


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weight tensors subject to pruning: every parameter with two or more dimensions."""
    return {name: p for name, p in model.named_parameters() if p.dim() > 1}


def nonzero_budget(shape: torch.Size | tuple[int, ...], sparsity: float, min_per_neuron: int = 4) -> int:
    """Weights a tensor keeps: ``round((1 - sparsity) * numel)``, raised to the per-neuron floor.

    The floor is ``rows * min(min_per_neuron, fan_in)``; where it exceeds the target
    (conv1 at 99% sparsity, say) the floor wins and the tensor ends up denser.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    rows = shape[0]
    fan_in = math.prod(shape[1:])
    target = int(round((1.0 - sparsity) * rows * fan_in))
    return min(rows * fan_in, max(target, rows * min(min_per_neuron, fan_in)))


def magnitude_mask(weight: torch.Tensor, sparsity: float, min_per_neuron: int = 4) -> torch.Tensor:
    """Boolean mask keeping exactly :func:`nonzero_budget` weights of ``weight``.

    Each row's ``min_per_neuron`` largest magnitudes are kept first, the rest of the
    budget goes to the largest magnitudes left. Vectorised: two ``topk`` calls, no
    loop over neurons.
    """
    rows = weight.shape[0]
    flat = weight.detach().reshape(rows, -1).abs()
    budget = nonzero_budget(weight.shape, sparsity, min_per_neuron)
    if budget >= flat.numel():
        return torch.ones_like(weight, dtype=torch.bool)
    score = flat.clone()
    per_row = min(min_per_neuron, flat.shape[1])
    if per_row > 0:
        top_in_row = flat.topk(per_row, dim=1).indices
        score.scatter_(1, top_in_row, float("inf"))
    keep = score.flatten().topk(budget, sorted=False).indices
    # index_fill_, not ``mask[keep] = True``: indexed assignment of a Python scalar copies it from
    # the host first, one synchronisation per training step on a GPU (bench/check_gpu.py counts them).
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=weight.device).index_fill_(0, keep, True)
    return mask.view_as(weight)


SCOPES = ("tensor", "global")


def _floor_first_scores(weight: torch.Tensor, min_per_neuron: int) -> torch.Tensor:
    """``|weight|`` as (rows, fan-in), with each row's ``min_per_neuron`` largest set to infinity (kept first)."""
    flat = weight.detach().reshape(weight.shape[0], -1).abs()
    per_row = min(min_per_neuron, flat.shape[1])
    if per_row > 0:
        flat = flat.clone()
        flat.scatter_(1, flat.topk(per_row, dim=1).indices, float("inf"))
    return flat


def global_magnitude_masks(
    weights: Sequence[torch.Tensor], sparsity: float, min_per_neuron: int = 4
) -> list[torch.Tensor]:
    """Eq. 1's single budget: keep ``round((1 - sparsity) * N)`` of all ``N`` prunable weights, by
    magnitude across tensors.

    Every neuron keeps its ``min_per_neuron`` largest weights first (Eq. 2); the rest of
    the budget goes to the largest magnitudes left in any tensor, so a tensor whose
    weights are larger keeps more of them. Where the floors alone exceed the budget,
    the floors win, as in :func:`nonzero_budget`.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    scores = [_floor_first_scores(w, min_per_neuron).flatten() for w in weights]
    everything = torch.cat(scores)
    # The floors' count from the shapes, not by counting infinities on the device (a host round-trip per step).
    floors = sum(w.shape[0] * min(min_per_neuron, math.prod(w.shape[1:])) for w in weights)
    budget = min(everything.numel(), max(int(round((1.0 - sparsity) * everything.numel())), floors))
    keep = everything.topk(budget, sorted=False).indices
    mask = torch.zeros(everything.numel(), dtype=torch.bool, device=everything.device).index_fill_(0, keep, True)
    return [m.view_as(w) for m, w in zip(mask.split([s.numel() for s in scores]), weights)]


@torch.no_grad()
def prune_(model: nn.Module, sparsity: float, min_per_neuron: int = 4, scope: str = "tensor") -> None:
    """Zero all but the largest-magnitude weights, in place: of every prunable tensor (``scope="tensor"``),
    or of all of them together under one budget (``scope="global"``, :func:`global_magnitude_masks`)."""
    if scope == "global":
        weights = list(prunable_weights(model).values())
        for weight, mask in zip(weights, global_magnitude_masks(weights, sparsity, min_per_neuron)):
            weight.mul_(mask)
        return
    if scope != "tensor":
        raise ValueError(f"sparsity scope must be one of {SCOPES}, got {scope!r}")
    for weight in prunable_weights(model).values():
        if nonzero_budget(weight.shape, sparsity, min_per_neuron) < weight.numel():
            weight.mul_(magnitude_mask(weight, sparsity, min_per_neuron))


@torch.no_grad()
def _restore(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    for p, v in zip(params, values):
        p.copy_(v)


def sparsity_schedule(step: int, total_steps: int, target: float, anneal_fraction: float = 0.5) -> float:
    """Sparsity to enforce after optimizer step ``step`` (1-based) of ``total_steps``.

    Rises linearly from 0 to ``target`` over the first ``anneal_fraction`` of the steps,
    then stays at ``target``.
    """
    anneal_steps = max(1, int(total_steps * anneal_fraction))
    return target * min(1.0, step / anneal_steps)


@dataclass(frozen=True)
class SparsityReport:
    """Fraction of zero weights per prunable tensor and over all of them."""

    per_tensor: dict[str, float]
    overall: float
    nonzero: int
    total: int


@torch.no_grad()
def sparsity_report(model: nn.Module) -> SparsityReport:
    """Measure the achieved sparsity of every prunable tensor and overall."""
    per_tensor, nonzero, total = {}, 0, 0
    for name, w in prunable_weights(model).items():
        nz = int(torch.count_nonzero(w))
        per_tensor[name] = 1.0 - nz / w.numel()
        nonzero += nz
        total += w.numel()
    return SparsityReport(per_tensor, 1.0 - nonzero / total if total else 0.0, nonzero, total)


@dataclass(frozen=True)
class TrainStats:
    """What one local training phase did."""

    loss: float  # mean cross-entropy over the last epoch (without any proximal term)
    accuracy: float  # training accuracy over the last epoch (on the fly)
    steps: int
    examples_seen: int
    seconds: float


def train_sparse(
    model: nn.Module,
    data: ImageSplit,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 256,
    sparsity: float | None = 0.99,
    min_per_neuron: int = 4,
    anneal_fraction: float = 0.5,
    generator: torch.Generator | None = None,
    proximal_mu: float = 0.0,
    scope: str = "tensor",
    anneal: bool = True,
    keep_off: Circuit | None = None,
    keep_off_lambda: float = 0.0,
    restricted_alpha: float = 1.0,
    frozen_head: bool = False,
) -> TrainStats:
    """Train ``model`` in place with Adam, pruning after every step (paper section 2.2, phase A).

    Parameters
    ----------
    model : nn.Module
        Model to train; it stays on its device, and ``data`` is moved there once.
    data : ImageSplit
        Training examples, batched by index after a seeded shuffle per epoch.
    epochs : int
        Local epochs.
    lr, batch_size : float, int
        Adam learning rate and batch size (paper: 1e-3 and 256).
    sparsity : float or None
        Target sparsity; ``None`` (or 0) trains densely, which the benchmarks use as
        the baseline.
    min_per_neuron : int
        Minimum nonzero weights per neuron (Eq. 2).
    anneal_fraction : float
        Fraction of the steps over which the target is reached.
    generator : torch.Generator, optional
        Source of the shuffles, for reproducibility.
    proximal_mu : float
        FedProx proximal coefficient: adds ``mu / 2 * ||w - w_start||^2`` to the loss,
        ``w_start`` being the weights the phase began with (the global model).
    scope : {"tensor", "global"}
        One budget per tensor, or Eq. 1's single budget over all prunable weights.
    anneal : bool
        Raise the sparsity from 0 over ``anneal_fraction`` of the steps (the paper's
        reference does this in every round); False holds the target from the first step.
    keep_off, keep_off_lambda : Circuit, float
        Disjoint-circuit training (:mod:`fedmi_flower.science.disjoint`): channels by circuit
        site that this client should not use, and the price per unit of their mean absolute
        activation added to the loss. Off when either is empty or zero.
    restricted_alpha : float
        FedRS's restricted softmax (:mod:`fedmi_flower.science.restricted_softmax`): the logits of
        classes absent from ``data`` are scaled by it in the loss; 1 (the default) is plain softmax.
    frozen_head : bool
        FedBABU (:mod:`fedmi_flower.science.frozen_head`): the classifier keeps its weights exactly, neither
        trained nor pruned (so every client holding the same head keeps it, under either sparsity scope);
        only the body trains. Under ``scope="global"`` the head's weights still count in the one budget.
    """
    if epochs < 1 or len(data) == 0:
        raise ValueError(f"need at least one epoch and one example, got epochs={epochs}, examples={len(data)}")
    device = next(model.parameters()).device
    data = data.to(device)
    head = list(classifier(model, data.images[:2]).parameters()) if frozen_head else []
    kept_head = [p.detach().clone() for p in head]  # pruning must not touch it either (nor, globally, shift it)
    frozen = {id(p) for p in head}
    params = [p for p in model.parameters() if id(p) not in frozen]
    start = [p.detach().clone() for p in params] if proximal_mu > 0 else None
    kept_off = (
        {site: torch.tensor(ch, dtype=torch.long, device=device) for site, ch in (keep_off or {}).items() if ch}
        if keep_off_lambda > 0
        else {}
    )
    optimizer = torch.optim.Adam(params, lr=lr)
    present: torch.Tensor | None = None  # FedRS's flags, once the logits tell the number of classes
    sparse = bool(sparsity)
    target = float(sparsity or 0.0)
    n = len(data)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    step = 0
    began = time.perf_counter()
    model.train()
    for _epoch in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for start_row in range(0, n, batch_size):
            idx = order[start_row : start_row + batch_size]
            x, y = data.images[idx], data.labels[idx]
            # Hooks only when the price is paid: the plain loop stays hook-free.
            watch: contextlib.AbstractContextManager[dict[str, torch.Tensor]] = (
                captured(model) if kept_off else contextlib.nullcontext({})
            )
            with watch as acts:
                logits = model(x)
            ce = F.cross_entropy(logits, y)
            if restricted_alpha != 1.0 and present is None:
                present = present_classes(data.labels, logits.shape[1])
            # FedRS trains on the restricted logits; the reported loss stays plain cross-entropy, comparable.
            loss = ce if present is None else F.cross_entropy(restricted_logits(logits, present, restricted_alpha), y)
            if kept_off:
                loss = loss + keep_off_lambda * activation_penalty(acts, kept_off)
            if start is not None:
                loss = loss + 0.5 * proximal_mu * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))
            model.zero_grad(set_to_none=True)  # a frozen head's gradients too
            loss.backward()
            optimizer.step()
            step += 1
            if sparse:
                level = sparsity_schedule(step, total_steps, target, anneal_fraction) if anneal else target
                prune_(model, level, min_per_neuron, scope)
                _restore(head, kept_head)
            # Accumulate on the device: no host round-trip per batch.
            loss_sum += ce.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
    if sparse:
        prune_(model, target, min_per_neuron, scope)
        _restore(head, kept_head)
    return TrainStats(
        loss=float(loss_sum) / n,
        accuracy=float(correct) / n,
        steps=step,
        examples_seen=epochs * n,
        seconds=time.perf_counter() - began,
    )
