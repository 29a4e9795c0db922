"""Unsupervised deep outlier detection on PyTorch: DAGMM and auto-encoder detectors."""

from ._version import __version__
from .detectors.ae import OutlierAE
from .detectors.aegmm import OutlierAEGMM
from .detectors.base import NotFittedError
from .detectors.estimator import DAGMM
from .export import export_onnx
from .models.gmm import CholeskyError
from .persistence import fetch_detector, load_detector, save_detector
from .training.loop import TrainingDivergedError

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
    "export_onnx",
]
