"""fedmi-flower: circuit preservation in federated learning, on Flower.

Layers, each importing only those above it in this list (docs/architecture.md):

- ``config``: the typed experiment config;
- ``science``: data, model, sparsity, circuits, metrics (plain PyTorch, no Flower);
- ``records``: the typed round record, the run directory, series over rounds;
- ``wire``: what crosses the wire between clients and server;
- ``analysis``: the server's analysis of one round over the clients' reports;
- ``views``: figures, circuit graphs and reports of finished runs;
- the top-level ``clients`` and ``strategies`` packages: thin Flower adapters;
- ``apps``: the ServerApp, ClientApp, simulation and deployment; ``cli``: the ``fedmi`` command.
"""

from importlib.metadata import PackageNotFoundError, version

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
