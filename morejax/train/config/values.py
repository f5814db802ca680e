"""What a `--set` value means for the field it sets.

`parse_value` reads the text: a Python literal, `Name(k=literal, ...)` for a method or config
class (a fiddle Config, built with the rest), or a bare word; a field that takes text gets
the text itself. `fit` then checks and converts it to the field's annotation, so a value
that does not fit is one error naming path, type and value before anything loads.
"""

from __future__ import annotations

import ast
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any

import fiddle as fdl


def _factories() -> dict[str, Any]:
    """Callables a `--set` value may name, e.g. `adapter=LoRA(rank=8)`."""
    from morejax import methods
    from morejax.train.config import Data, Mesh, Model, Optimizer

    out = methods.classes()
    out.update(Model=Model, Data=Data, Optimizer=Optimizer, Mesh=Mesh)
    return out


def _wants_text(hint: Any) -> bool:
    """Whether a field annotated `hint` takes text (str, Path, or either | None)."""
    if hint is None:
        return False
    if hint in (str, Path):
        return True
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    union = origin in (typing.Union, UnionType)
    return bool(union and args and all(a in (str, Path) for a in args))


def parse_value(text: str, hint: Any = None) -> Any:
    """A Python literal; `Name(k=literal, ...)` for a method or config class; else a bare word.

    `hint` is the target field's annotation: a field that takes text gets the text itself
    (`/data/glue`, `runs/x`, `a b`) unless it is a quoted string or `None`.
    """
    raw = text
    text = text.strip()
    if _wants_text(hint):
        if text == "None":
            return None
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        return value if isinstance(value, str) else text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        node = None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        factories = _factories()
        if node.func.id not in factories:
            raise ValueError(
                f"unknown callable {node.func.id!r} in {text!r}; known: {sorted(factories)}"
            )
        if node.args:
            raise ValueError(f"{text!r}: pass keyword arguments only")
        try:
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
            return fdl.Config(factories[node.func.id], **kwargs)
        except (ValueError, TypeError, SyntaxError) as e:
            raise ValueError(f"cannot build {text!r}: {e}") from None
    if re.fullmatch(r"[A-Za-z_][\w\-./]*", text):
        return text
    raise ValueError(f"cannot parse value {raw!r} (quote strings: 'text')")


_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_setting(path: str, text: str, hint: Any) -> Any:
    """A `--set` value parsed and made to fit the annotation of the field it sets.

    Checked here, before anything loads, so `data.pack=false` is False (not the truthy
    text), `steps=1.5` is an error (not 1 step) and `steps=ten` fails at once, naming it.
    """
    value = parse_value(text, hint)
    if hint is None:
        return value
    try:
        return fit(value, hint)
    except TypeError:
        expected = type_name(hint)
        if hint is bool:
            expected += " (true/false, yes/no, 1/0)"
        raise ValueError(
            f"--set {path}={text.strip()}: {path} takes {expected}, not {value!r}"
        ) from None


def fit(value: Any, hint: Any) -> Any:
    """`value` as a field annotated `hint` holds it (1 -> 1.0 for a float, 'no' -> False for a
    bool); TypeError when it does not fit. Annotations it cannot check pass values as given."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, UnionType):
        for member in sorted(args, key=lambda a: a is type(None)):  # 'none' is text for str
            try:
                return fit(value, member)
            except TypeError:
                pass
        raise TypeError(hint)
    if hint is type(None):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        raise TypeError(hint)
    if isinstance(value, fdl.Buildable):
        built = fdl.get_callable(value)
        if isinstance(built, type) and isinstance(hint, type) and issubclass(built, hint):
            return value
        raise TypeError(hint)
    if hint is bool:
        if isinstance(value, (bool, int, str)) and str(value).lower() in _BOOLS:
            return _BOOLS[str(value).lower()]
        raise TypeError(hint)
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(hint)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(hint)
    if (origin or hint) in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise TypeError(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [fit(v, args[0]) for v in value]
        elif args:
            if len(args) != len(value):
                raise TypeError(hint)
            items = [fit(v, a) for v, a in zip(value, args)]
        else:
            items = list(value)
        return tuple(items) if (origin or hint) is tuple else items
    if (origin or hint) is dict:
        if not isinstance(value, Mapping):
            raise TypeError(hint)
        if not args:
            return dict(value)
        return {fit(k, args[0]): fit(v, args[1]) for k, v in value.items()}
    if origin is typing.Literal:
        if value in args:
            return value
        raise TypeError(hint)
    if hint is Path:
        hint = str
    if isinstance(hint, type) and not isinstance(value, hint):
        raise TypeError(hint)
    return value


def type_name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")
