"""Where data sets are cached, and how they are downloaded and verified."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Union

__all__ = ["data_home", "fetch", "sha256"]

PathArg = Union[None, str, os.PathLike]


def data_home(home: PathArg = None) -> Path:
    """The cache folder: ``home`` if given, else ``$DAGMM_DATA``, else ``~/.cache/dagmm``."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("DAGMM_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dagmm"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, checksum: str) -> None:
    """Fetch ``url`` to ``dest`` through a temporary file and verify its SHA-256.

    The file appears at ``dest`` only once complete and verified (an atomic
    rename), so an interrupted download never leaves a truncated file behind.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    got = sha256(tmp)
    if got != checksum:
        tmp.unlink()
        raise OSError(f"The file downloaded from {url} has SHA-256 {got}, expected {checksum}; it was deleted. "
                      "Retry, or download it by hand and check it.")
    tmp.replace(dest)


def fetch(home: PathArg, relpath: str, url: str, checksum: str, download_ok: bool, loader: str) -> Path:
    """Path of a cached data file, downloading it first when allowed.

    Parameters
    ----------
    home : path or None
        Resolved with :func:`data_home`.
    relpath : str
        Location of the file inside the cache folder, e.g. ``'odds/thyroid.mat'``.
    url, checksum : str
        Canonical source and its SHA-256.
    download_ok : bool
        Whether a missing file may be downloaded.
    loader : str
        Name of the calling loader, used in the error message.

    Raises
    ------
    FileNotFoundError
        The file is missing and ``download_ok`` is False.
    OSError
        A cached file or a download does not have the expected checksum.
    """
    root = data_home(home)
    path = root / relpath
    if path.is_file():
        return path
    if not download_ok:
        raise FileNotFoundError(
            f"{path} not found. Call {loader}(download=True) to fetch it from {url}, or download it by hand "
            f"and put it at {path} (set data_home or the DAGMM_DATA environment variable to use another folder; "
            f"expected SHA-256 {checksum})."
        )
    download(url, path, checksum)
    return path
