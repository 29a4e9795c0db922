"""Tools around the detectors: image perturbations and plots (matplotlib, imported lazily)."""

from .perturbation import apply_mask

__all__ = ["apply_mask"]
