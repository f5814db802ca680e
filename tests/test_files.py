"""Your own labelled files: every format, pairs, classes and scores, the held-out slice, each
bad input as one line, preparing again on change, and runs through the command line (a tiny
model that resumes, and MiniLM learning a real-looking CSV)."""

import csv
import gzip
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from morejax import cli
from morejax.data import files
from morejax.data.metrics import label_metrics, macro_f1
from morejax.train import config

ROOT = Path(__file__).resolve().parents[1]
TEXT_CONFIG = str(ROOT / "configs" / "text_minilm.py")
ROWS = [
    {"text": "a warm, funny film", "other": "yes", "label": "pos"},
    {"text": "dull from start to end", "other": "no", "label": "neg"},
    {"text": "the plot, sadly, goes nowhere", "other": "no", "label": "neg"},
    {"text": 'a "quiet" triumph\nin two lines', "other": "yes", "label": "pos"},
    {"text": "it is a film", "other": "maybe", "label": "neutral"},
]


def write(path: Path, rows: list[dict]) -> Path:
    """Rows in the format the name says (.csv, .tsv, .jsonl, .parquet, each text one .gz)."""
    fmt = files.file_format(path)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            f.writelines(json.dumps(r) + "\n" for r in rows)
        elif fmt == "tsv":
            f.write("\t".join(rows[0]) + "\n")
            f.writelines(
                "\t".join(str(v).replace("\n", " ") for v in r.values()) + "\n" for r in rows
            )
        else:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def data(tmp_path, train, **kw) -> config.Data:
    kw = {"text": "text", "label": "label", "data_dir": str(tmp_path / "prepared"), **kw}
    return config.Data(kind="text", train=str(train), **kw)


def resolved(tmp_path, train, **kw) -> config.Data:
    d = data(tmp_path, train, **kw)
    decided = files.decide(d)
    d.task_type, d.classes, d.metric = decided["task_type"], decided["classes"], decided["metric"]
    return d


def examples(d: config.Data, split: str) -> list[dict]:
    rows = files.load(d, split)
    return rows.__getitems__(range(len(rows)))


@pytest.mark.parametrize(
    "name", ["a.csv", "a.tsv", "a.jsonl", "a.parquet", "a.csv.gz", "a.tsv.gz", "a.jsonl.gz"]
)
def test_every_format_gives_the_same_examples(tmp_path, name):
    d = resolved(tmp_path, write(tmp_path / name, ROWS), validation=str(tmp_path / name))
    got = examples(d, "train")
    assert d.classes == ("neg", "neutral", "pos")
    assert [e["label"] for e in got] == [2, 0, 0, 2, 1]
    assert [e["idx"] for e in got] == list(range(5)) and got[0]["text_b"] is None
    texts = [r["text"].replace("\n", " ") if "tsv" in name else r["text"] for r in ROWS]
    assert [e["text_a"] for e in got] == texts
    assert files.load(d, "train")[-1] == got[-1]


def test_sentence_pairs(tmp_path):
    d = resolved(tmp_path, write(tmp_path / "p.jsonl", ROWS), text="text, other")
    got = examples(d, "train") + examples(d, "validation")
    assert {(e["text_a"], e["text_b"]) for e in got} == {(r["text"], r["other"]) for r in ROWS}


def resolve_config(tmp_path, train, *sets) -> config.Experiment:
    args = [f"data.train={train}", "data.text=text", "data.label=label"]
    args.append(f"data.data_dir={tmp_path / 'prepared'}")
    return config.build(config.load(TEXT_CONFIG, [*args, *sets]))


