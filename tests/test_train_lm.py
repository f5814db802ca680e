"""Decoder fine-tuning end to end: a tiny LLaMA on real ARC-Easy records, loss on the
responses, evaluation by loss and by greedy generation, through the command line."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from morejax import commands

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bpe_tokenizer(tmp_path, shared_data) -> str:
    records = json.loads((shared_data / "llm-adapters" / "ARC-Easy" / "train.json").read_text())
    texts = [r["instruction"] + " " + r["output"] for r in records[:500]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<|endoftext|>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_decoder_training_reports_loss_and_generation_accuracy(tmp_path, bpe_tokenizer):
    workdir = tmp_path / "run"
    rc = commands.main(
        [
            "train",
            str(ROOT / "configs" / "smoke_tiny_lm.py"),
            "--workdir",
            str(workdir),
            "--set",
            f"model.tokenizer={bpe_tokenizer!r}",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(train_losses) == 8 and train_losses[-1] < train_losses[0]
    evals = [r for r in rows if r["split"] == "eval"]
    assert evals, rows
    last = evals[-1]
    assert last["loss"] > 0 and 0.0 <= last["accuracy"] <= 1.0
    assert last["accuracy/ARC-Easy"] == last["accuracy"]  # one set: the average is that set
    result = json.loads((workdir / "results.json").read_text())
    assert result["metric"] == "accuracy"
