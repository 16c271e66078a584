"""Compression methods, registered by name (importing this package registers them all)."""

from compressor.methods.base import (PATTERNS, Method, MethodOutcome, RunContext, StructureOutcome, create_method,
                                     list_methods, register_method)
# Importing the methods registers them.
from compressor.methods import bernoulli, budget, channel, energy, magnitude, snapshot, switcher  # noqa: F401

__all__ = ["PATTERNS", "Method", "MethodOutcome", "RunContext", "StructureOutcome", "create_method", "list_methods",
           "register_method"]
