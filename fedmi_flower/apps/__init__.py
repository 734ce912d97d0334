"""Flower wiring: the ServerApp, the ClientApp, the simulation and the local deployment."""
