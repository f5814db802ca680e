"""Reading and setting a config tree by path (`adapter.rank`, `optimizer.lr_groups['head/.*']`).

Paths are fiddle's own (`fiddle.daglish` Attr and Key steps, printed by `daglish.path_str`).
Every argument of a buildable counts, defaults included, so any nested value can be read,
set or listed, and an unknown path names the nearest valid ones.
"""

from __future__ import annotations

import ast
import difflib
import typing
from collections.abc import Mapping
from typing import Any

import fiddle as fdl
from fiddle import daglish

Steps = tuple[daglish.PathElement, ...]


def parse_path(path: str) -> Steps:
    """`a.b['k'][0]` -> (Attr('a'), Attr('b'), Key('k'), Key(0)).

    Python's parser rather than `daglish.parse_path`, whose subscripts are only integers and
    quoted text without escapes: a saved config's keys are any literal's repr.
    """
    try:
        node = ast.parse("_." + path.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"cannot parse config path {path!r}: {e.msg}") from None
    steps = []
    while not (isinstance(node, ast.Name) and node.id == "_"):
        if isinstance(node, ast.Attribute):
            steps.append(daglish.Attr(node.attr))
            node = node.value
        elif isinstance(node, ast.Subscript):
            try:
                key = ast.literal_eval(node.slice)
            except ValueError:
                raise ValueError(f"subscript in {path!r} must be a literal") from None
            steps.append(daglish.Key(key))
            node = node.value
        else:
            raise ValueError(f"cannot parse config path {path!r}")
    return tuple(steps[::-1])


def format_path(steps: Steps) -> str:
    """The inverse of `parse_path`: `adapter.rank`, `optimizer.no_decay[0]`."""
    return daglish.path_str(steps).removeprefix(".")


def _arguments(b: fdl.Buildable) -> dict:
    """All of a buildable's arguments in signature order, defaults included."""
    return fdl.ordered_arguments(b, include_defaults=True, include_unset=True)


def _children(value: Any) -> list[tuple[daglish.PathElement, Any]]:
    if isinstance(value, fdl.Buildable):
        return [(daglish.Attr(k), v) for k, v in _arguments(value).items()]
    if isinstance(value, Mapping):
        return [(daglish.Key(k), v) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [(daglish.Key(i), v) for i, v in enumerate(value)]
    return []


def flatten(cfg: Any, *, prefix: Steps = ()) -> dict[str, Any]:
    """`{path: leaf value}` over the config, defaults included; buildables add `path.__fn__`."""
    out = {}
    if isinstance(cfg, fdl.Buildable):
        fn = fdl.get_callable(cfg)
        out[format_path(prefix + (daglish.Attr("__fn__"),))] = f"{fn.__module__}.{fn.__qualname__}"
    kids = _children(cfg)
    if not kids and prefix:
        out[format_path(prefix)] = cfg
    for step, value in kids:
        out.update(flatten(value, prefix=prefix + (step,)))
    return out


def valid_paths(cfg: Any) -> list[str]:
    """Every settable path (leaves and inner nodes)."""
    paths = []

    def walk(value, prefix):
        for step, child in _children(value):
            paths.append(format_path(prefix + (step,)))
            walk(child, prefix + (step,))

    walk(cfg, ())
    return paths


def _unknown(cfg: Any, path: str, reason: str) -> ValueError:
    paths = valid_paths(cfg)
    near = difflib.get_close_matches(path, paths, n=6, cutoff=0.5)
    if not near:
        head = path.rsplit(".", 1)[0]
        near = [p for p in paths if p.startswith(head + ".")][:10] or paths[:10]
    return ValueError(
        f"unknown config path {path!r} ({reason}); nearest valid paths: {', '.join(near)}"
    )


def get_path(cfg: Any, path: str) -> Any:
    node = cfg
    for step in parse_path(path):
        node = _get(cfg, node, step, path)
    return node


def _field(cfg, node, name: str, path: str) -> dict:
    """The arguments of the buildable `node` when it has a field `name`; else the error."""
    args = _arguments(node) if isinstance(node, fdl.Buildable) else {}
    if name not in args:
        raise _unknown(cfg, path, f"no field {name!r}")
    return args


def _get(cfg, node, step: daglish.PathElement, path: str):
    if isinstance(step, daglish.Attr):
        return _field(cfg, node, step.name, path)[step.name]
    try:
        return node[step.key]
    except (KeyError, IndexError, TypeError):
        raise _unknown(cfg, path, f"no item [{step.key!r}]") from None


def set_path(cfg: Any, path: str, value: Any) -> None:
    """Set one nested value in place; unknown paths raise ValueError naming the nearest ones."""
    steps = parse_path(path)
    if not steps:
        raise ValueError("empty config path")
    _set(cfg, cfg, steps, value, path)


def _set(cfg, node, steps: Steps, value, path: str):
    """Set `value` below `node`; returns the node (tuples and unset dicts come back new)."""
    step = steps[0]
    if len(steps) > 1:
        child = _get(cfg, node, step, path)
        after = steps[1]
        if child is None and isinstance(after, daglish.Key) and isinstance(after.key, str):
            child = {}  # an unset dict field (e.g. lr_groups=None) is created
        value = _set(cfg, child, steps[1:], value, path)
    if isinstance(step, daglish.Attr):
        _field(cfg, node, step.name, path)
        setattr(node, step.name, value)
        return node
    key = step.key
    if isinstance(node, (list, tuple)):
        if not isinstance(key, int) or not -len(node) <= key < len(node):
            raise _unknown(cfg, path, f"index {key!r} out of range")
        items = list(node)
        items[key] = value
        return items if isinstance(node, list) else tuple(items)
    if isinstance(node, Mapping):
        node = node if isinstance(node, dict) else dict(node)
        node[key] = value
        return node
    raise _unknown(cfg, path, f"{type(node).__name__} takes no items")


def field_hint(cfg: Any, path: str) -> Any:
    """The annotation of the field a path ends in (None when unknown or an item)."""
    steps = parse_path(path)
    if not steps or not isinstance(steps[-1], daglish.Attr):
        return None
    node = cfg
    try:
        for step in steps[:-1]:
            node = _get(cfg, node, step, path)
    except ValueError:
        return None
    if not isinstance(node, fdl.Buildable):
        return None
    try:
        return typing.get_type_hints(fdl.get_callable(node)).get(steps[-1].name)
    except Exception:
        return None
