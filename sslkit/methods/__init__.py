"""Training methods plugged into the one trainer through the :class:`Method` protocol."""
from .base import Method
from .self_training import SelfTraining
from .supervised import Supervised

METHODS = {"supervised": Supervised, "self_training": SelfTraining}


def get_method(name: str, **kwargs) -> Method:
    """Build a method by name (as used in notebook parameters and sweeps)."""
    try:
        return METHODS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


__all__ = ["Method", "SelfTraining", "Supervised", "METHODS", "get_method"]
