"""Decoder fine-tuning end to end: a tiny LLaMA on real ARC-Easy records, loss on the
responses, evaluation by loss and by greedy generation, through the command line."""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from morejax import cli

ROOT = Path(__file__).resolve().parents[1]


def train_bpe_tokenizer(shared_data: Path, tmp_path: Path) -> str:
    """A byte-level BPE (vocab 1024, smoke_tiny_lm's) trained on ARC-Easy; its path."""
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


@pytest.fixture
def bpe_tokenizer(tmp_path, shared_data) -> str:
    return train_bpe_tokenizer(shared_data, tmp_path)


def test_decoder_training_reports_loss_and_generation_accuracy(tmp_path, bpe_tokenizer):
    workdir = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            str(ROOT / "configs" / "smoke_tiny_lm.py"),
            "--workdir",
            str(workdir),
            "--set",
            f"model.tokenizer={bpe_tokenizer!r}",
            "--set",
            "data.generate_sets=('ARC-Easy', 'boolq')",
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
    assert last["loss"] > 0 and np.isfinite(last["loss"])
    per_set = [last["accuracy/ARC-Easy"], last["accuracy/boolq"]]
    assert all(x * 4 == int(x * 4) for x in per_set)  # a fraction of the 4 records per set
    assert last["accuracy"] == pytest.approx(np.mean(per_set))  # the papers' unweighted mean
    result = json.loads((workdir / "results.json").read_text())
    assert result["metric"] == "loss"  # the held-out slice chooses; test sets are only scored
