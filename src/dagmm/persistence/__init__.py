"""Saving, loading and fetching detectors as JSON + safetensors, without pickle.

See ``docs/saved-format.md`` for the directory format and the registry layout.
"""

from ._fs import recover as recover_directory
from ._fs import staged_dir as staged_directory
from .io import FORMAT_VERSION, load_detector, read_config, save_detector
from .registry import DEFAULT_REGISTRY_URL, fetch_detector, package_detector

__all__ = ["FORMAT_VERSION", "DEFAULT_REGISTRY_URL", "save_detector", "load_detector", "read_config",
           "fetch_detector", "package_detector", "recover_directory", "staged_directory"]
