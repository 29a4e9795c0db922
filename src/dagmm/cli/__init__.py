"""The ``dagmm`` command line (public API only)."""

from .main import main

__all__ = ["main"]
