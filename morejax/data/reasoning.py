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
    "load_examples",
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
MIXTURES = ("commonsense_170k", "commonsense_15k", "math_10k", "math_14k", "math_50k")

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
    or ``../shared/data/llm-adapters`` beside the repository."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data" / "llm-adapters"


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
    if s.endswith(".json") or os.sep in s or "/" in s:
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
    if name in MIXTURES:
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


def load_records(
    name_or_path: str | os.PathLike,
    split: str = "test",
    root: str | os.PathLike | None = None,
    *,
    required: Sequence[str] = KEYS,
) -> list[dict]:
    """Reads and checks one JSON list of records; errors name the file and the problem."""
    path = resolve_path(name_or_path, split, root)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{path}: the file holds an empty list (no records)")
    records = []
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: record {i} is a {type(r).__name__}, not an object")
        missing = [k for k in required if k not in r]
        if missing:
            raise ValueError(
                f"{path}: record {i} lacks key(s) {', '.join(map(repr, missing))}; "
                f"it has {sorted(r)}; LLM-Adapters records need {list(required)}"
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


def load_examples(
    name_or_path: str | os.PathLike,
    split: str = "test",
    root: str | os.PathLike | None = None,
    *,
    style: str = "alpaca",
    required: Sequence[str] = KEYS,
) -> list[dict]:
    """One set as pipeline examples."""
    records = load_records(name_or_path, split, root, required=required)
    return to_examples(records, _set_label(name_or_path), style)


def training_mixture(
    names: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    root: str | os.PathLike | None = None,
    split: str = "train",
    shuffle: bool = False,
    seed: int = 0,
    style: str = "alpaca",
) -> list[dict]:
    """Concatenates train files (set names, mixtures or paths), optionally shuffled.

    The pipeline reshuffles every epoch anyway; shuffling here only matters for
    consumers that read the list in order.
    """
    if isinstance(names, (str, os.PathLike)):
        names = [names]
    examples: list[dict] = []
    for name in names:
        # Training needs no gold answer: files without one (Alpaca-style) still load.
        examples.extend(load_examples(name, split, root, style=style, required=KEYS[:3]))
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
