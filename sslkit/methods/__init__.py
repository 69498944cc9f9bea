"""Training methods plugged into the one trainer through the :class:`Method` protocol, one per file.

The settings the book uses are named presets (:mod:`sslkit.presets`).
"""
from .base import Method
from .contrastive import Contrastive
from .fixmatch import FixMatch
from .mean_teacher import MeanTeacher
from .pi_model import PiModel
from .self_training import Retrain, SelfTraining, grown_budget
from .softmatch import SoftMatch
from .supervised import Supervised
from .temporal_ensemble import TemporalEnsemble

__all__ = ["Method", "Contrastive", "FixMatch", "MeanTeacher", "PiModel", "Retrain", "SelfTraining",
           "SoftMatch", "Supervised", "TemporalEnsemble", "grown_budget"]
