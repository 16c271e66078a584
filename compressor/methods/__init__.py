"""Compression methods, registered by name (importing this package registers them all)."""

from compressor.methods.base import PATTERNS, Method, create_method, list_methods, register_method
from compressor.methods import bernoulli, budget, channel, energy, magnitude, snapshot, switcher  # noqa: F401  (importing registers the methods)

__all__ = ["PATTERNS", "Method", "create_method", "list_methods", "register_method"]
