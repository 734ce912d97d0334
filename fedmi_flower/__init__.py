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
