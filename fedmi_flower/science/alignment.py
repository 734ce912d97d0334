"""Channel alignment of two SimpleCNNs: which channel of one is which channel of the other.

A network's hidden channels can be permuted without changing what it computes (a
conv layer's output channels, with the next layer's input side permuted the same
way). Two clients that learned the same circuit may hold it in other channel
indices; comparing masks index by index (the paper's IoU, section 2.3) would call
that "different circuits". This module finds the permutation that maps one model's
channels onto another's, applies it to weights and to circuit masks.

Two ways to match, both solved per layer as a linear assignment
(``scipy.optimize.linear_sum_assignment``, the Hungarian method):

- **weights** (:func:`match_weights`): Git Re-Basin's weight matching (Ainsworth et
  al. 2023, section 3.2, Algorithm 1). It maximises ``sum_l <W_l^ref, P_l W_l P_{l-1}^T>``
  over the permutations ``P_l``: a forward pass gives each layer's permutation from
  its own filters with the previous layer's permutation applied on the input side
  (FedMA's layer-wise matching, Wang et al. 2020), then coordinate descent re-solves
  each layer with both its incoming and outgoing weights until nothing improves. The
  fc layer follows conv3: its input columns come in blocks, one per conv3 channel.
  Two channels with identical incoming weights are a tie the forward pass breaks
  arbitrarily; when their outgoing weights differ, coordinate descent can stay in the
  wrong order (moving one layer alone gains nothing). Trained networks do not have such twins.
- **activations** (:func:`match_activations`): each layer's channels paired by the
  correlation of their outputs on the same images (Li et al. 2016, "Convergent
  learning"; Git Re-Basin's activation matching). Needs images; independent per layer.

Convention: ``perm[layer][i] = j`` means position ``i`` of the reference frame takes
the other model's channel ``j``; the other model's channel ``j`` sits at
``inverse(perm)[j]`` in the reference frame.

Written here rather than taken from a package: ``rebasin`` (PyPI 0.0.47, 2023) traces
modules with torchview and pairs a layer with the next by tensor shapes, so it cannot
carry conv3's permutation through the flatten into fc's column blocks; it also applies
the permutations to the model in place without returning them, and circuit masks need them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from fedmi_flower.science.circuits import Circuit
from fedmi_flower.science.model import (
    BIAS_INDEX,
    CIRCUIT_LAYERS,
    FC_WEIGHT_INDEX,
    WEIGHT_INDEX,
    SimpleCNN,
    build_model,
    fc_blocks,
    layer_sizes_of,
    set_weights,
)

Weights = Sequence[np.ndarray]
K = TypeVar("K", bound=Hashable)
Permutation = dict[str, np.ndarray]
"""Per circuit layer, an int array: position ``i`` of the reference frame takes channel ``perm[i]``."""


def identity(layer_sizes: Mapping[str, int]) -> Permutation:
    """The permutation that moves nothing."""
    return {layer: np.arange(n) for layer, n in layer_sizes.items()}


def permute(weights: Weights, perm: Permutation) -> list[np.ndarray]:
    """The weights of the same function with hidden channels reordered by ``perm``.

    Each layer's outputs (filters, biases) take ``perm[layer]``; the next layer's inputs
    (and fc's column blocks, after conv3) take the same order, so the network computes
    exactly what it did.
    """
    out = [np.array(w, copy=True) for w in weights]
    previous: np.ndarray | None = None
    for layer in CIRCUIT_LAYERS:
        w = out[WEIGHT_INDEX[layer]][perm[layer]]
        out[WEIGHT_INDEX[layer]] = w[:, previous] if previous is not None else w
        out[BIAS_INDEX[layer]] = out[BIAS_INDEX[layer]][perm[layer]]
        previous = perm[layer]
    last = CIRCUIT_LAYERS[-1]
    fc = out[FC_WEIGHT_INDEX]
    channels = len(perm[last])
    out[FC_WEIGHT_INDEX] = fc_blocks(fc, channels)[:, perm[last]].reshape(fc.shape)
    return out


def _assign(similarity: np.ndarray) -> np.ndarray:
    """The permutation maximising the summed similarity: row ``i`` takes column ``result[i]``."""
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    out = np.empty(len(rows), dtype=np.int64)
    out[rows] = cols
    return out


def _similarity(reference: Weights, other: Weights, perm: Permutation, layer: str, outgoing: bool) -> np.ndarray:
    """``S[i, j]``: how well the other model's channel ``j`` fits position ``i`` of ``layer``, the other layers fixed.

    Incoming weights (filter with the previous layer's permutation applied, and bias);
    with ``outgoing``, also the next layer's weights that read the channel (that
    layer's outputs permuted by its own permutation).
    """
    k = CIRCUIT_LAYERS.index(layer)
    w_ref = np.asarray(reference[WEIGHT_INDEX[layer]], dtype=np.float64)
    w_oth = np.asarray(other[WEIGHT_INDEX[layer]], dtype=np.float64)
    if k > 0:
        w_oth = w_oth[:, perm[CIRCUIT_LAYERS[k - 1]]]
    s = w_ref.reshape(len(w_ref), -1) @ w_oth.reshape(len(w_oth), -1).T
    s += np.outer(reference[BIAS_INDEX[layer]], other[BIAS_INDEX[layer]])
    if outgoing:
        if k + 1 < len(CIRCUIT_LAYERS):
            following = CIRCUIT_LAYERS[k + 1]
            n_ref = np.asarray(reference[WEIGHT_INDEX[following]], dtype=np.float64)
            n_oth = np.asarray(other[WEIGHT_INDEX[following]], dtype=np.float64)[perm[following]]
            # (out, in, kh, kw) -> per input channel, everything that reads it
            a = np.moveaxis(n_ref, 1, 0).reshape(n_ref.shape[1], -1)
            b = np.moveaxis(n_oth, 1, 0).reshape(n_oth.shape[1], -1)
        else:
            channels = w_ref.shape[0]
            a = np.moveaxis(fc_blocks(np.asarray(reference[FC_WEIGHT_INDEX], dtype=np.float64), channels), 1, 0)
            b = np.moveaxis(fc_blocks(np.asarray(other[FC_WEIGHT_INDEX], dtype=np.float64), channels), 1, 0)
            a, b = a.reshape(channels, -1), b.reshape(channels, -1)
        s += a @ b.T
    return s


def _objective(reference: Weights, other: Weights, perm: Permutation) -> float:
    aligned = permute(other, perm)
    return float(sum(np.vdot(np.asarray(r, np.float64), np.asarray(a, np.float64)) for r, a in zip(reference, aligned)))


def match_weights(reference: Weights, other: Weights, max_sweeps: int = 20) -> Permutation:
    """Git Re-Basin weight matching of ``other`` onto ``reference`` (see the module docstring).

    Deterministic: the forward pass, then sweeps over the layers in order (not the
    paper's random order, so that a run's seed is all that decides), each layer's
    assignment re-solved with its neighbours fixed, until a sweep changes nothing or
    ``max_sweeps`` is reached. A sweep never lowers the objective.
    """
    sizes = layer_sizes_of(reference)
    if layer_sizes_of(other) != sizes:
        raise ValueError(f"cannot match models of layer sizes {layer_sizes_of(other)} and {sizes}")
    perm = identity(sizes)
    for layer in CIRCUIT_LAYERS:
        perm[layer] = _assign(_similarity(reference, other, perm, layer, outgoing=False))
    best = _objective(reference, other, perm)
    for _ in range(max_sweeps):
        changed = False
        for layer in CIRCUIT_LAYERS:
            candidate = dict(perm)
            candidate[layer] = _assign(_similarity(reference, other, perm, layer, outgoing=True))
            if np.array_equal(candidate[layer], perm[layer]):
                continue
            value = _objective(reference, other, candidate)
            if value > best + 1e-9 * max(1.0, abs(best)):
                perm, best, changed = candidate, value, True
        if not changed:
            break
    return perm


@torch.no_grad()
def standardised_activations(model: SimpleCNN, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per circuit layer, (images x positions, channels) of the model's outputs, each channel centred and scaled
    to unit variance (zero where constant): what :func:`match_activations` correlates."""
    model.eval()
    out = {}
    for layer, activation in model.activations(images).items():
        values = activation.permute(0, 2, 3, 1).reshape(-1, activation.shape[1]).float()
        values = values - values.mean(0)
        std = values.std(0)
        out[layer] = values / torch.where(std > 0, std, torch.ones_like(std))
    return out


def _pair_by_correlation(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> Permutation:
    return {
        layer: _assign((reference[layer].T @ other[layer] / reference[layer].shape[0]).double().cpu().numpy())
        for layer in CIRCUIT_LAYERS
    }


def match_activations(reference: SimpleCNN, other: SimpleCNN, images: torch.Tensor) -> Permutation:
    """Each layer's channels of ``other`` paired with ``reference``'s by the correlation of their outputs on ``images``.

    A channel's output is its (ReLU, pooled) activation at every position of every
    image; two channels' similarity is the Pearson correlation of those values. A
    channel that is constant on the images (dead) correlates with nothing: it is
    paired wherever the assignment leaves room.
    """
    return _pair_by_correlation(standardised_activations(reference, images), standardised_activations(other, images))


def _model(weights: Weights, device: torch.device) -> SimpleCNN:
    model = build_model()
    set_weights(model, weights)
    return model.to(device)


def match_all(
    reference: Weights, others: Mapping[K, Weights], how: str = "weights", images: torch.Tensor | None = None
) -> dict[K, Permutation]:
    """The permutation of each of ``others`` onto ``reference``: ``how`` is ``"weights"`` (:func:`match_weights`)
    or ``"activations"`` (:func:`match_activations` on ``images``; the reference's activations computed once).
    """
    if how == "weights":
        return {key: match_weights(reference, weights) for key, weights in others.items()}
    if how != "activations":
        raise ValueError(f"matching {how!r}: use 'weights' or 'activations'")
    if images is None:
        raise ValueError("activation matching needs images")
    target = standardised_activations(_model(reference, images.device), images)
    return {
        key: _pair_by_correlation(target, standardised_activations(_model(weights, images.device), images))
        for key, weights in others.items()
    }


def match(reference: Weights, other: Weights, how: str = "weights", images: torch.Tensor | None = None) -> Permutation:
    """The permutation of ``other``'s channels onto ``reference``'s (one pair of :func:`match_all`)."""
    return match_all(reference, {0: other}, how, images)[0]


def inverse(perm: Permutation) -> Permutation:
    """Where each of the other model's channels sits in the reference frame."""
    return {layer: np.argsort(p) for layer, p in perm.items()}


def map_circuit(circuit: Circuit, perm: Permutation) -> Circuit:
    """A circuit of the other model, in the reference model's channel indices."""
    where = inverse(perm)
    return {layer: sorted(int(where[layer][c]) for c in channels) for layer, channels in circuit.items()}


def channels_moved(perm: Permutation) -> dict[str, int]:
    """Per layer, how many channels the permutation puts at another index (0: already aligned)."""
    return {layer: int(np.sum(p != np.arange(len(p)))) for layer, p in perm.items()}
