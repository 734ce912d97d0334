"""Hand-built networks whose circuits are known: the planted answers of the science tests."""

from __future__ import annotations

import torch

from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.models import SimpleCNN

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


def _noise_model(seed: int, paths: list[dict[str, list[int]]]) -> SimpleCNN:
    """A SimpleCNN of small random conv weights and nothing else, whose channels on ``paths`` hear nothing.

    The channels of ``paths`` are left for the caller to wire; the noise channels feed none
    of them, so they have no route to the logits: they cost L0 penalty and buy nothing.
    """
    g = torch.Generator().manual_seed(seed)
    model = SimpleCNN()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for conv in (model.conv1, model.conv2, model.conv3):
            conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=g))
        used = {layer: [ch for path in paths for ch in path.get(layer, [])] for layer in ("conv1", "conv2", "conv3")}
        for layer, channels in used.items():
            getattr(model, layer).weight[channels] = 0.0
        for layer_in, layer_out in (("conv1", "conv2"), ("conv2", "conv3")):
            getattr(model, layer_out).weight[:, used[layer_in]] = 0.0
    return model


def planted_model(seed: int = 0) -> SimpleCNN:
    """A SimpleCNN with the circuits of :data:`PLANTED`, a distractor path, and inert noise.

    Bright images drive every relay. Class k's logit reads only its own relay's conv3
    channel; the distractor relay adds to the default class's logit, so a circuit for k
    must close it. The remaining channels get small random weights but no route to the
    logits: they cost L0 penalty and buy nothing.
    """
    model = _noise_model(seed, [*PLANTED.values(), DISTRACTOR])
    with torch.no_grad():
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


# ---------------------------------------------------------------------- a network with a shortcut

EVIDENCE = {
    3: {"conv1": [5], "conv2": [10], "conv3": [20]},
    8: {"conv1": [17], "conv2": [41], "conv3": [99]},
}
"""Where each class's evidence flows in :func:`shortcut_model`: class 3 reads the top of the image, 8 the bottom."""
SHORTCUT = {"conv3": [30]}
"""A channel that is on for every image and votes for class 3, cancelled in the full model by :data:`BRAKE`."""
BRAKE = {"conv3": [31]}


def shortcut_model(seed: int = 0) -> SimpleCNN:
    """A SimpleCNN whose class evidence depends on the image, plus a shortcut that answers 3 for everything.

    Class 3's logit reads relay :data:`EVIDENCE` ``[3]`` on the top row of the final 3x3
    map, class 8's reads relay ``[8]`` on the bottom row; a dark image leaves the default
    class 0 (bias 2) on top. Two conv3 channels are on for every image (bias 1, no
    input): :data:`SHORTCUT` adds +9 to class 3's logit, :data:`BRAKE` subtracts 9. In the
    full model they cancel. With zero ablation a circuit that keeps the shortcut and
    drops the brake answers 3 for every image: a one-channel circuit that the paper's
    objective (target images only) rewards, and that behaves nothing like the model.
    """
    model = _noise_model(seed, [*EVIDENCE.values(), SHORTCUT, BRAKE])
    with torch.no_grad():
        for path in EVIDENCE.values():
            _relay(model, path)
        assert model.conv3.bias is not None
        model.conv3.bias[SHORTCUT["conv3"] + BRAKE["conv3"]] = 1.0
        fc = model.fc.weight.view(10, 128, 3, 3)
        fc[3, EVIDENCE[3]["conv3"][0], 0, :] = 2.0  # top row: +6 on an image bright on top
        fc[8, EVIDENCE[8]["conv3"][0], 2, :] = 2.0  # bottom row
        fc[3, SHORTCUT["conv3"][0]] = 1.0  # +9 on every image
        fc[3, BRAKE["conv3"][0]] = -1.0  # -9 on every image
        model.fc.bias[DEFAULT_CLASS] = 2.0
    return model


def half_bright_images(n: int, label: int, seed: int = 0) -> ImageSplit:
    """``n`` images labelled ``label``: bright on top for 3, at the bottom for 8, dark for any other class."""
    g = torch.Generator().manual_seed(seed * 100 + label)
    images = 0.05 * torch.rand(n, 1, 28, 28, generator=g)
    if label == 3:
        images[:, :, :12] += 1.0
    elif label == 8:
        images[:, :, 16:] += 1.0
    return ImageSplit(images, torch.full((n,), label, dtype=torch.int64))
