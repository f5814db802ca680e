"""Scoring generated answers as LLM-Adapters' evaluation scripts do: each set's answer rule
(option words, the last number, a letter A-E), and `evaluate`, accuracy per set by generation."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping

import numpy as np

from morejax.data.reasoning_sets import (
    COMMONSENSE_SETS,
    MATH_SETS,
    MIXTURES,
    canonical,
    format_prompt,
    load_records,
    set_label,
)

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


def answer_kind(set_name: str) -> str:
    """'choice' (commonsense option words), 'number' or 'letter' (multiple choice A-E)."""
    name = canonical(set_name)
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
    name = canonical(set_name)
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
    return [(set_label(s), load_records(s, split, root)) for s in sets]


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
