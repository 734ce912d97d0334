"""What a user names by import path (``"package.module:attribute"``): a strategy, a model builder.

One resolver, so that every plug-in point fails the same way: a one-line error that says
which setting named it, what did not import or exist, and how to fix it.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any


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
