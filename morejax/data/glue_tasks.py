"""The GLUE task table: for each of the nine tasks its TFDS name, folder and files in the
official GLUE zips, text fields, labels, metrics and token budget; TFDS's own description
of a task (``tfds_config``) where columns and download URLs are needed."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

from morejax.data.metrics import TASK_METRICS, canonical_task

__all__ = [
    "DEFAULT_MAX_LEN",
    "MRPC_TEST",
    "MRPC_TRAIN",
    "TASKS",
    "TaskSpec",
    "spec",
    "tfds_config",
    "tfds_modules",
]

_STD_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_MNLI_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
}
# TFDS builds MRPC from the original Microsoft files, not GLUE's train/dev.tsv.
MRPC_TRAIN, MRPC_TEST = "msr_paraphrase_train.txt", "msr_paraphrase_test.txt"
_MRPC_FILES = {"train": MRPC_TRAIN, "validation": MRPC_TRAIN, "test": MRPC_TEST}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What the rest of morejax needs to know about one GLUE task."""

    name: str  # 'sst2'
    tfds_name: str  # 'glue/sst2'
    folder: str  # folder name in the official GLUE zips: 'SST-2'
    text_keys: tuple[str, ...]  # TFDS feature names, first is text_a
    label_names: tuple[str, ...] | None  # None for STS-B (regression)
    num_labels: int  # 1 for regression
    metrics: tuple[str, ...]  # metric names in morejax.metrics
    validation_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    files: Mapping[str, str]  # split -> file in the local folder

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.validation_splits, *self.test_splits)

    @property
    def default_max_len(self) -> int:
        """Tokens that fit >= 99% of this task's examples (see ``DEFAULT_MAX_LEN``)."""
        return DEFAULT_MAX_LEN[self.name]

    @property
    def main_metric(self) -> str:
        """What ``glue_metrics(...)['score']`` means for this task."""
        return self.metrics[0] if len(self.metrics) == 1 else "mean(" + ",".join(self.metrics) + ")"


def _task(name, folder, text_keys, label_names, mnli=False, files=_STD_FILES):
    return TaskSpec(
        name=name,
        tfds_name=f"glue/{name}",
        folder=folder,
        text_keys=tuple(text_keys),
        label_names=None if label_names is None else tuple(label_names),
        num_labels=1 if label_names is None else len(label_names),
        metrics=TASK_METRICS[name],
        validation_splits=("validation_matched", "validation_mismatched")
        if mnli
        else ("validation",),
        test_splits=("test_matched", "test_mismatched") if mnli else ("test",),
        files=dict(_MNLI_FILES if mnli else files),
    )


_PAIR = ("sentence1", "sentence2")
_NLI2 = ("entailment", "not_entailment")
TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        _task("cola", "CoLA", ["sentence"], ["unacceptable", "acceptable"]),
        _task("sst2", "SST-2", ["sentence"], ["negative", "positive"]),
        _task("mrpc", "MRPC", _PAIR, ["not_equivalent", "equivalent"], files=_MRPC_FILES),
        _task("qqp", "QQP", ["question1", "question2"], ["not_duplicate", "duplicate"]),
        _task("stsb", "STS-B", _PAIR, None),
        _task("mnli", "MNLI", ["premise", "hypothesis"], ["entailment", "neutral", "contradiction"],
              mnli=True),
        _task("qnli", "QNLI", ["question", "sentence"], _NLI2),
        _task("rte", "RTE", _PAIR, _NLI2),
        _task("wnli", "WNLI", _PAIR, ["not_entailment", "entailment"]),
    ]
}  # fmt: skip


# Token budget per task for a BERT/MiniLM WordPiece tokenizer, specials included, chosen so
# that >= 99% of examples fit. Measured with all-MiniLM-L6's tokenizer on the real data:
# SST-2 p99 44-53 (max 66), CoLA p99 25-29 (max 47), RTE p99 191-197 (max 289; 128 keeps
# only 88%, 256 keeps 99.9%). The others follow published length statistics.
DEFAULT_MAX_LEN: dict[str, int] = {
    "cola": 64,
    "sst2": 64,
    "mrpc": 128,
    "qqp": 128,
    "stsb": 128,
    "mnli": 128,
    "qnli": 256,
    "rte": 256,
    "wnli": 128,
}


def spec(task: str) -> TaskSpec:
    """Look a task up by any common spelling ('SST-2', 'sst2', 'STS-B')."""
    return TASKS[canonical_task(task)]


@functools.cache
def tfds_modules():
    """``tensorflow_datasets`` and its GLUE builder module, imported on first use (slow)."""
    try:
        import tensorflow_datasets as tfds
        from tensorflow_datasets.text import glue as tfds_glue
    except ImportError as e:  # h5py / importlib_resources gaps show up here
        raise ImportError(
            f"GLUE needs tensorflow-datasets with h5py and importlib_resources installed ({e})"
        ) from e
    return tfds, tfds_glue


def tfds_config(s: TaskSpec):
    """TFDS's builder config of a task: its column names, label column and download URL."""
    _, tfds_glue = tfds_modules()
    return next(c for c in tfds_glue.Glue.BUILDER_CONFIGS if c.name == s.name)
