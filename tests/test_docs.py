"""Every ```python block in README.md and docs/*.md runs, in order, per file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
#: Optional packages a document's blocks import (its test skips without them), and the extra holding them.
NEEDS = {"export.md": ("onnx", "onnxruntime"), "distributed.md": ("dask", "distributed", "pyarrow")}
EXTRA = {"export.md": "onnx", "distributed.md": "dask"}


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_code_blocks_run(doc, tmp_path, monkeypatch):
    blocks = BLOCK.findall(doc.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{doc.name} has no python blocks")
    for module in NEEDS.get(doc.name, ()):
        pytest.importorskip(module, reason=f"{doc.name} needs {module} (pip install 'dagmm[{EXTRA[doc.name]}]')")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{doc.name}[block {i + 1}]", "exec"), namespace)
        except Exception as err:  # name the block, so a drifting doc is easy to find
            raise AssertionError(f"{doc.name}, python block {i + 1} failed: {err!r}\n{block}") from err
