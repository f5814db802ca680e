"""Data for a run: splits loaded and checked, batched for training and evaluation.

The task decides the loss (`task_kind`); a run's seed orders its data unless `data.seed`
pins it; a split whose examples would be cut at `data.max_len` says so.
"""

from __future__ import annotations

from morejax.data import overlap
from morejax.train.config import Experiment
from morejax.train.logger import say
from morejax.train.model import PACKED_KEYS


def task_kind(exp: Experiment) -> str:
    if exp.data.kind in ("reasoning", "chat"):
        return "lm"
    return "regression" if exp.model.num_labels == 1 else "classification"


BATCH_KEYS = {
    "classification": ("input_ids", "attention_mask", "token_type_ids", "labels", "valid"),
    "regression": ("input_ids", "attention_mask", "token_type_ids", "labels", "valid"),
    "lm": ("input_ids", "attention_mask", "loss_mask", "valid"),
}


def batch_keys(data, kind: str) -> tuple[str, ...]:
    """What the compiled steps take; packed rows add their segment and example indices."""
    if data.pack and kind != "lm":
        return BATCH_KEYS[kind] + PACKED_KEYS
    return BATCH_KEYS[kind]


class Head:
    """The first `limit` examples of a random-access source (smoke runs, tests); `overlap`
    is what the test-overlap guard dropped from it (reasoning train/validation splits)."""

    overlap: overlap.Overlap | None = None

    def __init__(self, source, limit: int | None):
        self.source, self.n = source, len(source) if limit is None else min(limit, len(source))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source[i]

    def __getitems__(self, indices):
        from morejax.data.batching import read_many

        indices = [int(i) for i in indices]
        if any(not 0 <= i < self.n for i in indices):
            raise IndexError(f"an index of {indices} is out of range for {self.n} examples")
        return read_many(self.source, indices)


def load_split(data, split: str, limit: int | None, num_labels: int | None = None):
    """A split's examples; GLUE labels are checked against the head here, not as a NaN later."""
    if data.kind == "glue":
        from morejax.data import glue

        source = glue.load(
            data.task, split, local_dir=data.local_dir, data_dir=data.data_dir, normalize=True
        )
        if num_labels is not None:
            glue.check_labels(data.task, source, num_labels, split)
        if split != data.train_split:
            seen, total = glue.split_overlap(
                data.task, split, data_dir=data.data_dir, local_dir=data.local_dir
            )
            say(
                f"test overlap (information only): {seen} of {total} {data.task} {split} "
                f"examples also occur in {data.train_split}"
            )
        return Head(source, limit)
    if data.kind == "text":
        from morejax.data import files

        if split == data.train_split:
            say(f"data: {files.decide(data)['summary']}")
        return Head(files.load(data, split), limit)
    if data.kind == "chat":
        from morejax.data import chat

        return Head(chat.load(data, split), limit)
    from morejax.data import reasoning

    if split == "test":
        return Head(reasoning.load_examples(data.task, split, data.local_dir), limit)
    guard = overlap.Guard(scored_sets(data), data.local_dir, allow=data.allow_test_overlap)
    head = Head(reasoning.load_examples(data.task, split, data.local_dir, keep=guard.keep), limit)
    head.overlap = guard.report(split)
    say(head.overlap.line(data.task))
    return head


def scored_sets(data) -> tuple[str, ...]:
    """The test sets a reasoning run's records are checked against: those it generates on,
    and those the papers score its training file on."""
    from morejax.data import reasoning

    try:
        papers = reasoning.mixture_test_sets(data.task)
    except ValueError:  # a file of the user's with no known sets
        papers = ()
    return tuple(dict.fromkeys((*data.generate_sets, *papers)))


def data_seed(data, seed: int) -> int:
    """The data order's seed: the run's seed unless `data.seed` pins one."""
    return seed if data.seed is None else int(data.seed)


def batches(
    data,
    kind: str,
    source,
    tokenizer,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    num_labels: int | None = None,
    groups: int = 1,
):
    """Training: endless shuffled global batches (this process's rows), restorable.
    Evaluation: one ordered pass, the remainder padded with `valid=0` rows.
    `data.pack` packs encoder examples in `groups` groups (micro-batches x data shards)."""
    from morejax.data import collate, packing, pipeline

    kw = dict(data.pipeline or {})
    if kind == "lm":
        collator = collate.DecoderCollator
        if data.kind == "chat":
            from morejax.data import chat

            collator = chat.ChatCollator
    else:
        collator = collate.EncoderCollator
        kw.setdefault("num_labels", num_labels)
        if data.pack:
            collator = packing.PackedEncoderCollator
            kw.setdefault("group_size", packing.group_size(batch_size, groups))
    return pipeline.batches(
        source,
        tokenizer,
        collator,
        batch_size=batch_size,
        max_len=data.max_len,
        buckets=data.buckets,
        seed=seed,
        shuffle=train,
        epochs=None if train else 1,
        drop_remainder=train,
        num_threads=data.num_threads,
        **kw,
    )


def train_batches(
    exp: Experiment, kind: str, source, tokenizer, seeds: list, vec: bool, groups: int = 1
):
    """The training stream: one iterator, or one per member stacked on a leading axis."""
    from morejax.data.batching import StackedBatches

    def one(seed):
        return batches(
            exp.data,
            kind,
            source,
            tokenizer,
            exp.batch_size,
            train=True,
            seed=data_seed(exp.data, seed),
            num_labels=exp.model.num_labels,
            groups=groups,
        )

    return StackedBatches([one(x) for x in seeds]) if vec else one(seeds[0])


def eval_splits(data) -> tuple[str, ...]:
    split = data.eval_split
    return (split,) if isinstance(split, str) else tuple(split)


def truncation_warning(data, kind: str, source, tokenizer, split: str) -> str | None:
    """Say how many examples of a split are longer than `data.max_len` (cut silently else)."""
    if kind == "lm" or tokenizer is None:
        return None
    from morejax import vocab

    raw = vocab.unwrap(tokenizer)
    n = min(len(source), 2000)
    rows = [source[i] for i in range(n)]
    texts = [r["text_a"] if r.get("text_b") is None else (r["text_a"], r["text_b"]) for r in rows]
    lengths = [len(e.ids) for e in vocab.private_copy(raw).encode_batch(texts)]
    over = sum(x > data.max_len for x in lengths)
    if over / max(n, 1) <= 0.01:
        return None
    return (
        f"warning: {over} of {n} {data.task} {split} examples are longer than data.max_len="
        f"{data.max_len} tokens (longest {max(lengths)}) and are truncated; raise data.max_len"
    )
