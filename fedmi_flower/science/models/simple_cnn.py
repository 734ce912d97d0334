"""The paper's CNN (section 2.1): conv 32-64-128 (3x3, padding 1, ReLU, 2x2 max-pool), then one linear layer.

Its circuit sites are ``conv1``, ``conv2`` and ``conv3``: 224 channels. It is the
:class:`~fedmi_flower.science.models.conv_chain.ConvChain` of three blocks, so it has
every optional capability of the interface.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedmi_flower.science.models.conv_chain import ConvChain

SITES: tuple[str, ...] = ("conv1", "conv2", "conv3")
"""Its circuit sites, in order."""
CHANNELS: tuple[int, ...] = (32, 64, 128)
"""Output channels of conv1..conv3 (the paper's SimpleCNN): 224 channels a circuit can hold."""


class SimpleCNN(ConvChain):
    """Conv(32)-Conv(64)-Conv(128)-Linear, each conv followed by ReLU and 2x2 max-pool.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for MNIST and Fashion-MNIST).
    num_classes : int
        Output classes.
    channels : sequence of three ints
        Output channels of conv1..conv3.
    image_size : int
        Height and width of the input (28 for MNIST).
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = CHANNELS, image_size: int = 28
    ) -> None:
        if len(channels) != 3:
            raise ValueError(f"the paper's CNN has three conv layers, got channels {list(channels)}")
        super().__init__(in_channels, num_classes, channels, image_size)
