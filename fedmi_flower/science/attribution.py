"""A second discovery method: attribution scores of every channel in one pass (issue 27, item 2).

Attribution patching (Nanda 2023; Syed et al. 2023) estimates the effect of ablating
an activation by its first-order Taylor term instead of running the ablation. For a
channel at a site, replacing its activation ``a`` by the ablation's fill ``f`` (its
mean, or zero) changes the class's log-probability by about ``grad . (f - a)``; the
channel's score here is the negative of that, ``grad . (a - f)``, summed over the
channel's positions and averaged over the class's images: how much the class loses
when the channel is ablated. One forward and one backward pass per class score every
channel of every site, with no optimisation: a method that shares nothing with the
learned gates (:mod:`fedmi_flower.science.discovery`) but the channels it ranks.

The scores rank channels like the learned gate scores do, so the same thresholds apply:
the top ``k`` (:func:`~fedmi_flower.science.circuits.top_channels`, the learned
circuit's size) or the fewest that reach a faithfulness
(:func:`~fedmi_flower.science.circuits.smallest_faithful_circuit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.hook_points import captured, site_sizes
from fedmi_flower.science.seeding import torch_generator

ROWS_PER_CLASS = 128
"""Images of a class its attribution is averaged over (a seeded draw when ``data`` holds more)."""


def attribution_scores(
    model: nn.Module,
    data: ImageSplit,
    classes: Sequence[int],
    *,
    fill: Mapping[str, torch.Tensor] | None = None,
    rows_per_class: int = ROWS_PER_CLASS,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Every site's channel scores for each class of ``classes``: ``{site: (len(classes), C)}``.

    ``fill`` is the ablation's value per channel (mean ablation; None: zero ablation). A
    class without images in ``data`` scores 0 everywhere.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    sizes = site_sizes(model)
    out = {site: torch.zeros(len(classes), width, device=device) for site, width in sizes.items()}
    try:
        for row, cls in enumerate(classes):
            rows = torch.nonzero(data.labels.to(device) == int(cls)).flatten()
            if rows.numel() == 0:
                continue
            if rows.numel() > rows_per_class:
                pick = torch.randperm(rows.numel(), generator=torch_generator(seed, "attribution", int(cls)))
                rows = rows[pick[:rows_per_class].to(device)].sort().values
            images = data.images.to(device)[rows].clone().requires_grad_(True)  # a graph through frozen weights
            with captured(model) as store:
                log_p = torch.log_softmax(model(images), dim=1)[:, int(cls)].sum()
            sites = [s for s in sizes if s in store]
            grads = torch.autograd.grad(log_p, [store[s] for s in sites])
            for site, grad in zip(sites, grads):
                act = store[site].detach()
                if fill is not None and site in fill:
                    act = act - fill[site].view(1, -1, *([1] * (act.dim() - 2)))
                effect = (grad * act).sum(dim=tuple(range(2, act.dim()))) if act.dim() > 2 else grad * act
                out[site][row] = effect.mean(0)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return out
