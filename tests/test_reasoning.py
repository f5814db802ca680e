"""LLM-Adapters sets: loading errors, prompts, answer extraction on real records, evaluation."""

import json
import math
from pathlib import Path

import pytest

from morejax.data import reasoning as R

ROOT = Path(__file__).resolve().parents[1]
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{}\n\n### Response:\n"
)
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n"
)
# Record counts of the shared copy (shared/data/README.md).
COUNTS = {
    ("boolq", "test"): 3270,
    ("boolq", "train"): 9427,
    ("ARC-Easy", "test"): 2376,
    ("ARC-Challenge", "train"): 1119,
    ("openbookqa", "test"): 500,
    ("piqa", "test"): 1838,
    ("social_i_qa", "test"): 1954,
    ("winogrande", "test"): 1267,
    ("gsm8k", "test"): 1319,
}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def rec(instruction="q", output="the correct answer is true", answer="true", input=""):
    return {"instruction": instruction, "input": input, "output": output, "answer": answer}


# ----------------------------------------------------------------------------- prompts


def test_prompt_exact_strings():
    assert R.format_prompt("Add 2 and 3.") == ALPACA.format("Add 2 and 3.")
    assert R.format_prompt("Sum them.", "2, 3") == ALPACA_INPUT.format("Sum them.", "2, 3")
    assert R.format_prompt("Braces {x} stay.") == ALPACA.format("Braces {x} stay.")
    ind = " " * 16  # LLM-Adapters' finetune.py keeps its f-string indentation in the text
    assert R.format_prompt("Q", style="llm-adapters") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        f"completes the request.  \n\n{ind}### Instruction:\n{ind}Q\n{ind}\n{ind}### Response:\n"
        f"{ind}"
    )
    assert R.format_prompt("Q", style="llm-adapters-eval").endswith(
        f"request. \n\n{ind}### Instruction:\n{ind}Q\n\n{ind}### Response:\n{ind}"
    )
    with pytest.raises(ValueError, match="prompt style"):
        R.format_prompt("Q", style="chatml")


def test_examples_carry_prompt_response_answer(tmp_path):
    path = write(tmp_path / "boolq" / "test.json", [rec("Is it?", input="ctx")])
    (ex,) = R.load_examples(path)
    assert ex == {
        "prompt": ALPACA_INPUT.format("Is it?", "ctx"),
        "response": "the correct answer is true",
        "answer": "true",
        "set": "boolq",
    }


# ----------------------------------------------------------------------------- files


def test_root_env_and_mixtures(tmp_path, monkeypatch):
    write(tmp_path / "ARC-Easy" / "train.json", [rec(f"e{i}") for i in range(5)])
    write(tmp_path / "commonsense_170k.json", [rec(f"c{i}") for i in range(7)])
    monkeypatch.setenv(R.ENV_DIR, str(tmp_path))
    assert R.data_dir() == tmp_path
    assert R.resolve_path("arc-easy", "train") == tmp_path / "ARC-Easy" / "train.json"
    mix = R.training_mixture(["ARC-Easy", "commonsense_170k"], holdout=0)
    assert [e["prompt"] for e in mix] == [ALPACA.format(f"e{i}") for i in range(5)] + [
        ALPACA.format(f"c{i}") for i in range(7)
    ]
    assert [e["set"] for e in mix] == ["ARC-Easy"] * 5 + ["commonsense_170k"] * 7
    kw = dict(shuffle=True, holdout=0)
    a = R.training_mixture(["ARC-Easy", "commonsense_170k"], seed=1, **kw)
    b = R.training_mixture(["ARC-Easy", "commonsense_170k"], seed=1, **kw)
    c = R.training_mixture(["ARC-Easy", "commonsense_170k"], seed=2, **kw)
    assert a == b and a != c and a != mix
    assert sorted(x["prompt"] for x in a) == sorted(x["prompt"] for x in mix)
    # By default each file's held-out validation record stays out of training.
    held = R.training_mixture(["ARC-Easy", "commonsense_170k"])
    assert len(held) == 4 + 6 and {e["prompt"] for e in held} < {e["prompt"] for e in mix}