def test_the_training_file_decides_classes_head_and_metric(tmp_path, capsys):
    exp = resolve_config(tmp_path, write(tmp_path / "reviews.csv", ROWS))
    assert exp.data.classes == ("neg", "neutral", "pos") and exp.model.num_labels == 3
    assert exp.data.task_type == "classification" and exp.data.metric == "accuracy"
    assert exp.data.task == "reviews" and exp.data.eval_split == "validation"
    numbers = [dict(r, label=n) for r, n in zip(ROWS, [10, 2, 2, 10.0, "2"])]
    exp = resolve_config(tmp_path, write(tmp_path / "n.jsonl", numbers), "data.metric=mcc")
    assert exp.data.classes == ("2", "10") and exp.data.metric == "mcc"  # numerical order
    scores = [dict(r, label=x) for r, x in zip(ROWS, [0.5, 1, 4.25, 3, 2])]
    exp = resolve_config(tmp_path, write(tmp_path / "s.csv", scores))
    assert exp.data.task_type == "regression" and exp.model.num_labels == 1
    assert exp.data.classes is None and exp.data.metric == "pearson"
    exp = resolve_config(tmp_path, tmp_path / "n.jsonl", "data.task_type=regression")
    assert exp.data.task_type == "regression"
    d = resolved(tmp_path, tmp_path / "n.jsonl", task_type="regression", validation_fraction=0.2)
    assert sorted(e["label"] for e in examples(d, "train")) == [2, 2, 10, 10]
    capsys.readouterr()
    assert (
        "holds whole numbers: classification, 2 classes (2, 10)"
        in files.decide(data(tmp_path, tmp_path / "n.jsonl"))["summary"]
    )
    assert (
        "holds numbers, not all whole: regression"
        in files.decide(data(tmp_path, tmp_path / "s.csv"))["summary"]
    )
    with pytest.raises(ValueError, match="macro_f1.*not reported.*'pearson', 'spearman'"):
        resolve_config(tmp_path, tmp_path / "s.csv", "data.metric=macro_f1")
    with pytest.raises(ValueError, match=r"model.num_labels=2 but 'label' of reviews.csv"):
        resolve_config(tmp_path, tmp_path / "reviews.csv", "model.num_labels=2")
    with pytest.raises(ValueError, match=r"row 1, column 'label': the label 'pos' is not a number"):
        resolve_config(tmp_path, tmp_path / "reviews.csv", "data.task_type=regression")


def test_the_held_out_slice_is_seeded_and_disjoint(tmp_path):
    rows = [{"text": f"sentence {i}", "label": i % 3} for i in range(200)]
    d = resolved(tmp_path, write(tmp_path / "t.parquet", rows), validation_fraction=0.15)
    train, held = examples(d, "train"), examples(d, "validation")
    assert len(held) == 30 and len(train) == 170
    assert sorted(e["idx"] for e in train + held) == list(range(200))
    assert [e["idx"] for e in examples(d, "validation")] == [e["idx"] for e in held]
    assert len(files.load(d, "validation")) == 30
    with pytest.raises(ValueError, match="split 'test' needs a test file: set data.test=PATH"):
        files.load(d, "test")
    with pytest.raises(ValueError, match=r"^data.kind='text' needs data.train=PATH"):
        files.load(config.Data(kind="text"), "validation")
    d.validation_fraction = 1.0
    with pytest.raises(ValueError, match=r"validation_fraction=1.0 must lie in \(0, 1\)"):
        files.load(d, "validation")


def bad_case(tmp_path, case: str) -> tuple[config.Data, str]:
    """A run's data with one bad input, and the line it must fail with."""
    good = write(tmp_path / "good.csv", ROWS)
    if case == "missing column":
        path = write(tmp_path / "m.csv", [{"sentence": "x", "label": "pos"}])
        return data(
            tmp_path, path
        ), rf"^{path}: no column 'text' \(the header is: sentence, label\)$"
    if case == "missing key":
        path = write(tmp_path / "m.jsonl", [ROWS[0], {"text": "x", "y": 1}])
        return data(tmp_path, path), rf"^{path}, row 2: no column 'label' \(the row has: text, y\)$"
    if case == "empty file":
        path = tmp_path / "e.jsonl"
        path.write_text("")
        return data(tmp_path, path), rf"^{path}: the file is empty$"
    if case == "header only":
        path = tmp_path / "h.csv"
        path.write_text("text,label\n")
        return data(tmp_path, path), rf"^{path}: the file has no rows$"
    if case == "unseen label":
        path = write(tmp_path / "v.csv", [ROWS[0], {**ROWS[1], "label": "meh"}])
        return data(tmp_path, good, validation=str(path)), (
            rf"^{path}, row 2, column 'label': the label 'meh' never occurs in training "
            r"\(classes: neg, neutral, pos\)$"
        )
    if case == "unseen test label":
        path = write(tmp_path / "t.jsonl", [{**ROWS[0], "label": "great"}])
        return data(tmp_path, good, test=str(path)), rf"^{path}, row 1, column 'label'.*'great'"
    if case == "empty text":
        path = write(tmp_path / "x.csv", [ROWS[0], ROWS[1], {**ROWS[2], "text": "  "}])
        return data(tmp_path, path), rf"^{path}, row 3, column 'text': the text is empty$"
    if case == "text not a string":
        path = write(tmp_path / "x.jsonl", [ROWS[0], {**ROWS[1], "other": 42}])
        return data(tmp_path, path, text="text,other"), (
            rf"^{path}, row 2, column 'other': the text is not a string \(42\)$"
        )
    if case == "mixed labels":
        path = write(tmp_path / "x.jsonl", [{**ROWS[0], "label": 1}, ROWS[1], ROWS[2]])
        return data(tmp_path, path), (
            rf"^{path}, row 2, column 'label': the label 'neg' is a word but row 1's label 1 is "
            r"a number \(mixed label types\)$"
        )
    if case == "bad csv":
        path = tmp_path / "x.csv"
        path.write_text("text,label\nfine,pos\ntoo,many,fields\n")
        return data(tmp_path, path), (
            rf"^{path}, row 2: does not parse as CSV \(expected 2 columns, found 3\)$"
        )
    if case == "bad json":
        path = tmp_path / "x.jsonl"
        path.write_text('{"text": "a", "label": 1}\n{"text": "b", label: 2}\n')
        return data(tmp_path, path), rf"^{path}, row 2: does not parse as JSON \(Expecting"
    if case == "bad parquet":
        path = tmp_path / "x.parquet"
        path.write_bytes(b"text,label\nnot parquet at all\n")
        return data(tmp_path, path), rf"^{path}: does not parse as Parquet \("
    raise AssertionError(case)


