"""fedmi-flower: circuit preservation in federated learning, on Flower.

The science (``data``, ``model``, ``sparsity``, ``circuits``, ``metrics``, ``analysis``)
is plain PyTorch; ``server_app``, ``client_app``, ``simulation``, ``deploy`` and ``cli``
wire it to Flower. See README.md.
"""

__version__ = "0.1.0"
