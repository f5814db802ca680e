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
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "COMMONSENSE_SETS",
    "MATH_SETS",
    "MIXTURES",
    "PROMPT_STYLES",
    "data_dir",
    "resolve_path",
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

COMMONSENSE_SETS = (
    "boolq",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "winogrande",
    "ARC-Challenge",
    "ARC-Easy",
    "openbookqa",
)
MATH_SETS = (
    "gsm8k",
    "AQuA",
    "AddSub",
    "MultiArith",
    "SingleEq",
    "SVAMP",
    "mawps",
    "mathqa",
)
# LLM-Adapters' training mixtures (ft-training_set/*.json); users bring their own copy.
# math_data.json (in the shared copy) is not a training set: every record of it is a test
# record of the arithmetic sets. gsm8k_train is GSM8K's own training split (gsm8k/train.jsonl
# beside the LLM-Adapters folder), read from its {"question", "answer"} lines.
COMMONSENSE_MIXTURES = ("commonsense_170k", "commonsense_15k")
MATH_MIXTURES = ("math_10k", "math_14k", "math_50k", "math_data", "gsm8k_train")
MIXTURES = COMMONSENSE_MIXTURES + MATH_MIXTURES
# The sets the papers score each kind of mixture on (MoRe / LLM-Adapters / MiLoRA tables).
MATH_TEST_SETS = ("gsm8k", "AQuA", "AddSub", "MultiArith", "SingleEq", "SVAMP", "mawps")
SPLITS = ("train", "validation", "test")
HOLDOUT_SEED = 0  # the held-out slice must not move between runs, resumes or machines
HOLDOUT_MAX = 200
HOLDOUT_FRACTION = 0.05

KEYS = ("instruction", "input", "output", "answer")
ENV_DIR = "MOREJAX_LLM_ADAPTERS_DIR"

# The option words each commonsense set's answers are drawn from (first match wins).
_CHOICES = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": tuple(f"answer{i}" for i in range(1, 6)),
    "ARC-Challenge": tuple(f"answer{i}" for i in range(1, 6)),
    "ARC-Easy": tuple(f"answer{i}" for i in range(1, 6)),
    "openbookqa": tuple(f"answer{i}" for i in range(1, 6)),
    "hellaswag": tuple(f"ending{i}" for i in range(1, 5)),
    "winogrande": ("option1", "option2"),
}
_CHOICE_RE = {name: re.compile("|".join(words)) for name, words in _CHOICES.items()}
_LETTER_SETS = ("AQuA", "mathqa")
_NUMBER_RE = re.compile(r"-?\d+\.?\d*")
_LETTER_RE = re.compile(r"[A-E]")
_ANSWER_IS_RE = re.compile(r"answer is\s*:?\s*\(?([A-E])\b")

_ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request."  # noqa: E501
_ALPACA_INPUT = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request."  # noqa: E501
_IND = " " * 16  # LLM-Adapters' templates are indented f-strings; the spaces are in the text
# style -> (template without input, template with input); fields {instruction}, {input}.
PROMPT_STYLES = {
    # Stanford Alpaca's template: the clean form, used for training and evaluation alike.
    "alpaca": (
        _ALPACA + "\n\n### Instruction:\n{instruction}\n\n### Response:\n",
        _ALPACA_INPUT + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
        "### Response:\n",
    ),
    # LLM-Adapters finetune.py, whitespace included (what their checkpoints were trained on).
    "llm-adapters": (
        _ALPACA + f"  \n\n{_IND}### Instruction:\n{_IND}{{instruction}}\n{_IND}\n"
        f"{_IND}### Response:\n{_IND}",
        _ALPACA_INPUT + f" \n\n{_IND}### Instruction:\n{_IND}{{instruction}}\n{_IND}\n"
        f"{_IND}### Input:\n{_IND}{{input}}\n{_IND}\n{_IND}### Response:\n{_IND}",
    ),
    # LLM-Adapters (commonsense_)evaluate.py: differs from finetune.py in whitespace only.
    "llm-adapters-eval": (
        _ALPACA + f" \n\n{_IND}### Instruction:\n{_IND}{{instruction}}\n\n"
        f"{_IND}### Response:\n{_IND}",
        _ALPACA_INPUT + f"\n\n{_IND}### Instruction:\n{_IND}{{instruction}}\n\n"
        f"{_IND}### Input:\n{_IND}{{input}}\n\n{_IND}### Response:\n{_IND}",
    ),
}


