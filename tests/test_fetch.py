"""fetch_detector against a real HTTP server on 127.0.0.1 serving detectors saved here."""

from __future__ import annotations

import functools
import io
import json
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dagmm import OutlierAEGMM, fetch_detector, save_detector
from dagmm.persistence import registry
from dagmm.persistence.registry import MARKER, add_to_index, package_detector


class _Handler(SimpleHTTPRequestHandler):
    """Static files, plus 'truncate' paths: announce more bytes than sent, then hang up."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        self.server.hits.append(name)
        if name in self.server.truncate:
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) + 1000))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "registry"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.hits, httpd.truncate = [], set()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_address[1]}/models", httpd=httpd)
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def detector(tabular):
    od = OutlierAEGMM(n_gmm=2, data_type="tabular").fit(tabular[0][:300], epochs=1, verbose=False, seed=0)
    od.infer_threshold(tabular[0][:300], threshold_perc=90)
    return od


@pytest.fixture
def published(server, detector, tmp_path):
    """The detector saved, packaged and listed in the server's index.json."""
    save_detector(detector, tmp_path / "saved")
    (server.root / "models").mkdir()
    entry = package_detector(tmp_path / "saved", server.root / "models" / "kdd" / "aegmm.tar.gz", dataset="kddcup",
                             archive_path="kdd/aegmm.tar.gz")
    add_to_index(server.root / "models" / "index.json", entry)
    return entry


def _fetch(server, target, **kw):
    return fetch_detector(target, detector_type="outlier", dataset="kddcup", detector_name="OutlierAEGMM",
                          base_url=server.url, **kw)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_fetch_downloads_verifies_and_loads(server, published, detector, tabular, tmp_path):
    assert published["detector_name"] == "OutlierAEGMM" and published["path"] == "kdd/aegmm.tar.gz"
    target = tmp_path / "cache" / "kdd-aegmm"
    od = _fetch(server, target)
    X = tabular[1][:200]
    np.testing.assert_array_equal(od.score(X), detector.score(X))
    assert od.threshold == detector.threshold
    assert (target / MARKER).read_text().strip() == published["sha256"]
    assert server.httpd.hits == ["models/index.json", "models/kdd/aegmm.tar.gz"]
    assert _leftovers(target.parent) == []


def test_cached_copy_is_reused(server, published, tmp_path, monkeypatch):
    target = tmp_path / "cache"
    _fetch(server, target)
    monkeypatch.setenv(registry.REGISTRY_ENV, server.url)  # base URL from the environment this time
    fetch_detector(target, dataset="kddcup")
    assert server.httpd.hits.count("models/kdd/aegmm.tar.gz") == 1


def test_copy_without_matching_marker_is_not_cached(server, published, detector, tmp_path):
    target = tmp_path / "cache"
    save_detector(detector, target)  # complete, but not known to come from this artifact
    _fetch(server, target)
    (target / MARKER).write_text("0" * 64)  # a copy of another artifact
    _fetch(server, target)
    assert server.httpd.hits.count("models/kdd/aegmm.tar.gz") == 2
    assert (target / MARKER).read_text().strip() == published["sha256"]


