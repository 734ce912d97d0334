"""Aggregation rules beyond FedAvg's coordinate-wise mean: masked (sparse) and modular (circuit-wise) averaging.

The paper (section 4) traces FedAvg's failure under label skew to clients' circuits
interfering when their weights are averaged coordinate by coordinate, and names the
cure as future work: keep circuits apart, or average only what clients share. These
are the rules; the Flower strategies in ``strategies/`` apply them to a round's results.
Weight matching, which aligns clients before any rule, is :mod:`fedmi_flower.science.alignment`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from fedmi_flower.science.circuits import Circuit
from fedmi_flower.science.model import get_weights, set_weights
from fedmi_flower.science.permutation_spec import WeightLayout
from fedmi_flower.science.sparsity import prune_

Weights = Sequence[np.ndarray]


def _check(clients: Sequence[Weights], num_examples: Sequence[int]) -> np.ndarray:
    if not clients or len(clients) != len(num_examples):
        raise ValueError(
            f"need one example count per client, got {len(clients)} clients and {len(num_examples)} counts"
        )
    n = np.asarray(num_examples, dtype=np.float64)
    if (n <= 0).any():
        raise ValueError(f"example counts must be positive, got {list(num_examples)}")
    return n


def weighted_mean(clients: Sequence[Weights], num_examples: Sequence[int]) -> list[np.ndarray]:
    """FedAvg's example-weighted mean of every tensor (McMahan et al. 2017)."""
    n = _check(clients, num_examples)
    return [
        (sum(k * np.asarray(c[t], np.float64) for k, c in zip(n, clients)) / n.sum()).astype(clients[0][t].dtype)
        for t in range(len(clients[0]))
    ]


def masked_mean(clients: Sequence[Weights], num_examples: Sequence[int]) -> list[np.ndarray]:
    """Every weight averaged over the clients that keep it (nonzero), weighted by their example counts.

    A weight that only some clients keep is not pulled toward zero by the others, as
    FedAvg's mean would do (sparse FL's masked averaging, e.g. FedDST, Bibikar et al.
    2022); a weight no client keeps stays zero. Dense tensors (biases) get FedAvg's mean.
    """
    n = _check(clients, num_examples)
    out = []
    for t in range(len(clients[0])):
        stacked = np.stack([np.asarray(c[t], np.float64) for c in clients])
        weights = n.reshape(-1, *([1] * (stacked.ndim - 1)))
        kept = stacked != 0
        divisor = (weights * kept).sum(0)
        total = (weights * stacked).sum(0)
        mean = np.divide(total, divisor, out=np.zeros_like(total), where=divisor > 0)
        out.append(mean.astype(clients[0][t].dtype))
    return out


def resparsify(
    template: nn.Module, weights: Weights, sparsity: float, min_per_neuron: int = 4, scope: str = "tensor"
) -> list[np.ndarray]:
    """The weights pruned to ``sparsity`` by magnitude, the rule the clients' training applies (Eq. 1-2).

    The union of clients' supports is denser than each client; pruning it back keeps the
    global model at the target sparsity, the weights most clients agree are large first.
    ``template`` is a model of the weights' architecture (left unchanged).
    """
    model = copy.deepcopy(template)
    set_weights(model, weights)
    with torch.no_grad():
        prune_(model, sparsity, min_per_neuron, scope)
    return get_weights(model)


def circuit_users(
    circuits: Sequence[Mapping[int, Circuit]], layer_sizes: Mapping[str, int]
) -> dict[str, list[list[int]]]:
    """Per layer and channel, the clients (by position in ``circuits``) whose circuit of any class holds the channel."""
    users: dict[str, list[list[int]]] = {layer: [[] for _ in range(n)] for layer, n in layer_sizes.items()}
    for k, per_class in enumerate(circuits):
        held: dict[str, set[int]] = {layer: set() for layer in layer_sizes}
        for circuit in per_class.values():
            for layer, channels in circuit.items():
                held[layer].update(channels)
        for layer, held_channels in held.items():
            for c in sorted(held_channels):
                users[layer][c].append(k)
    return users


def modular_mean(
    clients: Sequence[Weights],
    num_examples: Sequence[int],
    circuits: Sequence[Mapping[int, Circuit]],
    layout: WeightLayout,
) -> list[np.ndarray]:
    """Circuit-wise averaging: each channel is averaged over the clients whose circuits use it.

    The rule, per channel of each circuit site (the slices of every tensor that
    produces it, e.g. a conv's filter and bias, a BatchNorm's entries, and of every
    readout that reads it, e.g. fc's input block after the last conv; from the model's
    permutation spec):

    - used by the circuits of one client: taken from that client, so no other client's
      update dilutes a circuit only it has (the paper's "modular FL"; Fed2's feature
      grouping, Yu et al. 2021, averages only matching feature groups);
    - used by several clients' circuits: their example-weighted mean;
    - used by no client's circuit: every client's example-weighted mean, as FedAvg.

    Everything else (the readout's bias, the inputs a layer reads from other channels)
    is FedAvg's mean. Where several sites share a group (a residual stream), a channel
    counts as used when a circuit holds it at any of them. A client's circuits are all
    the circuits it reported (any class), in its own channel indices, which under
    FedAvg's shared starting point are the global model's; align them first where they
    are not (:mod:`fedmi_flower.science.alignment`).
    """
    n = _check(clients, num_examples)
    if len(circuits) != len(clients):
        raise ValueError(f"need one set of circuits per client, got {len(circuits)} for {len(clients)} clients")
    out = weighted_mean(clients, num_examples)
    spec = layout.spec
    site_users = circuit_users(circuits, {site: layout.sizes[g] for site, g in spec.site_groups.items()})
    for group in dict.fromkeys(spec.site_groups.values()):
        sites = [site for site, g in spec.site_groups.items() if g == group]
        users = [sorted({k for site in sites for k in site_users[site][c]}) for c in range(layout.sizes[group])]
        slices = [(name, 0) for name in spec.producers(group)] + spec.readouts(group)
        for name, axis in slices:
            t = layout.index[name]
            stacked = [layout.channel_major(np.asarray(c[t], np.float64), name, axis) for c in clients]
            merged = layout.channel_major(out[t].astype(np.float64), name, axis)
            for channel, who in enumerate(users):
                if who:
                    share = n[who] / n[who].sum()
                    merged[channel] = sum(s * stacked[i][channel] for s, i in zip(share, who))
            out[t] = _from_channel_major(merged, out[t].shape, layout.sizes[group], axis).astype(out[t].dtype)
    return out


def _from_channel_major(merged: np.ndarray, shape: tuple[int, ...], n: int, axis: int) -> np.ndarray:
    """Undo :meth:`WeightLayout.channel_major`: (channels, rest) back to ``shape``."""
    blocked = (*shape[:axis], n, shape[axis] // n, *shape[axis + 1 :])
    moved = np.moveaxis(np.empty(blocked), axis, 0).shape
    return np.moveaxis(merged.reshape(moved), 0, axis).reshape(shape)
