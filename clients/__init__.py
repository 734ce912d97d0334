"""Flower clients: thin adapters from Flower's NumPyClient to the science in ``fedmi_flower``."""

from .circuit_client import CircuitClient

__all__ = ["CircuitClient"]