def test_checksum_mismatch(server, published, tmp_path):
    index = server.root / "models" / "index.json"
    add_to_index(index, {**published, "sha256": "ab" * 32})
    with pytest.raises(ValueError, match=r"has SHA-256 [0-9a-f]{64} but index.json lists abab.*nothing was cached"):
        _fetch(server, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and _leftovers(tmp_path) == []


def test_http_404s(server, published, tmp_path):
    (server.root / "models" / "kdd" / "aegmm.tar.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"aegmm.tar.gz returned HTTP 404 Not Found: the registry has no "
                                                 r"artifact aegmm.tar.gz"):
        _fetch(server, tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"index.json returned HTTP 404 Not Found: the registry has no "
                                                 r"index.json. Check base_url or \$DAGMM_REGISTRY_URL"):
        fetch_detector(tmp_path / "cache", base_url=server.url + "/nothing-here/")
    with pytest.raises(FileNotFoundError, match=r"has no detector_type='outlier', dataset='cifar10', "
                                                 r"detector_name='OutlierAEGMM'; it lists: \(outlier, kddcup"):
        fetch_detector(tmp_path / "cache", dataset="cifar10", base_url=server.url)
    assert not (tmp_path / "cache").exists() and _leftovers(tmp_path) == []


def test_interrupted_download_then_success(server, published, tmp_path):
    target = tmp_path / "cache"
    server.httpd.truncate.add("models/kdd/aegmm.tar.gz")
    with pytest.raises(ConnectionError, match="was interrupted after .*nothing was cached. Retry"):
        _fetch(server, target)
    assert not target.exists() and _leftovers(tmp_path) == []  # no .part, no half-extracted folder
    server.httpd.truncate.clear()
    assert _fetch(server, target)._fitted
    assert (target / MARKER).is_file()


def _evil_archive(server, published, members) -> None:
    """Replace the published artifact with ``members`` (TarInfo, bytes) and fix its index entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    data = buf.getvalue()
    (server.root / "models" / "kdd" / "aegmm.tar.gz").write_bytes(data)
    import hashlib

    add_to_index(server.root / "models" / "index.json",
                 {**published, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})


def _file(name: str, data: bytes = b"{}") -> tuple:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("member, message", [
    (_file("../escaped.txt"), "holds '../escaped.txt', a path outside its folder"),
    (_file("sub/../../escaped.txt"), "a path outside its folder"),
    (_file("/tmp/escaped-dagmm.txt"), "holds '/tmp/escaped-dagmm.txt', a path outside its folder"),
    (_link("weights.safetensors", "/etc/passwd"), r"holds a link 'weights.safetensors' -> '/etc/passwd'"),
    (_link("weights.safetensors", "config.json", tarfile.LNKTYPE), "holds a link"),
    (_link("dev", "", tarfile.CHRTYPE), "holds 'dev', which is not a regular file or folder"),
])
def test_unsafe_archives_are_refused(server, published, tmp_path, member, message):
    _evil_archive(server, published, [_file("config.json"), member])
    with pytest.raises(ValueError, match=message):
        _fetch(server, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and _leftovers(tmp_path) == []
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped-dagmm.txt").exists()


def test_archive_that_is_not_a_detector(server, published, tmp_path):
    _evil_archive(server, published, [_file("readme.txt", b"hello")])
    with pytest.raises(ValueError, match="has no config.json: it is not a saved dagmm detector"):
        _fetch(server, tmp_path / "cache")


def test_index_path_traversal_is_refused(server, published, tmp_path):
    add_to_index(server.root / "models" / "index.json", {**published, "path": "../secrets.tar.gz"})
    with pytest.raises(ValueError, match=r"lists artifact path '../secrets.tar.gz'; paths must be relative"):
        _fetch(server, tmp_path / "cache")


def test_fetch_refuses_to_replace_other_directories(server, published, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a saved dagmm detector"):
        _fetch(server, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_file_url_registry_and_bad_scheme(published, server, tmp_path):
    od = fetch_detector(tmp_path / "cache", base_url=(server.root / "models").as_uri())
    assert od._fitted
    with pytest.raises(ValueError, match="base_url must be an http://, https:// or file:// URL"):
        fetch_detector(tmp_path / "x", base_url="ftp://example.org/")


def test_package_is_reproducible(detector, tmp_path):
    save_detector(detector, tmp_path / "saved")
    a = package_detector(tmp_path / "saved", tmp_path / "a.tar.gz", dataset="kddcup")
    b = package_detector(tmp_path / "saved", tmp_path / "b.tar.gz", dataset="kddcup", detector_name="paper")
    assert a["sha256"] == b["sha256"] and a["size"] == (tmp_path / "a.tar.gz").stat().st_size
    assert b["detector_name"] == "paper" and a["path"] == "a.tar.gz"
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert tar.getnames() == ["config.json", "weights.safetensors"]
    index = add_to_index(tmp_path / "index.json", a)
    index = add_to_index(tmp_path / "index.json", {**a, "size": 1})  # same keys: replaced
    assert json.loads((tmp_path / "index.json").read_text()) == index and len(index["artifacts"]) == 1
