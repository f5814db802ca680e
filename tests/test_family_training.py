"""`morejax train` on a Hugging Face folder of each decoder family: a tiny random model saved by
transformers trains a few steps on real reasoning records through the command line, stops,
and resumes where it stopped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_hf_families import _family
from test_train_lm import train_bpe_tokenizer

from morejax import cli

ROOT = Path(__file__).resolve().parents[1]


def test_train_and_resume_from_a_qwen2_folder(hf, tmp_path, shared_data):
    transformers = hf
    folder = tmp_path / "qwen2"
    config = transformers.Qwen2Config(
        vocab_size=1024,  # the BPE tokenizer's
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(folder)
    shutil.copy(train_bpe_tokenizer(shared_data, tmp_path), folder / "tokenizer.json")

    workdir = tmp_path / "run"
    args = [
        "train",
        str(ROOT / "configs" / "smoke_tiny_lm.py"),
        "--workdir",
        str(workdir),
        "--set",
        "model.pretrained=true",
        "--set",
        f"model.checkpoint={folder}",
        "--set",
        "model.overrides=None",
        "--set",
        "targets=milora-paper",
        "--set",
        "steps=4",
        "--set",
        "data.generate_sets=()",
        "--set",
        "data.max_len=256",
        "--set",
        "data.buckets=(256,)",  # one compiled shape
        "--set",
        "data.eval_limit=8",
        "--no-progress",
    ]
    assert cli.main([*args, "--stop-at", "2"]) == 0
    assert not (workdir / "results.json").exists()  # stopped, not finished
    assert cli.main(args) == 0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["split"] == "train"]
    assert steps == [1, 2, 3, 4], steps  # steps 1-2, then 3-4 after the resume
    results = json.loads((workdir / "results.json").read_text())
    assert results["finished"] and results["step"] == 4
    saved = json.loads((workdir / "config.json").read_text())["config"]
    assert saved["model.checkpoint"] == str(folder)


# What each family adds to a tiny LLaMA shape (windows shorter than the rows).
FAMILIES = {
    "llama": dict(attention_bias=True),
    "mistral": dict(sliding_window=16),
    "qwen3": dict(head_dim=16),
    "gemma2": dict(head_dim=16, sliding_window=16, query_pre_attn_scalar=16),
    "gemma3_text": dict(head_dim=16, sliding_window=16, query_pre_attn_scalar=16),
    "phi3": dict(sliding_window=16, pad_token_id=0, eos_token_id=2),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_trains_from_its_folder_and_resumes(hf, tmp_path, shared_data, family):
    """Two steps, stopped after the first; one layer and one 256-token shape keep it short."""
    shape = dict(vocab_size=1024, hidden_size=32, num_hidden_layers=1, intermediate_size=48)
    (config_cls, model_cls), kw = _family(hf, family, **shape, **FAMILIES[family])
    folder = tmp_path / family
    model_cls(config_cls(**kw)).save_pretrained(folder)
    shutil.copy(train_bpe_tokenizer(shared_data, tmp_path), folder / "tokenizer.json")

    workdir = tmp_path / "run"
    sets = [
        *("model.pretrained=true", f"model.checkpoint={folder}", "model.overrides=None"),
        *("targets=all-linear", "steps=2", "checkpoint_every=1", "data.generate_sets=()"),
        *("data.max_len=256", "data.buckets=(256,)", "data.eval_limit=4", "eval_every=2"),
    ]
    args = ["train", str(ROOT / "configs" / "smoke_tiny_lm.py"), "--workdir", str(workdir)]
    args += [x for s in sets for x in ("--set", s)] + ["--no-progress"]
    assert cli.main([*args, "--stop-at", "1"]) == 0
    assert not (workdir / "results.json").exists()
    assert cli.main(args) == 0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
    results = json.loads((workdir / "results.json").read_text())
    assert results["finished"] and results["step"] == 2