def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked for .*hellaswag/test.json"):
        R.load_records("hellaswag", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="math_10k.json"):
        R.load_records("math_10k", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        R.load_records(tmp_path / "nope.json")


def test_unknown_set_lists_valid_names():
    with pytest.raises(ValueError, match="unknown LLM-Adapters set 'siqa'.*social_i_qa"):
        R.load_records("siqa")
    with pytest.raises(ValueError, match="valid evaluation sets: boolq"):
        R.extract_answer("commonsense_170k", "true")


def test_bad_contents_name_file_and_problem(tmp_path):
    empty = write(tmp_path / "empty.json", [])
    with pytest.raises(ValueError, match=r"empty\.json: .*no records \(an empty list"):
        R.load_records(empty)
    renamed = write(
        tmp_path / "renamed.json", [rec(), {"question": "q", "output": "", "answer": ""}]
    )
    with pytest.raises(ValueError, match=r"renamed\.json: record 1 lacks key.*'instruction'"):
        R.load_records(renamed)
    no_answer = write(tmp_path / "noans.json", [{"instruction": "q", "input": "", "output": "o"}])
    with pytest.raises(ValueError, match=r"noans\.json: record 0 lacks key\(s\) 'answer'"):
        R.load_records(no_answer)
    assert R.training_mixture(no_answer, holdout=0)[0]["response"] == "o"  # needs no answer
    not_list = write(tmp_path / "obj.json", {"instruction": "q"})
    with pytest.raises(ValueError, match=r"obj\.json: expected a JSON list"):
        R.load_records(not_list)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        R.load_records(broken)


# ----------------------------------------------------------------------------- splits


def prompts(examples):
    return [e["prompt"] for e in examples]


@pytest.mark.parametrize(
    "where,name",
    [
        ("commonsense_170k.json", "commonsense_170k"),
        ("ft-training_set/math_10k.json", "math_10k"),
        ("boolq/train.json", "boolq"),
    ],
)
def test_train_and_validation_partition_a_training_file(tmp_path, where, name):
    everything = [ALPACA.format(f"item {i}") for i in range(60)]
    write(tmp_path / where, [rec(f"item {i}") for i in range(60)])
    train = prompts(R.load_examples(name, "train", tmp_path))
    val = prompts(R.load_examples(name, "validation", tmp_path))
    assert len(val) == 3  # 5% of 60
    assert train == [p for p in everything if p not in val]  # the rest, in file order
    assert val == [p for p in everything if p in val]
    assert val != everything[:3]  # a permutation's slice, not the head of the file
    assert prompts(R.load_examples(name, "validation", tmp_path)) == val  # fixed
    assert prompts(R.load_examples(tmp_path / where, "validation")) == val  # by path
    assert len(R.load_examples(name, "validation", tmp_path, holdout=10)) == 10
    assert len(R.load_examples(name, "validation", tmp_path, holdout=0.25)) == 15
    assert prompts(R.load_examples(name, "train", tmp_path, holdout=0)) == everything


def test_holdout_sizes_and_bad_holdouts():
    assert [R.holdout_size(n) for n in (2, 19, 20, 100, 4000, 170_000)] == [1, 1, 1, 5, 200, 200]
    with pytest.raises(ValueError, match=r"tiny\.json has 1 record.*too few to hold out 1"):
        R.split_records([rec()], "train", source="tiny.json")
    with pytest.raises(ValueError, match="has 10 record.*holdout="):
        R.split_records([rec()] * 10, "validation", holdout=10)
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\)"):
        R.holdout_size(10, 1.5)
    with pytest.raises(ValueError, match="count >= 0"):
        R.holdout_size(10, -1)
    with pytest.raises(ValueError, match="holdout=0 holds nothing out"):
        R.split_records([rec()] * 10, "validation", holdout=0)
    with pytest.raises(ValueError, match="unknown split 'dev'; valid: train, validation, test"):
        R.load_examples("boolq", "dev")


def test_test_split_of_a_mixture_names_the_sets_to_generate_on(tmp_path):
    write(tmp_path / "math_10k.json", [rec(f"m{i}") for i in range(30)])
    math_sets = "gsm8k, AQuA, AddSub, MultiArith, SingleEq, SVAMP, mawps"
    with pytest.raises(
        ValueError, match=f"evaluated per set by generation .*{math_sets}.*data.generate_sets"
    ):
        R.load_examples("math_10k", "test", tmp_path)
    path = write(tmp_path / "ft-training_set" / "math_14k.json", [rec()] * 30)
    with pytest.raises(
        ValueError, match="math_14k.json' is a training mixture.*data.generate_sets"
    ):
        R.load_examples(path, "test")
    with pytest.raises(ValueError, match="boolq/train.json is a training file.*'validation'"):
        R.load_examples(write(tmp_path / "boolq" / "train.json", [rec()] * 30), "test")
    # A set's test split is still its test.json.
    write(tmp_path / "boolq" / "test.json", [rec("t")])
    assert prompts(R.load_examples("boolq", "test", tmp_path)) == [ALPACA.format("t")]


