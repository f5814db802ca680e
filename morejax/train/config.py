"""Experiment configs: fiddle trees of the whole run, gin-style `--set` overrides, sweeps.

A config file under `configs/` defines `config() -> fdl.Config[Experiment]` and may
define `sweep() -> list[dict]` (override dicts, one per point). Paths are fiddle
attribute paths with optional subscripts: `adapter.rank`, `optimizer.lr_groups['head/.*']`.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import importlib.util
import inspect
import itertools
import json
import pkgutil
import re
import sys
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import UnionType
from typing import Any

import fiddle as fdl

from morejax.data import folders

# ----------------------------------------------------------------------------- the run's pieces


@dataclasses.dataclass
class Model:
    """Which network and weights.

    `name` is a named config of the `family` module (`bert` / `llama` CONFIGS), enough for
    shape-only tables; `checkpoint` is where pretrained weights come from (a registry short
    name such as 'minilm-l6' or a local Hugging Face folder; None: `name`).
    `pretrained=False` initialises randomly (tests) from `seed` (the frozen weights: the same
    for every run seed) and takes the tokenizer from `tokenizer` (a registry name or a
    tokenizer.json path); `overrides` changes config fields. `num_labels` None: the GLUE task
    decides (1 for STS-B regression, 3 for MNLI, ...).
    """

    name: str = "minilm-l6"
    family: str = "bert"
    checkpoint: str | None = None
    head: str = "classification"
    num_labels: int | None = None
    pretrained: bool = True
    seed: int = 0
    tokenizer: str | None = None
    overrides: dict | None = None
    scan_layers: bool = False
    dtype: str = "float32"


@dataclasses.dataclass
class Data:
    """Where examples come from and how they are batched.

    `kind` is `glue` or `text` (encoder batches), `reasoning` or `chat` (decoder batches with
    `loss_mask`).
    `local_dir` prepares GLUE from local TSVs (offline; the task folder or a GLUE root);
    None lets TFDS download. `data_dir` is the TFDS folder (None: ~/tensorflow_datasets).
    `max_len` / `eval_split` None: the task decides (GLUE: a length that holds its sentence
    pairs, and every validation split, e.g. MNLI matched and mismatched; reasoning: 256, and
    the held-out slice of the training file). `seed` None: the experiment's seed orders the
    data, so a run's seed drives all of its randomness.
    `train_limit` / `eval_limit` keep the first N examples (smoke runs, tests).
    `pipeline` passes extra keyword arguments to the batching functions.
    `pack` (encoder tasks) packs several examples into each row of `max_len` tokens, each
    attending only to itself: the same model outputs with far less padding on short texts.
    `generate_sets` (reasoning): sets whose test records are also answered by greedy
    generation at every evaluation, scored like the papers' tables (`accuracy` = the
    average over sets); `generate_limit` keeps the first N records of each.
    `allow_test_overlap` (reasoning) keeps training/validation records that also appear in a
    scored test set; by default they are dropped and counted (`morejax.data.overlap`).

    Your own labelled files (`kind='text'`, `morejax.data.files`): `train`, `validation`,
    `test` are .csv/.tsv/.jsonl/.parquet paths (`data_dir`: where they are prepared, None:
    ~/.cache/morejax/data); `text` names one text column or two ('q1,q2'), `label` the label
    column. `task_type` (classification / regression), `classes` (sorted) and `metric` (what
    `score` is: accuracy, macro_f1, mcc / pearson, spearman) None: the training file decides.
    Without a validation file a `validation_fraction` slice of the training file is held out.
    Chat and instruction data (`kind='chat'`, `morejax.data.chat`): `train` (and `validation`,
    `test`) are .jsonl/.json files of `{"messages": [...]}` rows, rendered with
    `chat_template` (a tokenizer_config.json, .jinja or .gguf; None: the model folder's), or
    of Alpaca records. `exact_match` also answers the first `generate_limit` validation rows
    by greedy generation and scores them against the last assistant turn (after
    `answer_regex`'s first group when given).
    """

    kind: str = "glue"
    task: str = "sst2"
    local_dir: str | None = None
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str | tuple[str, ...] | None = None
    max_len: int | None = None
    buckets: tuple[int, ...] | None = None
    eval_batch_size: int = 128
    train_limit: int | None = None
    eval_limit: int | None = None
    seed: int | None = None
    num_threads: int = 1
    pipeline: dict | None = None
    pack: bool = False
    generate_sets: tuple[str, ...] = ()
    generate_limit: int | None = None
    generate_tokens: int = 32
    allow_test_overlap: bool = False
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    text: str | None = None
    label: str | None = None
    task_type: str | None = None
    classes: tuple[str, ...] | None = None
    metric: str | None = None
    validation_fraction: float = 0.1
    chat_template: str | None = None
    exact_match: bool = False
    answer_regex: str | None = None


@dataclasses.dataclass
class Optimizer:
    """AdamW with a warmup schedule; `lr_groups` maps regexes to learning-rate multipliers.

    Weight decay applies to every trainable leaf except those matching `no_decay`.
    Clipping uses the global norm of the adapter gradients only.
    """

    learning_rate: float = 5e-4
    schedule: str = "cosine"
    warmup_ratio: float = 0.06
    warmup_steps: int | None = None
    end_factor: float = 0.0
    weight_decay: float = 0.0
    no_decay: tuple[str, ...] = (r".*bias", r".*(LayerNorm|layernorm|layer_norm|norm)[^/]*/.*")
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    lr_groups: dict | None = None


@dataclasses.dataclass
class Mesh:
    """Device mesh: `data` (-1 = all remaining devices) x `model` (shards the frozen base).

    `sharding` splits the frozen base and the train state: `largest`, `fsdp`, `megatron`, or
    `auto` (the measured best for the mesh's shape; `morejax.train.mesh`)."""

    data: int = -1
    model: int = 1
    sharding: str = "auto"


@dataclasses.dataclass
class Experiment:
    """A whole fine-tuning run. `adapter` applies to kernels matching `targets`;
    `rules` adds more `{regex: method}` pairs tried before it.

    `steps` wins over `epochs`. `vmap_seeds` / `vmap_learning_rates` train several members
    of this config in one compiled program (a vectorised sweep). `seed` draws the adapters,
    the fresh head, dropout and (unless `data.seed` pins it) the data order.
    `init_check` measures how far the adapted model is from the base model at step 0.
    `nonfinite`: a step with a non-finite loss or gradient stops the run ('stop', naming the
    step and the first bad leaf; the last good checkpoint is kept) or is skipped ('skip',
    counted and logged). `inject_nan_at` poisons that step's gradients (fault-injection tests).
    """

    name: str = "experiment"
    model: Any = None
    adapter: Any = None
    targets: str = r".*/(query|key|value)/kernel"
    rules: dict | None = None
    trainable: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    data: Any = None
    optimizer: Any = None
    mesh: Any = None
    batch_size: int = 32
    micro_batches: int = 1
    steps: int | None = None
    epochs: float | None = None
    eval_every: int = 0
    eval_at_start: bool = False
    log_every: int = 10
    checkpoint_every: int = 0
    metric: str | None = None
    seed: int = 0
    dropout: bool = True
    base_dtype: str = "float32"
    vmap_seeds: tuple[int, ...] = ()
    vmap_learning_rates: tuple[float, ...] = ()
    init_check: bool = True
    nonfinite: str = "stop"
    inject_nan_at: int | None = None

    def all_rules(self) -> dict:
        """The ordered adapter rules: extra `rules` first, then `targets -> adapter`."""
        rules = dict(self.rules or {})
        if self.adapter is not None and self.targets:
            rules[self.targets] = self.adapter
        return rules


# ----------------------------------------------------------------------------- loading files


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


def sweep_points(path: str | Path) -> list[dict]:
    """The override dicts of a config file's `sweep()`; [{}] when it defines none."""
    module = load_module(path)
    if not hasattr(module, "sweep"):
        return [{}]
    points = [dict(p) for p in module.sweep()]
    return points or [{}]


def product(**axes: Iterable) -> list[dict]:
    """All combinations of the axes: `product(**{'adapter.rank': [4, 8], 'seed': [0, 1]})`."""
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(list(axes[k]) for k in keys))]


def zipped(**axes: Iterable) -> list[dict]:
    """Axes walked together (equal lengths)."""
    keys, cols = list(axes), [list(v) for v in axes.values()]
    if len({len(c) for c in cols}) > 1:
        raise ValueError(
            f"zipped axes differ in length: { {k: len(c) for k, c in zip(keys, cols)} }"
        )
    return [dict(zip(keys, vals)) for vals in zip(*cols)]


def point_name(overrides: Mapping[str, Any]) -> str:
    """A folder-safe name for one sweep point."""
    if not overrides:
        return "default"
    parts = [f"{k.split('.')[-1]}={_short(v)}" for k, v in overrides.items()]
    name = ",".join(parts)
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, fdl.Buildable):
        return fdl.get_callable(v).__name__
    return str(v)


