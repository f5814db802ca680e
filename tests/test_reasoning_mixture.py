"""'+'-joined training mixtures (the small-scale commonsense table trains on four train sets)."""

import pytest

from morejax.data import reasoning

NAME = "boolq+ARC-Easy+ARC-Challenge+openbookqa"


def test_plus_mixture_splits_and_test_sets(shared_data):
    root = shared_data / "llm-adapters"
    parts = NAME.split("+")
    train = reasoning.load_examples(NAME, "train", root)
    val = reasoning.load_examples(NAME, "validation", root)
    assert len(train) == sum(len(reasoning.load_examples(p, "train", root)) for p in parts)
    assert len(val) == sum(len(reasoning.load_examples(p, "validation", root)) for p in parts)
    assert [e["set"] for e in val[:4]] == parts  # interleaved: any prefix has every set
    assert {e["set"] for e in train} == set(parts)
    assert not {e["prompt"] for e in val} & {e["prompt"] for e in train}
    assert reasoning.mixture_test_sets(NAME) == tuple(parts)
    assert reasoning.mixture_test_sets("boolq+math_data")[1:] == reasoning.MATH_TEST_SETS
    with pytest.raises(ValueError, match=r"training mixture and has no 'test' split.*boolq"):
        reasoning.load_examples(NAME, "test", root)
    with pytest.raises(ValueError, match="empty part"):
        reasoning.load_examples("boolq++piqa", "train", root)
