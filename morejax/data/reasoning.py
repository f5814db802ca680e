"""LLM-Adapters reasoning sets: loading, Alpaca prompts, answer extraction, evaluation.

The commonsense (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e/c, OBQA) and
arithmetic (GSM8K, AQuA, AddSub, MultiArith, SingleEq, SVAMP, MAWPS, MathQA)
sets of LLM-Adapters are JSON lists of ``{instruction, input, output, answer}``.
Scores follow LLM-Adapters' evaluation scripts so numbers compare with the
papers' tables: the first matching option word for commonsense sets, the last
number (commas stripped, ``|pred - gold| <= 1e-3``) for arithmetic sets, and the
first capital A-E for AQuA.

Examples for the pipeline are dicts ``{'prompt', 'response', 'answer', 'set'}``
where ``prompt`` is the Alpaca prompt and ``response`` the record's ``output``.

Splits: a training file (a mixture such as commonsense_170k, a set's train.json, a
.json path) has no test records, so its ``train`` split is the file minus a fixed
held-out slice and ``validation`` is that slice (validation loss during training).
Mixtures are scored like the papers: per set, by generation on each set's test.json
(``mixture_test_sets``); asking a mixture for ``test`` is an error.
A name joined with ``+`` (``boolq+ARC-Easy+ARC-Challenge+openbookqa``) is the mixture of
those training files: 'train' concatenates their train splits, 'validation' interleaves
their held-out slices (so any prefix of it has every set), and it is scored on each part's
test sets.

Here: splits, mixtures and examples. `reasoning_sets`: set names, files, records, prompts;
`reasoning_answers`: answer rules and `evaluate`. Every public name is importable from here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from morejax.data.reasoning_answers import (
    answer_kind,
    clean_response,
    evaluate,
    extract_answer,
    is_correct,
)
from morejax.data.reasoning_sets import (
    COMMONSENSE_MIXTURES,
    COMMONSENSE_SETS,
    ENV_DIR,
    KEYS,
    MATH_MIXTURES,
    MATH_SETS,
    MATH_TEST_SETS,
    MIXTURES,
    PROMPT_STYLES,
    canonical,
    data_dir,
    format_prompt,
    from_gsm8k,
    load_records,
    resolve_path,
    set_label,
)

__all__ = [
    "COMMONSENSE_SETS",
    "ENV_DIR",
    "MATH_SETS",
    "MATH_TEST_SETS",
    "MIXTURES",
    "PROMPT_STYLES",
    "data_dir",
    "resolve_path",
    "from_gsm8k",
    "load_records",
    "format_prompt",
    "to_examples",
    "holdout_size",
    "split_records",
    "load_split_records",
    "load_examples",
    "mixture_test_sets",
    "training_mixture",
    "answer_kind",
    "clean_response",
    "extract_answer",
    "is_correct",
    "evaluate",
]

SPLITS = ("train", "validation", "test")
HOLDOUT_SEED = 0  # the held-out slice must not move between runs, resumes or machines
HOLDOUT_MAX = 200
HOLDOUT_FRACTION = 0.05


def to_examples(records: Iterable[Mapping], set_name: str = "", style: str = "alpaca") -> list:
    """Records to pipeline examples: the prompt, the target response and the gold answer."""
    return [
        {
            "prompt": format_prompt(r["instruction"], r.get("input", ""), style),
            "response": r["output"],
            "answer": str(r.get("answer", "")),
            "set": set_name,
        }
        for r in records
    ]


def _mixture_of(name_or_path: str | os.PathLike) -> str | None:
    """The mixture a name or file stands for (by name or file stem), else None."""
    s = os.fspath(name_or_path)
    p = Path(s)
    if p.suffix == ".jsonl" and p.stem == "train" and p.parent.name.lower() == "gsm8k":
        return "gsm8k_train"
    if not s.endswith((".json", ".jsonl")):
        names = [s]
    else:
        names = [p.stem, p.parent.name if p.stem == "train" else ""]
    for name in map(canonical, names):
        if name in MIXTURES:
            return name
    return None


def _is_training_file(name_or_path: str | os.PathLike) -> bool:
    """Mixtures and train.json files: their records are all training records."""
    s = os.fspath(name_or_path)
    if _mixture_of(s) is not None:
        return True
    p = Path(s)
    return s.endswith((".json", ".jsonl")) and (
        p.stem == "train" or p.parent.name == "ft-training_set"
    )


def mixture_test_sets(name: str | os.PathLike) -> tuple[str, ...]:
    """The sets whose test.json the papers score a training file on, one accuracy each.

    Commonsense mixtures: the 8 commonsense sets; math mixtures (GSM8K's training split
    included): the 7 arithmetic sets of the MiLoRA / LLM-Adapters tables. A single
    set (a name or ``<set>/train.json``) is scored on its own test file.
    """
    s = os.fspath(name)
    parts = _parts(s)
    if parts is not None:
        sets = [x for p in parts for x in mixture_test_sets(p)]
        return tuple(dict.fromkeys(sets))
    mixture = _mixture_of(s)
    if mixture in COMMONSENSE_MIXTURES:
        return COMMONSENSE_SETS
    if mixture in MATH_MIXTURES:
        return MATH_TEST_SETS
    label = canonical(set_label(s))
    if label is not None and label not in MIXTURES:
        return (label,)
    raise ValueError(
        f"no test sets known for {s!r}: name a mixture ({', '.join(MIXTURES)}) or a set "
        f"({', '.join(COMMONSENSE_SETS + MATH_SETS)}), or list the sets to score yourself "
        "(data.generate_sets)"
    )


def holdout_size(
    n: int, holdout: int | float | None = None, *, source: str = "the training file"
) -> int:
    """How many of a training file's ``n`` records split 'validation' holds out.

    ``holdout`` is a count (0 keeps every record for 'train'), a fraction in (0, 1), or
    None: min(200, 5% of the records), at least 1. 'train' must keep at least one record.
    """
    if holdout is None:
        k = max(1, min(HOLDOUT_MAX, int(HOLDOUT_FRACTION * n)))
    elif isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer)):
        raise ValueError(f"holdout must be a count or a fraction in (0, 1), got {holdout!r}")
    elif isinstance(holdout, (int, np.integer)):
        if holdout < 0:
            raise ValueError(f"holdout must be a count >= 0, got {holdout}")
        k = int(holdout)
    else:
        if not 0.0 < holdout < 1.0:
            raise ValueError(
                f"holdout as a fraction must lie in (0, 1), got {holdout}; pass an int for a count"
            )
        k = max(1, round(holdout * n))
    if k >= n:
        raise ValueError(
            f"{source} has {n} record(s): too few to hold out {k} for validation and keep any "
            f"for training; pass a smaller holdout= (0 keeps all for training) or a larger file"
        )
    return k


def split_records(
    records: Sequence, split: str, holdout: int | float | None = None, *, source: str = "records"
) -> list:
    """'train' (the records minus a held-out slice) or 'validation' (that slice).

    The slice is the first ``holdout_size`` entries of a fixed-seed permutation of the
    record indices, so it is the same on every call; both splits keep file order.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation' of {source}, got {split!r}")
    n = len(records)
    k = holdout_size(n, holdout, source=source)
    if split == "validation" and k == 0:
        raise ValueError(f"holdout=0 holds nothing out of {source}: no 'validation' split")
    held = np.zeros(n, bool)
    held[np.random.default_rng(HOLDOUT_SEED).permutation(n)[:k]] = True
    want = split == "validation"
    return [r for r, h in zip(records, held) if h == want]


