"""Loading a config file and applying `--set` overrides to the tree it returns.

An override whose path is an argument of the file's `config()` is passed to it; the rest set
fields of the tree, in order, each value parsed for the field it sets (`values`).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import fiddle as fdl

from morejax.data import folders
from morejax.train.config.tree import field_hint, set_path
from morejax.train.config.values import parse_setting


def load_module(path: str | Path):
    """Import a config file by path; its folder and the folder above are importable."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.suffix != ".py":
        raise ValueError(f"{path} is not a config file (a .py file defining config())")
    for p in (str(path.parent.parent), str(path.parent)):
        if p not in sys.path:
            sys.path.insert(0, p)
    name = f"_morejax_config_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ValueError(f"{path} is not valid Python (line {e.lineno}: {e.msg})") from e
    if not hasattr(module, "config"):
        raise ValueError(f"{path} defines no config() function")
    return module


def config_args(module) -> dict[str, inspect.Parameter]:
    """The keyword arguments of a file's `config()` (`--set task=mrpc` sets one)."""
    return {
        k: p
        for k, p in inspect.signature(module.config).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _items(overrides: Iterable[str] | Mapping[str, Any]) -> list[tuple[str, Any, bool]]:
    """(path, value, value_is_text) per override; text values are parsed once the field is known."""
    if isinstance(overrides, Mapping):
        return [(str(k), v, False) for k, v in overrides.items()]
    items = []
    for text in overrides:
        if "=" not in text:
            raise ValueError(f"--set expects PATH=VALUE, got {text!r}")
        path, value = text.split("=", 1)
        items.append((path.strip(), value, True))
    return items


def load(
    path: str | Path,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    extra: Mapping[str, Any] | None = None,
) -> fdl.Config:
    """A file's config with overrides: `["a.b=1"]` strings or a `{path: value}` dict.

    An override whose path is an argument of the file's `config()` (e.g. `task`) is passed
    to it; the rest set fields of the tree it returns, in order. `extra` (a dict, values as
    given) comes after `overrides`, as sweep points do.
    """
    module = load_module(path)
    args = config_args(module)
    items = _items(overrides) + _items(extra or {})
    kwargs = {}
    for key, value, is_text in items:
        if key in args:
            hint = _arg_hint(module.config, key, args[key])
            kwargs[key] = parse_setting(key, value, hint) if is_text else value
    cfg = module.config(**kwargs)
    rest = [(k, v, t) for k, v, t in items if k not in args]
    _apply(cfg, rest, known_args=sorted(args))
    return cfg


def _arg_hint(fn, name: str, param: inspect.Parameter) -> Any:
    try:
        hint = typing.get_type_hints(fn).get(name)
    except Exception:  # an unresolvable annotation: fall back to the default's type
        hint = None
    if hint is None and param.default is not param.empty and param.default is not None:
        hint = type(param.default)
    return hint


def apply_overrides(cfg: fdl.Config, overrides: Iterable[str] | Mapping[str, Any]) -> fdl.Config:
    """Apply `path=value` strings (values parsed) or a `{path: value}` dict (values as given)."""
    _apply(cfg, _items(overrides))
    return cfg


def _apply(cfg, items, known_args: list[str] = ()) -> None:
    for path, value, is_text in items:
        try:
            if is_text:
                value = parse_setting(path, value, field_hint(cfg, path))
            set_path(cfg, path, value)
        except ValueError as e:
            if known_args and "unknown config path" in str(e):
                raise ValueError(f"{e}; config() arguments: {', '.join(known_args)}") from None
            raise


def shared_dir(*parts: str) -> str | None:
    """A folder of the offline data (`morejax.data.folders.shared_data`), None when absent."""
    path = folders.shared_data(*parts)
    return str(path) if path.is_dir() else None