# ----------------------------------------------------------------------------- files


def _known_names() -> tuple[str, ...]:
    return COMMONSENSE_SETS + MATH_SETS + MIXTURES


def _canonical(name: str) -> str | None:
    """Set names are matched case-insensitively ('arc-easy' is 'ARC-Easy')."""
    for known in _known_names():
        if known.lower() == name.lower():
            return known
    return None


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``<set>/{train,test}.json``: ``root``, $MOREJAX_LLM_ADAPTERS_DIR,
    or ``../shared/data/llm-adapters`` beside the project the user runs in."""
    from morejax.data import folders

    return Path(root) if root is not None else folders.shared_data("llm-adapters")


def resolve_path(
    name_or_path: str | os.PathLike, split: str = "test", root: str | os.PathLike | None = None
) -> Path:
    """Finds a set's JSON file; raises naming every place it looked.

    A name is a known set (``<root>/<set>/<split>.json``) or a training mixture
    (``<root>/<name>.json``, ``<root>/ft-training_set/<name>.json`` or
    ``<root>/<name>/train.json``). Anything ending in ``.json`` or containing a path
    separator is taken as a file path.
    """
    s = os.fspath(name_or_path)
    if s.endswith((".json", ".jsonl")) or os.sep in s or "/" in s:
        p = Path(s)
        if not p.is_file():
            raise FileNotFoundError(f"LLM-Adapters data file not found: {p}")
        return p
    name = _canonical(s)
    if name is None:
        raise ValueError(
            f"unknown LLM-Adapters set {s!r}; valid names: {', '.join(_known_names())} "
            "(or pass a path to a .json file)"
        )
    base = data_dir(root)
    if name == "gsm8k_train":
        candidates = [base / "gsm8k_train.jsonl", base.parent / "gsm8k" / "train.jsonl"]
    elif name in MIXTURES:
        candidates = [
            base / f"{name}.json",
            base / "ft-training_set" / f"{name}.json",
            base / name / "train.json",
        ]
    else:
        candidates = [base / name / f"{split}.json"]
    for p in candidates:
        if p.is_file():
            return p
    where = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"LLM-Adapters set {name!r} (split {split!r}) not found; looked for {where} "
        f"(set the root with root=... or ${ENV_DIR})"
    )


def _read_rows(path: Path) -> list:
    """A JSON list (.json) or one JSON object per line (.jsonl)."""
    if path.suffix != ".jsonl":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {line_no} is not valid JSON ({e})") from None
    return rows


_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
_FINAL_RE = re.compile(r"\n?####\s*(.+?)\s*$")


def from_gsm8k(row: Mapping) -> dict:
    """A GSM8K line as an LLM-Adapters record: the question is the instruction, the worked
    solution without its calculator annotations the response (its '#### N' line becomes
    'The answer is N.', as in LLM-Adapters' math data), and N the answer."""
    question, solution = row["question"], row["answer"]
    if not isinstance(question, str) or not isinstance(solution, str):
        raise ValueError("'question' and 'answer' must be strings")
    m = _FINAL_RE.search(solution)
    if m is None:
        raise ValueError("the answer has no final '#### N' line")
    answer = m.group(1).replace(",", "")
    steps = _CALCULATOR_RE.sub("", solution[: m.start()]).strip()
    output = (steps + "\n" if steps else "") + f"The answer is {answer}."
    return {"instruction": question.strip(), "input": "", "output": output, "answer": answer}


def load_records(
    name_or_path: str | os.PathLike,
    split: str = "test",
    root: str | os.PathLike | None = None,
    *,
    required: Sequence[str] = KEYS,
) -> list[dict]:
    """Reads and checks one file of records; errors name the file and the problem.

    LLM-Adapters records ({instruction, input, output, answer}) in a JSON list or JSONL, or
    GSM8K lines ({question, answer}, converted by ``from_gsm8k``)."""
    path = resolve_path(name_or_path, split, root)
    data = _read_rows(path)
    if not data:
        raise ValueError(f"{path}: the file holds no records (an empty list or file)")
    records = []
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: record {i} is a {type(r).__name__}, not an object")
        if "question" in r and not {"instruction", "output"} & set(r):
            try:
                r = from_gsm8k(r)
            except (KeyError, ValueError) as e:
                raise ValueError(f"{path}: record {i} is not a GSM8K line ({e})") from None
        missing = [k for k in required if k not in r]
        if missing:
            raise ValueError(
                f"{path}: record {i} lacks key(s) {', '.join(map(repr, missing))}; "
                f"it has {sorted(r)}; LLM-Adapters records need {list(required)} (GSM8K "
                "lines need 'question' and 'answer')"
            )
        rec = {k: r.get(k, "") for k in KEYS}
        for k in ("instruction", "input", "output"):
            if rec[k] is None:
                rec[k] = ""
            if not isinstance(rec[k], str):
                raise ValueError(f"{path}: record {i} key {k!r} is not a string: {rec[k]!r}")
        rec["answer"] = "" if rec["answer"] is None else str(rec["answer"])
        records.append(rec)
    return records


# ----------------------------------------------------------------------------- prompts


def format_prompt(instruction: str, input: str = "", style: str = "alpaca") -> str:
    """The Alpaca prompt (ending just before the response); the input variant when
    ``input`` is non-empty, as LLM-Adapters does."""
    try:
        plain, with_input = PROMPT_STYLES[style]
    except KeyError:
        raise ValueError(f"unknown prompt style {style!r}; valid: {list(PROMPT_STYLES)}") from None
    if input:
        return with_input.format(instruction=instruction, input=input)
    return plain.format(instruction=instruction)


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


def _set_label(name_or_path: str | os.PathLike) -> str:
    s = os.fspath(name_or_path)
    known = _canonical(s)
    if known is not None:
        return known
    p = Path(s)
    return p.parent.name if p.stem in ("train", "test") else p.stem


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
    for name in map(_canonical, names):
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
    label = _canonical(_set_label(s))
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
    label = _set_label(s)
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
    return to_examples(records, _set_label(name_or_path), style)


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


# ----------------------------------------------------------------------------- answers


def answer_kind(set_name: str) -> str:
    """'choice' (commonsense option words), 'number' or 'letter' (multiple choice A-E)."""
    name = _canonical(set_name)
    if name is None or name in MIXTURES:
        valid = COMMONSENSE_SETS + MATH_SETS
        raise ValueError(
            f"no answer rule for set {set_name!r}; valid evaluation sets: {', '.join(valid)}"
        )
    if name in _CHOICES:
        return "choice"
    return "letter" if name in _LETTER_SETS else "number"


def clean_response(text: str) -> str:
    """The generated continuation up to any further '### Response:' marker, stripped.

    LLM-Adapters decodes prompt + continuation and keeps the text between the first
    and the second marker; for a continuation that is the text before its first.
    """
    return text.split("### Response:")[0].strip()


def extract_answer(set_name: str, text: str, *, letter_rule: str = "llm-adapters"):
    """The predicted answer in generated ``text`` by LLM-Adapters' rule for the set.

    Returns a string for choice/letter sets ('' when nothing matches) and a float for
    arithmetic sets (``inf`` when the text has no number). ``letter_rule='strict'``
    takes the last 'answer is (X)' before falling back to the first capital A-E;
    LLM-Adapters' own rule (the default) takes the first capital A-E anywhere, so a
    leading article 'A' counts as an answer.
    """
    kind = answer_kind(set_name)
    name = _canonical(set_name)
    text = text.strip()
    if kind == "choice":
        m = _CHOICE_RE[name].search(text)
        return m.group(0) if m else ""
    if kind == "letter":
        if letter_rule == "strict":
            found = _ANSWER_IS_RE.findall(text)
            if found:
                return found[-1]
        elif letter_rule != "llm-adapters":
            raise ValueError(f"unknown letter_rule {letter_rule!r}; use 'llm-adapters' or 'strict'")
        m = _LETTER_RE.search(text)
        return m.group(0) if m else ""
    numbers = _NUMBER_RE.findall(text.replace(",", ""))
    if not numbers:
        return math.inf
    try:
        return float(numbers[-1])
    except ValueError:  # pragma: no cover - the regex only matches float syntax
        return math.inf


def is_correct(set_name: str, prediction, answer, *, tolerance: float = 1e-3) -> bool:
    """Compares an extracted prediction with the gold answer as LLM-Adapters does."""
    if answer_kind(set_name) == "number":
        try:
            gold = float(str(answer).replace(",", ""))
        except ValueError:
            raise ValueError(f"{set_name}: gold answer {answer!r} is not a number") from None
        return abs(gold - float(prediction)) <= tolerance
    return prediction == str(answer)


def _sets_to_records(sets, split: str, root) -> list[tuple[str, list[dict]]]:
    """Normalises evaluate's ``sets`` argument to (name, records) pairs."""
    if isinstance(sets, (str, os.PathLike)):
        sets = [sets]
    if isinstance(sets, Mapping):
        out = []
        for name, value in sets.items():
            if isinstance(value, (str, os.PathLike)):
                value = load_records(value, split, root)
            out.append((name, list(value)))
        return out
    return [(_set_label(s), load_records(s, split, root)) for s in sets]


def evaluate(
    generate_fn: Callable[[list[str]], list[str]],
    sets,
    *,
    root: str | os.PathLike | None = None,
    split: str = "test",
    batch_size: int = 32,
    limit: int | None = None,
    style: str = "alpaca",
    letter_rule: str = "llm-adapters",
    sort_by_length: bool = True,
    return_predictions: bool = False,
):
    """Accuracy per set and their unweighted mean, like the papers' tables.

    ``generate_fn(prompts) -> continuations`` does batched greedy decoding and returns
    only the generated text. ``sets`` is a set name, a list of names/paths, or a
    mapping ``{set name: path or list of records}`` (the name picks the answer rule).
    Prompts are sorted by length before batching so a batch pads little; greedy
    decoding makes the order irrelevant to the result. Returns ``{set: accuracy in
    [0, 1], 'average': mean}`` and, with ``return_predictions``, also
    ``{set: [(continuation, extracted, correct), ...]}`` in record order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scores: dict[str, float] = {}
    predictions: dict[str, list] = {}
    for name, records in _sets_to_records(sets, split, root):
        answer_kind(name)  # fail before generating for a set without a rule
        if limit is not None:
            records = records[:limit]
        if not records:
            raise ValueError(f"set {name!r} has no records to evaluate")
        prompts = [format_prompt(r["instruction"], r.get("input", ""), style) for r in records]
        order = list(range(len(prompts)))
        if sort_by_length:
            order.sort(key=lambda i: -len(prompts[i]))
        outputs: list[str | None] = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            generated = list(generate_fn([prompts[i] for i in chunk]))
            if len(generated) != len(chunk):
                raise ValueError(
                    f"generate_fn returned {len(generated)} texts for {len(chunk)} prompts"
                )
            for i, text in zip(chunk, generated):
                outputs[i] = text
        rows = []
        for rec, text in zip(records, outputs):
            pred = extract_answer(name, clean_response(text), letter_rule=letter_rule)
            rows.append((text, pred, is_correct(name, pred, rec["answer"])))
        scores[name] = sum(r[2] for r in rows) / len(rows)
        predictions[name] = rows
    scores["average"] = float(np.mean(list(scores.values()))) if scores else float("nan")
    return (scores, predictions) if return_predictions else scores
