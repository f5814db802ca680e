"""One config trains and scores every GLUE task with its GLUE metric (issue 8, items 2-3).

Synthetic folders in the official layout (tests/glue_fixtures.py) stand in for the tasks
that are not in ../shared/data; a one-layer random-init MiniLM-shaped model keeps each run
to seconds. The task alone decides the head, the loss, the metric, the validation splits
and the maximum length.
"""

import json
from pathlib import Path

import pytest
from glue_fixtures import write_glue_task

from morejax import cli
from morejax.train import config

ROOT = Path(__file__).resolve().parents[1]
GLUE_MINILM = str(ROOT / "configs" / "glue_minilm.py")
MAIN = str(ROOT / "configs" / "glue_more_minilm.py")
TINY = [
    "model.pretrained=False",
    "model.tokenizer=minilm-l6",
    "model.overrides={'num_layers': 1, 'hidden_size': 32, 'num_heads': 2, 'intermediate_size': 64}",
    "data.num_threads=0",
    "data.eval_batch_size=16",
    "batch_size=8",
    "log_every=1",
]
METRICS = {
    "cola": {"mcc", "score"},
    "sst2": {"accuracy", "score"},
    "mrpc": {"f1", "accuracy", "score"},
    "qqp": {"f1", "accuracy", "score"},
    "stsb": {"pearson", "spearman", "score"},
    "mnli": {"matched/accuracy", "matched/score", "mismatched/accuracy", "mismatched/score",
             "score"},
    "qnli": {"accuracy", "score"},
    "rte": {"accuracy", "score"},
    "wnli": {"accuracy", "score"},
}  # fmt: skip


def _train(tmp_path: Path, config_file: str, *sets: str, tiny: bool = True) -> tuple[dict, str]:
    argv = ["train", config_file, "--workdir", str(tmp_path / "run"), "--no-progress"]
    for s in (*(TINY if tiny else TINY[3:]), f"data.data_dir={tmp_path / 'tfds'}", *sets):
        argv += ["--set", s]
    assert cli.main(argv) == 0
    return json.loads((tmp_path / "run" / "results.json").read_text()), str(tmp_path / "run")


@pytest.mark.parametrize("task", sorted(METRICS))
def test_one_config_trains_and_scores_every_task(task, tmp_path, capsys):
    root = write_glue_task(tmp_path / "glue", task, n_train=32, n_dev=12)
    results, _ = _train(
        tmp_path, GLUE_MINILM, f"task={task}", f"data.local_dir={root}", "steps=2", "eval_every=2"
    )
    out = capsys.readouterr().out
    assert set(results["final"]) == METRICS[task]
    assert results["metric"] == "score" and results["best"] == results["final"]["score"]
    cfg = config.load(GLUE_MINILM, [f"task={task}"])
    exp = config.build(cfg)
    pairs = task not in ("cola", "sst2")
    assert exp.model.num_labels == {"stsb": 1, "mnli": 3}.get(task, 2)
    assert exp.data.max_len >= (128 if pairs else 64)
    assert "truncated" not in out  # the task's length holds its synthetic pairs (68-80 tokens)


def test_a_pair_task_at_a_single_sentence_length_is_not_truncated_silently(tmp_path, capsys):
    root = write_glue_task(tmp_path / "glue", "rte", n_train=32, n_dev=12)
    _train(tmp_path, MAIN, "data.task=rte", f"data.local_dir={root}", "steps=1", "eval_every=1")
    out = capsys.readouterr().out
    assert "longer than data.max_len=64 tokens" in out and "raise data.max_len" in out


def test_switching_the_main_job_to_regression_scores_it_as_regression(tmp_path):
    # Before: the float STS-B scores were cast to class ids of a 2-class head and the run
    # died at its first evaluation ("3000 predictions but 1500 labels").
    root = write_glue_task(tmp_path / "glue", "stsb", n_train=32, n_dev=12)
    results, _ = _train(
        tmp_path, MAIN, "data.task=stsb", f"data.local_dir={root}", "steps=2", "eval_every=2"
    )
    assert set(results["final"]) == {"pearson", "spearman", "score"}


def test_a_head_that_contradicts_the_task_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="GLUE mnli has 3 classes"):
        config.build(config.load(GLUE_MINILM, ["task=mnli", "model.num_labels=2"]))


def test_it_learns(tmp_path):
    """Accuracy well above the majority class on a slice the model trains on (the pretrained
    MiniLM: a random-init model this small barely moves in a few dozen steps)."""
    root = write_glue_task(tmp_path / "glue", "sst2", n_train=64, n_dev=12)
    results, workdir = _train(
        tmp_path,
        GLUE_MINILM,
        "task=sst2",
        f"data.local_dir={root}",
        "data.eval_split='train'",
        "steps=40",
        "eval_every=40",
        tiny=False,
    )
    majority = 0.5  # the fixture balances the labels
    assert results["final"]["accuracy"] >= majority + 0.35, results["final"]
    losses = [json.loads(x)["loss"] for x in open(Path(workdir) / "metrics.jsonl")
              if '"train"' in x]  # fmt: skip
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