def test_mixture_test_sets():
    assert R.mixture_test_sets("commonsense_170k") == R.COMMONSENSE_SETS
    assert len(R.mixture_test_sets("commonsense_15k")) == 8
    math_sets = ("gsm8k", "AQuA", "AddSub", "MultiArith", "SingleEq", "SVAMP", "mawps")
    assert R.mixture_test_sets("math_10k") == math_sets
    assert R.mixture_test_sets("/data/ft-training_set/math_50k.json") == math_sets
    assert R.mixture_test_sets("gsm8k_train") == math_sets
    assert R.mixture_test_sets("/data/gsm8k/train.jsonl") == math_sets
    assert R.mixture_test_sets("arc-easy") == ("ARC-Easy",)
    assert R.mixture_test_sets("/data/boolq/train.json") == ("boolq",)
    with pytest.raises(ValueError, match="no test sets known for 'alpaca'"):
        R.mixture_test_sets("alpaca")


def test_real_gsm8k_train_splits(shared_data):
    everything = R.load_records(shared_data / "gsm8k" / "train.jsonl", "train")
    root = shared_data / "llm-adapters"
    train = R.load_split_records("gsm8k_train", "train", root)
    val = R.load_split_records("gsm8k_train", "validation", root)
    assert len(everything) == 7473 and len(val) == 200 and len(train) == 7473 - 200
    key = lambda r: (r["instruction"], r["output"])  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in val}
    assert sorted(map(key, train + val)) == sorted(map(key, everything))
    first = everything[0]
    assert first["answer"] == "72" and first["output"].endswith("The answer is 72.")
    assert "<<" not in first["output"] and "####" not in first["output"]


