"""What the task decides (labels, length, validation splits, chat template) and building the run.

Explicit values win, except a label count that contradicts the task, which is an error here
rather than a NaN or a shape error late in training.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING

import fiddle as fdl

from morejax.train.config.tree import get_path, set_path

if TYPE_CHECKING:
    from morejax.train.config import Experiment


def resolve(cfg: fdl.Config) -> fdl.Config:
    """Fill in, in place, what the task decides (labels, length, validation splits)."""
    try:
        kind = get_path(cfg, "data.kind")
        get_path(cfg, "data.task")
    except ValueError:
        return cfg  # not an Experiment with data: nothing to decide
    if kind == "glue":
        _resolve_glue(cfg)
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


def _resolve_glue(cfg: fdl.Config) -> None:
    """The GLUE task's name, label count, length that holds its pairs, validation splits."""
    from morejax.data import glue

    spec = glue.spec(get_path(cfg, "data.task"))
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
    """The resolved config built: the run's `Experiment`."""
    from morejax.train.config import Experiment

    cfg = resolve(copy.deepcopy(cfg))
    exp = fdl.build(cfg)
    if not isinstance(exp, Experiment):
        raise TypeError(f"config() must build an Experiment, got {type(exp).__name__}")
    return exp