def _test_of_training_file(s: str) -> ValueError:
    mixture = _mixture_of(s)
    if mixture is not None:
        sets = mixture_test_sets(mixture)
        return ValueError(
            f"{s!r} is a training mixture and has no 'test' split: mixtures are evaluated per "
            f"set by generation on each set's test.json ({', '.join(sets)}); set "
            f"data.generate_sets = reasoning.mixture_test_sets({mixture!r}) and evaluate loss "
            "on split 'validation' (data.eval_split='validation', a held-out slice of the file)"
        )
    label = set_label(s)
    return ValueError(
        f"{s} is a training file and has no 'test' split: use split 'validation' (a held-out "
        f"slice of it) or the set's test file (set name {label!r} with split 'test')"
    )


def _parts(name_or_path) -> list[str] | None:
    """The files of a '+'-joined mixture name, or None for a single name or path."""
    s = os.fspath(name_or_path)
    if "+" not in s or s.endswith((".json", ".jsonl")):
        return None
    parts = [p.strip() for p in s.split("+")]
    if any(not p for p in parts):
        raise ValueError(f"empty part in the mixture name {s!r}: join set names with '+'")
    return parts


def _interleave(lists: Sequence[list]) -> list:
    """Round-robin over the lists (the longer ones finish last)."""
    out = []
    for i in range(max(map(len, lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def load_split_records(
    name_or_path: str | os.PathLike,
    split: str = "test",
    root: str | os.PathLike | None = None,
    *,
    required: Sequence[str] = KEYS,
    holdout: int | float | None = None,
) -> list[dict]:
    """One split's records: 'test' is a set's test.json (or a non-training .json path);
    'train' / 'validation' partition the set's train.json, the mixture or the .json path
    (``split_records``). A mixture's 'test' is an error naming the sets to score instead."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    s = os.fspath(name_or_path)
    parts = _parts(s)
    if parts is not None:
        if split == "test":
            raise ValueError(
                f"{s!r} is a training mixture and has no 'test' split: it is scored per set on "
                f"{', '.join(mixture_test_sets(s))} (data.generate_sets)"
            )
        each = [
            load_split_records(p, split, root, required=required, holdout=holdout) for p in parts
        ]
        return _interleave(each) if split == "validation" else [r for x in each for r in x]
    if split == "test":
        if _is_training_file(s):
            raise _test_of_training_file(s)
        return load_records(s, "test", root, required=required)
    records = load_records(s, "train", root, required=required)
    return split_records(records, split, holdout, source=str(resolve_path(s, "train", root)))


def load_examples(
    name_or_path: str | os.PathLike,
    split: str = "test",
    root: str | os.PathLike | None = None,
    *,
    style: str = "alpaca",
    required: Sequence[str] = KEYS,
    holdout: int | float | None = None,
    keep: Callable[[dict], bool] | None = None,
) -> list[dict]:
    """One split of a set or mixture as pipeline examples (splits: ``load_split_records``).

    ``keep(record)`` filters records after the split (the held-out slice does not move):
    ``morejax.data.overlap.Guard.keep`` drops test problems."""
    parts = _parts(name_or_path)
    if parts is not None:
        if split == "test":
            load_split_records(name_or_path, split, root)  # the error that names the sets
        each = [
            load_examples(
                p, split, root, style=style, required=required, holdout=holdout, keep=keep
            )
            for p in parts
        ]
        return _interleave(each) if split == "validation" else [e for x in each for e in x]
    records = load_split_records(name_or_path, split, root, required=required, holdout=holdout)
    if keep is not None:
        records = [r for r in records if keep(r)]
    return to_examples(records, set_label(name_or_path), style)


def training_mixture(
    names: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    root: str | os.PathLike | None = None,
    split: str = "train",
    shuffle: bool = False,
    seed: int = 0,
    style: str = "alpaca",
    holdout: int | float | None = None,
) -> list[dict]:
    """Concatenates the 'train' splits of training files (set names, mixtures or paths),
    each less its held-out validation slice (``holdout=0`` keeps whole files).

    The pipeline reshuffles every epoch anyway; shuffling here only matters for
    consumers that read the list in order.
    """
    if isinstance(names, (str, os.PathLike)):
        names = [names]
    examples: list[dict] = []
    for name in names:
        # Training needs no gold answer: files without one (Alpaca-style) still load.
        examples.extend(
            load_examples(name, split, root, style=style, required=KEYS[:3], holdout=holdout)
        )
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(examples))
        examples = [examples[i] for i in order]
    return examples
