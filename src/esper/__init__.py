"""Esper: morphogenetic training. A host network grows seeds while it trains."""

__version__ = "0.1.0"
__all__ = ["__version__"]