# ----------------------------------------------------------------------------- paths and overrides


def _parse_path(path: str) -> list[tuple[str, Any]]:
    """`a.b['k'][0]` -> [('attr','a'), ('attr','b'), ('item','k'), ('item',0)]."""
    try:
        node = ast.parse("_." + path.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"cannot parse config path {path!r}: {e.msg}") from None
    steps = []
    while not (isinstance(node, ast.Name) and node.id == "_"):
        if isinstance(node, ast.Attribute):
            steps.append(("attr", node.attr))
            node = node.value
        elif isinstance(node, ast.Subscript):
            try:
                key = ast.literal_eval(node.slice)
            except ValueError:
                raise ValueError(f"subscript in {path!r} must be a literal") from None
            steps.append(("item", key))
            node = node.value
        else:
            raise ValueError(f"cannot parse config path {path!r}")
    return steps[::-1]


def _fmt_path(steps: list[tuple[str, Any]]) -> str:
    out = ""
    for kind, key in steps:
        out += f".{key}" if kind == "attr" else f"[{key!r}]"
    return out.lstrip(".")


def _arguments(b: fdl.Buildable) -> dict:
    """All of a buildable's arguments, defaults included (factories left out)."""
    args = {}
    for name, param in b.__signature_info__.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in b.__arguments__:
            args[name] = b.__arguments__[name]
        elif param.default is not param.empty:
            args[name] = param.default
        else:
            args[name] = fdl.NO_VALUE
    for name, value in b.__arguments__.items():
        args.setdefault(name, value)
    return args


