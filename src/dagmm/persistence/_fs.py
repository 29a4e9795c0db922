"""Directories that appear complete or not at all, and survive a kill at any instant.

Replacing ``target`` goes through hidden siblings named
``.<target>.<state>-<pid>-<random>``:

1. ``tmp``: the new directory is written and flushed there;
2. ``tmp`` -> ``new``: one rename marks it complete;
3. ``target`` -> ``old``: the previous directory is moved aside (skipped when there is none);
4. ``new`` -> ``target``;
5. ``old`` -> ``del``, then ``del`` is deleted.

A process killed between 3 and 4 leaves no ``target`` but a complete ``new``
(and ``old``).  :func:`recover` (called by every loader and before every save)
renames the newest complete ``new``, else the newest ``old``, back to
``target``, so a reader always finds the old or the new directory, never
nothing and never a half-written one.  Leftovers of dead processes (``tmp``,
``new`` beside an intact ``target``, ``old``, ``del``) are deleted then too.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator, Union

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"


def is_saved_detector(path: Path) -> bool:
    return (path / CONFIG).is_file()


def check_replaceable(target: Path, marker: str = CONFIG, what: str = "a saved dagmm detector") -> None:
    """Refuse to replace anything but a directory holding ``marker`` or an empty directory."""
    if not os.path.lexists(target):
        return
    if target.is_symlink() or not target.is_dir():
        raise FileExistsError(f"Refusing to overwrite {target}: it exists and is not a directory. "
                              "Choose another path or delete it.")
    if not (target / marker).is_file() and any(target.iterdir()):
        raise FileExistsError(f"Refusing to overwrite {target}: it is not {what} (no {marker}) "
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


_STATES = ("tmp", "new", "old", "del")


def _sibling(target: Path, state: str) -> Path:
    return target.parent / f".{target.name}.{state}-{os.getpid()}-{secrets.token_hex(6)}"


def _leftovers(target: Path) -> dict[str, list[tuple[Path, int]]]:
    """The hidden siblings of ``target`` by state, newest first, with the pid that made them."""
    found: dict[str, list[tuple[float, Path, int]]] = {s: [] for s in _STATES}
    prefix = f".{target.name}."
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return {s: [] for s in _STATES}
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        match = re.fullmatch(r"(tmp|new|old|del)-(\d+)-[0-9a-f]+", entry.name[len(prefix):])
        if match is None:
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        found[match.group(1)].append((mtime, Path(entry.path), int(match.group(2))))
    return {s: [(p, pid) for _, p, pid in sorted(v, key=lambda t: t[0], reverse=True)] for s, v in found.items()}


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no cheap, harmless liveness check: keep the files
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def recover(target: Union[str, os.PathLike], marker: str = CONFIG) -> Path:
    """Finish or undo a replacement of ``target`` that a killed process left half done.

    When ``target`` is missing, the newest complete ``new`` sibling (holding
    ``marker``), else the newest ``old`` one, is renamed to ``target``.
    Leftovers of dead processes are deleted.  Returns the path to read:
    ``target``, or on a read-only file system the sibling that would have
    been renamed.
    """
    target = Path(os.path.abspath(target))
    found = _leftovers(target)
    readable = target
    if not os.path.lexists(target):
        candidates = [p for state in ("new", "old") for p, _ in found[state] if (p / marker).is_file()]
        for path in candidates:
            try:
                os.rename(path, target)
            except OSError as err:
                if os.path.lexists(target):
                    break  # another process put one back first
                if isinstance(err, FileNotFoundError):
                    continue  # taken by a concurrent recover(): try the next one
                readable = path  # e.g. a read-only file system: read it where it lies
                break
            fsync_path(target.parent)
            break
    if os.path.lexists(target):
        for state in _STATES:
            for path, pid in found[state]:
                if not _alive(pid) and os.path.lexists(path):
                    shutil.rmtree(path, ignore_errors=True)
    return readable


@contextlib.contextmanager
def staged_dir(target: Union[str, os.PathLike], marker: str = CONFIG,
               what: str = "a saved dagmm detector") -> Iterator[Path]:
    """Yield an empty sibling of ``target``; on success make it ``target``, on error delete it.

    An existing ``target`` (a directory holding ``marker`` or an empty
    directory) is replaced by the steps of the module docstring: a crash or a
    kill at any point leaves the old or the new directory at ``target`` (or,
    between two renames, for :func:`recover` to put back), never a
    half-written one.
    """
    target = Path(os.path.abspath(target))
    if target.parent.is_dir():
        recover(target, marker)
    check_replaceable(target, marker, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()  # not mkdtemp: the directory gets the usual permissions, not 0o700
    try:
        yield tmp
        file_mode = 0o666 & ~_umask()
        for f in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # files before their folders
            if f.is_file():
                os.chmod(f, file_mode)  # some writers create 0o600 files
            fsync_path(f)
        fsync_path(tmp)
        swap_into_place(tmp, target, marker, what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_into_place(tmp: Path, target: Path, marker: str = CONFIG, what: str = "a saved dagmm detector") -> None:
    """Make the complete directory ``tmp`` the ``target``, replacing a checked existing ``target``."""
    check_replaceable(target, marker, what)  # again: it may have changed while we wrote
    new = _sibling(target, "new")
    os.replace(tmp, new)  # complete from here on: recover() may install it
    fsync_path(target.parent)
    old = None
    try:
        if os.path.lexists(target):
            old = _sibling(target, "old")
            os.replace(target, old)
        try:
            os.replace(new, target)
        except FileNotFoundError:
            if not (os.path.lexists(target) and not os.path.lexists(new)):
                raise  # else a concurrent recover() installed it for us
    except BaseException:
        if old is not None and os.path.lexists(old) and not os.path.lexists(target):
            os.replace(old, target)  # put the old one back
        shutil.rmtree(new, ignore_errors=True)
        raise
    fsync_path(target.parent)
    if old is not None:
        trash = _sibling(target, "del")
        try:
            os.replace(old, trash)  # an "old" sibling is always complete; a half-deleted one is "del"
        except OSError:
            trash = old
        shutil.rmtree(trash, ignore_errors=True)
