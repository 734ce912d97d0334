"""A plain chain of gateable conv blocks and one linear readout (the paper's CNN is one with three).

Each block is a 3x3 convolution (padding 1), 2x2 max-pooling and ReLU; block ``k``'s
output is the circuit site ``conv{k}``. The chain has every optional capability of the
interface (:mod:`fedmi_flower.science.hook_points`): the ungated first block as a stem,
the sub-network-only pass, circuit edges and a permutation spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedmi_flower.science.hook_points import HookPoint, StemHeadModel
from fedmi_flower.science.models.chain import chain_edge_strengths
from fedmi_flower.science.permutation_spec import PermutationSpec


def _conv_block(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ReLU(max-pool(conv(h) + bias)) on the channels that ``weight`` keeps; ``bias`` is ``(out,)`` or a map
    ``(1, out, H, W)`` of the input's size."""
    side = h.shape[-1] // 2
    if weight.shape[0] == 0:
        return h.new_zeros(h.shape[0], 0, side, side)
    if h.shape[1] == 0:  # nothing flows in: the output is the bias (a map: pooled like any output)
        out = F.relu(bias).view(1, -1, 1, 1) if bias.dim() == 1 else F.relu(F.max_pool2d(bias, 2))
        return out.expand(h.shape[0], -1, side, side)
    if bias.dim() == 1:
        return F.relu(F.max_pool2d(F.conv2d(h, weight, bias, padding=1), 2))
    return F.relu(F.max_pool2d(F.conv2d(h, weight, padding=1) + bias, 2))


def _closed(open_channels: torch.Tensor, width: int) -> torch.Tensor:
    """The channels of a site of ``width`` that are not in ``open_channels``."""
    mask = torch.ones(width, dtype=torch.bool, device=open_channels.device)
    mask[open_channels] = False
    return torch.nonzero(mask).flatten()


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

    def circuit_logits(
        self, stem: torch.Tensor, circuit: dict[str, list[int]], fill: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits with only ``circuit``'s channels active, computing only its sub-network.

        Equal to :meth:`head` with the circuit's 0/1 gates. Without ``fill`` (zero
        ablation) an ablated channel outputs zero and adds nothing downstream, so it can be
        left out of every convolution. With ``fill`` (mean ablation: one value per channel
        of each site) an ablated channel is a constant map, so what it adds to the next
        convolution does not depend on the image: one convolution of that constant map per
        circuit, added as a bias map before pooling (the zero padding makes it differ at
        the borders, so it is a map, not a number). A circuit of k1, k2, k3 channels of the
        paper's CNN costs about (k1*k2 + k2*k3) / (32*64 + 64*128) of the dense pass.
        """
        device = stem.device
        kept = [torch.as_tensor(circuit.get(site, []), dtype=torch.long, device=device) for site in self.sites]
        # index_select returns NCHW even from channels-last: back to the layout oneDNN runs fast.
        h = stem.index_select(1, kept[0]).contiguous(memory_format=torch.channels_last)
        for site, conv, before, now in zip(self.sites, self.convs()[1:], kept, kept[1:]):
            assert conv.bias is not None, "the chain's convolutions have biases"
            weight = conv.weight[now]
            bias: torch.Tensor = conv.bias[now]
            if fill is not None:
                bias = bias.view(1, -1, 1, 1) + self._ablated_map(weight, before, fill[site], h.shape[-1])
            # oneDNN reorders a weight whose layout differs from the activations' on every call.
            h = _conv_block(h, weight[:, before].contiguous(memory_format=torch.channels_last), bias)
        last = self.convs()[-1]
        fc = self.fc.weight.view(self.fc.out_features, last.out_channels, -1)
        logits = F.linear(h.flatten(1), fc[:, kept[-1]].reshape(self.fc.out_features, -1), self.fc.bias)
        if fill is not None:
            closed = _closed(kept[-1], last.out_channels)
            constant = fill[self.sites[-1]][closed].view(1, -1, 1).expand(1, -1, fc.shape[-1])
            logits = logits + F.linear(constant.flatten(1), fc[:, closed].reshape(self.fc.out_features, -1))
        return logits

    @staticmethod
    def _ablated_map(weight: torch.Tensor, open_in: torch.Tensor, fill: torch.Tensor, side: int) -> torch.Tensor:
        """What the ablated input channels (each a constant map of its ``fill`` value) add to a 3x3 convolution with
        padding 1: a ``(1, out, side, side)`` map."""
        closed = _closed(open_in, weight.shape[1])
        if closed.numel() == 0 or weight.shape[0] == 0:
            return weight.new_zeros(1, weight.shape[0], side, side)
        constant = fill[closed].view(1, -1, 1, 1).expand(1, -1, side, side)
        return F.conv2d(constant, weight[:, closed], padding=1)

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