def _children(value: Any) -> list[tuple[tuple[str, Any], Any]]:
    if isinstance(value, fdl.Buildable):
        return [(("attr", k), v) for k, v in _arguments(value).items()]
    if isinstance(value, Mapping):
        return [(("item", k), v) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [(("item", i), v) for i, v in enumerate(value)]
    return []


def flatten(cfg: Any, *, prefix: list | None = None) -> dict[str, Any]:
    """`{path: leaf value}` over the config, defaults included; buildables add `path.__fn__`."""
    out, prefix = {}, prefix or []
    if isinstance(cfg, fdl.Buildable):
        fn = fdl.get_callable(cfg)
        out[_fmt_path(prefix + [("attr", "__fn__")])] = f"{fn.__module__}.{fn.__qualname__}"
    kids = _children(cfg)
    if not kids and prefix:
        out[_fmt_path(prefix)] = cfg
    for step, value in kids:
        out.update(flatten(value, prefix=prefix + [step]))
    return out


def valid_paths(cfg: Any) -> list[str]:
    """Every settable path (leaves and inner nodes)."""
    paths = []

    def walk(value, prefix):
        for step, child in _children(value):
            paths.append(_fmt_path(prefix + [step]))
            walk(child, prefix + [step])

    walk(cfg, [])
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
    for kind, key in _parse_path(path):
        node = _get(cfg, node, kind, key, path)
    return node


def _get(cfg, node, kind, key, path):
    if kind == "attr":
        if not isinstance(node, fdl.Buildable) or key not in _arguments(node):
            raise _unknown(cfg, path, f"no field {key!r}")
        return _arguments(node)[key]
    try:
        return node[key]
    except (KeyError, IndexError, TypeError):
        raise _unknown(cfg, path, f"no item [{key!r}]") from None


def set_path(cfg: Any, path: str, value: Any) -> None:
    """Set one nested value in place; unknown paths raise ValueError naming the nearest ones."""
    steps = _parse_path(path)
    if not steps:
        raise ValueError("empty config path")
    _set(cfg, cfg, steps, value, path)


def _set(cfg, node, steps, value, path):
    """Set `value` below `node`; returns the node (tuples and unset dicts come back new)."""
    kind, key = steps[0]
    if len(steps) > 1:
        child = _get(cfg, node, kind, key, path)
        if child is None and steps[1][0] == "item" and isinstance(steps[1][1], str):
            child = {}  # an unset dict field (e.g. lr_groups=None) is created
        value = _set(cfg, child, steps[1:], value, path)
    if kind == "attr":
        if not isinstance(node, fdl.Buildable) or key not in _arguments(node):
            raise _unknown(cfg, path, f"no field {key!r}")
        setattr(node, key, value)
        return node
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


def _factories() -> dict[str, Any]:
    """Callables a `--set` value may name, e.g. `adapter=LoRA(rank=8)`."""
    from morejax import methods

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
        expected = _type_name(hint)
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


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def field_hint(cfg: Any, path: str) -> Any:
    """The annotation of the field a path ends in (None when unknown or an item)."""
    steps = _parse_path(path)
    if not steps or steps[-1][0] != "attr":
        return None
    node = cfg
    try:
        for kind, key in steps[:-1]:
            node = _get(cfg, node, kind, key, path)
    except ValueError:
        return None
    if not isinstance(node, fdl.Buildable):
        return None
    try:
        return typing.get_type_hints(fdl.get_callable(node)).get(steps[-1][1])
    except Exception:
        return None


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


# ----------------------------------------------------------------------------- building and writing


def resolve(cfg: fdl.Config) -> fdl.Config:
    """Fill in, in place, what the task decides (labels, length, validation splits).

    Explicit values win, except a label count that contradicts the task, which is an error
    here rather than a NaN or a shape error late in training.
    """
    try:
        kind, task = get_path(cfg, "data.kind"), get_path(cfg, "data.task")
    except ValueError:
        return cfg  # not an Experiment with data: nothing to decide
    if kind == "glue":
        from morejax.data import glue

        spec = glue.spec(task)
        set_path(cfg, "data.task", spec.name)
        labels = get_path(cfg, "model.num_labels")
        if labels is None:
            set_path(cfg, "model.num_labels", spec.num_labels)
        elif labels != spec.num_labels:
            what = "a regression (1 output)" if spec.is_regression else f"{spec.num_labels} classes"
            raise ValueError(
                f"model.num_labels={labels} but GLUE {spec.name} has {what}; leave "
                "model.num_labels unset (None): the task decides it"
            )
        if get_path(cfg, "data.max_len") is None:
            set_path(cfg, "data.max_len", spec.default_max_len)
        if get_path(cfg, "data.eval_split") is None:
            splits = spec.validation_splits
            set_path(cfg, "data.eval_split", splits[0] if len(splits) == 1 else tuple(splits))
    elif kind == "text" and get_path(cfg, "data.train"):  # without a file: shapes only
        _resolve_files(cfg)
    elif kind == "chat":
        _resolve_chat(cfg)
    elif kind == "reasoning":
        if get_path(cfg, "data.max_len") is None:
            set_path(cfg, "data.max_len", 256)
        if get_path(cfg, "data.eval_split") is None:
            set_path(cfg, "data.eval_split", "validation")
    return cfg


def _resolve_files(cfg: fdl.Config) -> None:
    """What the user's training file decides: classes or scores, the head, the metric."""
    from morejax.data import files

    data = fdl.build(get_path(cfg, "data"))
    decided = files.decide(data)
    classes = decided["classes"]
    labels = 1 if classes is None else len(classes)
    given = get_path(cfg, "model.num_labels")
    if given is not None and given != labels:
        raise ValueError(
            f"model.num_labels={given} but {decided['summary']}; leave model.num_labels unset "
            "(None): the training file decides it"
        )
    set_path(cfg, "model.num_labels", labels)
    set_path(cfg, "data.task", Path(data.train).name.split(".")[0])
    for field in ("task_type", "classes", "metric"):
        set_path(cfg, f"data.{field}", decided[field])
    if data.max_len is None:
        set_path(cfg, "data.max_len", 128)
    if data.eval_split is None:
        set_path(cfg, "data.eval_split", ("validation", "test") if data.test else "validation")


def _resolve_chat(cfg: fdl.Config) -> None:
    """The chat template (the model folder's unless `data.chat_template` names one), the length
    and the validation split of a chat or instruction run."""
    from morejax.data import chat

    data = fdl.build(get_path(cfg, "data"))
    if data.answer_regex:
        try:
            re.compile(data.answer_regex)
        except re.error as e:
            raise ValueError(f"data.answer_regex={data.answer_regex!r}: {e}") from None
    if data.max_len is None:
        set_path(cfg, "data.max_len", 512)
    if data.eval_split is None:
        set_path(cfg, "data.eval_split", "validation")
    if not data.train:
        return
    set_path(cfg, "data.task", Path(data.train).name.split(".")[0])
    if data.chat_template is None and chat.row_format(data.train) == "messages":
        folder = _model_folder(cfg)
        found = chat.find_template(folder) if folder else None
        if found is None:
            raise ValueError(
                f"{folder or 'the model'} has no chat template (tokenizer_config.json without "
                f"'chat_template', no chat_template.jinja); supply one with {chat.SET_TEMPLATE}"
            )
        set_path(cfg, "data.chat_template", str(found))


def _model_folder(cfg: fdl.Config) -> Path | None:
    """Where the run's tokenizer comes from: the weights' folder, or `model.tokenizer`'s."""
    from morejax.models import registry

    pretrained = get_path(cfg, "model.pretrained")
    where = get_path(cfg, "model.checkpoint") or get_path(cfg, "model.name")
    where = where if pretrained else get_path(cfg, "model.tokenizer")
    if not where:
        return None
    if Path(where).exists():
        return Path(where) if Path(where).is_dir() else Path(where).parent
    try:
        return registry.find_model_dir(where) if where in registry.PRETRAINED else None
    except registry.NotInstalledError:
        return None


def build(cfg: fdl.Config) -> Experiment:
    cfg = resolve(copy.deepcopy(cfg))
    exp = fdl.build(cfg)
    if not isinstance(exp, Experiment):
        raise TypeError(f"config() must build an Experiment, got {type(exp).__name__}")
    return exp


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


def from_json(flat: Mapping[str, Any]) -> fdl.Config:
    """The config tree whose `to_json` is `flat`: a run's saved config, ready to build again."""
    tree = _Node()
    for path, value in flat.items():
        steps = _parse_path(path)
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


def _rebuild(node: Any, hint: Any, path: str) -> Any:
    if not isinstance(node, _Node):
        try:
            return node if hint is None else fit(node, hint)
        except TypeError:
            raise ValueError(f"saved config: {path} = {node!r} is not {_type_name(hint)}") from None
    if ("attr", "__fn__") in node:
        fn = pkgutil.resolve_name(node.pop(("attr", "__fn__")))
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        kwargs = {
            k: _rebuild(v, hints.get(k), f"{path}.{k}".lstrip(".")) for (_, k), v in node.items()
        }
        try:
            return fdl.Config(fn, **kwargs)
        except TypeError as e:  # a field the code no longer has
            raise ValueError(f"saved config: {path or 'the experiment'}: {e}") from None
    items = {key: _rebuild(v, None, f"{path}[{key!r}]") for (_, key), v in node.items()}
    if list(items) == list(range(len(items))):
        items = list(items.values())
    return items if hint is None else _rebuild(items, hint, path)


# Fields that change neither the training trajectory nor the results' meaning.
RESUME_SAFE = (
    "name",
    "log_every",
    "eval_every",
    "eval_at_start",
    "checkpoint_every",
    "data.num_threads",
    "data.eval_batch_size",
)


# Fields added after runs and results were recorded, at the value that reproduces them: a
# record without the field had this value. Left out of sweep keys and resume checks, so that
# adding a field orphans no finished point and fails no resumed run.
NEUTRAL_DEFAULTS = {
    "data.allow_test_overlap": False,
    "data.train": None,
    "data.validation": None,
    "data.test": None,
    "data.text": None,
    "data.label": None,
    "data.task_type": None,
    "data.classes": None,
    "data.metric": None,
    "data.validation_fraction": 0.1,
    "data.chat_template": None,
    "data.exact_match": False,
    "data.answer_regex": None,
    "mesh.sharding": "auto",
}


def without_neutral(resolved: Mapping) -> dict:
    """The `to_json` form less the fields at their NEUTRAL_DEFAULTS value."""
    return {
        k: v
        for k, v in resolved.items()
        if not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])
    }


def changed_fields(old: Mapping, new: Mapping, ignore: Iterable[str] = RESUME_SAFE) -> list[str]:
    """`path: old -> new` per field (`to_json` form) where `new` changes a run made with `old`,
    `ignore`d fields left out; none when either is unknown (empty)."""
    if not (old and new):
        return []
    old, new = without_neutral(old), without_neutral(new)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in ignore)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys]


def changes(old: Mapping, new: Mapping) -> str:
    """The `changed_fields` that matter to a resumed or evaluated run, as one line."""
    changed = changed_fields(old, new)
    more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
    return ", ".join(changed[:8]) + more


def shared_dir(*parts: str) -> str | None:
    """A folder of the offline data (`morejax.data.folders.shared_data`), None when absent."""
    path = folders.shared_data(*parts)
    return str(path) if path.is_dir() else None
