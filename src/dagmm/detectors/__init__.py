"""The detectors: :class:`OutlierAEGMM`, :class:`OutlierAE` and the TensorFlow-style :class:`DAGMM`."""

from .ae import OutlierAE
from .aegmm import OutlierAEGMM
from .base import NotFittedError
from .estimator import DAGMM

__all__ = ["DAGMM", "NotFittedError", "OutlierAE", "OutlierAEGMM"]
