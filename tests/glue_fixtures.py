"""Small synthetic GLUE folders in the official layout, learnable by a tiny model.

``write_glue_task(root, task)`` writes ``root/<Folder>/...`` exactly as the TFDS
GLUE builder reads it (CoLA without header, MRPC's Microsoft files with a BOM
and dev ids, MNLI's matched/mismatched files, STS-B float scores) and returns
``root``, so ``glue.load(task, split, local_dir=root, data_dir=...)`` works.

The label is decided by one marker word in the first text (``MARKERS``); for
STS-B the score is the marker's level plus a little noise. Every word is a
single token in the all-MiniLM-L6 WordPiece vocabulary. Single sentences are
6-12 words; pairs are 34-40 + 28-34 words (over 64 tokens, under 128), so a
pair task truncated to a single-sentence budget shows.
"""

from __future__ import annotations

import random
from pathlib import Path

from morejax.data import glue, glue_tasks

# label id -> the word that decides it
MARKERS: dict[str, tuple[str, ...]] = {
    "binary": ("bad", "good"),
    "mnli": ("yes", "maybe", "no"),  # entailment, neutral, contradiction
    "stsb": ("zero", "one", "two", "three", "four", "five"),  # score level 0..5
}
FILLER = tuple(
    (
        "the a this that some many people man woman child dog cat house city river road "
        "car train book letter table window garden school office market street morning "
        "evening night day week year saw found made took gave kept left brought walked "
        "played read wrote moved opened closed near under over after before with from "
        "into small large old new red blue green white long short quiet busy early late"
    ).split()
)
SINGLE_WORDS, PAIR_WORDS = (6, 12), ((34, 40), (28, 34))


def markers(task: str) -> tuple[str, ...]:
    s = glue.spec(task)
    return MARKERS["stsb" if s.is_regression else "mnli" if s.num_labels == 3 else "binary"]


def _sentence(rng: random.Random, n_words: tuple[int, int], marker: str | None = None) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(*n_words))]
    if marker is not None:
        words.insert(rng.randrange(len(words) + 1), marker)
    return " ".join(words) + "."


def _examples(task: str, n: int, rng: random.Random) -> list[dict]:
    """n examples with balanced labels: text_a (holding the marker), text_b, label id/score."""
    s, marks = glue.spec(task), markers(task)
    levels = [i % len(marks) for i in range(n)]
    rng.shuffle(levels)
    out = []
    for level in levels:
        pair = len(s.text_keys) == 2
        a = _sentence(rng, PAIR_WORDS[0] if pair else SINGLE_WORDS, marks[level])
        b = _sentence(rng, PAIR_WORDS[1]) if pair else None
        if s.name in ("qqp", "qnli"):  # questions end with '?'
            a = a[:-1] + "?"
            b = b[:-1] + "?" if s.name == "qqp" else b
        label = min(5.0, max(0.0, level + rng.uniform(-0.3, 0.3))) if s.is_regression else level
        out.append({"a": a, "b": b, "label": label})
    return out


def _label_text(task: str, label) -> str:
    s = glue.spec(task)
    if s.is_regression:
        return f"{label:.3f}"
    if s.name in ("rte", "qnli", "mnli"):  # these files spell the class out
        return s.label_names[label]
    return str(label)


