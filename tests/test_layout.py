"""The package layout: every dependency points down the flow, every module says what it owns.

paths -> methods -> transform (and the public API in morejax/__init__) -> vocab -> models | data ->
train -> cli. `models` and `data` are side by side and never import each other.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "morejax"
LEVELS = {
    "morejax.paths": 0,
    "morejax.points": 0,  # resumable tables: atomic files, the point runner (stdlib only)
    "morejax.methods": 1,
    "morejax.transform": 2,
    "morejax": 2.5,  # the public API: methods and the transform only
    "morejax.analysis": 2.5,  # what the methods can express (numpy, methods only)
    "morejax.vocab": 2.75,  # tokenizer conventions shared by models and data
    "morejax.models": 3,
    "morejax.data": 3,
    "morejax.interop": 3.5,  # Hugging Face formats: models + transform, below train
    "morejax.train": 4,
    "morejax.cli": 5,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group(name: str) -> str:
    """The layer a module belongs to: the longest LEVELS key that prefixes it."""
    keys = [k for k in LEVELS if name == k or name.startswith(k + ".")]
    if not keys:
        raise AssertionError(f"{name} is in no layer of tests/test_layout.py: place it")
    return max(keys, key=len)


def is_module(name: str) -> bool:
    where = PACKAGE.parent.joinpath(*name.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def imported(path: Path) -> set[str]:
    """Every morejax module a file imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "morejax"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "morejax":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if is_module(sub) else node.module)
    return out


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[module_name(p) for p in FILES])
def test_no_upward_or_sideways_import(path):
    me = module_name(path)
    mine = group(me)
    for other in sorted(imported(path)):
        theirs = group(other)
        if theirs == mine:
            continue
        assert LEVELS[theirs] < LEVELS[mine], (
            f"{me} (layer {mine}) imports {other} (layer {theirs}): dependencies point down "
            "paths -> methods -> transform -> vocab -> models | data -> train -> cli"
        )


@pytest.mark.parametrize("path", FILES, ids=[module_name(p) for p in FILES])
def test_every_module_opens_with_what_it_owns(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.split()) >= 4, f"{module_name(path)} has no opening docstring"


def test_the_layout_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a data module importing train is reported."""
    bad = PACKAGE / "data" / "glue.py"
    fake = tmp_path / "glue.py"
    fake.write_text(bad.read_text() + "\nfrom morejax.train import config\n")
    found = {group(m) for m in imported(fake)}
    assert "morejax.train" in found and LEVELS["morejax.train"] > LEVELS["morejax.data"]
