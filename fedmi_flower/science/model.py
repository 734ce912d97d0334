"""A model's weights as numpy arrays, and its loss and accuracy on a split.

The model itself is any module of :mod:`fedmi_flower.science.models` (or a
researcher's own) that speaks the circuit interface of
:mod:`fedmi_flower.science.hook_points`; the weights that cross between clients and
server are its floating-point state tensors in ``state_dict`` order
(:func:`weight_names`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fedmi_flower.science.data import ImageSplit


def weight_names(model: nn.Module) -> list[str]:
    """The state tensors that are weights, in ``state_dict`` order: every floating-point one.

    A BatchNorm's ``num_batches_tracked`` (an integer counter, used only when its
    momentum is None) is not a weight: it does not travel and is not averaged.
    """
    return [name for name, t in model.state_dict().items() if t.is_floating_point()]


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Return the model's weights (:func:`weight_names`) as numpy arrays, in ``state_dict`` order."""
    state = model.state_dict()
    return [state[name].detach().cpu().numpy().copy() for name in weight_names(model)]


def set_weights(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    """Load numpy arrays (from :func:`get_weights` order) into the model.

    Raises
    ------
    ValueError
        If the number, shapes or values of the arrays do not fit the model; the message
        names the tensor.
    """
    full = model.state_dict()
    state = {name: full[name] for name in weight_names(model)}
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
    model.load_state_dict(new_state, strict=False)


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy of a model on a split."""

    loss: float
    accuracy: float
    per_class_accuracy: dict[int, float]
    num_examples: int


@torch.no_grad()
def evaluate(model: nn.Module, split: ImageSplit, batch_size: int = 2048, num_classes: int | None = None) -> Evaluation:
    """Return mean cross-entropy, accuracy and per-class accuracy of ``model`` on ``split``.

    ``num_classes`` defaults to the model's output width. Classes without examples in
    the split are left out of ``per_class_accuracy``.
    """
    model.eval()
    device = next(model.parameters()).device
    loss_sum = 0.0
    correct, total = torch.zeros(num_classes or 0, dtype=torch.int64), torch.zeros(num_classes or 0, dtype=torch.int64)
    for start in range(0, len(split), batch_size):
        x = split.images[start : start + batch_size].to(device)
        y = split.labels[start : start + batch_size].to(device)
        logits = model(x)
        if num_classes is None:
            num_classes = int(logits.shape[1])
            correct, total = torch.zeros(num_classes, dtype=torch.int64), torch.zeros(num_classes, dtype=torch.int64)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        hit = (logits.argmax(1) == y).cpu()
        yc = y.cpu()
        total += torch.bincount(yc, minlength=num_classes)
        correct += torch.bincount(yc[hit], minlength=num_classes)
    n = int(total.sum())
    return Evaluation(
        loss=loss_sum / n if n else float("nan"),
        accuracy=float(correct.sum()) / n if n else float("nan"),
        per_class_accuracy={c: float(correct[c]) / int(total[c]) for c in range(len(total)) if int(total[c]) > 0},
        num_examples=n,
    )
