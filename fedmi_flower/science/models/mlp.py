"""A multi-layer perceptron whose hidden units are circuit sites.

The image is flattened and passes through linear layers with ReLU; hidden layer ``k``'s
units (after the ReLU) are the site ``fc{k}``, and a linear readout gives the logits.
It has a stem (the first hidden layer, before its gate) and a permutation spec; circuit
graphs show its units without edges (the input has one node per pixel).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedmi_flower.science.hook_points import HookPoint, StemHeadModel
from fedmi_flower.science.permutation_spec import PermutationSpec

HIDDEN: tuple[int, ...] = (256, 128)


class MLP(StemHeadModel):
    """Linear layers of ``hidden`` units with ReLU, then a linear readout.

    Parameters
    ----------
    in_channels, image_size : int
        The input is ``in_channels x image_size x image_size``, flattened.
    num_classes : int
        Output classes.
    hidden : sequence of int
        Units of each hidden layer; layer ``k`` is the site ``fc{k}``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, hidden: Sequence[int] = HIDDEN) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty list of positive widths, got {hidden}")
        self.sites = tuple(f"fc{k + 1}" for k in range(len(hidden)))
        previous = in_channels * image_size * image_size
        for site, width in zip(self.sites, hidden):
            setattr(self, site, nn.Linear(previous, width))
            previous = width
        self.out = nn.Linear(previous, num_classes)
        self.hooks = nn.ModuleList(HookPoint(site, width) for site, width in zip(self.sites, hidden))

    def layers(self) -> list[nn.Linear]:
        return [getattr(self, site) for site in self.sites]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The first hidden layer's units before their gate."""
        return F.relu(self.layers()[0](x.flatten(1)))

    def rest(self, h: torch.Tensor) -> torch.Tensor:
        h = self.hooks[0](h)
        for layer, hook in zip(self.layers()[1:], self.hooks[1:]):
            h = hook(F.relu(layer(h)))
        return self.out(h)

    def permutation_spec(self) -> PermutationSpec:
        """Each layer's rows produce its units; the next layer's columns consume them."""
        axes: dict[str, tuple[str | None, ...]] = {}
        previous: str | None = None
        for site in self.sites:
            axes[f"{site}.weight"] = (site, previous)
            axes[f"{site}.bias"] = (site,)
            previous = site
        axes["out.weight"] = (None, previous)
        axes["out.bias"] = (None,)
        return PermutationSpec(axes, {site: site for site in self.sites})
