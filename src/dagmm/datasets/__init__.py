"""Data set loaders and the evaluation protocols of the DAGMM paper."""

from .cifar10 import load_cifar10
from .kddcup99 import load_kddcup99
from .odds import load_arrhythmia, load_thyroid
from .protocols import fit_scaler, protocol_indices, protocol_split

__all__ = ["fit_scaler", "load_arrhythmia", "load_cifar10", "load_kddcup99", "load_thyroid", "protocol_indices",
           "protocol_split"]
