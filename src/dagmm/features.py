"""Re-export of :mod:`dagmm.models.features` (its documented path before the layered layout)."""

from .models.features import *  # noqa: F401,F403
from .models.features import __all__  # noqa: F401
