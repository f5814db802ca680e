"""Instruction and chat data for decoders: the model's own chat template, loss on the
assistant turns only, and answers scored by exact match.

Rows are JSON lines (or a JSON list) of either `{"messages": [{"role", "content"}, ...]}`,
rendered with the chat template that the model folder's tokenizer_config.json (or
chat_template.jinja, or GGUF metadata) holds, as transformers' `apply_chat_template` renders
it; or Alpaca records `{"instruction", "input", "output"}`, prompted like the reasoning sets
(`reasoning.format_prompt`). An assistant turn's text is located by rendering the
conversation turn by turn: what the turn adds after the generation prompt, up to its
end-of-turn marker, carries the loss. Rows count records from 1; every error is one line
naming the file, the row and the field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from morejax.data import files, reasoning
from morejax.data.collate import DecoderCollator

__all__ = [
    "ChatCollator",
    "Template",
    "answer",
    "exact_match",
    "find_template",
    "load",
    "load_template",
    "row_format",
]

TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json")
_KINDS = {"messages": "a chat", "alpaca": "an Alpaca record"}
SET_TEMPLATE = "--set data.chat_template=PATH (a .jinja file, or a tokenizer_config.json with one)"


# ----------------------------------------------------------------------------- templates


@dataclasses.dataclass(frozen=True)
class Template:
    """A chat template's source, where it came from, and the special tokens it may name
    (`bos_token`, `eos_token`, ...), which transformers passes to every rendering."""

    source: str
    path: str
    special: tuple[tuple[str, str], ...] = ()

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        return _compiled(self.source).render(
            messages=list(messages),
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **dict(self.special),
        )


def _special_tokens(config: dict) -> tuple[tuple[str, str], ...]:
    """`*_token` entries of a tokenizer_config.json: text, or `{"content": text}`."""
    out = []
    for key, value in config.items():
        if key.endswith("_token") and isinstance(value, dict):
            value = value.get("content")
        if key.endswith("_token") and isinstance(value, str):
            out.append((key, value))
    return tuple(out)


def _from_config(path: Path) -> tuple[str | None, tuple]:
    config = json.loads(path.read_text(encoding="utf-8"))
    source = config.get("chat_template")
    if isinstance(source, list):  # named templates: the default one
        source = next((t["template"] for t in source if t.get("name") == "default"), None)
    return source, _special_tokens(config)


def _from_gguf(path: Path) -> tuple[str | None, tuple]:
    import gguf

    fields = gguf.GGUFReader(path).fields

    def value(name):
        return fields[name].contents() if name in fields else None

    tokens = value("tokenizer.ggml.tokens") or []
    special = []
    for name in ("bos", "eos", "unk", "pad"):
        i = value(f"tokenizer.ggml.{name}_token_id")
        if i is not None and 0 <= i < len(tokens):
            special.append((f"{name}_token", tokens[i]))
    return value("tokenizer.chat_template"), tuple(special)


def load_template(path: str | os.PathLike) -> Template:
    """The template in a tokenizer_config.json, a GGUF file's metadata, or a template file
    (whose folder's tokenizer_config.json, if any, gives the special tokens)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.chat_template: {path} does not exist")
    if path.suffix == ".json":
        source, special = _from_config(path)
    elif path.suffix == ".gguf":
        source, special = _from_gguf(path)
    else:
        source = path.read_text(encoding="utf-8")
        config = path.parent / "tokenizer_config.json"
        special = _from_config(config)[1] if config.is_file() else ()
    if not source:
        raise ValueError(f"{path} holds no chat template; supply one with {SET_TEMPLATE}")
    return Template(source, os.fspath(path), special)


def find_template(folder: str | os.PathLike) -> Path | None:
    """The file holding a model folder's chat template, or None when it has none."""
    folder = Path(folder)
    if (folder / TEMPLATE_FILES[0]).is_file():
        return folder / TEMPLATE_FILES[0]
    config = folder / TEMPLATE_FILES[1]
    if config.is_file() and _from_config(config)[0]:
        return config
    return next((p for p in sorted(folder.glob("*.gguf")) if _from_gguf(p)[0]), None)


@functools.cache
def _compiled(source: str):
    """The template compiled as transformers compiles it (sandboxed, trimmed blocks, its
    `tojson`, `raise_exception` and `strftime_now`, `{% generation %}` blocks)."""
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' assistant markers): the
        body renders as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


# ----------------------------------------------------------------------------- rows


def _records(path: Path):
    """(row, record) pairs of a JSON list or of JSON lines (gzip too)."""
    name = path.name.lower().removesuffix(".gz")
    if not name.endswith((".json", ".jsonl")):
        raise ValueError(f"{path}: chat and instruction data are .json or .jsonl files")
    try:
        with files.open_text(path) as f:
            if name.endswith(".json"):
                data = json.load(f)
                if not isinstance(data, list):
                    raise ValueError(f"{path}: a JSON list of records is expected")
                yield from enumerate(data, 1)
                return
            for row, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield row, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{path}, row {row}: does not parse as JSON ({e.msg}, at character "
                        f"{e.colno})"
                    ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: does not parse as JSON ({e.msg}, line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: does not parse ({e})") from None


def _format_of(record, path: Path, row: int) -> str:
    if isinstance(record, dict) and "messages" in record:
        return "messages"
    if isinstance(record, dict) and "instruction" in record:
        return "alpaca"
    has = ", ".join(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(
        f"{path}, row {row}: no column 'messages' (a chat) or 'instruction' (an Alpaca record); "
        f"the row has: {has}"
    )


def row_format(path: str | os.PathLike) -> str:
    """'messages' or 'alpaca', by the file's first record."""
    path = Path(path)
    for row, record in _records(path):
        return _format_of(record, path, row)
    raise ValueError(f"{path}: the file is empty")


def _messages(record: dict, path: Path, row: int) -> list[dict]:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{path}, row {row}, column 'messages': a non-empty list is expected")
    for i, m in enumerate(messages):
        where = f"{path}, row {row}, column 'messages[{i}]'"
        if not isinstance(m, dict) or not {"role", "content"} <= set(m):
            raise ValueError(f"{where}: a message is {{'role': ..., 'content': ...}}, not {m!r}")
        for key in ("role", "content"):
            if not isinstance(m[key], str):
                raise ValueError(f"{where}: {key!r} is not a string ({m[key]!r})")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(
            f"{path}, row {row}, column 'messages': no assistant turn, nothing to learn from"
        )
    return messages


def _render(template: Template, messages, path: Path, row: int, prompt: bool = False) -> str:
    try:
        return template.render(messages, add_generation_prompt=prompt)
    except Exception as e:  # noqa: BLE001 - the template's own errors (jinja2, raise_exception)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}, row {row}, column 'messages': the chat template {template.path} fails on "
            f"it ({reason})"
        ) from None


def _chat_example(template: Template, messages: list[dict], path: Path, row: int) -> dict:
    """The rendered conversation, the assistant turns' character spans, and the last turn as a
    generation prompt and its answer."""
    text = _render(template, messages, path, row)
    spans, prompt = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(template, messages[:i], path, row, prompt=True)
        turn = _render(template, messages[: i + 1], path, row)
        if not (turn.startswith(prompt) and text.startswith(turn)):
            raise ValueError(
                f"{path}, row {row}, column 'messages[{i}]': the chat template does not render "
                "this conversation turn by turn (a shorter conversation is not a prefix of it), "
                "so the assistant's tokens cannot be found"
            )
        spans.append((len(prompt), max(len(prompt), len(turn.rstrip()))))
    answer = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
    return {"text": text, "spans": spans, "prompt": prompt, "answer": answer}


def _alpaca_example(record: dict, path: Path, row: int) -> dict:
    for key in ("instruction", "input", "output"):
        value = record.get(key, "")
        if not isinstance(value, str):
            raise ValueError(f"{path}, row {row}, column {key!r}: not a string ({value!r})")
    if "output" not in record:
        has = ", ".join(record)
        raise ValueError(f"{path}, row {row}: no column 'output' (the row has: {has})")
    prompt = reasoning.format_prompt(record["instruction"], record.get("input", ""), "alpaca")
    gold = record.get("answer")
    return {
        "prompt": prompt,
        "response": record["output"],
        "answer": record["output"] if gold is None else str(gold),
    }


@functools.lru_cache(maxsize=8)
def _examples(path: str, stamp: tuple, template_path: str | None) -> tuple[dict, ...]:
    path_ = Path(path)
    template = load_template(template_path) if template_path else None
    out, first = [], None
    for row, record in _records(path_):
        kind = _format_of(record, path_, row)
        if first is None:
            first = (kind, row)
        elif kind != first[0]:
            raise ValueError(
                f"{path}, row {row} is {_KINDS[kind]} but row {first[1]} is {_KINDS[first[0]]} "
                "(one kind of row per file)"
            )
        if kind == "alpaca":
            out.append(_alpaca_example(record, path_, row))
        elif template is None:
            raise ValueError(f"{path}: chats need a chat template; supply one with {SET_TEMPLATE}")
        else:
            out.append(_chat_example(template, _messages(record, path_, row), path_, row))
    if not out:
        raise ValueError(f"{path}: the file has no rows")
    return tuple(out)


def examples(path: str | os.PathLike, template: str | None) -> tuple[dict, ...]:
    """Every row of a file as a pipeline example: chats `{'text', 'spans', 'prompt',
    'answer'}`, Alpaca records `{'prompt', 'response', 'answer'}` (read again on change)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    st = path.stat()
    return _examples(os.fspath(path.resolve()), (st.st_size, st.st_mtime_ns), template)


def load(data, split: str) -> list[dict]:
    """A split: the validation file, or a `data.validation_fraction` slice of the training file
    held out with a fixed seed (`files.held_out`), or the test file."""
    if not data.train:
        raise ValueError("data.kind='chat' needs data.train=PATH (a .jsonl or .json file)")
    if split == "test" or (split == "validation" and data.validation):
        path = data.test if split == "test" else data.validation
        if not path:
            raise ValueError("split 'test' needs a test file: set data.test=PATH")
        return list(examples(path, data.chat_template))
    if split not in ("train", "validation"):
        raise ValueError(f"unknown split {split!r} of your files; use train, validation or test")
    rows = examples(data.train, data.chat_template)
    if data.validation:
        return list(rows)
    held = files.held_out(len(rows), data.validation_fraction, data.train)
    keep = held if split == "validation" else ~held
    return [rows[i] for i in np.flatnonzero(keep)]


# ----------------------------------------------------------------------------- batches


class ChatCollator(DecoderCollator):
    """Decoder batches whose loss falls on the assistant turns only.

    A rendered chat is tokenised without added special tokens (its template writes them, as
    transformers does) and a token carries the loss when it overlaps an assistant span, as
    transformers' `return_assistant_tokens_mask` marks it. Alpaca examples are tokenised as
    the reasoning sets are (`DecoderCollator`: loss on the response and an appended EOS).
    """

    @staticmethod
    def text_length(example: dict) -> int:
        if "text" in example:
            return len(example["text"])
        return len(example["prompt"]) + len(example["response"])

    def _rows(self, examples: Sequence[dict]) -> tuple[list[list[int]], list[list[int]]]:
        if "spans" not in examples[0]:
            return super()._rows(examples)
        texts = [e["text"] for e in examples]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        ids_rows, mask_rows = [], []
        for e, enc in zip(examples, encodings):
            spans = e["spans"]
            mask = [int(any(s < b and t > a for a, b in spans)) for s, t in enc.offsets]
            ids_rows.append(list(enc.ids[: self.max_len]))
            mask_rows.append(mask[: self.max_len])
        return ids_rows, mask_rows


# ----------------------------------------------------------------------------- scoring


def answer(text: str, regex: str | None) -> str | None:
    """The answer in a text: all of it (stripped), or the regex's first group (else its whole
    match); None when the regex does not match."""
    if regex is None:
        return text.strip()
    m = re.search(regex, text)
    if m is None:
        return None
    return (m.group(1) if m.re.groups else m.group(0)).strip()


def exact_match(
    generate_fn: Callable[[list[str]], list[str]],
    examples: Sequence[dict],
    regex: str | None = None,
    batch_size: int = 32,
) -> float:
    """The fraction of examples whose generated answer equals theirs (`answer` of both; a
    gold answer the regex does not match counts whole)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["prompt"]))
    outputs: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, text in zip(chunk, generate_fn([examples[i]["prompt"] for i in chunk])):
            outputs[i] = text
    hits = 0
    for i, e in enumerate(examples):
        gold = answer(e["answer"], regex)
        said = answer(outputs[i], regex)
        hits += said is not None and said == (e["answer"].strip() if gold is None else gold)
    return hits / len(examples)
