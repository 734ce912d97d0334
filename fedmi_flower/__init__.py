"""fedmi-flower: circuit preservation in federated learning, on Flower.

Layers, each importing only those above it in this list (docs/architecture.md):

- ``config``: the typed experiment config;
- ``science``: data, model, sparsity, circuits, metrics (plain PyTorch, no Flower);
- ``records``: the typed round record, the run directory, series over rounds;
- ``wire``: what crosses the wire between clients and server;
- ``analysis``: the server's analysis of one round over the clients' reports;
- ``views``: figures, circuit graphs and reports of finished runs;
- ``clients`` and ``strategies``: thin Flower adapters (top-level folders of the checkout, as the design
  card has them, installed as ``fedmi_flower.clients`` and ``fedmi_flower.strategies``);
- ``apps``: the ServerApp, ClientApp, simulation and deployment; ``cli``: the ``fedmi`` command.
"""

import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

try:
    __version__ = version("fedmi-flower")  # one definition: pyproject.toml's, which Flower's app packaging reads too
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

# The model interface a researcher's own network speaks (docs/your-own-model.md), importable from the top:
# ``from fedmi_flower import HookPoint``. Resolved on first use, so that ``fedmi --help`` and config errors
# answer without loading torch.
_INTERFACE = {
    "HookPoint": "fedmi_flower.science.hook_points",
    "gated": "fedmi_flower.science.hook_points",
    "captured": "fedmi_flower.science.hook_points",
    "site_sizes": "fedmi_flower.science.hook_points",
    "PermutationSpec": "fedmi_flower.science.permutation_spec",
    "build_model": "fedmi_flower.science.models",
    "check_model": "fedmi_flower.science.models",
    "discover_circuits": "fedmi_flower.science.discovery",
    "Discovery": "fedmi_flower.science.discovery",
    "evaluate_circuits": "fedmi_flower.science.circuits",
}


def __getattr__(name: str) -> object:
    if name in _INTERFACE:
        import importlib

        return getattr(importlib.import_module(_INTERFACE[name]), name)
    raise AttributeError(f"module 'fedmi_flower' has no attribute {name!r}")


class _CheckoutFolders(importlib.abc.MetaPathFinder):
    """Finds ``fedmi_flower.clients``/``.strategies``/``.experiments`` in the checkout's top-level folders.

    A wheel installs those folders inside the package (pyproject.toml's package-dir), and an
    editable install maps them the same way; this finder does it where neither did: a checkout
    on ``PYTHONPATH``, or the app folder ``flwr run .`` ships from a checkout. Code imports one
    name in every case.
    """

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        init = folder / "__init__.py"
        if init.is_file():
            return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(folder)])
        spec = importlib.util.spec_from_loader(fullname, None, is_package=True)  # a folder of data files
        assert spec is not None and spec.submodule_search_locations is not None
        spec.submodule_search_locations.append(str(folder))
        return spec


def _map_checkout_folders() -> None:
    here = Path(__file__).resolve().parent
    folders = {
        f"{__name__}.{name}": here.parent / name
        for name in ("clients", "strategies", "experiments")
        if not (here / name).is_dir() and (here.parent / name).is_dir()
    }
    if folders and (here.parent / "pyproject.toml").is_file():
        sys.meta_path.insert(0, _CheckoutFolders(folders))  # before an editable install of another checkout


_map_checkout_folders()
