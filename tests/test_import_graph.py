"""The layers stay apart (design.md §2): guidance never imports a renderer, a renderer never imports guidance, and the
losses know neither renderers nor the trainer; cameras reach guidance as plain values (scoredist/cameras.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scoredist"


def imported_modules(path: Path) -> set[str]:
    """Every scoredist module a file imports, at any depth (function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m.startswith("scoredist")}


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("guidance", ("scoredist.renderers", "scoredist.train", "scoredist.losses")),
        ("renderers", ("scoredist.guidance", "scoredist.train", "scoredist.losses")),
        ("losses", ("scoredist.renderers", "scoredist.train")),
    ],
)
def test_a_layer_does_not_import_the_layers_it_must_not_know(layer, forbidden):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    crossings = [
        f"{path.relative_to(PACKAGE.parent)} imports {module}"
        for path in files
        for module in sorted(imported_modules(path))
        if module.startswith(forbidden)
    ]
    assert not crossings, "\n".join(crossings)
