"""Re-export of :mod:`dagmm.models.gmm` (its documented path before the layered layout)."""

from .models.gmm import *  # noqa: F401,F403
from .models.gmm import __all__  # noqa: F401
