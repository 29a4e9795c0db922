"""The layers import downwards only: models/ never reaches the fast paths, accel/ only the models."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dagmm"


def _imports(path: Path) -> set[str]:
    """The ``dagmm`` subpackages and modules a file imports (relative imports resolved)."""
    rel = path.relative_to(SRC).with_suffix("").parts
    pkg = list(rel[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[:len(pkg) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            found.update(".".join(target + ([a.name] if not node.module else [])) for a in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.update(n[len("dagmm."):] for n in names if n.startswith("dagmm."))
    return found


@pytest.mark.parametrize("layer, allowed", [
    ("models", {"models", "_layout"}),
    ("accel", {"accel", "models"}),
])
def test_a_layer_imports_only_what_is_below_it(layer, allowed):
    for path in sorted((SRC / layer).glob("*.py")):
        for name in _imports(path):
            assert name.split(".")[0] in allowed, f"{path.relative_to(SRC)} imports dagmm.{name}"


def test_the_rest_reaches_the_kernels_only_through_the_facade():
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] == "accel":
            continue
        for name in _imports(path):
            parts = name.split(".")
            assert not (parts[0] == "accel" and len(parts) > 1 and parts[1] not in {
                "for_each_batch", "workers_for", "aegmm_loss", "kernel_threads", "energy_scorer", "reconstructor",
                "adam_plan", "available", "fast", "enabled"}), f"{path.relative_to(SRC)} imports dagmm.{name}"
            assert "data_ptr" not in path.read_text(encoding="utf-8"), f"{path.relative_to(SRC)} uses raw addresses"