BAD = [
    "missing column",
    "missing key",
    "empty file",
    "header only",
    "unseen label",
    "unseen test label",
    "empty text",
    "text not a string",
    "mixed labels",
    "bad csv",
    "bad json",
    "bad parquet",
]


@pytest.mark.parametrize("case", BAD)
def test_a_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    d, line = bad_case(tmp_path, case)
    with pytest.raises(ValueError) as e:
        files.decide(d)
    assert "\n" not in str(e.value)
    assert e.match(line)
    prepared = Path(d.data_dir)
    assert not list(prepared.glob(".preparing-*"))
    if "unseen" not in case:  # a file with a class training lacks is well formed: it is kept
        assert not list(prepared.glob(f"{Path(d.train).name}-*"))


def test_a_bad_input_through_the_command_line(tmp_path, capsys):
    path = write(tmp_path / "x.jsonl", [ROWS[0], {**ROWS[1], "label": 1}])
    sets = [f"data.train={path}", "data.text=text", "data.label=label"]
    sets.append(f"data.data_dir={tmp_path / 'prepared'}")
    workdir = tmp_path / "run"
    rc = cli.main(["train", TEXT_CONFIG, "--workdir", str(workdir)] + _sets(sets))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"error: {path}, row 2, column 'label'")
    assert "mixed label types" in err[-1] and not workdir.exists()


def test_a_changed_file_is_prepared_again_and_a_bad_change_keeps_the_old(tmp_path, capsys):
    path = write(tmp_path / "a.jsonl", ROWS)
    d = resolved(tmp_path, path)
    assert len(files.load(d, "train")) + len(files.load(d, "validation")) == 5
    assert "preparing" in capsys.readouterr().err
    files.prepare(path, ["text"], "label", d.data_dir)
    assert "preparing" not in capsys.readouterr().err  # unchanged: kept
    write(path, ROWS + ROWS[:3])
    assert files.prepare(path, ["text"], "label", d.data_dir).rows == 8
    assert "a.jsonl again (545 bytes): it changed since it was prepared" in capsys.readouterr().err
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(ValueError, match="row 9: does not parse as JSON"):
        files.prepare(path, ["text"], "label", d.data_dir)
    write(path, ROWS + ROWS[:3])  # the same content again: the kept data still serves
    capsys.readouterr()
    assert files.prepare(path, ["text"], "label", d.data_dir).rows == 8
    assert "preparing" not in capsys.readouterr().err


def test_label_metrics():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    f1 = np.mean([2 / 4 * 1, 2 * 2 / (2 * 2 + 1), 2 / 3])  # per class: 0.5, 0.8, 0.667
    assert macro_f1(p, y) == pytest.approx(f1)
    out = label_metrics(np.eye(3)[p], y, num_labels=3, metric="macro_f1")
    assert out == {
        "accuracy": pytest.approx(4 / 6),
        "macro_f1": pytest.approx(f1),
        "score": out["macro_f1"],
    }
    out = label_metrics(np.eye(2)[[0, 1, 1, 0]], [0, 1, 0, 0], num_labels=2, metric="mcc")
    assert set(out) == {"accuracy", "macro_f1", "mcc", "score"} and out["score"] == out["mcc"]
    out = label_metrics(
        np.array([[0.1], [0.4], [0.3]]), [1.0, 3.0, 2.0], num_labels=1, metric="spearman"
    )
    assert out["spearman"] == pytest.approx(1.0) and out["score"] == out["spearman"]


# ----------------------------------------------------------------------------- runs


def _sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


