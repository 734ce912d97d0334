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
from typing import TypeVar

import numpy as np

from fedmi_flower.science.circuits import Circuit

MEAN = "mean"
K = TypeVar("K", bound=Hashable)


def _sites(*circuits: Mapping[str, object]) -> list[str]:
    """The site names the circuits (or per-site results) name, in first-seen order, ``MEAN`` left out."""
    return list(dict.fromkeys(k for c in circuits for k in c if k != MEAN))


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


def mean_entries(entries: Sequence[Mapping[str, float]], layers: Sequence[str] | None = None) -> dict[str, float]:
    """Per-layer NaN-aware mean of several per-layer results, and the mean over layers of those."""
    layers = _sites(*entries) if layers is None else layers
    out = {layer: nanmean(e[layer] for e in entries) for layer in layers}
    out[MEAN] = nanmean(out[layer] for layer in layers)
    return out


def defined_pairs(entries: Iterable[Mapping[str, float]]) -> int:
    """How many per-pair results have a defined mean: the count a mean of them rests on."""
    return sum(1 for e in entries if not math.isnan(e[MEAN]))


def circuit_iou(a: Circuit, b: Circuit, layers: Sequence[str] | None = None) -> dict[str, float]:
    """IoU of two circuits per site (every site either names, unless ``layers`` says), and their mean over sites."""
    layers = _sites(a, b) if layers is None else layers
    out = {layer: iou(a.get(layer, []), b.get(layer, [])) for layer in layers}
    out[MEAN] = nanmean(out[layer] for layer in layers)
    return out


def inter_client_iou(circuits: Mapping[Hashable, Circuit], layers: Sequence[str] | None = None) -> dict[str, float]:
    """Inter-client consistency (RQ1): mean pairwise IoU among the clients' circuits of one class.

    ``circuits`` maps client to its circuit for the class; only clients holding the class
    belong in it. Fewer than two clients: every value is NaN.
    """
    layers = _sites(*circuits.values()) if layers is None else layers
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
    circuits: Mapping[Hashable, Mapping[int, Circuit]], layers: Sequence[str] | None = None
) -> dict[tuple[int, int], dict[str, float]]:
    """Overlap of different classes' circuits across clients (the specialists' distinctness, section 3.2).

    ``circuits`` maps client to ``{class: circuit}``. For every pair of classes
    ``(a, b)``, ``a < b``, returns the mean IoU over all pairs of clients ``i != j``
    where ``i`` holds ``a`` and ``j`` holds ``b`` (:func:`class_pairs`). Under disjoint
    label skew no class has two holders, so this is the only inter-client comparison
    there is: the paper's Fig. 3 and 14 plot it.
    """
    if layers is None:
        layers = _sites(*(c for per in circuits.values() for c in per.values()))
    return {
        pair: mean_entries([circuit_iou(a, b, layers) for a, b in found], layers)
        for pair, found in class_pairs(circuits).items()
    }


def intra_client_stability(
    current: Circuit, previous: Circuit, layers: Sequence[str] | None = None
) -> dict[str, float]:
    """Intra-client stability (RQ2): IoU of a client's circuit in round t and in round t-1."""
    return circuit_iou(current, previous, layers)


def local_global_iou(local: Circuit, global_: Circuit, layers: Sequence[str] | None = None) -> dict[str, float]:
    """Local-to-global preservation.

    IoU of a client's local circuit and the global model's circuit of the same class.
    """
    return circuit_iou(local, global_, layers)


# ---------------------------------------------------------------------- the paper's open questions (issue 16)


def label_emd(counts: Sequence[int], reference: Sequence[int]) -> float:
    """Label skew of one client: Zhao et al.'s earth mover's distance of its label distribution to ``reference``'s.

    Returns the L1 distance ``sum_k |p_k - q_k|`` of the two normalised label
    distributions (``p_k = counts[k] / sum(counts)``, ``q_k = reference[k] / sum(reference)``):
    what Zhao et al. (2018, "Federated Learning with Non-IID Data", section 3) call the
    EMD and relate to FedAvg's accuracy drop. It is twice the total variation distance.
    (The textbook earth mover's distance with unit cost between any two classes is the
    total variation distance, half of this.) 0 for the reference's own distribution, 2
    for disjoint supports. NaN when either holds no example.
    """
    if len(counts) != len(reference):
        raise ValueError(f"{len(counts)} class counts against {len(reference)} reference counts")
    if any(c < 0 for c in counts) or any(c < 0 for c in reference):
        raise ValueError("class counts must be non-negative")
    n, m = sum(counts), sum(reference)
    if n == 0 or m == 0:
        return float("nan")
    return math.fsum(abs(c / n - r / m) for c, r in zip(counts, reference))


def mean_label_emd(client_counts: Sequence[Sequence[int]]) -> float:
    """Mean over clients of :func:`label_emd` against the clients' pooled label distribution (the partition's skew)."""
    if not client_counts:
        return float("nan")
    pooled = [sum(column) for column in zip(*client_counts)]
    return nanmean(label_emd(c, pooled) for c in client_counts)


