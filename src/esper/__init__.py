"""Esper: morphogenetic training. A host network grows seeds while it trains.

``esper.load_model(FILE)`` builds a network ``esper export`` wrote as a plain module.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> Any:
    # Imported when asked for, for start-up time only: the command line imports this
    # package, and its --help must not wait for torch.
    if name == "load_model":
        from esper.model.export import load_model

        return load_model
    raise AttributeError(f"module 'esper' has no attribute {name!r}")
