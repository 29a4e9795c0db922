"""Unsupervised deep outlier detection on PyTorch: DAGMM and auto-encoder detectors."""

from ._version import __version__
from .ae import OutlierAE
from .aegmm import OutlierAEGMM
from .base import NotFittedError
from .estimator import DAGMM
from .gmm import CholeskyError
from .persistence import fetch_detector, load_detector, save_detector
from .training import TrainingDivergedError

__all__ = [
    "__version__",
    "DAGMM",
    "OutlierAEGMM",
    "OutlierAE",
    "NotFittedError",
    "CholeskyError",
    "TrainingDivergedError",
    "save_detector",
    "load_detector",
    "fetch_detector",
]
