"""Training methods plugged into the one trainer through the :class:`Method` protocol."""
from .base import Method
from .consistency import MeanTeacher, PiModel, TemporalEnsemble
from .contrastive import Contrastive
from .self_training import Retrain, SelfTraining, grown_budget
from .supervised import Supervised

METHODS = {"supervised": Supervised, "self_training": SelfTraining, "self_training_retrain": Retrain,
           "pi_model": PiModel, "temporal_ensemble": TemporalEnsemble, "mean_teacher": MeanTeacher,
           "contrastive": Contrastive}


def get_method(name: str, **kwargs) -> Method:
    """Build a method by name (as used in notebook parameters and sweeps)."""
    try:
        return METHODS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


__all__ = ["Method", "Contrastive", "MeanTeacher", "PiModel", "TemporalEnsemble", "Retrain", "SelfTraining", "grown_budget", "Supervised", "METHODS", "get_method"]
