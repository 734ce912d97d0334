"""Disjoint-circuit local training: the cure the paper proposes and does not build (section 4).

"Enforce orthogonality constraints during local training, explicitly forcing clients to encode
unique features into disjoint sub-networks": if FedAvg's destructive interference is two
clients' classes colliding on the same channels, a client that keeps off the channels other
clients' classes use should not overwrite them. This module says which channels a client
keeps off and what it pays for using them; ``train.disjoint`` picks the rule and
``train.disjoint_lambda`` the price (:func:`~fedmi_flower.science.sparsity.train_sparse` adds it
to the loss):

``circuits``
    The channels that other clients' circuits of classes this client does not hold occupied in
    the previous round. The server sends every class's union of its clients' circuits
    (:func:`class_unions`, degenerate circuits left out: an empty or whole-network circuit says
    nothing about where a class lives); the client keeps off those of the classes it does not
    hold (:func:`occupied_by_others`). Round 1 has none.
``budget``
    A fixed share of every site's channels per class, contiguous blocks in class order; a client
    keeps off every block but its own classes' (:func:`budget_occupied`). No message needed.

The price is per unit of activation: lambda times the mean absolute activation of the kept-off
channels, summed over sites (:func:`activation_penalty`), so it acts on what the channels carry
for this client's images, not on weights another penalty (sparsity) already shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from fedmi_flower.science.circuits import Circuit


def class_unions(
    circuits: Mapping[int, Mapping[int, Circuit]], degenerate: Mapping[int, Iterable[int]] | None = None
) -> dict[int, Circuit]:
    """Class -> the union of every client's circuit of the class (client -> class -> circuit), leaving out the
    circuits ``degenerate`` (client -> classes) names."""
    dead = {pid: set(classes) for pid, classes in (degenerate or {}).items()}
    out: dict[int, dict[str, set[int]]] = {}
    for pid, per_class in circuits.items():
        for cls, circuit in per_class.items():
            if cls in dead.get(pid, set()):
                continue
            union = out.setdefault(int(cls), {})
            for site, channels in circuit.items():
                union.setdefault(site, set()).update(int(c) for c in channels)
    return {cls: {site: sorted(ch) for site, ch in sites.items()} for cls, sites in sorted(out.items())}


def occupied_by_others(unions: Mapping[int, Circuit], held: Iterable[int]) -> Circuit:
    """The channels of the classes a client does not hold, from :func:`class_unions`: what it keeps off."""
    mine = set(held)
    out: dict[str, set[int]] = {}
    for cls, circuit in unions.items():
        if cls in mine:
            continue
        for site, channels in circuit.items():
            out.setdefault(site, set()).update(channels)
    return {site: sorted(ch) for site, ch in out.items() if ch}


def budget_occupied(site_sizes: Mapping[str, int], held: Iterable[int], num_classes: int) -> Circuit:
    """Every site's channels outside the blocks of the classes a client holds (class ``c`` owns channels
    ``[c * width // num_classes, (c + 1) * width // num_classes)`` of a site of ``width`` channels; a site narrower
    than the class count leaves some classes no channel there)."""
    if num_classes < 1:
        raise ValueError(f"a channel budget needs at least one class, got {num_classes}")
    mine = set(held)
    out: Circuit = {}
    for site, width in site_sizes.items():
        allowed = {ch for c in mine for ch in range(c * width // num_classes, (c + 1) * width // num_classes)}
        kept_off = [ch for ch in range(width) if ch not in allowed]
        if kept_off:
            out[site] = kept_off
    return out


def activation_penalty(activations: Mapping[str, torch.Tensor], kept_off: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum over sites of the mean absolute activation of the kept-off channels (indices on dimension 1)."""
    terms = [activations[site].index_select(1, idx).abs().mean() for site, idx in kept_off.items() if idx.numel()]
    if not terms:
        raise ValueError("no kept-off channel at any site: nothing to penalise")
    return torch.stack(terms).sum()
