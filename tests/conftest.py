"""Shared fixtures. Real-data tests need MNIST: they fail (never skip) when it is missing."""

from __future__ import annotations

import pytest

from fedmi_flower.data import load_raw, resolve_data_root


@pytest.fixture(scope="session")
def mnist_root() -> str:
    """The data root holding MNIST; a missing dataset fails the test with the loader's own message."""
    root = str(resolve_data_root())
    load_raw("mnist", True, root)  # raises DatasetError naming where it looked and how to fix it
    load_raw("mnist", False, root)
    return root
