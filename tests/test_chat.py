"""Chat and instruction data: the model's template rendered as transformers renders it, the
loss on assistant tokens only (as transformers' assistant mask marks them), Alpaca rows as the
reasoning sets prompt them, one-line errors, exact-match scoring, and a tiny chat run."""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from morejax import cli
from morejax.data import chat, collate, reasoning
from morejax.models import registry
from morejax.train import config

ROOT = Path(__file__).resolve().parents[1]
LM_CONFIG = str(ROOT / "configs" / "smoke_tiny_lm.py")
# ChatML with a default system prompt, ending each turn with the tokenizer's eos_token.
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.' + eos_token + '\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The same rendering, with transformers' markers around what the assistant says.
MARKED = TEMPLATE.replace(
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}",
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}",
)
CHATS = [
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
    ],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue, like the sky."},
        {"role": "user", "content": "And another one?"},
        {"role": "assistant", "content": "Green."},
    ],
]


def model_folder(tmp_path: Path, template: str | None = TEMPLATE) -> Path:
    """A tokenizer folder as Hugging Face saves one: tokenizer.json (a byte-level BPE with the
    ChatML tokens, vocab 512) and tokenizer_config.json with the chat template."""
    folder = tmp_path / "model"
    folder.mkdir(parents=True, exist_ok=True)
    words = [m["content"] for c in CHATS for m in c] + ["You are a helpful assistant."]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(words * 10, trainer)
    tok.save(str(folder / "tokenizer.json"))
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": {"__type": "AddedToken", "content": "<|endoftext|>", "special": True},
    }
    if template is not None:
        settings["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rendering_matches_transformers_apply_chat_template(tmp_path):
    from transformers import AutoTokenizer

    folder = model_folder(tmp_path)
    hf = AutoTokenizer.from_pretrained(folder)
    template = chat.load_template(chat.find_template(folder))
    assert dict(template.special)["pad_token"] == "<|endoftext|>"
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for messages in CHATS:
        for prompt in (False, True):
            text = template.render(messages, add_generation_prompt=prompt)
            want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert text == want
            ids = hf.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=prompt, return_dict=False
            )
            assert ours.encode(text, add_special_tokens=False).ids == list(ids)
    assert "You are a helpful assistant.<|im_end|>" in template.render(CHATS[1])


def test_the_loss_falls_on_assistant_tokens_only(tmp_path):
    from transformers import AutoTokenizer

    folder = model_folder(tmp_path, MARKED)
    hf = AutoTokenizer.from_pretrained(folder)
    rows = jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in CHATS])
    examples = chat.examples(rows, str(folder / "tokenizer_config.json"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    batch = chat.ChatCollator(tokenizer, max_len=256)(list(examples))
    for row, messages in enumerate(CHATS):
        want = hf.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        n = len(want["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == want["input_ids"]
        assert batch["loss_mask"][row].tolist() == want["assistant_masks"] + [0] * (
            batch["loss_mask"].shape[1] - n
        )
        learned = batch["input_ids"][row][batch["loss_mask"][row] == 1]
        said = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert tokenizer.decode(learned.tolist(), skip_special_tokens=False) == "".join(said)
    assert examples[1]["prompt"] == chat.load_template(folder / "tokenizer_config.json").render(
        CHATS[1][:3], add_generation_prompt=True
    )
    assert examples[1]["answer"] == "Green."


def test_alpaca_rows_are_prompted_like_the_reasoning_sets(tmp_path):
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "answer": "5"},
        {"instruction": "Say hello.", "output": "Hello!"},
    ]
    examples = chat.examples(jsonl(tmp_path / "a.jsonl", rows), None)
    assert examples[0]["prompt"] == reasoning.format_prompt("Add the numbers.", "2 and 3")
    assert [e["answer"] for e in examples] == ["5", "Hello!"]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    assert chat.examples(tmp_path / "a.json", None) == examples
    tokenizer = Tokenizer.from_file(str(model_folder(tmp_path) / "tokenizer.json"))
    got = chat.ChatCollator(tokenizer, max_len=128, eos_id=2)(list(examples))
    want = collate.DecoderCollator(tokenizer, max_len=128, eos_id=2)(list(examples))
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_a_run_finds_the_template_in_the_model_folder_or_says_which_set_supplies_one(tmp_path):
    folder = model_folder(tmp_path)
    rows = jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in CHATS])
    sets = ["data.kind=chat", f"data.train={rows}", f"model.tokenizer={folder / 'tokenizer.json'}"]
    exp = config.build(config.load(LM_CONFIG, sets))
    assert exp.data.chat_template == str(folder / "tokenizer_config.json")
    assert exp.data.task == "chats" and exp.data.max_len == 384  # the config's length stays
    bare = model_folder(tmp_path / "bare", template=None)
    sets[-1] = f"model.tokenizer={bare / 'tokenizer.json'}"
    with pytest.raises(ValueError) as e:
        config.build(config.load(LM_CONFIG, sets))
    assert str(e.value) == (
        f"{bare} has no chat template (tokenizer_config.json without 'chat_template', no "
        f"chat_template.jinja); supply one with {chat.SET_TEMPLATE}"
    )
    exp = config.build(config.load(LM_CONFIG, [*sets, f"data.chat_template={folder}/x.jinja"]))
    assert exp.data.chat_template.endswith("x.jinja")  # named: used as given
    alpaca = jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Hi", "output": "Hello"}])
    sets[1] = f"data.train={alpaca}"
    assert config.build(config.load(LM_CONFIG, sets)).data.chat_template is None  # not needed