TINY = [
    "model.pretrained=false",
    "model.tokenizer=minilm-l6",
    "model.overrides={'num_layers': 1, 'hidden_size': 32, 'num_heads': 2, 'intermediate_size': 64}",
    "data.max_len=32",
    "data.eval_batch_size=16",
    "data.num_threads=0",
    "batch_size=8",
    "epochs=None",
    "steps=8",
    "eval_every=4",
    "log_every=1",
]


def review_rows(n: int, seed: int) -> list[dict]:
    """Product reviews: praise, complaints and plain facts (45 / 35 / 20%), varied wording."""
    rng = random.Random(seed)
    items = ["blender", "jacket", "phone case", "novel", "lamp", "backpack", "kettle", "headset"]
    good = ["excellent", "wonderful", "sturdy", "delightful", "a joy to use", "worth every penny"]
    bad = ["flimsy", "disappointing", "useless", "a waste of money", "broken on arrival", "awful"]
    facts = ["arrived on Tuesday", "comes in a cardboard box", "is blue", "weighs 300 grams"]
    openers = ["Honestly,", "Well,", "I must say", "After a week,", "To be fair,", ""]
    rows = []
    for _ in range(n):
        item, opener = rng.choice(items), rng.choice(openers)
        u = rng.random()
        if u < 0.45:
            text, label = f"{opener} the {item} is {rng.choice(good)}.", "positive"
        elif u < 0.80:
            text, label = f"{opener} the {item} is {rng.choice(bad)}.", "negative"
        else:
            text, label = f"{opener} the {item} {rng.choice(facts)}.", "neutral"
        rows.append({"id": len(rows), "review": text.strip(), "stars": label})
    return rows


def test_a_file_run_resumes_where_it_stopped(tmp_path, capsys):
    rows = [{"text": r["review"], "label": r["stars"]} for r in review_rows(160, 0)]
    train = write(tmp_path / "reviews.csv", rows)
    sets = TINY + [f"data.train={train}", "data.text=text", "data.label=label"]
    sets.append(f"data.data_dir={tmp_path / 'prepared'}")

    workdir = tmp_path / "cut"
    args = ["train", TEXT_CONFIG, "--workdir", str(workdir), "--no-progress"] + _sets(sets)
    assert cli.main([*args, "--stop-at", "4"]) == 0
    assert not (workdir / "results.json").exists()
    capsys.readouterr()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "resumed at step 4" in out and f"data folder: {train}\n" in out
    assert "data: 'label' of reviews.csv holds words: classification, 3 classes" in out
    result = json.loads((workdir / "results.json").read_text())
    assert result["finished"] and set(result["final"]) == {"accuracy", "macro_f1", "score"}
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 9))
    saved = json.loads((tmp_path / "cut" / "config.json").read_text())["config"]
    assert [saved[f"data.classes[{i}]"] for i in range(3)] == ["negative", "neutral", "positive"]
    in_checkpoint = list((tmp_path / "cut" / "checkpoints").glob("*/config/metadata"))
    assert in_checkpoint and all("negative" in p.read_text() for p in in_checkpoint)


@pytest.mark.slow
def test_minilm_learns_a_real_looking_csv(tmp_path):
    dev_rows = review_rows(120, 2)
    train = write(tmp_path / "train.csv", review_rows(320, 1))
    dev = write(tmp_path / "dev.csv", dev_rows)
    stars = [r["stars"] for r in dev_rows]
    majority = max(stars.count(c) for c in set(stars)) / len(stars)
    sets = [
        f"data.train={train}",
        f"data.validation={dev}",
        "data.text=review",
        "data.label=stars",
        f"data.data_dir={tmp_path / 'prepared'}",
        "data.max_len=64",
        "data.num_threads=0",
        "batch_size=16",
        "epochs=None",
        "steps=40",
        "eval_every=20",
        "eval_at_start=true",
        "optimizer.learning_rate=3e-3",
    ]
    workdir = tmp_path / "run"
    args = ["train", TEXT_CONFIG, "--workdir", str(workdir), "--no-progress"]
    assert cli.main(args + _sets(sets)) == 0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r["accuracy"] for r in rows if r["split"] == "eval"]
    assert 0.4 < majority < 0.55 and accuracy[0] < majority + 0.1  # a fresh head: no better
    assert json.loads((workdir / "results.json").read_text())["best"] >= majority + 0.35, accuracy

    # The class names travel with a merged export, in the head's (sorted) order.
    out = tmp_path / "hf"
    assert (
        cli.main(["export", "--workdir", str(workdir), "--format", "merged", "--out", str(out)])
        == 0
    )
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert hf_config["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}
