"""Pretrained detectors from a registry: an ``index.json`` plus one ``.tar.gz`` per saved detector.

A registry is any HTTP(S) or ``file://`` folder holding

- ``index.json``: ``{"artifacts": [{"detector_type", "dataset", "detector_name", "path",
  "sha256", "size"}, ...]}``, ``path`` relative to the folder;
- the archives it lists, each a saved detector directory (``config.json`` and
  ``weights.safetensors`` at the archive root) as written by :func:`package_detector`.

:func:`fetch_detector` checks size and SHA-256 before extracting, extracts only plain files
and folders inside the target, and installs the detector atomically with a marker holding the
archive's SHA-256: only a complete copy with a matching marker counts as cached.

Index paths are percent-decoded and normalised *before* they are checked, and
the resolved URL must lie under the registry folder (``%2e%2e/x`` is ``../x``).
Extraction is capped at :data:`MAX_EXTRACT_BYTES` bytes in all, at
:data:`MAX_RATIO` times the archive's own size (plus 1 MiB; weights barely
compress, a bomb compresses a thousandfold) and at :data:`MAX_MEMBERS`
archive members (``fetch_detector(max_extract_bytes=..., max_members=...)``
change the first and the last): a small archive that expands to gigabytes is
refused before it fills the disk.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import posixpath
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Union

from .._version import __version__
from ._fs import CONFIG, WEIGHTS, check_replaceable, fsync_path, recover, staged_dir
from .io import load_detector, read_config

__all__ = ["DEFAULT_REGISTRY_URL", "REGISTRY_ENV", "fetch_detector", "package_detector", "add_to_index"]

#: Registry used when neither ``base_url`` nor ``$DAGMM_REGISTRY_URL`` is set.
DEFAULT_REGISTRY_URL = "https://huggingface.co/dagmm/detectors/resolve/main/"
#: Environment variable naming another registry (e.g. your own server or ``file:///srv/models/``).
REGISTRY_ENV = "DAGMM_REGISTRY_URL"
#: File in a fetched detector directory holding the SHA-256 of the archive it came from.
MARKER = ".dagmm-artifact-sha256"
#: Most bytes a fetched archive may expand to (all members together); a saved detector is config + weights.
MAX_EXTRACT_BYTES = 1 << 30
#: Most bytes extracted per byte of archive (beyond the first MiB): float32 weights compress ~1.1x.
MAX_RATIO = 50
#: Most members (files and folders) a fetched archive may hold.
MAX_MEMBERS = 64
_CHUNK = 1 << 20


def _base_url(base_url: Optional[str]) -> str:
    base = base_url or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY_URL
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"base_url must be an http://, https:// or file:// URL, got {base!r}.")
    return base if base.endswith("/") else base + "/"


def _open(url: str, timeout: float, what: str):
    req = urllib.request.Request(url, headers={"User-Agent": f"dagmm/{__version__}"})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 404:
            raise FileNotFoundError(f"{url} returned HTTP 404 Not Found: the registry has no {what}. "
                                    f"Check base_url or ${REGISTRY_ENV}.") from None
        raise ConnectionError(f"{url} returned HTTP {err.code} {err.reason} while fetching {what}.") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, FileNotFoundError):
            raise FileNotFoundError(f"{url} does not exist: the registry has no {what}.") from None
        raise ConnectionError(f"Cannot reach {url} ({err.reason}) to fetch {what}.") from None


def _index_entry(base: str, detector_type: str, dataset: str, detector_name: str, timeout: float) -> dict:
    url = urllib.parse.urljoin(base, "index.json")
    with _open(url, timeout, "index.json") as resp:
        raw = resp.read()
    try:
        artifacts = json.loads(raw)["artifacts"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{url} is not a registry index: expected JSON with an 'artifacts' list.") from None
    key = (detector_type, dataset, detector_name)
    for entry in artifacts:
        if isinstance(entry, dict) and (entry.get("detector_type"), entry.get("dataset"),
                                        entry.get("detector_name")) == key:
            _check_entry(entry, url)
            return entry
    listed = sorted(f"({a.get('detector_type')}, {a.get('dataset')}, {a.get('detector_name')})"
                    for a in artifacts if isinstance(a, dict))
    raise FileNotFoundError(f"The registry at {base} has no detector_type={detector_type!r}, dataset={dataset!r}, "
                            f"detector_name={detector_name!r}; it lists: {', '.join(listed) or 'nothing'}.")


def _check_entry(entry: dict, url: str) -> None:
    path = entry.get("path")
    decoded = urllib.parse.unquote(path) if isinstance(path, str) else None
    # checked after percent-decoding (the form the server resolves) and on both spellings
    if not isinstance(path, str) or not path or any(
            p.startswith("/") or "\\" in p or ":" in p or ".." in PurePosixPath(p).parts or "\x00" in p
            for p in (path, decoded)):
        raise ValueError(f"{url} lists artifact path {path!r}; paths must be relative, without '..' "
                         "(also percent-encoded, as %2e%2e), '\\' or ':'.")
    if not (isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
        raise ValueError(f"{url} lists artifact {path} without a valid lowercase hex sha256.")
    size = entry.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{url} lists artifact {path} without a valid byte size.")


def _download(url: str, part: Path, size: int, sha256: str, timeout: float) -> None:
    """Stream ``url`` into ``part``; raise unless exactly ``size`` bytes with ``sha256`` arrived."""
    h, n, declared = hashlib.sha256(), 0, None
    try:
        with _open(url, timeout, "artifact " + url.rsplit("/", 1)[-1]) as resp, open(part, "wb") as out:
            length = resp.headers.get("Content-Length")
            declared = int(length) if length and length.isdigit() else None
            while n <= size:
                chunk = resp.read(min(_CHUNK, size + 1 - n))
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except (http.client.HTTPException, ConnectionResetError, TimeoutError) as err:
        raise ConnectionError(f"The download of {url} was interrupted after {n} bytes ({type(err).__name__}); "
                              "nothing was cached. Retry.") from None
    if declared is not None and n < min(declared, size + 1):  # http.client returns b"" at an early close
        raise ConnectionError(f"The download of {url} was interrupted after {n} of {declared} bytes; "
                              "nothing was cached. Retry.")
    if n != size:
        raise ConnectionError(f"The download of {url} gave {'more than ' if n > size else ''}{n} bytes but index.json "
                              f"lists {size}; nothing was cached. Retry.")
    if h.hexdigest() != sha256:
        raise ValueError(f"The file downloaded from {url} has SHA-256 {h.hexdigest()} but index.json lists "
                         f"{sha256}; it was deleted and nothing was cached.")


def _inside(base: str, url: str) -> bool:
    """Whether ``url`` lies under the registry folder ``base`` once both are decoded and normalised."""
    b, u = urllib.parse.urlsplit(base), urllib.parse.urlsplit(url)
    if (b.scheme, b.netloc) != (u.scheme, u.netloc):
        return False
    bp = posixpath.normpath(urllib.parse.unquote(b.path)).rstrip("/") + "/"
    up = posixpath.normpath(urllib.parse.unquote(u.path))
    return up.startswith(bp)


def _artifact_url(base: str, entry: dict, index_url: str) -> str:
    url = urllib.parse.urljoin(base, entry["path"])
    if not _inside(base, url):
        raise ValueError(f"{index_url} lists artifact path {entry['path']!r}, which resolves to {url}, outside "
                         f"the registry folder {base}; refusing to fetch it.")
    return url


def _safe_extract(archive: Path, dest: Path, url: str, max_bytes: int = MAX_EXTRACT_BYTES,
                  max_members: int = MAX_MEMBERS) -> None:
    """Extract plain files and folders into ``dest``; refuse anything that could land elsewhere.

    At most ``max_members`` members and ``max_bytes`` bytes in all (and
    :data:`MAX_RATIO` times the archive size plus 1 MiB), checked on the declared
    sizes before a member is written and on the bytes actually written.
    """
    total, count = 0, 0
    max_bytes = min(max_bytes, MAX_RATIO * archive.stat().st_size + (1 << 20))
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar:
            count += 1
            if count > max_members:
                raise ValueError(f"The archive from {url} holds more than {max_members} members; a saved detector "
                                 "has two files. Refusing to extract it (max_members= raises the limit).")
            p = PurePosixPath(m.name)
            if p.is_absolute() or ".." in p.parts or "\\" in m.name or re.match(r"^[A-Za-z]:", m.name):
                raise ValueError(f"The archive from {url} holds {m.name!r}, a path outside its folder; "
                                 "refusing to extract it.")
            if m.issym() or m.islnk():
                raise ValueError(f"The archive from {url} holds a link {m.name!r} -> {m.linkname!r}; "
                                 "refusing to extract it.")
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"The archive from {url} holds {m.name!r}, which is not a regular file or folder; "
                                 "refusing to extract it.")
            target = dest.joinpath(*[part for part in p.parts if part != "."])
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if total + m.size > max_bytes:
                raise ValueError(f"The archive from {url} expands to more than {max_bytes} bytes (member "
                                 f"{m.name!r}: {m.size} bytes); refusing to extract it "
                                 "(max_extract_bytes= raises the limit).")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                out = open(target, "xb")
            except FileExistsError:
                raise ValueError(f"The archive from {url} holds {m.name!r} twice (or a file where a folder is); "
                                 "refusing to extract an ambiguous archive.") from None
            except (IsADirectoryError, NotADirectoryError):
                raise ValueError(f"The archive from {url} holds {m.name!r} both as a file and as a folder; "
                                 "refusing to extract an ambiguous archive.") from None
            with tar.extractfile(m) as src, out:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > max_bytes:
                        raise ValueError(f"The archive from {url} expands to more than {max_bytes} bytes; "
                                         "refusing to extract it (max_extract_bytes= raises the limit).")
                    out.write(chunk)
    if not (dest / CONFIG).is_file():
        entries = list(dest.iterdir())
        if len(entries) == 1 and (entries[0] / CONFIG).is_file():  # archived with a top folder
            inner = entries[0]
            for item in inner.iterdir():
                item.rename(dest / item.name)
            inner.rmdir()
        else:
            raise ValueError(f"The archive from {url} has no {CONFIG}: it is not a saved dagmm detector.")


def _cached(target: Path, sha256: str) -> bool:
    try:
        return (target / CONFIG).is_file() and (target / MARKER).read_text(encoding="ascii").strip() == sha256
    except (OSError, UnicodeDecodeError):
        return False


def fetch_detector(filepath: Union[str, os.PathLike], detector_type: str = "outlier", dataset: str = "kddcup",
                   detector_name: str = "OutlierAEGMM", base_url: Optional[str] = None,
                   device: Any = None, timeout: float = 60.0, max_extract_bytes: int = MAX_EXTRACT_BYTES,
                   max_members: int = MAX_MEMBERS, **modules: Any) -> Any:
    """Download a pretrained detector into the directory ``filepath`` (once) and load it.

    Parameters
    ----------
    filepath : path
        Where the detector directory is kept.  A complete copy of the same
        artifact there (same SHA-256) is reused without downloading it again.
    detector_type, dataset, detector_name : str
        Which entry of the registry's ``index.json`` to fetch.
    base_url : str, optional
        Registry folder (``http(s)://`` or ``file://``); default ``$DAGMM_REGISTRY_URL``,
        else :data:`DEFAULT_REGISTRY_URL`.
    device, **modules
        Passed to :func:`dagmm.load_detector`.
    timeout : float, default 60
        Seconds to wait for the server on each request.
    max_extract_bytes, max_members : int
        Limits on what the archive may expand to (default
        :data:`MAX_EXTRACT_BYTES`, 1 GiB, and :data:`MAX_MEMBERS`, 64); the
        expansion is also capped at :data:`MAX_RATIO` (50) times the archive size plus 1 MiB.

    Raises
    ------
    FileNotFoundError
        The registry has no index or no such artifact (HTTP 404).
    ValueError
        Checksum mismatch, an unsafe archive (absolute paths, ``..``, links,
        devices) or a file that is not a saved detector.
    ConnectionError
        An unreachable server or an interrupted download; nothing is cached.
    """
    for value, name in ((max_extract_bytes, "max_extract_bytes"), (max_members, "max_members")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    base = _base_url(base_url)
    entry = _index_entry(base, detector_type, dataset, detector_name, timeout)
    url = _artifact_url(base, entry, urllib.parse.urljoin(base, "index.json"))
    target = Path(os.path.abspath(filepath))
    if target.parent.is_dir():
        recover(target)  # a fetch killed between two renames
    if _cached(target, entry["sha256"]):
        return load_detector(target, device=device, **modules)
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.parent / f".{target.name}.{entry['sha256'][:16]}.tar.gz.part"
    try:
        _download(url, part, entry["size"], entry["sha256"], timeout)
        with staged_dir(target) as tmp:
            _safe_extract(part, tmp, url, max_extract_bytes, max_members)
            detector = load_detector(tmp, device=device, **modules)  # refuse a broken detector before install
            (tmp / MARKER).write_text(entry["sha256"] + "\n", encoding="ascii")
    finally:
        part.unlink(missing_ok=True)
    return detector


def package_detector(path: Union[str, os.PathLike], out_tar: Union[str, os.PathLike], dataset: str,
                     detector_type: str = "outlier", detector_name: Optional[str] = None,
                     archive_path: Optional[str] = None) -> dict:
    """Archive a saved detector for a registry and return its ``index.json`` entry.

    The archive is reproducible (sorted members, zero timestamps and owners),
    so packaging the same directory twice gives the same SHA-256.

    Parameters
    ----------
    path : path
        A directory written by :func:`dagmm.save_detector`.
    out_tar : path
        The ``.tar.gz`` to write.
    dataset, detector_type : str
        Keys of the entry.
    detector_name : str, optional
        Default: the detector's class name.
    archive_path : str, optional
        ``path`` of the entry, relative to the registry folder; default the
        file name of ``out_tar``.

    Returns
    -------
    dict
        ``{"detector_type", "dataset", "detector_name", "path", "sha256", "size"}``.
    """
    src = Path(path)
    config = read_config(src)
    if not (src / WEIGHTS).is_file():
        raise FileNotFoundError(f"{src} has no {WEIGHTS}; save the detector again.")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w",
                                                                             format=tarfile.PAX_FORMAT) as tar:
        for name in (CONFIG, WEIGHTS):
            data = (src / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    out = Path(out_tar)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    fsync_path(tmp)
    os.replace(tmp, out)
    return {"detector_type": detector_type, "dataset": dataset, "detector_name": detector_name or config["class"],
            "path": archive_path or out.name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def add_to_index(index_path: Union[str, os.PathLike], entry: dict) -> dict:
    """Add ``entry`` to a registry's ``index.json`` (created if absent), replacing one with the same keys."""
    index_path = Path(index_path)
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else {"artifacts": []}
    key = ("detector_type", "dataset", "detector_name")
    index["artifacts"] = [a for a in index["artifacts"] if tuple(a.get(k) for k in key) != tuple(entry[k] for k in key)]
    index["artifacts"].append(entry)
    tmp = index_path.with_name(index_path.name + ".part")
    tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, index_path)
    return index
