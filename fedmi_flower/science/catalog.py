"""What a config may name: the datasets and the built-in models, readable without loading torch.

The command line answers ``fedmi list`` and config errors before torch is imported
(a second of start-up); the config checks names against this catalog, and the loaders
(:mod:`fedmi_flower.science.data`) and builders (:mod:`fedmi_flower.science.models`)
hold the rest. :func:`import_attribute` resolves what a user names by import path (a
strategy, a model builder), so that every plug-in point fails the same way.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from typing import Any

MODEL_NAMES: tuple[str, ...] = ("simple-cnn", "resnet10", "plain-cnn", "mlp")
"""The built-in models (:data:`fedmi_flower.science.models.MODELS`)."""

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
"""A user's builder: ``package.module:attribute``."""


@dataclass(frozen=True)
class DatasetSpec:
    """What the loader, the config and the model builder need to know about one dataset.

    Attributes
    ----------
    torchvision_class : str
        The class in ``torchvision.datasets`` that downloads it.
    folder : str
        torchvision's folder under the data root.
    mean, std : tuple of float
        Per-channel normalisation.
    image_shape : (channels, height, width)
        What every image is; models are built for it.
    num_classes : int
        Labels are 0 .. num_classes - 1.
    reader : {"idx", "cifar"}
        The file format: IDX files in ``<folder>/raw`` (MNIST's), or the pickled batches of
        ``cifar-10-batches-py`` (read by :func:`load_cifar_batch`, never by pickle's own loader).
    system_dirs : tuple of str
        Folders where a distribution package puts the gzip files (read-only).
    """

    torchvision_class: str
    folder: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    reader: str = "idx"
    system_dirs: tuple[str, ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("MNIST", "MNIST", (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetSpec(
        "FashionMNIST",
        "FashionMNIST",
        (0.2860,),
        (0.3530,),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
    "cifar10": DatasetSpec(
        "CIFAR10",
        "cifar-10-batches-py",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        image_shape=(3, 32, 32),
        reader="cifar",
    ),
}


def import_attribute(path: str, *, what: str, error: type[Exception], hint: str) -> Any:
    """The object ``path`` names; ``error`` (a message starting with ``what``) when it does not import or exist.

    ``hint`` ends the message of a module that does not import (where to put it).
    """
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise error(f"{what}: cannot import {module_name!r} ({err}); {hint}") from err
    try:
        return functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise error(f"{what}: module {module_name!r} has no attribute {attribute!r}") from None
