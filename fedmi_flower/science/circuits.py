"""Per-class circuit discovery (paper section 2.2, phase B, Eq. 3) and circuit evaluation.

A circuit of a class is the set of conv channels, per layer, that the class needs.
Discovery freezes the weights and learns one score per conv output channel. Channels
whose score ends above zero form the circuit; the others are ablated (set to zero, or
to their mean activation). Two objectives (``objective``):

- ``"paper"`` (Eq. 3, kept for reproduction): the gate is Heaviside(score) in the
  forward pass and the gradient of sigmoid(score) in the backward pass
  (straight-through); the loss is the cross-entropy on target-class images plus
  ``l0_lambda * sum(sigmoid(score))``. It sees target images only, so nothing stops a
  circuit from answering the target for every input (specificity near 0).
- ``"faithful"``: the circuit of class c must make the full model's decision about c
  ("is it c?") on target *and* other images: a hinge loss on the margin of c's logit
  over the largest other one, towards the model's own decision on each image, on as
  many other images as target ones, plus the same L0 term. The targets are the
  model's own outputs, so the other images need no labels (a client holding one class
  uses a reference set). Its gates are relaxed: sigmoid(score / T) with T annealed
  geometrically (continuous sparsification), which measured far more stable than
  straight-through for this loss (docs/faithful-circuits.md).

With ``target_faithfulness`` the circuit is instead the smallest set of top-scored
channels whose decisions agree with the model's at least that often
(:func:`smallest_faithful_circuit`, the bisection of Gao et al. 2025): circuit sizes
then compare across clients and rounds, unlike those of a fixed L0 coefficient.

The optimisation itself, one recipe for clients and server, is
:mod:`fedmi_flower.science.discovery`; this module holds its pieces (the gradient of
the straight-through gate, the image draws, the stem cache, the faithful loss), the
smallest faithful circuit and the scores of a circuit.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.hook_points import activations, capability, site_sizes
from fedmi_flower.science.hook_points import head as run_head
from fedmi_flower.science.hook_points import stem as run_stem
from fedmi_flower.science.objectives import ABLATIONS, SCORING_ABLATIONS
from fedmi_flower.science.seeding import torch_generator

Circuit = dict[str, list[int]]
"""Sorted channel indices per circuit site, e.g. ``{"conv1": [3, 7], "conv2": [], ...}``."""


class HeavisideSTE(torch.autograd.Function):
    """Heaviside step forward, derivative of the sigmoid backward (straight-through, Eq. 3)."""

    @staticmethod
    def forward(ctx, score: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(score)
        return (score > 0).to(score.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (score,) = ctx.saved_tensors
        s = torch.sigmoid(score)
        return grad * s * (1.0 - s)


def circuit_size(circuit: Circuit) -> int:
    """Number of channels in a circuit, over all layers."""
    return sum(len(v) for v in circuit.values())


def circuit_masks(
    circuits: Sequence[Circuit], layer_sizes: Mapping[str, int], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Stack circuits into float gates: per layer a (len(circuits), C) tensor of 0 and 1."""
    masks = {}
    for layer, size in layer_sizes.items():
        m = torch.zeros(len(circuits), size, device=device)
        for row, circuit in enumerate(circuits):
            channels = circuit.get(layer, [])
            if channels:
                m[row, torch.as_tensor(channels, dtype=torch.long, device=device)] = 1.0
        masks[layer] = m
    return masks


@torch.no_grad()
def channel_means(model: nn.Module, data: ImageSplit, batch_size: int = 2048) -> dict[str, torch.Tensor]:
    """Mean activation of every channel of every circuit layer over ``data`` (for mean ablation)."""
    model.eval()
    device = next(model.parameters()).device
    if len(data) == 0:
        raise ValueError("channel means need at least one image")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for start in range(0, len(data), batch_size):
        x = data.images[start : start + batch_size].to(device)
        for layer, act in activations(model, x).items():
            sums[layer] = sums.get(layer, 0) + act.sum(dim=(0, *range(2, act.dim())))
            counts[layer] = counts.get(layer, 0) + act.numel() // act.shape[1]
    return {layer: s / counts[layer] for layer, s in sums.items()}