def test_gsm8k_lines_become_records(tmp_path):
    line = {
        "question": "  Tom has 3 apples and buys 1,200 more. How many now?\n",
        "answer": "He has 3+1200=<<3+1200=1203>>1203 apples.\n#### 1,203",
    }
    path = tmp_path / "mine" / "train.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(line) + "\n\n" + json.dumps(line) + "\n")
    recs = R.load_records(path, "train")
    assert recs[0] == {
        "instruction": "Tom has 3 apples and buys 1,200 more. How many now?",
        "input": "",
        "output": "He has 3+1200=1203 apples.\nThe answer is 1203.",
        "answer": "1203",
    }
    assert len(recs) == 2  # blank lines are skipped
    assert R.is_correct("gsm8k", R.extract_answer("gsm8k", recs[0]["output"]), "1203")
    path.write_text(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(ValueError, match=r"record 0 is not a GSM8K line.*'#### N'"):
        R.load_records(path, "train")
    path.write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(ValueError, match="train.jsonl: line 2 is not valid JSON"):
        R.load_records(path, "train")


@pytest.mark.parametrize(
    "name,task",
    [
        ("commonsense_more_llama7b", "commonsense_170k"),
        ("math_milora_llama2_7b", "math_10k"),
        ("smoke_tiny_lm", "ARC-Easy"),
    ],
)
def test_reasoning_configs_do_not_evaluate_on_the_training_file(tmp_path, name, task):
    from morejax.train import config, inputs

    exp = config.build(config.load(ROOT / "configs" / f"{name}.py"))
    data = exp.data
    assert data.task == task
    where = f"{task}.json" if task in R.MIXTURES else f"{task}/train.json"
    write(tmp_path / where, [rec(f"q{i}") for i in range(100)])
    data.local_dir, data.train_limit, data.eval_limit = str(tmp_path), None, None
    fit = prompts(inputs.load_split(data, data.train_split, None))
    held = prompts(inputs.load_split(data, data.eval_split, None))
    assert len(held) == 5 and len(fit) == 95 and not set(fit) & set(held)
    assert data.generate_sets == R.mixture_test_sets(task)  # scored on test sets instead


def test_extraction_rules_on_generated_text():
    x = R.extract_answer
    assert x("boolq", "the correct answer is false, not true") == "false"  # first match
    assert x("boolq", "The correct answer is True") == ""  # case-sensitive, like LLM-Adapters
    assert x("piqa", "solution2 because solution1 fails") == "solution2"
    assert x("social_i_qa", "the correct answer is answer3") == "answer3"
    assert x("ARC-Challenge", "answer5") == "answer5"
    assert x("hellaswag", "the correct answer is ending4") == "ending4"
    assert x("winogrande", "option2") == "option2"
    assert x("gsm8k", "3 + 4 = 7 apples, so 1,234.5 total. The answer is 1,234.5.") == 1234.5
    assert x("SVAMP", "It fell by -3 degrees.") == -3.0
    assert x("AddSub", "no digits here") == math.inf
    assert x("AQuA", "The answer is (D).") == "D"
    assert x("AQuA", "A train runs... The answer is (C).") == "A"  # LLM-Adapters' first capital
    assert x("AQuA", "A train runs... The answer is (C).", letter_rule="strict") == "C"
    assert R.is_correct("gsm8k", 18.0005, "18.0") and not R.is_correct("gsm8k", 18.01, "18")
    assert not R.is_correct("gsm8k", math.inf, "18")
    assert R.is_correct("boolq", "true", "true") and not R.is_correct("boolq", "", "true")
    assert R.clean_response("  answer1\n\n### Response:\nanswer2") == "answer1"


def test_commonsense_gold_outputs_extract_to_gold_answers(shared_data):
    root = shared_data / "llm-adapters"
    seen = 0
    for name in R.COMMONSENSE_SETS:
        for split in ("train", "test"):
            if not (root / name / f"{split}.json").is_file():
                continue
            records = R.load_records(name, split, root)
            if (name, split) in COUNTS:
                assert len(records) == COUNTS[name, split]
            for r in records[:50]:
                assert R.extract_answer(name, r["output"]) == r["answer"], (name, r["output"])
                assert R.is_correct(name, R.extract_answer(name, r["output"]), r["answer"])
            seen += 1
    assert seen >= 10


def test_math_extraction_matches_reference_predictions(shared_data):
    """The data copy keeps LLM-Adapters' `*_1.json` (chain of thought + extracted pred)."""
    root = shared_data / "llm-adapters"
    pairs = {
        "gsm8k": "gsm8k_1",
        "AddSub": "addsub_1",
        "MultiArith": "multiarith_1",
        "SingleEq": "singleeq_1",
        "SVAMP": "svamp_1",
        "AQuA": "aqua_1",
    }
    checked = 0
    for name, stem in pairs.items():
        path = root / name / f"{stem}.json"
        if not path.is_file():
            continue
        rows = [r for r in json.loads(path.read_text())[:50] if r["pred"] is not None]
        for r in rows:
            text = r["chain-of-thought"]
            if name == "AQuA":
                assert R.extract_answer(name, text, letter_rule="strict") == r["pred"], text
            else:
                assert R.extract_answer(name, text) == pytest.approx(float(r["pred"])), text
            checked += 1
    assert checked >= 250


def test_math_gold_answers_in_generated_style(shared_data):
    root = shared_data / "llm-adapters"
    for name in R.MATH_SETS:
        if not (root / name / "test.json").is_file():
            continue
        for r in R.load_records(name, "test", root)[:50]:
            gold = r["answer"]
            if R.answer_kind(name) == "letter":
                text = f"\nRationale: the sum is 12, so x is {gold}. The answer is ({gold})."
                assert R.extract_answer(name, text, letter_rule="strict") == gold
            else:
                v = float(gold)
                text = f"\nA: 3 + 4 = 7, then 7 * 2 = 14. The answer is {v:,}."
                assert R.is_correct(name, R.extract_answer(name, text), gold), text
                assert not R.is_correct(name, R.extract_answer(name, f"{v + 1:,}"), gold)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_with_a_fake_generator(tmp_path):
    boolq = [rec(f"b{i}", answer="true" if i % 2 else "false") for i in range(5)]
    math_recs = [rec(f"m{i}", output="", answer=str(float(i))) for i in range(4)]
    write(tmp_path / "boolq" / "test.json", boolq)
    write(tmp_path / "gsm8k" / "test.json", math_recs)
    calls = []

    def generate(prompts):
        calls.append(len(prompts))
        out = []
        for p in prompts:
            q = p.split("### Instruction:\n")[1].split("\n")[0]
            if q.startswith("b"):  # right on b0..b3, wrong on b4
                out.append(f"the correct answer is {'true' if int(q[1:]) % 2 else 'false'}")
                if q == "b4":
                    out[-1] = "the correct answer is true"
            else:  # right on m0, m2; m1 has no number; m3 is off by one
                i = int(q[1:])
                out.append({0: "The answer is 0.", 1: "none", 2: "so 2.0", 3: "= 4"}[i])
        return out

    scores, preds = R.evaluate(
        generate, ["boolq", "gsm8k"], root=tmp_path, batch_size=2, return_predictions=True
    )
    assert scores == {"boolq": 0.8, "gsm8k": 0.5, "average": pytest.approx(0.65)}
    assert calls == [2, 2, 1, 2, 2]
    assert [p[2] for p in preds["gsm8k"]] == [True, False, True, False]  # record order kept
    assert preds["gsm8k"][1][1] == math.inf
    assert R.evaluate(generate, {"boolq": boolq[:2]}, limit=1) == {"boolq": 1.0, "average": 1.0}
    with pytest.raises(ValueError, match="returned 0 texts"):
        R.evaluate(lambda p: [], {"boolq": boolq})
