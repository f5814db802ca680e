"""Experiment configs: fiddle trees of the whole run, gin-style `--set` overrides, sweeps.

A config file under `configs/` defines `config() -> fdl.Config[Experiment]` and may
define `sweep() -> list[dict]` (override dicts, one per point). Paths are fiddle
attribute paths with optional subscripts: `adapter.rank`, `optimizer.lr_groups['head/.*']`.

The run's dataclasses live here: saved configs and sweep keys name them as
`morejax.train.config.<class>`. The rest, by job: `loading` (config files and `--set`),
`values` (what a `--set` value means for its field), `tree` (reading and setting by path),
`sweeps`, `resolving` (what the task decides, building), `record` (the resolved config
written and read back), `resume` (which changes matter to a run made before).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from morejax.train.config.loading import (
    apply_overrides,
    config_args,
    load,
    load_module,
    shared_dir,
)
from morejax.train.config.record import from_json, saved, to_json, to_text, write_resolved
from morejax.train.config.resolving import build, resolve
from morejax.train.config.resume import (
    NEUTRAL_DEFAULTS,
    RESUME_SAFE,
    SHAPE_FIELDS,
    changed_fields,
    changes,
    without_neutral,
)
from morejax.train.config.sweeps import point_name, product, sweep_points, zipped
from morejax.train.config.tree import field_hint, flatten, get_path, set_path, valid_paths
from morejax.train.config.values import fit, parse_setting, parse_value

__all__ = [
    "Data",
    "Experiment",
    "Mesh",
    "Model",
    "Optimizer",
    "NEUTRAL_DEFAULTS",
    "RESUME_SAFE",
    "SHAPE_FIELDS",
    "apply_overrides",
    "build",
    "changed_fields",
    "changes",
    "config_args",
    "field_hint",
    "fit",
    "flatten",
    "from_json",
    "get_path",
    "load",
    "load_module",
    "parse_setting",
    "parse_value",
    "point_name",
    "product",
    "resolve",
    "saved",
    "set_path",
    "shared_dir",
    "sweep_points",
    "to_json",
    "to_text",
    "valid_paths",
    "without_neutral",
    "write_resolved",
    "zipped",
]


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