def _ablation_fill(
    model: nn.Module, data: ImageSplit, ablation: str, means: Mapping[str, torch.Tensor] | None
) -> Mapping[str, torch.Tensor] | None:
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if ablation == "zero":
        return None
    return means if means is not None else channel_means(model, data)


class _FrozenWeights:
    """Context manager: weights need no gradient and the model is in eval mode."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.model.parameters()]
        self.was_training = self.model.training
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for p, flag in zip(self.model.parameters(), self.flags):
            p.requires_grad_(flag)
        self.model.train(self.was_training)


STEM_CACHE_BYTES = 512 * 2**20


@torch.no_grad()
def _stem_cache(
    model: nn.Module, images: torch.Tensor, draws: torch.Tensor, chunk: int = 1024
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The first block's output for every image the draws use, and the draws re-indexed into it.

    No gate acts before the first block and the weights are frozen, so its output
    never changes during discovery: computing it once per image instead of once per
    draw removes the costliest convolution and pooling from every step. Returns
    ``(None, draws)`` when the cache would exceed :data:`STEM_CACHE_BYTES`.
    """
    used = torch.unique(draws)
    if used.numel() == 0 or not _stem_cache_fits(model, images, used.numel()):
        return None, draws
    stems = torch.cat([run_stem(model, images[used[i : i + chunk]]) for i in range(0, used.numel(), chunk)])
    position = torch.full((images.shape[0],), -1, dtype=torch.long, device=draws.device)
    position[used] = torch.arange(used.numel(), device=draws.device)
    return stems, position[draws]


def _stem_cache_fits(model: nn.Module, images: torch.Tensor, count: int) -> bool:
    """Whether the first block's outputs of ``count`` of ``images`` fit in :data:`STEM_CACHE_BYTES`."""
    probe = run_stem(model, images[:1])
    return count * probe.numel() * probe.element_size() <= STEM_CACHE_BYTES


def earliest_gate_change(init_score: float, lr: float) -> int:
    """The first step at which a gate can flip: ``ceil(|init_score| / lr)``.

    Adam moves a score by about ``lr`` per step (exactly ``lr`` on its first step, at
    most that while the gradient keeps its sign), so a score that starts at 2.0 with lr
    0.1 needs 20 steps to cross zero. Early stopping that counted from step 0 would stop
    every class with all its gates open (the whole network) whenever ``patience`` is
    below this.
    """
    return math.ceil(abs(init_score) / lr)


def _draws(rows: torch.Tensor, steps: int, n: int, seed: int, stream: str, cls: int) -> torch.Tensor:
    """``(steps, n)`` of ``rows``, drawn with replacement from the stream ``(seed, stream, cls)``."""
    pick = torch.randint(rows.numel(), (steps, n), generator=torch_generator(seed, stream, cls))
    return rows[pick.to(rows.device)]


NEGATIVE_POOL = 512
"""At most this many of the data's rows, the same for every class, supply the faithful objective's other images."""


def _negative_pool(rows: int, seed: int, device: torch.device) -> torch.Tensor:
    """A fixed, seeded set of at most :data:`NEGATIVE_POOL` row indices, sorted.

    The faithful objective runs every distinct image it draws through the ungated model
    once (the model's own decisions, the stem cache). Drawing each class's other images
    from all of a client's rows made that one-off pass cover most of them (6,000 of
    8,000 for 4 classes and 200 steps) and cost as much as the optimisation itself; a
    shared pool as large as the reference set (``discovery.reference_size``) bounds it,
    and a client holding one class already draws from 512 reference images.
    """
    if rows <= NEGATIVE_POOL:
        return torch.arange(rows, device=device)
    pick = torch.randperm(rows, generator=torch_generator(seed, "negative-pool"))[:NEGATIVE_POOL]
    return pick.sort().values.to(device)


