"""Data set loaders."""

from .cifar10 import load_cifar10

__all__ = ["load_cifar10"]
