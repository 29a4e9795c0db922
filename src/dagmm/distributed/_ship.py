"""A detector as the bytes of its saved files, loaded once per worker process.

Workers never receive pickled weights: the detector travels as the two files
:func:`dagmm.save_detector` writes (``config.json`` and ``weights.safetensors``,
plain bytes) plus, for ``dagmm fit`` model directories, the JSON of the table
preprocessing.  A worker writes them to a private temporary directory, loads
them with :func:`dagmm.load_detector` (which checks the weights' SHA-256
against the config) and keeps the result in a per-process cache keyed by the
SHA-256 of the bytes, so every task after the first on a worker reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, NamedTuple, Optional

__all__ = ["DetectorFiles", "pack", "pack_dir", "loaded"]

_CONFIG, _WEIGHTS = "config.json", "weights.safetensors"


class DetectorFiles(NamedTuple):
    """The saved files of a detector, as bytes, and their content hash.

    key : str
        SHA-256 over the three parts; the worker-side cache key.
    config : bytes
        ``config.json``.
    weights : bytes
        ``weights.safetensors``.
    preprocessing : bytes
        JSON of a :class:`dagmm.tables.preprocess.TabularPreprocessor` (``b''`` when none).
    """

    key: str
    config: bytes
    weights: bytes
    preprocessing: bytes


def _content_key(config: bytes, weights: bytes, preprocessing: bytes) -> str:
    """SHA-256 of what the files hold, not of their bytes.

    Saving the same detector twice can give different bytes (safetensors
    writes its metadata map in no fixed order, and the config records the
    weights file's own hash), so the key covers the config without that
    record, in sorted-key JSON, and each tensor by name, dtype, shape and data.
    """
    import torch
    from safetensors.torch import load

    h = hashlib.sha256()

    def put(part: bytes) -> None:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)

    conf = json.loads(config)
    conf.pop("weights", None)
    put(json.dumps(conf, sort_keys=True).encode())
    tensors = load(weights)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        put(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        put(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    put(preprocessing)
    return h.hexdigest()


def _files(config: bytes, weights: bytes, preprocessing: bytes) -> DetectorFiles:
    return DetectorFiles(_content_key(config, weights, preprocessing), config, weights, preprocessing)


def pack_dir(path: str | os.PathLike, preprocessor: Optional[Any] = None) -> DetectorFiles:
    """The files of a detector saved at ``path`` (and a preprocessor's JSON, if given)."""
    path = Path(path)
    pre = b"" if preprocessor is None else json.dumps(preprocessor.to_dict()).encode()
    return _files((path / _CONFIG).read_bytes(), (path / _WEIGHTS).read_bytes(), pre)


def pack(detector: Any, preprocessor: Optional[Any] = None) -> DetectorFiles:
    """Save ``detector`` to a temporary directory and read its files back as bytes."""
    if isinstance(detector, DetectorFiles):
        return detector
    from ..persistence import save_detector

    with tempfile.TemporaryDirectory(prefix="dagmm-ship-") as tmp:
        save_detector(detector, os.path.join(tmp, "d"))
        return pack_dir(os.path.join(tmp, "d"), preprocessor)


# ------------------------------------------------------------------ worker side
_CACHE: dict[str, tuple[Any, Any]] = {}
_LOCK = threading.Lock()
#: Largest block (rows) each process has scored; the tests read it to check memory stays per-partition.
STATS = {"max_rows": 0, "loads": 0}


def _worker_threads() -> Optional[int]:
    """The thread count of the Dask worker running this task, or None outside a worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    state = getattr(worker, "state", None)
    return int(getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1))


def loaded(files: DetectorFiles) -> tuple[Any, Any]:
    """``(detector, preprocessor or None)`` for ``files``, loaded at most once per process."""
    hit = _CACHE.get(files.key)
    if hit is not None:
        return hit
    with _LOCK:
        hit = _CACHE.get(files.key)
        if hit is not None:
            return hit
        import torch

        from ..persistence import load_detector

        threads = _worker_threads()
        if threads is not None:
            # torch's thread pool is per process: size it to the cores Dask gave this worker,
            # not to the machine (every worker process would otherwise claim all cores)
            torch.set_num_threads(max(1, threads))
        with tempfile.TemporaryDirectory(prefix="dagmm-worker-") as tmp:
            d = Path(tmp) / "d"
            d.mkdir()
            (d / _CONFIG).write_bytes(files.config)
            (d / _WEIGHTS).write_bytes(files.weights)
            det = load_detector(str(d), device="cpu")
        pre = None
        if files.preprocessing:
            from ..tables.preprocess import TabularPreprocessor

            pre = TabularPreprocessor.from_dict(json.loads(files.preprocessing))
        _CACHE[files.key] = (det, pre)
        STATS["loads"] += 1
        return det, pre


def note_rows(n: int) -> None:
    if n > STATS["max_rows"]:
        STATS["max_rows"] = int(n)
