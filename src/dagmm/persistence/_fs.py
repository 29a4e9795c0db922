"""Directories that appear complete or not at all: stage in a sibling, fsync, then swap."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"


def is_saved_detector(path: Path) -> bool:
    return (path / CONFIG).is_file()


def check_replaceable(target: Path) -> None:
    """Refuse to replace anything but a saved detector or an empty directory."""
    if not os.path.lexists(target):
        return
    if target.is_symlink() or not target.is_dir():
        raise FileExistsError(f"Refusing to overwrite {target}: it exists and is not a directory. "
                              "Choose another path or delete it.")
    if not is_saved_detector(target) and any(target.iterdir()):
        raise FileExistsError(f"Refusing to overwrite {target}: it is not a saved dagmm detector (no {CONFIG}) "
                              "and not empty. Choose another path or delete it.")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """Flush a file or a directory entry table to disk (directories: best effort)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty sibling of ``target``; on success make it ``target``, on error delete it.

    An existing ``target`` (a saved detector or an empty directory) is moved
    aside only after the new directory is complete and flushed, and deleted
    after the swap, so a crash at any point leaves either the old or the new
    directory at ``target``, never a half-written one.
    """
    target = Path(os.path.abspath(target))
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(6)}"
    tmp.mkdir()  # not mkdtemp: the detector gets the usual permissions, not 0o700
    try:
        yield tmp
        file_mode = 0o666 & ~_umask()
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, file_mode)  # some writers create 0o600 files
            fsync_path(f)
        fsync_path(tmp)
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``, replacing a checked existing ``target``."""
    check_replaceable(target)  # again: it may have changed while we wrote
    if os.path.lexists(target):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)  # put the old one back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    fsync_path(target.parent)
