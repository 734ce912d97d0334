"""ResNet-10 as the paper's reference code builds it (ha405/FedMI ``core/resnet.py``), with circuit sites.

A 7x7 stride-2 stem convolution with BatchNorm, ReLU and 3x3 stride-2 max-pooling,
then four BasicBlocks (two 3x3 convolutions with BatchNorm, a shortcut that is the
identity or a 1x1 convolution with BatchNorm where the shape changes) of 64, 128, 192
and 256 channels (strides 1, 2, 2, 2), global average pooling and a linear layer.

Circuit sites: ``stem`` (after the max-pool) and ``block1`` .. ``block4`` (each block's
output after the residual sum and ReLU): 704 channels. Gating the stem's output gates
both paths into block 1, as ablating a channel of the residual stream must.

BatchNorm is kept (as in the reference) and its running statistics travel with the
weights: FedAvg averages them like any other array, which is what the reference's
aggregation does too; a BatchNorm's counter of batches seen is not a weight
(:func:`~fedmi_flower.science.model.weight_names`). Discovery and scoring run in eval
mode, on the running statistics.

Its permutation spec ties the residual stream: the stem and block 1 share one group
(block 1's shortcut is the identity), and each later block's output group holds its
second convolution and its shortcut's convolution, both with their BatchNorms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedmi_flower.science.hook_points import HookPoint, StemHeadModel
from fedmi_flower.science.permutation_spec import PermutationSpec

WIDTHS: tuple[int, ...] = (64, 128, 192, 256)
STRIDES: tuple[int, ...] = (1, 2, 2, 2)
_BN = ("weight", "bias", "running_mean", "running_var")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut; its output is a circuit site."""

    def __init__(self, site: str, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.hook_out = HookPoint(site, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.hook_out(F.relu(out + shortcut))


class ResNet10(StemHeadModel):
    """The reference's ResNet with four single-block stages (see the module docstring).

    Parameters
    ----------
    in_channels : int
        Image channels (1 for Fashion-MNIST, 3 for CIFAR-10).
    num_classes : int
        Output classes.
    widths : sequence of four ints
        Channels of blocks 1..4 (the stem has the first block's width).
    image_size : int
        Unused (global average pooling takes any size); accepted so every model builds alike.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, widths: Sequence[int] = WIDTHS) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != len(STRIDES) or min(widths) < 1:
            raise ValueError(f"widths must be four positive channel counts, got {widths}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.hook_stem = HookPoint("stem", widths[0])
        previous = widths[0]
        for k, (width, stride) in enumerate(zip(widths, STRIDES), start=1):
            setattr(self, f"block{k}", BasicBlock(f"block{k}", previous, width, stride))
            previous = width
        self.fc = nn.Linear(previous, num_classes)
        self.to(memory_format=torch.channels_last)

    def blocks(self) -> list[BasicBlock]:
        return [getattr(self, f"block{k}") for k in range(1, len(STRIDES) + 1)]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's output before its gate: convolution, BatchNorm, ReLU, max-pool."""
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)

    def rest(self, h: torch.Tensor) -> torch.Tensor:
        h = self.hook_stem(h)
        for block in self.blocks():
            h = block(h)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    def permutation_spec(self) -> PermutationSpec:
        """The residual stream's groups (stem = block 1's output, then one per block) and each block's middle."""
        axes: dict[str, tuple[str | None, ...]] = {"conv1.weight": ("stem", None, None, None)}
        axes.update({f"bn1.{p}": ("stem",) for p in _BN})
        stream = "stem"  # the group of the channels entering the next block
        site_groups = {"stem": "stem"}
        for k, block in enumerate(self.blocks(), start=1):
            name, middle = f"block{k}", f"block{k}.middle"
            out = stream if block.downsample is None else name
            axes[f"{name}.conv1.weight"] = (middle, stream, None, None)
            axes.update({f"{name}.bn1.{p}": (middle,) for p in _BN})
            axes[f"{name}.conv2.weight"] = (out, middle, None, None)
            axes.update({f"{name}.bn2.{p}": (out,) for p in _BN})
            if block.downsample is not None:
                axes[f"{name}.downsample.0.weight"] = (out, stream, None, None)
                axes.update({f"{name}.downsample.1.{p}": (out,) for p in _BN})
            site_groups[name] = out
            stream = out
        axes["fc.weight"] = (None, stream)
        axes["fc.bias"] = (None,)
        return PermutationSpec(axes, site_groups)
