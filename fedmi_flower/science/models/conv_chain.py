"""A plain chain of gateable conv blocks and one linear readout (the paper's CNN is one with three).

Each block is a 3x3 convolution (padding 1), 2x2 max-pooling and ReLU; block ``k``'s
output is the circuit site ``conv{k}``. The chain has every optional capability of the
interface (:mod:`fedmi_flower.science.hook_points`): the ungated first block as a stem,
the sub-network-only pass, circuit edges and a permutation spec.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedmi_flower.science.hook_points import HookPoint, StemHeadModel
from fedmi_flower.science.models.chain import chain_edge_strengths
from fedmi_flower.science.permutation_spec import PermutationSpec


def _conv_block(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ReLU(max-pool(conv(h))) on the channels that ``weight`` keeps; a constant map when ``h`` has no channel."""
    side = h.shape[-1] // 2
    if weight.shape[0] == 0:
        return h.new_zeros(h.shape[0], 0, side, side)
    if h.shape[1] == 0:  # nothing flows in: the output is the bias everywhere
        return F.relu(bias).view(1, -1, 1, 1).expand(h.shape[0], -1, side, side)
    return F.relu(F.max_pool2d(F.conv2d(h, weight, bias, padding=1), 2))


class ConvChain(StemHeadModel):
    """Conv blocks of ``channels`` (3x3, ReLU, 2x2 max-pool), then one linear layer.

    Parameters
    ----------
    in_channels : int
        Image channels.
    num_classes : int
        Output classes.
    channels : sequence of int
        Output channels of each block, in order; each block is a site ``conv1``, ``conv2``, ...
    image_size : int
        Height and width of the input.

    Notes
    -----
    A site's gate multiplies a channel's output after ReLU and pooling. Since a gate is
    0 or 1 and max-pooling commutes with ReLU, this equals gating the convolution's
    output as the paper's reference code does, at a quarter of the cost; unlike gating
    before the ReLU it also lets the straight-through gradient reach a closed channel,
    so a channel closed too early can reopen during discovery.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int], image_size: int) -> None:
        super().__init__()
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive widths, got {list(channels)}")
        side = int(image_size)
        for _ in channels:
            side //= 2
        if side < 1:
            raise ValueError(f"{len(channels)} pooling blocks leave nothing of a {image_size}x{image_size} image")
        self.sites = tuple(f"conv{k + 1}" for k in range(len(channels)))
        previous = in_channels
        # Registered in the order conv1, conv2, ..., fc: initialisation draws in that order.
        for site, width in zip(self.sites, channels):
            setattr(self, site, nn.Conv2d(previous, int(width), 3, padding=1))
            previous = int(width)
        self.fc = nn.Linear(previous * side * side, num_classes)
        self.hooks = nn.ModuleList(HookPoint(site, int(width)) for site, width in zip(self.sites, channels))
        # oneDNN's convolutions and pooling run 1.6x (training) to 2.5x (inference) faster
        # on channels-last tensors on this CPU (bench/README.md); activations follow the weights.
        self.to(memory_format=torch.channels_last)

    def convs(self) -> list[nn.Conv2d]:
        return [getattr(self, site) for site in self.sites]

    @staticmethod
    def _block(conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
        # Pool before ReLU: the same result as ReLU then pool, with ReLU on 4x fewer values.
        return F.relu(F.max_pool2d(conv(h), 2))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The first block's output, before its gate: the part of the network that no gate changes."""
        return self._block(self.convs()[0], x)

    def rest(self, h: torch.Tensor) -> torch.Tensor:
        convs = self.convs()
        h = self.hooks[0](h)
        for conv, hook in zip(convs[1:], self.hooks[1:]):
            h = hook(self._block(conv, h))
        return self.fc(h.flatten(1))

    def circuit_logits(self, stem: torch.Tensor, circuit: dict[str, list[int]]) -> torch.Tensor:
        """Logits with only ``circuit``'s channels active (zero ablation), computing only its sub-network.

        Equal to :meth:`head` with the circuit's 0/1 gates: an ablated channel outputs
        zero and adds nothing downstream, so it can be left out of every convolution. A
        circuit of k1, k2, k3 channels of the paper's CNN costs (k1*k2 + k2*k3) /
        (32*64 + 64*128) of the dense pass; at the paper's sparsity that is a few percent.
        """
        device = stem.device
        kept = [torch.as_tensor(circuit.get(site, []), dtype=torch.long, device=device) for site in self.sites]
        h = stem.index_select(1, kept[0])
        for conv, before, now in zip(self.convs()[1:], kept, kept[1:]):
            assert conv.bias is not None, "the chain's convolutions have biases"
            h = _conv_block(h, conv.weight[now][:, before], conv.bias[now])
        last = self.convs()[-1]
        fc = self.fc.weight.view(self.fc.out_features, last.out_channels, -1)[:, kept[-1]]
        return F.linear(h.flatten(1), fc.reshape(self.fc.out_features, -1), self.fc.bias)

    def circuit_edge_strengths(
        self, circuit: dict[str, list[int]], target_class: int | None = None
    ) -> dict[str, dict[tuple[int, int], float]]:
        """|weight| between the circuit's channels of consecutive sites (see :func:`chain_edge_strengths`)."""
        return chain_edge_strengths(
            [(site, conv.weight) for site, conv in zip(self.sites, self.convs())], self.fc.weight, circuit, target_class
        )

    def permutation_spec(self) -> PermutationSpec:
        """Each conv's filters produce its site; the next conv's input side, and fc's column blocks, consume it."""
        axes: dict[str, tuple[str | None, ...]] = {}
        previous: str | None = None
        for site in self.sites:
            axes[f"{site}.weight"] = (site, previous, None, None)
            axes[f"{site}.bias"] = (site,)
            previous = site
        axes["fc.weight"] = (None, previous)
        axes["fc.bias"] = (None,)
        return PermutationSpec(axes, {site: site for site in self.sites})
