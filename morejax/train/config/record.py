"""The resolved config as a run records it (`config.txt`, `config.json`) and read back.

`to_json` is flat, one `path: value` per leaf with defaults and each buildable's `__fn__`:
its keys are what sweeps key finished points by and resumed runs compare, so its form stays.
`from_json` rebuilds the fiddle tree from it (fields added since hold their defaults).
"""

from __future__ import annotations

import json
import pkgutil
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fiddle as fdl
from fiddle import daglish

from morejax.train.config.tree import flatten, parse_path
from morejax.train.config.values import fit, type_name


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def to_json(cfg: Any) -> dict:
    return {k: _jsonable(v) for k, v in flatten(cfg).items()}


def to_text(cfg: Any) -> str:
    """One `path = value` line per leaf, defaults included."""
    return "\n".join(f"{k} = {v!r}" for k, v in flatten(cfg).items())


def write_resolved(cfg: Any, workdir: str | Path, extra: Mapping | None = None) -> None:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.txt").write_text(to_text(cfg) + "\n")
    payload = {"config": to_json(cfg), **(dict(extra) if extra else {})}
    (workdir / "config.json").write_text(json.dumps(payload, indent=1) + "\n")


def saved(workdir: str | Path) -> dict | None:
    """The resolved config a run wrote to its workdir (`to_json` form), None when absent."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())["config"]


class _Node(dict):
    """An inner node of a flat config being rebuilt (a leaf value may itself be a dict)."""


FN = daglish.Attr("__fn__")


def from_json(flat: Mapping[str, Any]) -> fdl.Config:
    """The config tree whose `to_json` is `flat`: a run's saved config, ready to build again."""
    tree = _Node()
    for path, value in flat.items():
        steps = parse_path(path)
        node = tree
        for step in steps[:-1]:
            node = node.setdefault(step, _Node())
        node[steps[-1]] = value
    cfg = _rebuild(tree, None, "")
    rebuilt = to_json(cfg)  # fields added to the code since the run hold their defaults
    wrong = sorted(k for k, v in flat.items() if k not in rebuilt or rebuilt[k] != v)
    if wrong:
        raise ValueError(f"the saved config cannot be rebuilt exactly (fields: {wrong[:8]})")
    return cfg


def _label(step: daglish.PathElement) -> Any:
    return step.name if isinstance(step, daglish.Attr) else step.key


def _rebuild(node: Any, hint: Any, path: str) -> Any:
    if not isinstance(node, _Node):
        try:
            return node if hint is None else fit(node, hint)
        except TypeError:
            raise ValueError(f"saved config: {path} = {node!r} is not {type_name(hint)}") from None
    if FN in node:
        fn = pkgutil.resolve_name(node.pop(FN))
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        kwargs = {}
        for step, v in node.items():
            k = _label(step)
            kwargs[k] = _rebuild(v, hints.get(k), f"{path}.{k}".lstrip("."))
        try:
            return fdl.Config(fn, **kwargs)
        except TypeError as e:  # a field the code no longer has
            raise ValueError(f"saved config: {path or 'the experiment'}: {e}") from None
    items = {}
    for step, v in node.items():
        key = _label(step)
        items[key] = _rebuild(v, None, f"{path}[{key!r}]")
    if list(items) == list(range(len(items))):
        items = list(items.values())
    return items if hint is None else _rebuild(items, hint, path)
