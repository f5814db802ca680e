"""The train/test overlap guard: planted test problems are dropped, counted and reported; the
shipped reasoning configs train on no problem they are scored on."""

from __future__ import annotations

import json
import sys

import pytest

from morejax.data import overlap
from morejax.data import reasoning as R
from tests.conftest import ROOT


def rec(instruction, input="", answer="1"):
    return {"instruction": instruction, "input": input, "output": f"a {answer}", "answer": answer}


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def planted(tmp_path):
    """A training file of 40 problems, 3 of which are test problems of two sets (one differs
    from its test copy only in spacing and case)."""
    write(tmp_path / "AddSub" / "test.json", [rec("Add 2 and 3."), rec("Add 4 and 5.")])
    write(tmp_path / "SVAMP" / "test.json", [rec("Take 1 from 9.", "There are 9.")])
    train = [rec(f"Own problem {i}.") for i in range(37)]
    train += [rec("Add 2 and 3."), rec("  add 4   AND 5. "), rec("Take 1 from 9.", "There are 9.")]
    train.append(rec("Take 1 from 9."))  # another input: another problem
    return tmp_path, write(tmp_path / "mine.json", train)


def test_planted_overlaps_are_dropped_counted_and_reported(planted):
    root, path = planted
    records = R.load_records(path, "train")
    kept, report = overlap.drop_overlap(records, ["AddSub", "SVAMP"], root, split="train")
    assert len(records) == 41 and len(kept) == 38
    assert report.dropped == 3 and report.per_set == {"AddSub": 2, "SVAMP": 1}
    assert not {overlap.record_key(r) for r in kept} & set(overlap.test_keys(["AddSub"], root)[0])
    line = report.line("mine.json")
    assert "dropped 3 of 41" in line and "AddSub 2, SVAMP 1" in line
    assert "data.allow_test_overlap=True" in line
    kept, report = overlap.drop_overlap(records, ["AddSub", "SVAMP"], root, split="x", allow=True)
    assert len(kept) == 41 and report.dropped == 3
    assert report.line("mine.json").startswith("WARNING") and "KEPT" in report.line("mine.json")


def test_the_guard_runs_where_a_run_loads_its_data(planted, capsys):
    from morejax.train.config import Data
    from morejax.train.inputs import load_split

    root, path = planted
    data = Data(kind="reasoning", task=str(path), local_dir=str(root), generate_sets=("AddSub",))
    train = load_split(data, "train", None)
    val = load_split(data, "validation", None)
    # AddSub is scored; SVAMP is not (a file of the user's has no known sets): kept.
    assert train.overlap.dropped + val.overlap.dropped == 2
    assert len(train) + len(val) == 39
    assert "test overlap: " in capsys.readouterr().out
    data.allow_test_overlap = True
    assert len(load_split(data, "train", None)) + len(load_split(data, "validation", None)) == 41


def test_a_missing_test_file_is_named_not_fatal(planted):
    root, path = planted
    _, report = overlap.drop_overlap(R.load_records(path), ["AddSub", "hellaswag"], root, split="t")
    assert report.absent == ("hellaswag",) and "unchecked: hellaswag" in report.line("f")


def test_the_contaminated_math_file_is_all_test_problems(shared_data):
    """What the audit found: every record of math_data.json is an arithmetic test record."""
    root = shared_data / "llm-adapters"
    records = R.load_records("math_data", "train", root)
    kept, report = overlap.drop_overlap(records, R.MATH_TEST_SETS, root, split="train")
    assert len(records) == 3260 and kept == [] and report.dropped == 3260


@pytest.mark.parametrize("config", ["configs/math_smollm2.py", "configs/commonsense_smollm2.py"])
def test_shipped_reasoning_configs_train_on_no_scored_problem(shared_data, config):
    """After the guard, no training or validation record is a problem of any set the tables
    score (their own, the other table's and the unseen ones); the math file has none at all."""
    sys.path.insert(0, str(ROOT))
    from experiments.reasoning_plan import COMMONSENSE, MATH, UNSEEN
    from morejax.train import config as C
    from morejax.train.inputs import scored_sets

    data = C.build(C.load(ROOT / config)).data
    root = shared_data / "llm-adapters"
    sets = tuple(dict.fromkeys((*scored_sets(data), *COMMONSENSE, *MATH, *UNSEEN)))
    keys, absent = overlap.test_keys(sets, root)
    assert not absent
    found = 0
    for split in ("train", "validation"):
        guard = overlap.Guard(sets, root)
        examples = R.load_examples(data.task, split, root, keep=guard.keep)
        found += guard.report(split).dropped
        assert examples
    if "math" in config:
        assert data.task == "gsm8k_train" and found == 0
    else:  # two ARC-Easy training questions are, verbatim, ARC-Easy test questions
        assert found == 2


def test_glue_dev_sentences_seen_in_training_are_reported(shared_data, capsys):
    """For information only (nothing is dropped): GLUE repeats a few CoLA sentences."""
    import csv

    from morejax.train.config import Data
    from morejax.train.inputs import load_split

    def sentences(name):
        with open(shared_data / "glue" / "CoLA" / name, newline="") as f:
            return [row[3] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]

    seen, total = overlap.count_text_overlap(sentences("train.tsv"), sentences("dev.tsv"))
    assert total == 1043 and 0 < seen < 50
    data = Data(kind="glue", task="cola", local_dir=str(shared_data / "glue"))
    assert len(load_split(data, "validation", None)) == 1043
    line = f"test overlap (information only): {seen} of 1043 cola validation examples also"
    assert line in capsys.readouterr().out


def test_the_opt_out_field_leaves_finished_points_keys_alone():
    """Results recorded before `data.allow_test_overlap` existed keep their sweep keys."""
    from morejax.cli.sweep import config_key
    from morejax.train import config as C

    cfg = C.load(ROOT / "configs" / "smoke_tiny.py")
    key = config_key(cfg)
    assert config_key(C.load(ROOT / "configs" / "smoke_tiny.py")) == key
    C.apply_overrides(cfg, {"data.allow_test_overlap": True})
    assert config_key(cfg) != key


def test_a_run_saved_before_the_field_existed_resumes():
    from morejax.train import config as C

    new = C.to_json(C.resolve(C.load(ROOT / "configs" / "smoke_tiny.py")))
    old = {k: v for k, v in new.items() if k != "data.allow_test_overlap"}
    assert C.changed_fields(old, new) == []
    assert C.changed_fields(old, {**new, "data.allow_test_overlap": True}) == [
        "data.allow_test_overlap: None -> True"
    ]