MIN_POOLED_OTHERS = 64
"""Fewer rows of other classes than this in the pool (a client holding mostly ``cls``), and all of them are used."""


def _other_rows(labels: torch.Tensor, pool: torch.Tensor, cls: int) -> torch.Tensor:
    """The rows that supply class ``cls``'s other images.

    The pool's rows of other classes; where the pool holds fewer than
    :data:`MIN_POOLED_OTHERS` of them (a client holding mostly ``cls``), every row of
    another class.
    """
    pooled = pool[_rows(labels[pool], cls, other=True)]
    return pooled if pooled.numel() >= MIN_POOLED_OTHERS else _rows(labels, cls, other=True)


def _rows(labels: torch.Tensor, cls: int, other: bool = False) -> torch.Tensor:
    """Indices of the rows labelled ``cls`` (or, with ``other``, of every other row)."""
    return torch.nonzero((labels != cls) if other else (labels == cls)).flatten()


@torch.no_grad()
def _model_decisions(
    model: nn.Module, images: torch.Tensor, stems: torch.Tensor | None, draws: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Whether the full model calls each drawn image its class: a bool tensor shaped like ``draws`` (steps, K, n).

    ``draws`` index ``stems`` when the stem cache is on, else ``images``; each distinct
    image runs through the ungated model once.
    """
    used, where = torch.unique(draws, return_inverse=True)
    predicted = torch.cat(
        [
            (run_head(model, stems[part]) if stems is not None else model(images[part])).argmax(1)
            for part in used.split(1024)
        ]
    )
    k, n = draws.shape[1], draws.shape[2]
    return predicted[where] == target.view(1, k, n).expand_as(draws)


FAITHFUL_MARGIN = 1.0
"""The logit margin the faithful objective asks of a circuit's decision (hinge loss)."""


def _faithful_loss(logits: torch.Tensor, target: torch.Tensor, model_says: torch.Tensor) -> torch.Tensor:
    """Summed hinge loss on the one-vs-rest margin, towards the full model's decision on each image.

    The margin is the target logit minus the largest other one; it must be at least
    :data:`FAITHFUL_MARGIN` where the model calls the image the target and at most minus
    that where it does not. A decision made with margin costs nothing more, so the L0
    term can remove every channel the decision does not need; a matched probability
    (binary cross-entropy on P(c | x)) kept paying for channels of competing classes
    that only sharpen P(c) (docs/faithful-circuits.md).
    """
    target_logit = logits.gather(1, target[:, None]).squeeze(1)
    rival = logits.masked_fill(F.one_hot(target, logits.shape[1]).bool(), float("-inf")).max(1).values
    sign = model_says.to(logits.dtype) * 2 - 1
    return F.relu(FAITHFUL_MARGIN - sign * (target_logit - rival)).sum()


def _concat(*parts: ImageSplit) -> ImageSplit:
    return ImageSplit(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def circuits_from_scores(scores: Mapping[str, torch.Tensor], classes: Sequence[int]) -> dict[int, Circuit]:
    """Threshold scores at zero: the channels with a positive score form each class's circuit."""
    return {
        int(cls): {layer: torch.nonzero(s[row] > 0).flatten().tolist() for layer, s in scores.items()}
        for row, cls in enumerate(classes)
    }


def top_channels(scores: Mapping[str, torch.Tensor], row: int, count: int) -> Circuit:
    """The ``count`` channels with the highest scores in ``row``, over all layers, as a circuit."""
    layers = list(scores)
    flat = torch.cat([scores[layer][row] for layer in layers])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, descending=True, stable=True)[:count]] = True
    out: Circuit = {}
    start = 0
    for layer in layers:
        n = scores[layer].shape[1]
        out[layer] = torch.nonzero(keep[start : start + n]).flatten().tolist()
        start += n
    return out


