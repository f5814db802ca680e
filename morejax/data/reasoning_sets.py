"""The LLM-Adapters reasoning sets and their files: set and mixture names, where each file is,
reading and checking its records (GSM8K's own lines converted), and the Alpaca prompts."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

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
KEYS = ("instruction", "input", "output", "answer")
ENV_DIR = "MOREJAX_LLM_ADAPTERS_DIR"

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


def _known_names() -> tuple[str, ...]:
    return COMMONSENSE_SETS + MATH_SETS + MIXTURES


def canonical(name: str) -> str | None:
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
    name = canonical(s)
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


def set_label(name_or_path: str | os.PathLike) -> str:
    """The set a name or file stands for: its known name, else the file's (or its folder's) name."""
    s = os.fspath(name_or_path)
    known = canonical(s)
    if known is not None:
        return known
    p = Path(s)
    return p.parent.name if p.stem in ("train", "test") else p.stem
