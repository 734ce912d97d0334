"""The models a run can train and analyse, by name or by import path, and how one is built.

A model is any ``torch.nn.Module`` that marks its circuit sites with
:class:`~fedmi_flower.science.hook_points.HookPoint` (docs/your-own-model.md). One is
built by a *builder*: a callable taking ``in_channels``, ``num_classes`` and
``image_size`` (from the dataset) plus the keyword arguments of the experiment's
``[model.args]``. A name is one of :data:`MODELS`, or ``"package.module:builder"`` for a
researcher's own; either way :func:`build_model` checks the result against the
interface with a forward pass before anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from fedmi_flower.science.catalog import MODEL_NAMES, import_attribute
from fedmi_flower.science.hook_points import (
    InterfaceError,
    captured,
    check_circuit_model,
    has_stem_and_head,
    head,
    hook_points,
    stem,
)
from fedmi_flower.science.models.conv_chain import ConvChain
from fedmi_flower.science.models.mlp import MLP
from fedmi_flower.science.models.resnet10 import ResNet10
from fedmi_flower.science.models.simple_cnn import SimpleCNN


def _plain_cnn(in_channels: int, num_classes: int, image_size: int, channels: Any = (32, 64, 128, 256)) -> nn.Module:
    return ConvChain(in_channels, num_classes, channels, image_size)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "simple-cnn": SimpleCNN,
    "resnet10": ResNet10,
    "plain-cnn": _plain_cnn,
    "mlp": MLP,
}
"""Built-in builders: the paper's CNN, the reference's ResNet-10, a deeper plain CNN (four conv blocks, for
32x32 colour images) and an MLP (hidden units as sites)."""


assert tuple(MODELS) == MODEL_NAMES, "the catalog lists the built-in models"


class ModelError(ValueError):
    """A model name, import path or argument that cannot build a model; the message says how to fix it."""


def resolve_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of ``name``: a key of :data:`MODELS` or ``"package.module:attribute"``."""
    if name in MODELS:
        return MODELS[name]
    if ":" not in name:
        raise ModelError(
            f"unknown model {name!r}: choose one of {sorted(MODELS)}, or give your own as 'package.module:builder'"
        )
    builder = import_attribute(
        name, what=f"model {name!r}", error=ModelError, hint="install the package or put it on PYTHONPATH"
    )
    if not callable(builder):
        raise ModelError(
            f"model {name!r}: {name.partition(':')[2]!r} is not callable (a builder or an nn.Module class)"
        )
    return builder


def build_model(
    name: str = "simple-cnn",
    args: Mapping[str, Any] | None = None,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    seed: int | None = None,
) -> nn.Module:
    """A fresh model ``name`` for the given input and classes, initialised from ``seed`` when given.

    ``in_channels``, ``num_classes`` and ``image_size`` come from the dataset
    (``make_model(config)`` passes them); left out, the builder's own defaults apply
    (the paper's CNN has MNIST's; the other models need them).

    Raises
    ------
    ModelError
        When the name, its arguments or the built model do not fit (the interface check,
        :func:`check_model`, included).
    """
    builder = resolve_builder(name)
    kwargs = dict(args or {})
    given = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    shape = {k: v for k, v in given.items() if v is not None}
    devices: list = []  # fork_rng over the CPU only; no CUDA state is touched

    def make() -> nn.Module:
        try:
            return builder(**shape, **kwargs)
        except TypeError as err:
            raise ModelError(
                f"model {name!r} could not be built with {', '.join(shape) or 'no input shape'} and "
                f"[model.args] {kwargs}: {err}"
            ) from err

    if seed is None:
        model = make()
    else:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model = make()
    if in_channels is not None and num_classes is not None and image_size is not None:
        # Built-in models pass once and for all; a user's module is checked on every build (it may change).
        key = (name, json.dumps(kwargs, sort_keys=True, default=str), in_channels, num_classes, image_size)
        if name not in MODELS or key not in _CHECKED:
            check_model(model, (in_channels, image_size, image_size), num_classes, where=f"model {name!r}")
            _CHECKED.add(key)
    return model


_CHECKED: set[tuple[Any, ...]] = set()


@torch.no_grad()
def check_model(model: Any, input_shape: tuple[int, int, int], num_classes: int, where: str = "the model") -> nn.Module:
    """Return ``model`` when it speaks the circuit interface on ``input_shape`` images; else raise :class:`ModelError`.

    Runs two images of zeros through it (in eval mode, restored after): the logits must be
    ``(2, num_classes)``, every hook point must fire with its declared width on dimension
    1, and a ``stem``/``head`` pair must give the same logits as the forward pass.
    """
    try:
        check_circuit_model(model, where)
    except InterfaceError as err:
        raise ModelError(str(err)) from None
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(2, *input_shape, device=next(model.parameters()).device)
        with captured(model) as seen:
            try:
                out = model(x)
            except Exception as err:  # a user's forward may fail in any way
                raise ModelError(
                    f"{where} fails on a batch of shape {tuple(x.shape)} (the dataset's images): "
                    f"{type(err).__name__}: {err}"
                ) from err
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"{where} returns {shape} for 2 images; it must return logits of shape (2, {num_classes})")
        for site, point in hook_points(model).items():
            if site not in seen:
                raise ModelError(f"{where}: hook point {site!r} is never called in forward; call it on the activation")
            act = seen[site]
            if act.dim() < 2 or act.shape[1] != point.width:
                raise ModelError(
                    f"{where}: site {site!r} declares {point.width} channels but its activation has shape "
                    f"{tuple(act.shape)}; channels must be dimension 1"
                )
        if has_stem_and_head(model):
            split = head(model, stem(model, x))
            if not torch.allclose(split, out, atol=1e-5):
                raise ModelError(f"{where}: head(stem(x)) differs from forward(x); the fast path must compute the same")
    finally:
        model.train(was_training)
    return model


__all__ = ["MODELS", "MLP", "ConvChain", "ModelError", "ResNet10", "SimpleCNN", "build_model", "check_model"]