def circuit_bloat(global_size: int, local_sizes: Sequence[int]) -> float:
    """Circuit bloat of one class: the global model's circuit size over the mean size of the clients' circuits.

    Above 1, averaging left the class a larger circuit than any client needs (the
    paper's code lists "circuit bloat" as an open question). NaN without local circuits
    or when they are all empty.
    """
    local = nanmean(float(s) for s in local_sizes)
    return global_size / local if local == local and local > 0 else float("nan")


def channel_class_counts(circuits: Mapping[int, Circuit], layer_sizes: Mapping[str, int]) -> dict[str, list[int]]:
    """Per layer and channel, how many classes' circuits (of one model) use the channel."""
    out = {layer: [0] * n for layer, n in layer_sizes.items()}
    for circuit in circuits.values():
        for layer, channels in circuit.items():
            for c in set(channels):
                out[layer][c] += 1
    return out


def polysemantic_share(circuits: Mapping[int, Circuit], layer_sizes: Mapping[str, int]) -> float:
    """Induced polysemanticity: of the channels some class's circuit uses, the share used by two or more classes.

    Over one model's circuits of every analysed class, all layers together. Compared
    between local models and the global one it asks whether averaging makes channels
    serve more classes (the paper's code lists "induced polysemanticity" as an open
    question). NaN when no circuit uses any channel.
    """
    counts = [k for per_layer in channel_class_counts(circuits, layer_sizes).values() for k in per_layer if k > 0]
    return sum(1 for k in counts if k >= 2) / len(counts) if counts else float("nan")


def dominance(ious: Mapping[K, float]) -> tuple[K | None, float, float]:
    """Which client's circuit the global circuit follows: ``(winner, lead, entropy)``.

    ``ious`` maps each client holding a class to the local-global IoU of its circuit of
    it. The winner has the highest IoU (the lowest id on ties); ``lead`` is its margin
    over the next (NaN with one client); ``entropy`` is the normalised Shannon entropy of
    the IoUs as shares, ``-sum p log p / log n`` with ``p_k = IoU_k / sum IoU``: 0 when
    the global circuit follows one client only, 1 when it follows all alike (NaN with
    fewer than two clients or no overlap at all). Paper section 3.2.1: "the FedAvg
    update in a given round aligns the global model with the circuit of one dominant
    client".
    """
    defined = {k: v for k, v in ious.items() if not math.isnan(v)}
    if not defined:
        return None, float("nan"), float("nan")
    ranked = sorted(defined.items(), key=lambda kv: (-kv[1], _order(kv[0])))
    winner, top = ranked[0]
    lead = top - ranked[1][1] if len(ranked) > 1 else float("nan")
    total = sum(defined.values())
    if len(defined) < 2 or total <= 0:
        return winner, lead, float("nan")
    shares = [v / total for v in defined.values() if v > 0]
    entropy = -math.fsum(p * math.log(p) for p in shares) / math.log(len(defined))
    return winner, lead, entropy


def _order(key: Hashable) -> tuple:
    return (0, key, "") if isinstance(key, (int, float)) else (1, 0, str(key))


# ---------------------------------------------------------------------- weight supports


def chance_support_iou(a: int, b: int, n: int) -> float:
    """Expected IoU of two random supports of ``a`` and ``b`` of a tensor's ``n`` weights.

    The same hypergeometric sum as :func:`chance_iou`, in log space (``scipy.special.gammaln``,
    vectorised over the intersection sizes): a weight tensor's binomial coefficients have
    thousands of digits, beyond what the integer sum can turn into a float.
    """
    if not (0 <= a <= n and 0 <= b <= n):
        raise ValueError(f"support sizes {a} and {b} must lie in 0..{n}")
    if a + b == 0:
        return float("nan")
    from scipy.special import gammaln  # here: the clients' import path (a process per message) stays without scipy

    k = np.arange(max(0, a + b - n), min(a, b) + 1, dtype=np.float64)

    def log_comb(top: float, low: np.ndarray | float) -> np.ndarray:
        return gammaln(top + 1) - gammaln(np.asarray(low) + 1) - gammaln(top - np.asarray(low) + 1)

    log_p = log_comb(a, k) + log_comb(n - a, b - k) - log_comb(n, b)
    return float(np.sum(np.exp(log_p) * k / (a + b - k)))


def support_iou(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """IoU of two tensors' nonzero supports (FLASH's mask consensus, at weight level) and its chance level.

    NaN for both when neither tensor has a nonzero weight.
    """
    sa, sb = a != 0, b != 0
    union = int(np.count_nonzero(sa | sb))
    if union == 0:
        return float("nan"), float("nan")
    inter = int(np.count_nonzero(sa & sb))
    return inter / union, chance_support_iou(int(sa.sum()), int(sb.sum()), a.size)
