"""Aggregation rules beyond FedAvg's coordinate-wise mean: masked (sparse) and modular (circuit-wise) averaging.

The paper (section 4) traces FedAvg's failure under label skew to clients' circuits
interfering when their weights are averaged coordinate by coordinate, and names the
cure as future work: keep circuits apart, or average only what clients share. These
are the rules; the Flower strategies in ``strategies/`` apply them to a round's results.
Weight matching, which aligns clients before any rule, is :mod:`fedmi_flower.science.alignment`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedmi_flower.science.circuits import Circuit
from fedmi_flower.science.model import (
    BIAS_INDEX,
    CIRCUIT_LAYERS,
    FC_WEIGHT_INDEX,
    WEIGHT_INDEX,
    build_model,
    fc_blocks,
    get_weights,
    layer_sizes_of,
    set_weights,
)
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


def resparsify(weights: Weights, sparsity: float, min_per_neuron: int = 4, scope: str = "tensor") -> list[np.ndarray]:
    """The weights pruned to ``sparsity`` by magnitude, the rule the clients' training applies (Eq. 1-2).

    The union of clients' supports is denser than each client; pruning it back keeps the
    global model at the target sparsity, the weights most clients agree are large first.
    """
    model = build_model()
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
) -> list[np.ndarray]:
    """Circuit-wise averaging: each channel is averaged over the clients whose circuits use it.

    The rule, per output channel of conv1..conv3 (its filter and bias; for conv3 also
    its block of fc's input columns):

    - used by the circuits of one client: taken from that client, so no other client's
      update dilutes a circuit only it has (the paper's "modular FL"; Fed2's feature
      grouping, Yu et al. 2021, averages only matching feature groups);
    - used by several clients' circuits: their example-weighted mean;
    - used by no client's circuit: every client's example-weighted mean, as FedAvg.

    The fc bias is FedAvg's mean. A client's circuits are all the circuits it reported
    (any class), in its own channel indices, which under FedAvg's shared starting point
    are the global model's; align them first where they are not
    (:mod:`fedmi_flower.science.alignment`).
    """
    n = _check(clients, num_examples)
    if len(circuits) != len(clients):
        raise ValueError(f"need one set of circuits per client, got {len(circuits)} for {len(clients)} clients")
    out = weighted_mean(clients, num_examples)
    sizes = layer_sizes_of(clients[0])
    users = circuit_users(circuits, sizes)
    last = CIRCUIT_LAYERS[-1]
    fc_shape = np.asarray(clients[0][FC_WEIGHT_INDEX]).shape
    blocks = [fc_blocks(np.asarray(c[FC_WEIGHT_INDEX], np.float64), sizes[last]) for c in clients]
    fc_out = fc_blocks(out[FC_WEIGHT_INDEX].astype(np.float64), sizes[last])
    for layer in CIRCUIT_LAYERS:
        w, b = WEIGHT_INDEX[layer], BIAS_INDEX[layer]
        for channel, who in enumerate(users[layer]):
            if not who:
                continue
            share = n[who] / n[who].sum()
            out[w][channel] = sum(s * np.asarray(clients[i][w][channel], np.float64) for s, i in zip(share, who))
            out[b][channel] = sum(s * float(clients[i][b][channel]) for s, i in zip(share, who))
            if layer == last:
                fc_out[:, channel] = sum(s * blocks[i][:, channel] for s, i in zip(share, who))
    out[FC_WEIGHT_INDEX] = fc_out.reshape(fc_shape).astype(out[FC_WEIGHT_INDEX].dtype)
    return out
