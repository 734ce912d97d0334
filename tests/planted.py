"""Hand-built networks whose circuits are known: the planted answers of the science tests."""

from __future__ import annotations

import torch

from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.model import SimpleCNN

# Each planted class reads the image through one channel per layer.
PLANTED = {
    3: {"conv1": [5], "conv2": [10], "conv3": [20]},
    8: {"conv1": [17], "conv2": [41], "conv3": [99]},
}
DISTRACTOR = {"conv1": [7], "conv2": [11], "conv3": [21]}  # votes for class 0 on every image
DEFAULT_CLASS = 0  # what the network answers when nothing else speaks


def _relay(model: SimpleCNN, path: dict[str, list[int]], weight: float = 1.0) -> None:
    """Wire a chain conv1 -> conv2 -> conv3 that copies image brightness along ``path``."""
    (a,), (b,), (c,) = path["conv1"], path["conv2"], path["conv3"]
    model.conv1.weight.data[a, 0, 1, 1] = weight
    model.conv2.weight.data[b, a, 1, 1] = 1.0
    model.conv3.weight.data[c, b, 1, 1] = 1.0


def planted_model(seed: int = 0) -> SimpleCNN:
    """A SimpleCNN with the circuits of :data:`PLANTED`, a distractor path, and inert noise.

    Bright images drive every relay. Class k's logit reads only its own relay's conv3
    channel; the distractor relay adds to the default class's logit, so a circuit for k
    must close it. The remaining channels get small random weights but no route to the
    logits: they cost L0 penalty and buy nothing.
    """
    g = torch.Generator().manual_seed(seed)
    model = SimpleCNN()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for conv in (model.conv1, model.conv2, model.conv3):
            conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=g))
        planted_channels = {
            layer: [ch for path in [*PLANTED.values(), DISTRACTOR] for ch in path[layer]]
            for layer in ("conv1", "conv2", "conv3")
        }
        # Planted channels listen only to their relay.
        for layer, channels in planted_channels.items():
            conv = getattr(model, layer)
            conv.weight[channels] = 0.0
        # Noise channels must not feed the relays either.
        for layer_in, layer_out in (("conv1", "conv2"), ("conv2", "conv3")):
            getattr(model, layer_out).weight[:, planted_channels[layer_in]] = 0.0
        for path in PLANTED.values():
            _relay(model, path)
        _relay(model, DISTRACTOR)
        fc = model.fc.weight.view(10, 128, 9)
        for cls, path in PLANTED.items():
            fc[cls, path["conv3"][0]] = 0.5  # 9 positions x 0.5 = +4.5 on a bright image
        fc[DEFAULT_CLASS, DISTRACTOR["conv3"][0]] = 0.6  # +5.4: beats any planted class while open
        model.fc.bias[DEFAULT_CLASS] = 2.0
    return model


def bright_images(n: int, label: int, seed: int = 0) -> ImageSplit:
    """``n`` bright images (values around 1) labelled ``label``."""
    g = torch.Generator().manual_seed(seed * 100 + label)
    images = 1.0 + 0.1 * torch.rand(n, 1, 28, 28, generator=g)
    return ImageSplit(images, torch.full((n,), label, dtype=torch.int64))


def concat(*splits: ImageSplit) -> ImageSplit:
    return ImageSplit(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]))
