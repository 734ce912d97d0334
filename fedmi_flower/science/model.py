"""The paper's CNN (section 2.1) with gateable channels, and weight and accuracy helpers.

Three 3x3 convolutions (32, 64, 128 channels, padding 1), each followed by ReLU and
2x2 max-pooling, then one linear layer. The conv layers carry the circuits: each
output channel of each of them can be gated (kept, or replaced by zero or by a fill
value) per sample, which is all that circuit discovery and evaluation need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fedmi_flower.science.data import ImageSplit

CIRCUIT_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3")
CHANNELS: tuple[int, ...] = (32, 64, 128)
"""Output channels of conv1..conv3 (the paper's SimpleCNN): 224 channels a circuit can hold."""

Gates = Mapping[str, torch.Tensor]

# Where each tensor sits in the weights as arrays (``get_weights``, state_dict order): (weight, bias) of
# conv1, conv2, conv3, then fc. Code that works on a client's weight arrays (channel matching, the
# aggregation rules) indexes them through these.
WEIGHT_INDEX: dict[str, int] = {layer: 2 * k for k, layer in enumerate(CIRCUIT_LAYERS)}
BIAS_INDEX: dict[str, int] = {layer: 2 * k + 1 for k, layer in enumerate(CIRCUIT_LAYERS)}
FC_WEIGHT_INDEX = 2 * len(CIRCUIT_LAYERS)


def layer_sizes_of(weights: Sequence[np.ndarray]) -> dict[str, int]:
    """Output channels of each circuit layer of a SimpleCNN given as its weight arrays."""
    return {layer: int(np.asarray(weights[WEIGHT_INDEX[layer]]).shape[0]) for layer in CIRCUIT_LAYERS}


def fc_blocks(fc_weight: np.ndarray, channels: int) -> np.ndarray:
    """fc's weight as (classes, conv3 channels, positions): its inputs come channel-major from the flatten."""
    return np.asarray(fc_weight).reshape(fc_weight.shape[0], channels, -1)


class SimpleCNN(nn.Module):
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

    Notes
    -----
    A gate multiplies a channel's output after ReLU and pooling. Since a gate is 0 or
    1 and max-pooling commutes with ReLU, this equals gating the convolution's output
    as the paper's reference code does, at a quarter of the cost; unlike gating before
    the ReLU it also lets the straight-through gradient reach a closed channel, so a
    channel closed too early can reopen during discovery.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = CHANNELS, image_size: int = 28
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        side = image_size // 8
        self.fc = nn.Linear(c3 * side * side, num_classes)
        # oneDNN's convolutions and pooling run 1.6x (training) to 2.5x (inference) faster
        # on channels-last tensors on this CPU (bench/README.md); activations follow the weights.
        self.to(memory_format=torch.channels_last)

    @property
    def layer_sizes(self) -> dict[str, int]:
        """Number of output channels of each circuit layer, in order."""
        return {name: getattr(self, name).out_channels for name in CIRCUIT_LAYERS}

    @staticmethod
    def _block(conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
        # Pool before ReLU: the same result as ReLU then pool, with ReLU on 4x fewer values.
        return F.relu(F.max_pool2d(conv(h), 2))

    @staticmethod
    def _gate(h: torch.Tensor, gate: torch.Tensor | None, fill: torch.Tensor | None) -> torch.Tensor:
        if gate is None:
            return h
        g = gate.view(*gate.shape, 1, 1)
        if fill is None:
            return h * g
        return h * g + fill.view(-1, 1, 1) * (1.0 - g)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 block output, before any gate: the part of the network that no gate changes.

        Evaluating many circuits on the same images computes it once and calls :meth:`head`.
        """
        return self._block(self.conv1, x)

    def head(self, stem: torch.Tensor, gates: Gates | None = None, fill: Gates | None = None) -> torch.Tensor:
        """Logits from a :meth:`stem` output, gating each circuit layer.

        Parameters
        ----------
        stem : torch.Tensor
            Output of :meth:`stem`.
        gates : mapping of layer name to tensor, optional
            Per layer, a gate of shape (C,) for all samples or (B, C) per sample; 1 keeps
            a channel, 0 ablates it. Layers not named stay fully open.
        fill : mapping of layer name to tensor, optional
            Per layer, the (C,) value an ablated channel takes (mean ablation); zero when
            not given.
        """
        gates = gates or {}
        fill = fill or {}
        h = self._gate(stem, gates.get("conv1"), fill.get("conv1"))
        h = self._gate(self._block(self.conv2, h), gates.get("conv2"), fill.get("conv2"))
        h = self._gate(self._block(self.conv3, h), gates.get("conv3"), fill.get("conv3"))
        return self.fc(h.flatten(1))

    def forward(self, x: torch.Tensor, gates: Gates | None = None, fill: Gates | None = None) -> torch.Tensor:
        """Logits for images ``x``; see :meth:`head` for ``gates`` and ``fill``."""
        return self.head(self.stem(x), gates, fill)

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Ungated output (after ReLU and pooling) of every circuit layer, by name."""
        h1 = self.stem(x)
        h2 = self._block(self.conv2, h1)
        return {"conv1": h1, "conv2": h2, "conv3": self._block(self.conv3, h2)}


def build_model(
    in_channels: int = 1, num_classes: int = 10, image_size: int = 28, seed: int | None = None
) -> SimpleCNN:
    """Return a fresh :class:`SimpleCNN`, initialised from ``seed`` when given."""
    if seed is None:
        return SimpleCNN(in_channels, num_classes, image_size=image_size)
    devices: list = []  # fork_rng over the CPU only; no CUDA state is touched
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return SimpleCNN(in_channels, num_classes, image_size=image_size)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Return the model's state as numpy arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    """Load numpy arrays (from :func:`get_weights` order) into the model.

    Raises
    ------
    ValueError
        If the number, shapes or values of the arrays do not fit the model; the message
        names the tensor.
    """
    state = model.state_dict()
    if len(arrays) != len(state):
        raise ValueError(f"expected {len(state)} weight tensors ({', '.join(state)}), got {len(arrays)}")
    new_state = {}
    for (name, current), array in zip(state.items(), arrays):
        array = np.asarray(array)
        if tuple(array.shape) != tuple(current.shape):
            raise ValueError(f"weight {name!r} has shape {tuple(array.shape)}, expected {tuple(current.shape)}")
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"weight {name!r} has dtype {array.dtype}, expected a float type")
        if not np.isfinite(array).all():
            raise ValueError(f"weight {name!r} holds NaN or infinite values")
        new_state[name] = torch.as_tensor(array, dtype=current.dtype)
    model.load_state_dict(new_state)


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy of a model on a split."""

    loss: float
    accuracy: float
    per_class_accuracy: dict[int, float]
    num_examples: int


@torch.no_grad()
def evaluate(model: SimpleCNN, split: ImageSplit, batch_size: int = 2048, num_classes: int = 10) -> Evaluation:
    """Return mean cross-entropy, accuracy and per-class accuracy of ``model`` on ``split``.

    Classes without examples in the split are left out of ``per_class_accuracy``.
    """
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct = 0.0, torch.zeros(num_classes, dtype=torch.int64)
    total = torch.zeros(num_classes, dtype=torch.int64)
    for start in range(0, len(split), batch_size):
        x = split.images[start : start + batch_size].to(device)
        y = split.labels[start : start + batch_size].to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        hit = (logits.argmax(1) == y).cpu()
        yc = y.cpu()
        total += torch.bincount(yc, minlength=num_classes)
        correct += torch.bincount(yc[hit], minlength=num_classes)
    n = int(total.sum())
    return Evaluation(
        loss=loss_sum / n if n else float("nan"),
        accuracy=float(correct.sum()) / n if n else float("nan"),
        per_class_accuracy={c: float(correct[c]) / int(total[c]) for c in range(num_classes) if int(total[c]) > 0},
        num_examples=n,
    )