def test_smollm2_s_template_comes_from_its_gguf():
    try:
        folder = registry.find_model_dir("smollm2-135m")
    except registry.NotInstalledError:
        pytest.skip("smollm2-135m is not installed")
    template = chat.load_template(chat.find_template(folder))
    assert template.path.endswith(".gguf") and dict(template.special)["eos_token"] == "<|im_end|>"
    text = template.render(CHATS[1][:1], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")


def bad_rows(tmp_path, case: str) -> tuple[Path, str]:
    if case == "no messages":
        path = jsonl(tmp_path / "x.jsonl", [{"messages": CHATS[0]}, {"text": "hi"}])
        return path, rf"^{path}, row 2: no column 'messages' \(a chat\) or 'instruction'.*: text$"
    if case == "content not a string":
        rows = [{"messages": [CHATS[0][1], {"role": "assistant", "content": None}]}]
        path = jsonl(tmp_path / "x.jsonl", rows)
        return path, (
            rf"^{path}, row 1, column 'messages\[1\]': 'content' is not a string \(None\)$"
        )
    if case == "no assistant turn":
        path = jsonl(tmp_path / "x.jsonl", [{"messages": CHATS[0][:2]}])
        return path, rf"^{path}, row 1, column 'messages': no assistant turn, nothing to learn"
    if case == "mixed rows":
        path = jsonl(tmp_path / "x.jsonl", [{"messages": CHATS[0]}, {"instruction": "a"}])
        return path, rf"^{path}, row 2 is an Alpaca record but row 1 is a chat"
    if case == "template raises":
        strict = (
            "{% if messages[0]['role'] == 'user' %}{{ raise_exception('no system') }}{% endif %}"
        )
        (model_folder(tmp_path) / "strict.jinja").write_text(strict + TEMPLATE)
        path = jsonl(tmp_path / "x.jsonl", [{"messages": CHATS[0]}, {"messages": CHATS[1]}])
        return path, rf"^{path}, row 2, column 'messages': the chat template .*strict.jinja fails"
    if case == "bad json":
        path = tmp_path / "x.jsonl"
        path.write_text(json.dumps({"messages": CHATS[0]}) + "\n{'messages': []}\n")
        return path, rf"^{path}, row 2: does not parse as JSON"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "no messages",
        "content not a string",
        "no assistant turn",
        "mixed rows",
        "template raises",
        "bad json",
    ],
)
def test_a_bad_row_is_one_line(tmp_path, case):
    path, line = bad_rows(tmp_path, case)
    template = tmp_path / "model" / "strict.jinja"
    if not template.exists():
        template = model_folder(tmp_path) / "tokenizer_config.json"
    with pytest.raises(ValueError) as e:
        chat.examples(path, str(template))
    assert "\n" not in str(e.value) and e.match(line)


def test_exact_match_and_the_answer_regex():
    examples = [
        {"prompt": "2+2?", "answer": "The answer is 4."},
        {"prompt": "3+3?", "answer": "The answer is 6."},
        {"prompt": "capital?", "answer": "Paris"},
    ]
    said = {"2+2?": " The answer is 4.\n", "3+3?": "I think the answer is 7.", "capital?": "Paris!"}

    def generate_fn(prompts):
        return [said[p] for p in prompts]

    assert chat.exact_match(generate_fn, examples, batch_size=2) == pytest.approx(1 / 3)
    assert chat.exact_match(generate_fn, examples, r"answer is (\d+)") == pytest.approx(1 / 3)
    assert chat.exact_match(generate_fn, examples, r"[A-Z]\w+") == pytest.approx(2 / 3)
    assert chat.answer("so: 12 apples", r"(\d+) apples") == "12"
    assert chat.answer("no number", r"(\d+)") is None


def test_a_chat_run_learns_on_assistant_turns_and_scores_exact_match(tmp_path):
    folder = model_folder(tmp_path)
    rows = [{"messages": CHATS[i % 2]} for i in range(40)]
    train = jsonl(tmp_path / "chats.jsonl", rows)
    workdir = tmp_path / "run"
    sets = [
        "data.kind=chat",
        f"data.train={train}",
        f"model.tokenizer={folder / 'tokenizer.json'}",
        "data.generate_sets=()",
        "data.exact_match=true",
        "data.generate_limit=4",
        "data.max_len=64",
        "data.buckets=(64,)",
        "data.validation_fraction=0.2",
    ]
    argv = ["train", LM_CONFIG, "--workdir", str(workdir), "--no-progress"]
    assert cli.main(argv + [x for s in sets for x in ("--set", s)]) == 0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses) == 8 and losses[-1] < losses[0]
    last = [r for r in rows if r["split"] == "eval"][-1]
    assert np.isfinite(last["loss"]) and last["exact_match"] * 4 == int(last["exact_match"] * 4)
    saved = json.loads((workdir / "config.json").read_text())["config"]
    assert saved["data.chat_template"] == str(folder / "tokenizer_config.json")
