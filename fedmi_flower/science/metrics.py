"""Circuit similarity (IoU) and the circuit-preservation views of paper section 2.3.

IoU of two channel sets is |A & B| / |A | B|. When both sets are empty the IoU is
undefined: these functions return NaN for it and leave it out of every average (an
average of nothing but NaN is NaN). Two empty circuits are not "identical circuits";
they are usually a degenerate model, and reporting 1.0 would hide that.

The IoU functions return per-layer values plus ``"mean"``, the average over layers.
The fourth view, cross-evaluation, is functional rather than structural.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

from fedmi_flower.science.circuits import Circuit
from fedmi_flower.science.model import CIRCUIT_LAYERS

MEAN = "mean"


def nanmean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def iou(a: Iterable[int], b: Iterable[int]) -> float:
    """Intersection over union of two channel sets; NaN when both are empty."""
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else float("nan")


@functools.lru_cache(maxsize=65536)
def chance_iou(a: int, b: int, n: int) -> float:
    """Expected IoU of a random ``a``-subset and a random ``b``-subset of ``n`` channels (the chance level).

    The intersection size ``k`` is hypergeometric: ``P(k) = C(a, k) C(n - a, b - k) / C(n, b)``,
    and the IoU is ``k / (a + b - k)``; the sum over ``k`` is exact. NaN when both sets
    are empty, as :func:`iou` is. Two random 16-channel sets of conv1's 32 share about a
    third of their union: an IoU means something only above this.
    """
    if not (0 <= a <= n and 0 <= b <= n):
        raise ValueError(f"set sizes {a} and {b} must lie in 0..{n}")
    if a + b == 0:
        return float("nan")
    total = math.comb(n, b)
    return (
        sum(
            math.comb(a, k) * math.comb(n - a, b - k) * k / (a + b - k) for k in range(max(0, a + b - n), min(a, b) + 1)
        )
        / total
    )


def chance_circuit_iou(a: Circuit, b: Circuit, layer_sizes: Mapping[str, int]) -> dict[str, float]:
    """:func:`chance_iou` per layer for circuits of the sizes of ``a`` and ``b``, and its mean over layers
    (as :func:`circuit_iou`).
    """
    out = {layer: chance_iou(len(a.get(layer, [])), len(b.get(layer, [])), n) for layer, n in layer_sizes.items()}
    out[MEAN] = nanmean(out[layer] for layer in layer_sizes)
    return out


def mean_entries(entries: Sequence[Mapping[str, float]], layers: Sequence[str] = CIRCUIT_LAYERS) -> dict[str, float]:
    """Per-layer NaN-aware mean of several per-layer results, and the mean over layers of those."""
    out = {layer: nanmean(e[layer] for e in entries) for layer in layers}
    out[MEAN] = nanmean(out[layer] for layer in layers)
    return out


def defined_pairs(entries: Iterable[Mapping[str, float]]) -> int:
    """How many per-pair results have a defined mean: the count a mean of them rests on."""
    return sum(1 for e in entries if not math.isnan(e[MEAN]))


def circuit_iou(a: Circuit, b: Circuit, layers: Sequence[str] = CIRCUIT_LAYERS) -> dict[str, float]:
    """IoU of two circuits per layer, and their mean over layers."""
    out = {layer: iou(a.get(layer, []), b.get(layer, [])) for layer in layers}
    out[MEAN] = nanmean(out[layer] for layer in layers)
    return out


def inter_client_iou(circuits: Mapping[Hashable, Circuit], layers: Sequence[str] = CIRCUIT_LAYERS) -> dict[str, float]:
    """Inter-client consistency (RQ1): mean pairwise IoU among the clients' circuits of one class.

    ``circuits`` maps client to its circuit for the class; only clients holding the class
    belong in it. Fewer than two clients: every value is NaN.
    """
    pairs = [circuit_iou(a, b, layers) for a, b in itertools.combinations(circuits.values(), 2)]
    out = {layer: nanmean(p[layer] for p in pairs) for layer in layers}
    out[MEAN] = nanmean(out[layer] for layer in layers)
    return out


def class_pairs(
    circuits: Mapping[Hashable, Mapping[int, Circuit]],
) -> dict[tuple[int, int], list[tuple[Circuit, Circuit]]]:
    """The circuit pairs class-pair IoU compares.

    For classes ``a < b``, every ``(i's a, j's b)`` over clients ``i != j``.

    ``circuits`` maps client to ``{class: circuit}``.
    """
    out: dict[tuple[int, int], list[tuple[Circuit, Circuit]]] = {}
    for i, j in itertools.permutations(list(circuits), 2):
        for a, ca in circuits[i].items():
            for b, cb in circuits[j].items():
                if a < b:
                    out.setdefault((a, b), []).append((ca, cb))
    return dict(sorted(out.items()))


def class_pair_iou(
    circuits: Mapping[Hashable, Mapping[int, Circuit]], layers: Sequence[str] = CIRCUIT_LAYERS
) -> dict[tuple[int, int], dict[str, float]]:
    """Overlap of different classes' circuits across clients (the specialists' distinctness, section 3.2).

    ``circuits`` maps client to ``{class: circuit}``. For every pair of classes
    ``(a, b)``, ``a < b``, returns the mean IoU over all pairs of clients ``i != j``
    where ``i`` holds ``a`` and ``j`` holds ``b`` (:func:`class_pairs`). Under disjoint
    label skew no class has two holders, so this is the only inter-client comparison
    there is: the paper's Fig. 3 and 14 plot it.
    """
    return {
        pair: mean_entries([circuit_iou(a, b, layers) for a, b in found], layers)
        for pair, found in class_pairs(circuits).items()
    }


def intra_client_stability(
    current: Circuit, previous: Circuit, layers: Sequence[str] = CIRCUIT_LAYERS
) -> dict[str, float]:
    """Intra-client stability (RQ2): IoU of a client's circuit in round t and in round t-1."""
    return circuit_iou(current, previous, layers)


def local_global_iou(local: Circuit, global_: Circuit, layers: Sequence[str] = CIRCUIT_LAYERS) -> dict[str, float]:
    """Local-to-global preservation.

    IoU of a client's local circuit and the global model's circuit of the same class.
    """
    return circuit_iou(local, global_, layers)