@torch.no_grad()
def smallest_faithful_circuit(
    model: nn.Module,
    data: ImageSplit,
    scores: Mapping[str, torch.Tensor],
    row: int,
    cls: int,
    target: float,
    *,
    ablation: str = "mean",
    means: Mapping[str, torch.Tensor] | None = None,
    negatives: ImageSplit | None = None,
    rows_per_side: int = 256,
    seed: int = 0,
) -> Circuit:
    """The fewest top-scored channels whose is-``cls`` decisions agree with the model's at least ``target`` often.

    Agreement is :attr:`CircuitScores.faithfulness` on up to ``rows_per_side`` images of
    ``cls`` and as many others (from ``negatives`` when given), drawn with ``seed``.
    Bisection over the number of channels (Gao et al. 2025 bisect to a target loss);
    agreement is not always monotone in the count, so the answer is the smallest count
    the bisection finds, and the whole network when no count reaches the target.
    """
    device = next(model.parameters()).device
    data = data.to(device)
    fill = _ablation_fill(model, data, ablation, means)
    own = data.images[_draws(_rows(data.labels, cls), 1, rows_per_side, seed, "faithfulness", cls)[0]]
    if negatives is not None:
        every = torch.arange(len(negatives), device=device)
        other = negatives.images.to(device)[_draws(every, 1, rows_per_side, seed, "faithfulness-other", cls)[0]]
    elif bool((data.labels != cls).any()):
        other = data.images[
            _draws(_rows(data.labels, cls, other=True), 1, rows_per_side, seed, "faithfulness-other", cls)[0]
        ]
    else:
        raise ValueError(f"faithfulness of class {cls} needs images of other classes; give negatives")
    images = torch.cat([own, other])
    stem = run_stem(model, images)
    model_says = run_head(model, stem).argmax(1) == cls
    if bool(model_says.all()) or not bool(model_says.any()):
        # The model answers cls for every scored image or for none: agreement has one side
        # only, and the empty circuit would reach any target on the strength of it. There is
        # nothing to bisect towards, so the circuit is the learned one (scores above zero).
        return circuits_from_scores({layer: s[row : row + 1] for layer, s in scores.items()}, [cls])[cls]

    def agreement(count: int) -> float:
        keep = circuit_masks([top_channels(scores, row, count)], site_sizes(model), device)
        says = run_head(model, stem, {layer: g[0] for layer, g in keep.items()}, fill).argmax(1) == cls
        return _balanced_agreement(says, model_says)

    lo, hi = 0, sum(s.shape[1] for s in scores.values())
    while lo < hi:
        mid = (lo + hi) // 2
        if agreement(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return top_channels(scores, row, lo)


def _balanced_agreement(says: torch.Tensor, model_says: torch.Tensor) -> float:
    """Mean of the agreement on images the model calls the class and on those it does not.

    NaN when either side is empty, as :attr:`CircuitScores.faithfulness` is.
    """
    if bool(model_says.all()) or not bool(model_says.any()):
        return float("nan")
    sides = [(says[m] == model_says[m]).float().mean().item() for m in (model_says, ~model_says)]
    return sum(sides) / 2


SCORE_RANGE = (0.0, 1.0)
"""Every score is a fraction in this range (NaN where undefined)."""
_SCORE = {"range": SCORE_RANGE}
"""Field metadata of a :class:`CircuitScores` score: a fraction, the range the wire check enforces."""


@dataclass
class CircuitScores:
    """How a circuit behaves on a model: the one form of a circuit's scores, from the scoring pass through a
    client's report (its wire form, :meth:`wire`, checked against the fields' ranges on arrival) to the round
    record (``records.round_record.Scores`` is this class).

    Attributes
    ----------
    sufficiency : float
        Accuracy on target-class images with only the circuit's channels active (the
        paper's circuit accuracy and cross-evaluation metric).
    specificity : float
        Fraction of non-target images not classified as the target with only the
        circuit active. A circuit that answers "target" for everything has sufficiency
        1 and specificity 0: sufficiency alone cannot tell it from a real circuit.
    necessity : float
        Accuracy on target-class images with the circuit's channels ablated and all
        others active; low means the circuit is needed.
    num_target, num_other : int or None
        Images the scores were measured on. A score is NaN when its count is zero. None where
        they did not travel: a client reports its scores without the counts.
    faithfulness : float
        How often the circuit's "is it the class?" decision agrees with the full model's,
        balanced: the mean of the agreement on the images the model calls the class and
        on those it does not. 1 for the whole network; 0.5 for a circuit that answers the
        class for every input, or never. NaN when the model itself answers the class for
        every scored image or for none: one side is then undefined, and the other alone
        would give an empty circuit of a class the model has lost a perfect score.
    model_sufficiency, model_specificity : float
        The full model's own sufficiency (recall of the class) and specificity on the
        same images: a circuit cannot be judged on a class the model does not recognise.
    cpr, cmd : float
        Integrated faithfulness of the ranking the circuit was cut from (MIB, ICML 2025;
        :mod:`fedmi_flower.science.faithfulness_curve`): the area under its faithfulness
        over a fixed grid of sizes, and the area between that curve and 1. Set for a model's
        own circuits where ``analysis.integrated_faithfulness`` is on (a client's, the
        controls'); NaN elsewhere (a circuit cross-evaluated on other weights has no ranking there).
    """

    sufficiency: float = field(default=math.nan, metadata=_SCORE)
    specificity: float = field(default=math.nan, metadata=_SCORE)
    necessity: float = field(default=math.nan, metadata=_SCORE)
    num_target: int | None = None
    num_other: int | None = None
    faithfulness: float = field(default=math.nan, metadata=_SCORE)
    model_sufficiency: float = field(default=math.nan, metadata=_SCORE)
    model_specificity: float = field(default=math.nan, metadata=_SCORE)
    cpr: float = field(default=math.nan, metadata=_SCORE)
    cmd: float = field(default=math.nan, metadata=_SCORE)

    def wire(self) -> dict[str, float | None]:
        """The scores a client reports for one of its circuits, by :data:`SCORE_NAMES` (NaN as None: JSON null)."""
        return {name: None if math.isnan(v := getattr(self, name)) else v for name in SCORE_NAMES}

    @classmethod
    def from_wire(cls, raw: Mapping[str, float | None]) -> CircuitScores:
        """Scores as a client reported them (already checked against the fields' ``range``); absent or null is NaN."""
        values: dict[str, Any] = {name: raw.get(name) for name in SCORE_NAMES}
        converted: dict[str, Any] = {name: math.nan if v is None else float(v) for name, v in values.items()}
        return cls(**converted)


SCORE_NAMES = tuple(f.name for f in dataclasses.fields(CircuitScores) if "range" in f.metadata)
"""The scores a client reports for each of its own circuits (the wire names: :class:`CircuitScores`' scores)."""


def _ratio(num: torch.Tensor, den: torch.Tensor) -> list[float]:
    return [float(n) / int(d) if int(d) else float("nan") for n, d in zip(num.tolist(), den.tolist())]


def circuit_only_logits(
    model: nn.Module, stem: torch.Tensor, circuit: Circuit, fill: Mapping[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Logits with only ``circuit``'s channels active (ablated ones output zero, or their ``fill``: mean ablation).

    The model's ``circuit_logits`` capability computes only the circuit's sub-network;
    without it, or when a fill is asked of a capability that takes none, the gated dense
    pass gives the same logits.
    """
    fast = _sub_network(model, filled=fill is not None)
    if fast is not None:
        return fast(stem, circuit, fill) if fill is not None else fast(stem, circuit)
    keep = circuit_masks([circuit], site_sizes(model), stem.device)
    return run_head(model, stem, {site: g[0] for site, g in keep.items()}, fill)


def _sub_network(model: nn.Module, filled: bool) -> Any:
    """The model's ``circuit_logits`` capability where it can serve: any, for zero ablation; for a per-channel fill
    (mean ablation), one that takes a ``fill`` argument (models written before it take none)."""
    fast = capability(model, "circuit_logits")
    if fast is None or not filled:
        return fast
    return fast if "fill" in inspect.signature(fast).parameters else None


@torch.no_grad()
def evaluate_circuits(
    model: nn.Module,
    data: ImageSplit,
    circuits: Sequence[tuple[int, Circuit]],
    *,
    ablation: str = "zero",
    means: Mapping[str, torch.Tensor] | None = None,
    resample: torch.Tensor | None = None,
    seed: int = 0,
    rows_per_pass: int = 2048,
    necessity: bool = True,
) -> list[CircuitScores]:
    """Score many ``(target class, circuit)`` pairs on ``data`` in few passes.

    The model's ungated prefix (its ``stem``) is computed once per image and shared by
    all circuits. With zero or mean ablation, sufficiency and specificity run each
    circuit's own sub-network only where the model can (:func:`circuit_only_logits`);
    otherwise, and for necessity (the circuit ablated, everything else active), the
    gated dense network runs on batches of up to ``rows_per_pass`` (circuit, image) rows.

    Resample ablation (``ablation="resample"``, scoring only) gives each closed channel
    its value on an image drawn with ``seed`` from ``resample`` (the reference images;
    ``data``'s own when None), the same draw for every circuit on a given image: the
    ablation of causal scrubbing and of "Transformer Circuit Metrics are not Robust"
    (2024), which keeps activations on the data distribution where a mean may not be.
    ``necessity=False`` leaves necessity out (NaN): the faithfulness curve reads none.
    """
    if not circuits:
        return []
    if ablation not in SCORING_ABLATIONS:
        raise ValueError(f"ablation must be one of {SCORING_ABLATIONS}, got {ablation!r}")
    model.eval()
    device = next(model.parameters()).device
    data = data.to(device)
    resampling = ablation == "resample"
    pool = (resample if resample is not None else data.images).to(device) if resampling else None
    draws = (
        torch.randint(len(pool), (len(data),), generator=torch_generator(seed, "resample"))
        if pool is not None
        else None
    )
    fill = None if resampling else _ablation_fill(model, data, ablation, means)
    m = len(circuits)
    targets = torch.as_tensor([int(c) for c, _ in circuits], device=device)
    keep = circuit_masks([circ for _, circ in circuits], site_sizes(model), device)
    drop = {layer: 1.0 - g for layer, g in keep.items()}
    suff = torch.zeros(m, dtype=torch.long, device=device)
    n_target = torch.zeros_like(suff)
    spec = torch.zeros_like(suff)
    n_other = torch.zeros_like(suff)
    nec = torch.zeros_like(suff)
    agree_yes = torch.zeros_like(suff)  # the circuit says the class where the model does
    model_yes = torch.zeros_like(suff)
    agree_no = torch.zeros_like(suff)
    model_no = torch.zeros_like(suff)
    model_suff = torch.zeros_like(suff)
    model_spec = torch.zeros_like(suff)
    # Each circuit's sub-network alone where the model can (zero, or a per-channel mean); otherwise
    # every circuit's gated dense pass shares one batch of (circuit, image) rows.
    per_channel_fill = fill is not None and all(f.dim() == 1 for f in fill.values())
    fast = _sub_network(model, fill is not None) if not resampling and (fill is None or per_channel_fill) else None
    sub_networks = fast is not None
    chunk = rows_per_pass if sub_networks else max(1, rows_per_pass // m)
    for start in range(0, len(data), chunk):
        y = data.labels[start : start + chunk]
        stem = run_stem(model, data.images[start : start + chunk])
        b = y.shape[0]
        if pool is not None and draws is not None:
            fill = activations(model, pool[draws[start : start + chunk].to(device)])  # per image, as (b, C, ...)
        # Every circuit on every image: sufficiency (target rows) and specificity (the rest).
        if sub_networks:
            assert fast is not None
            pred = torch.stack(
                [(fast(stem, c, fill) if fill is not None else fast(stem, c)).argmax(1) for _, c in circuits]
            )
        else:
            pred = (
                run_head(
                    model,
                    stem.repeat(m, *([1] * (stem.dim() - 1))),
                    {layer: g.repeat_interleave(b, 0) for layer, g in keep.items()},
                    _per_row(fill, m),
                )
                .argmax(1)
                .view(m, b)
            )
        is_target = y.unsqueeze(0) == targets.unsqueeze(1)
        says_target = pred == targets.unsqueeze(1)
        suff += (says_target & is_target).sum(1)
        n_target += is_target.sum(1)
        spec += (~says_target & ~is_target).sum(1)
        n_other += (~is_target).sum(1)
        # Faithfulness: the circuit's decision against the full model's, on the same images.
        model_says = run_head(model, stem).argmax(1).unsqueeze(0) == targets.unsqueeze(1)
        agree_yes += (says_target & model_says).sum(1)
        model_yes += model_says.sum(1)
        agree_no += (~says_target & ~model_says).sum(1)
        model_no += (~model_says).sum(1)
        model_suff += (model_says & is_target).sum(1)
        model_spec += (~model_says & ~is_target).sum(1)
        # Necessity: each circuit ablated, on its target rows only.
        circ_idx, img_idx = torch.nonzero(is_target & necessity, as_tuple=True)
        for lo in range(0, circ_idx.numel(), rows_per_pass):
            ci, ii = circ_idx[lo : lo + rows_per_pass], img_idx[lo : lo + rows_per_pass]
            rows_fill = {site: f[ii] for site, f in fill.items()} if resampling and fill is not None else fill
            pred_nec = run_head(model, stem[ii], {layer: g[ci] for layer, g in drop.items()}, rows_fill).argmax(1)
            nec += torch.bincount(ci[pred_nec == targets[ci]], minlength=m)
    faithfulness = [(a + b) / 2 for a, b in zip(_ratio(agree_yes, model_yes), _ratio(agree_no, model_no))]
    return [
        CircuitScores(s, p, n, int(t), int(o), f, ms, mp)
        for s, p, n, t, o, f, ms, mp in zip(
            _ratio(suff, n_target),
            _ratio(spec, n_other),
            _ratio(nec, n_target) if necessity else [math.nan] * m,
            n_target.tolist(),
            n_other.tolist(),
            faithfulness,
            _ratio(model_suff, n_target),
            _ratio(model_spec, n_other),
        )
    ]


def _per_row(fill: Mapping[str, torch.Tensor] | None, m: int) -> Mapping[str, torch.Tensor] | None:
    """A per-image fill ``(b, C, ...)`` repeated for ``m`` circuits' rows (circuit-major); a per-channel one as is."""
    if fill is None:
        return None
    return {site: f.repeat(m, *([1] * (f.dim() - 1))) if f.dim() > 1 else f for site, f in fill.items()}


def circuit_edge_strengths(
    model: nn.Module, circuit: Circuit, target_class: int | None = None
) -> dict[str, dict[tuple[int, int], float]]:
    """The edges of :func:`circuit_edges`, each with its strength (the model's ``circuit_edge_strengths``).

    For a conv edge the absolute kernel weights summed over the kernel; for an ``fc``
    edge those summed over the last site's positions. Empty for a model without the
    capability.
    """
    found = capability(model, "circuit_edge_strengths")
    return found(circuit, target_class) if found is not None else {}


def circuit_edges(
    model: nn.Module, circuit: Circuit, target_class: int | None = None
) -> dict[str, list[tuple[int, int]]]:
    """Edges of a circuit: nonzero weights between active channels of consecutive layers.

    Returns, per destination site, ``(source, destination)`` pairs: the first site's
    edges come from input image channels, later ones from the previous site's circuit
    channels, and ``fc`` edges go from the last site's circuit channels to
    ``target_class`` (to every class when it is None).
    """
    return {layer: list(found) for layer, found in circuit_edge_strengths(model, circuit, target_class).items()}
