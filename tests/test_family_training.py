"""`morejax train` on a Hugging Face folder of another decoder family: a tiny random Qwen 2
(q,k,v biases, GQA) saved by transformers trains a few steps on real reasoning records through
the command line, stops, and resumes where it stopped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_train_lm import train_bpe_tokenizer

from morejax import cli
from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[1]


def test_train_and_resume_from_a_qwen2_folder(tmp_path, shared_data):
    try:
        import torch
        import transformers
    except ImportError as e:
        missing(f"this test needs the `interop` extra (torch, transformers): {e}")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
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
