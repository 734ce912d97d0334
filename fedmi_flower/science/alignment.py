"""Channel alignment of two models of one architecture: which channel of one is which channel of the other.

A network's hidden channels can be permuted without changing what it computes (a
layer's output channels, with every layer that reads them permuted the same way).
Two clients that learned the same circuit may hold it in other channel indices;
comparing masks index by index (the paper's IoU, section 2.3) would call that
"different circuits". This module finds the permutation that maps one model's
channels onto another's, applies it to weights and to circuit masks. It reads only
the model's permutation spec (:mod:`fedmi_flower.science.permutation_spec`): which
tensors produce and consume each group of channels, residual ties included.

Two ways to match, both solved per group as a linear assignment
(``scipy.optimize.linear_sum_assignment``, the Hungarian method):

- **weights** (:func:`match_weights`): Git Re-Basin's weight matching (Ainsworth et
  al. 2023, section 3.2, Algorithm 1). It maximises ``sum_l <W_l^ref, P_l W_l P_{l-1}^T>``
  over the permutations: a forward pass gives each group's permutation from the
  tensors that produce it, the permutations of groups already solved applied to their
  other axes (FedMA's layer-wise matching, Wang et al. 2020), then coordinate descent
  re-solves each group with every tensor that touches it until nothing improves. Two
  channels with identical incoming weights are a tie the forward pass breaks
  arbitrarily; when their outgoing weights differ, coordinate descent can stay in the
  wrong order (moving one group alone gains nothing). Trained networks do not have such twins.
- **activations** (:func:`match_activations`): each site's channels paired by the
  correlation of their outputs on the same images (Li et al. 2016, "Convergent
  learning"; Git Re-Basin's activation matching); sites of one group pool their
  correlations. Needs images, and every group to be a site's.

Convention: ``perm[group][i] = j`` means position ``i`` of the reference frame takes
the other model's channel ``j``; the other model's channel ``j`` sits at
``inverse(perm)[j]`` in the reference frame. :func:`site_permutation` gives the
permutation of each circuit site.

Written here rather than taken from a package: ``rebasin`` (PyPI 0.0.47, 2023) traces
modules with torchview and pairs a layer with the next by tensor shapes, so it cannot
carry a conv's permutation through a flatten into a linear layer's column blocks; it
also applies the permutations to the model in place without returning them, and
circuit masks need them.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn as nn
from scipy.optimize import linear_sum_assignment

from fedmi_flower.science.circuits import Circuit
from fedmi_flower.science.hook_points import activations, capability
from fedmi_flower.science.model import set_weights, weight_names
from fedmi_flower.science.permutation_spec import Permutation, PermutationSpec, WeightLayout

Weights = Sequence[np.ndarray]
K = TypeVar("K", bound=Hashable)


class AlignmentError(ValueError):
    """A model cannot be aligned (no permutation spec, or one activation matching cannot serve)."""


def layout_of(model: nn.Module) -> WeightLayout:
    """The model's permutation spec bound to its weight arrays; :class:`AlignmentError` when it has none."""
    make = capability(model, "permutation_spec")
    if make is None:
        raise AlignmentError(
            f"{type(model).__name__} declares no permutation_spec(): channel alignment and the channel-wise "
            "aggregation rules need it (docs/your-own-model.md); set analysis.alignment = 'off'"
        )
    spec = make()
    state = model.state_dict()
    names = weight_names(model)
    return WeightLayout(spec, names, [tuple(state[n].shape) for n in names])


def identity(layout: WeightLayout) -> Permutation:
    """The permutation that moves nothing."""
    return {group: np.arange(n) for group, n in layout.sizes.items()}


def permute(weights: Weights, perm: Permutation, layout: WeightLayout) -> list[np.ndarray]:
    """The weights of the same function with every group's channels reordered by ``perm``.

    Every axis the spec assigns to a group takes that group's order, on the producing
    side and on the reading side alike, so the network computes exactly what it did.
    """
    out = [np.array(w, copy=True) for w in weights]
    for name, per_axis in layout.spec.axes.items():
        k = layout.index[name]
        for axis, group in enumerate(per_axis):
            if group is not None:
                out[k] = layout.take(out[k], name, axis, perm[group])
    return out


def _assign(similarity: np.ndarray) -> np.ndarray:
    """The permutation maximising the summed similarity: row ``i`` takes column ``result[i]``."""
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    out = np.empty(len(rows), dtype=np.int64)
    out[rows] = cols
    return out


def _similarity(
    reference: Weights, other: Weights, perm: Permutation, group: str, layout: WeightLayout, outgoing: bool
) -> np.ndarray:
    """``S[i, j]``: how well the other model's channel ``j`` fits position ``i`` of ``group``, the others fixed.

    Sums, over the tensors that produce the group (and with ``outgoing``, every tensor
    that touches it), the inner products of the reference's and the other's slices
    along the group's axis, the other's remaining axes permuted by their groups'
    current permutations.
    """
    n = layout.sizes[group]
    s = np.zeros((n, n))
    for name, axis in layout.spec.entries(group):
        if axis != 0 and not outgoing:
            continue
        k = layout.index[name]
        a = np.asarray(reference[k], dtype=np.float64)
        b = np.asarray(other[k], dtype=np.float64)
        for other_axis, other_group in enumerate(layout.spec.axes[name]):
            if other_axis != axis and other_group is not None:
                b = layout.take(b, name, other_axis, perm[other_group])
        s += layout.channel_major(a, name, axis) @ layout.channel_major(b, name, axis).T
    return s


def _objective(reference: Weights, other: Weights, perm: Permutation, layout: WeightLayout) -> float:
    aligned = permute(other, perm, layout)
    return float(sum(np.vdot(np.asarray(r, np.float64), np.asarray(a, np.float64)) for r, a in zip(reference, aligned)))


