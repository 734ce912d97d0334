"""Edges of a circuit in a chain of layers, each site produced from the previous one by one weight tensor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


@torch.no_grad()
def chain_edge_strengths(
    layers: Sequence[tuple[str, torch.Tensor]],
    readout: torch.Tensor,
    circuit: Mapping[str, list[int]],
    target_class: int | None = None,
) -> dict[str, dict[tuple[int, int], float]]:
    """Per destination site, ``{(source, destination): |weight|}`` between a circuit's channels.

    ``layers`` are ``(site, weight)`` in order, each weight ``(out, in, ...)`` producing
    the site from the previous one (the first from the input, whose channels are all
    present); a conv edge's strength sums the kernel. ``readout`` is the classifier's
    weight ``(classes, last site's channels x positions)``, channel-major: its edges,
    under ``"fc"``, go from the last site's circuit channels to ``target_class`` (to every
    class when None), summed over positions. Only nonzero weights are edges.
    """
    edges: dict[str, dict[tuple[int, int], float]] = {}
    previous: list[int] | None = None
    for site, weight in layers:
        w = weight.detach().abs().cpu()
        w = w.sum(dim=tuple(range(2, w.dim()))) if w.dim() > 2 else w  # (out, in)
        dst = torch.as_tensor(circuit.get(site, []), dtype=torch.long)
        src = torch.arange(w.shape[1]) if previous is None else torch.as_tensor(previous, dtype=torch.long)
        sub = w[dst][:, src] if dst.numel() and src.numel() else torch.zeros(0, 0)
        pairs = torch.nonzero(sub > 0)
        edges[site] = {(int(src[j]), int(dst[i])): float(sub[i, j]) for i, j in pairs.tolist()}
        previous = circuit.get(site, [])
    fc = readout.detach().abs().cpu()
    channels = layers[-1][1].shape[0]
    per_channel = fc.view(fc.shape[0], channels, -1).sum(dim=2)  # (classes, last site's channels)
    outputs = range(fc.shape[0]) if target_class is None else [int(target_class)]
    edges["fc"] = {
        (c, k): float(per_channel[k, c]) for k in outputs for c in (previous or []) if float(per_channel[k, c]) > 0
    }
    return edges