def _write(path: Path, header: list[str] | None, rows: list[list], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + rows
    text = "".join("\t".join(map(str, r)) + "\n" for r in lines)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8", newline="")


def _write_split(task: str, d: Path, fname: str, exs: list[dict], test: bool) -> None:
    s = glue.spec(task)
    lab = [_label_text(task, e["label"]) for e in exs]
    if s.name == "cola":
        if test:
            _write(d / fname, ["index", "sentence"], [[i, e["a"]] for i, e in enumerate(exs)])
        else:  # no header: source, label, original judgement ('*' = unacceptable), sentence
            rows = [["gj04", y, "" if y == "1" else "*", e["a"]] for e, y in zip(exs, lab)]
            _write(d / fname, None, rows)
    elif s.name == "sst2":
        if test:
            _write(d / fname, ["index", "sentence"], [[i, e["a"]] for i, e in enumerate(exs)])
        else:
            _write(d / fname, ["sentence", "label"], [[e["a"], y] for e, y in zip(exs, lab)])
    elif s.name == "qqp":
        if test:
            rows = [[i, e["a"], e["b"]] for i, e in enumerate(exs)]
            _write(d / fname, ["id", "question1", "question2"], rows)
        else:
            head = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
            rows = [[i, 2 * i + 1, 2 * i + 2, e["a"], e["b"], y]
                    for i, (e, y) in enumerate(zip(exs, lab))]  # fmt: skip
            _write(d / fname, head, rows)
    elif s.name == "stsb":
        head = ["index", "genre", "filename", "year", "old_index", "source1", "source2"]
        head += ["sentence1", "sentence2"]
        rows = [[i, "main-news", "headlines", "2015", i, "none", "none", e["a"], e["b"]]
                for i, e in enumerate(exs)]  # fmt: skip
        if not test:
            head, rows = head + ["score"], [r + [y] for r, y in zip(rows, lab)]
        _write(d / fname, head, rows)
    elif s.name == "mnli":
        head = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse"]
        head += ["sentence2_binary_parse", "sentence1_parse", "sentence2_parse"]
        head += ["sentence1", "sentence2"]
        rows = [[i, 1000 + i, f"{1000 + i}e", "fiction", f"( {e['a']} )", f"( {e['b']} )",
                 f"(ROOT {e['a']})", f"(ROOT {e['b']})", e["a"], e["b"]]
                for i, e in enumerate(exs)]  # fmt: skip
        if not test:
            votes = ["label1"] if fname == "train.tsv" else [f"label{k}" for k in range(1, 6)]
            head = head + votes + ["gold_label"]
            rows = [r + [y] * len(votes) + [y] for r, y in zip(rows, lab)]
        _write(d / fname, head, rows)
    else:  # qnli, rte, wnli: index, two texts, label
        head = ["index", *glue_tasks.tfds_config(s).text_features.values()]
        rows = [[i, e["a"], e["b"]] for i, e in enumerate(exs)]
        if not test:
            head, rows = head + ["label"], [r + [y] for r, y in zip(rows, lab)]
        _write(d / fname, head, rows)


def _write_mrpc(d: Path, train: list, dev: list, test: list) -> None:
    """Microsoft's files (BOM, Quality first) plus GLUE's dev ids and its own TSVs."""
    cols = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]

    def rows(exs, first_id):
        return [[e["label"], first_id + 2 * i, first_id + 2 * i + 1, e["a"], e["b"]]
                for i, e in enumerate(exs)]  # fmt: skip

    train_rows, dev_rows = rows(train, 100_000), rows(dev, 200_000)
    mixed = train_rows + dev_rows
    random.Random(len(mixed)).shuffle(mixed)  # dev pairs sit among the training pairs
    _write(d / "msr_paraphrase_train.txt", cols, mixed, bom=True)
    _write(d / "msr_paraphrase_test.txt", cols, rows(test, 300_000), bom=True)
    _write(d / "dev_ids.tsv", None, [r[1:3] for r in dev_rows])
    _write(d / "train.tsv", cols, train_rows)  # GLUE's own copies; TFDS does not read them
    _write(d / "dev.tsv", cols, dev_rows)
    test_rows = [[i, *r[1:]] for i, r in enumerate(rows(test, 300_000))]
    _write(d / "test.tsv", ["index", *cols[1:]], test_rows)


def write_glue_task(
    root: Path, task: str, n_train: int = 24, n_dev: int = 12, n_test: int = 6, seed: int = 0
) -> Path:
    """Write ``root/<Folder>`` for one GLUE task in the official layout; return ``root``.

    Labelled splits hold ``n_train`` / ``n_dev`` balanced examples (MNLI: ``n_dev``
    in each of dev_matched and dev_mismatched), test splits ``n_test`` unlabelled ones.
    """
    s = glue.spec(task)
    root = Path(root)
    d = root / s.folder
    rng = random.Random(f"{s.name}-{seed}")
    if s.name == "mrpc":
        exs = [_examples(task, n, rng) for n in (n_train, n_dev, n_test)]
        _write_mrpc(d, *exs)
        return root
    for split, fname in s.files.items():
        n = n_train if split == "train" else n_test if split.startswith("test") else n_dev
        _write_split(task, d, fname, _examples(task, n, rng), split.startswith("test"))
    return root
