"""Linear CKA: how alike two models' representations are, whatever the order of their channels (issue 27, item 5).

Centred kernel alignment (Kornblith et al. 2019) with the linear kernel compares two
sets of features of the same ``n`` images through their ``n x n`` Gram matrices:
``CKA(X, Y) = <K, L> / (|K| |L|)`` with ``K = Xc Xc^T`` and ``L = Yc Yc^T`` for
column-centred features. It is invariant to any orthogonal transform of either side,
channel permutations included, so two models that hold the same circuit in other
channels read 1 where raw IoU reads chance. The Gram form costs ``n^2 p`` and keeps
``n x n`` matrices, fine for the few hundred reference images it is measured on; a few
lines of torch here beat a dependency (no maintained CKA package is faster than the
matrix products below, and the field's ones wrap the same three lines).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedmi_flower.science.circuits import Circuit


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices of the same images, rows paired: ``(n, p)`` and ``(n, q)``.

    Features of more dimensions are flattened after the first. NaN when either side has
    no variance (a site whose every channel is off).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same images on both sides, got {x.shape[0]} and {y.shape[0]} rows")
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    return _cka_of_grams(x @ x.T, y @ y.T)


def masked(features: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """A site's features ``(n, C, ...)`` with every channel but ``channels`` zeroed (the circuit tier)."""
    keep = torch.zeros(features.shape[1], dtype=features.dtype, device=features.device)
    keep[channels] = 1.0
    return features * keep.view(1, -1, *([1] * (features.dim() - 2)))


def site_cka(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """CKA per site of two models' activations on the same images (the latent tier)."""
    return {site: linear_cka(a[site], b[site]) for site in a if site in b}


def _cka_of_grams(k: torch.Tensor, l_: torch.Tensor) -> float:
    denominator = float(torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(l_))
    if denominator == 0.0 or not math.isfinite(denominator):
        return math.nan
    return float((k * l_).sum()) / denominator


class ChannelGrams:
    """One model's centred Gram matrix of every channel at every site, on one set of images.

    The Gram matrix of a site's features is the sum of its channels' own Gram matrices,
    and so is that of the features masked to a circuit's channels (masking zeroes whole
    features, which centring leaves zero). Computed once, they give the site's CKA and
    every circuit's masked CKA (the reference's circuit tier) as sums, without another
    pass over the features: ``C x n x n`` numbers a site (float32).
    """

    def __init__(self, features: Mapping[str, torch.Tensor]) -> None:
        self.channels: dict[str, torch.Tensor] = {}
        for site, a in features.items():
            x = a.reshape(a.shape[0], a.shape[1], -1).double()
            x = x - x.mean(0, keepdim=True)
            self.channels[site] = torch.einsum("icp,jcp->cij", x, x).float()

    def gram(self, site: str, channels: list[int] | None = None) -> torch.Tensor:
        """The site's Gram matrix over every channel, or over ``channels`` only (float64)."""
        per = self.channels[site]
        return (per if channels is None else per[channels]).double().sum(0)

    def cka(self, other: ChannelGrams) -> dict[str, float]:
        """CKA per site with ``other`` (the same images, the other model)."""
        return {
            site: _cka_of_grams(self.gram(site), other.gram(site)) for site in self.channels if site in other.channels
        }

    def circuit_cka(self, other: ChannelGrams, mine: Circuit, theirs: Circuit) -> float:
        """CKA with each model's features masked to its own circuit, mean over the sites where both circuits hold
        channels (NaN where none does)."""
        values = [
            _cka_of_grams(self.gram(site, mine[site]), other.gram(site, theirs[site]))
            for site in self.channels
            if site in other.channels and mine.get(site) and theirs.get(site)
        ]
        kept = [v for v in values if not math.isnan(v)]
        return sum(kept) / len(kept) if kept else math.nan