def match_weights(reference: Weights, other: Weights, layout: WeightLayout, max_sweeps: int = 20) -> Permutation:
    """Git Re-Basin weight matching of ``other`` onto ``reference`` (see the module docstring).

    Deterministic: the forward pass, then sweeps over the groups in order (not the
    paper's random order, so that a run's seed is all that decides), each group's
    assignment re-solved with the others fixed, until a sweep changes nothing or
    ``max_sweeps`` is reached. A sweep never lowers the objective.
    """
    for name, k in layout.index.items():
        a, b = np.shape(reference[k]), np.shape(other[k])
        if a != b:
            raise ValueError(f"cannot match models whose {name!r} have shapes {b} and {a}")
    perm = identity(layout)
    groups = layout.spec.groups
    for group in groups:
        perm[group] = _assign(_similarity(reference, other, perm, group, layout, outgoing=False))
    best = _objective(reference, other, perm, layout)
    for _ in range(max_sweeps):
        changed = False
        for group in groups:
            candidate = dict(perm)
            candidate[group] = _assign(_similarity(reference, other, perm, group, layout, outgoing=True))
            if np.array_equal(candidate[group], perm[group]):
                continue
            value = _objective(reference, other, candidate, layout)
            if value > best + 1e-9 * max(1.0, abs(best)):
                perm, best, changed = candidate, value, True
        if not changed:
            break
    return perm


@torch.no_grad()
def standardised_activations(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per site, (images x positions, channels) of the model's outputs, each channel centred and scaled
    to unit variance (zero where constant): what :func:`match_activations` correlates."""
    model.eval()
    out = {}
    for site, activation in activations(model, images).items():
        values = torch.movedim(activation, 1, -1).reshape(-1, activation.shape[1]).float()
        values = values - values.mean(0)
        std = values.std(0)
        out[site] = values / torch.where(std > 0, std, torch.ones_like(std))
    return out


def _pair_by_correlation(
    reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], layout: WeightLayout
) -> Permutation:
    by_group: dict[str, list[str]] = {}
    for site, group in layout.spec.site_groups.items():
        by_group.setdefault(group, []).append(site)
    missing = [g for g in layout.spec.groups if g not in by_group]
    if missing:
        raise AlignmentError(
            f"activation matching pairs the channels of circuit sites only; groups {missing} have no site: "
            "use weight matching (analysis.alignment = 'weights')"
        )
    return {
        group: _assign(
            sum(  # type: ignore[arg-type]
                (reference[site].T @ other[site] / reference[site].shape[0]).double().cpu().numpy()
                for site in by_group[group]
            )
        )
        for group in layout.spec.groups
    }


def match_activations(reference: nn.Module, other: nn.Module, images: torch.Tensor) -> Permutation:
    """Each group's channels of ``other`` paired with ``reference``'s by the correlation of their outputs on ``images``.

    A channel's output is its activation at every position of every image; two
    channels' similarity is the Pearson correlation of those values (summed over the
    sites a group orders). A channel that is constant on the images (dead) correlates
    with nothing: it is paired wherever the assignment leaves room.
    """
    return _pair_by_correlation(
        standardised_activations(reference, images), standardised_activations(other, images), layout_of(reference)
    )


def _loaded(template: nn.Module, weights: Weights, device: torch.device) -> nn.Module:
    model = copy.deepcopy(template)
    set_weights(model, weights)
    return model.to(device)


def match_all(
    template: nn.Module,
    reference: Weights,
    others: Mapping[K, Weights],
    how: str = "weights",
    images: torch.Tensor | None = None,
) -> dict[K, Permutation]:
    """The permutation of each of ``others`` onto ``reference``, models of ``template``'s architecture.

    ``how`` is ``"weights"`` (:func:`match_weights`) or ``"activations"``
    (:func:`match_activations` on ``images``; the reference's activations computed once).
    """
    layout = layout_of(template)
    if how == "weights":
        return {key: match_weights(reference, weights, layout) for key, weights in others.items()}
    if how != "activations":
        raise ValueError(f"matching {how!r}: use 'weights' or 'activations'")
    if images is None:
        raise ValueError("activation matching needs images")
    target = standardised_activations(_loaded(template, reference, images.device), images)
    return {
        key: _pair_by_correlation(
            target, standardised_activations(_loaded(template, weights, images.device), images), layout
        )
        for key, weights in others.items()
    }


def match(
    template: nn.Module, reference: Weights, other: Weights, how: str = "weights", images: torch.Tensor | None = None
) -> Permutation:
    """The permutation of ``other``'s channels onto ``reference``'s (one pair of :func:`match_all`)."""
    return match_all(template, reference, {0: other}, how, images)[0]


def site_permutation(perm: Permutation, spec: PermutationSpec) -> Permutation:
    """The permutation of each circuit site: its group's."""
    return {site: perm[group] for site, group in spec.site_groups.items()}


def inverse(perm: Permutation) -> Permutation:
    """Where each of the other model's channels sits in the reference frame."""
    return {layer: np.argsort(p) for layer, p in perm.items()}


def map_circuit(circuit: Circuit, perm: Permutation) -> Circuit:
    """A circuit of the other model, in the reference model's channel indices (``perm`` per site)."""
    where = inverse(perm)
    return {layer: sorted(int(where[layer][c]) for c in channels) for layer, channels in circuit.items()}


def channels_moved(perm: Permutation) -> dict[str, int]:
    """Per site (or group), how many channels the permutation puts at another index (0: already aligned)."""
    return {layer: int(np.sum(p != np.arange(len(p)))) for layer, p in perm.items()}
