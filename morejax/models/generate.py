"""Batched greedy / sampled decoding with a KV cache, compiled once under ``jax.jit``.

Generation only sees a callable and an opaque params pytree, so the same loop
runs a plain Linen model, a merged one, or one with adapters in factored form
(``morejax.call``). Params are a jit *argument*, never closed over: closed-over
weights become compile-time constants that XLA folds (slow, and recompiled
for every new set of weights).

The loop is a ``lax.while_loop`` over at most ``max_new_tokens`` steps that stops
early once every row has produced a stop token. Prompts of different lengths
are left-padded so that all rows write the same cache slot at each step.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from morejax.vocab import appended_eos_id

__all__ = [
    "GenerateOutput",
    "left_pad",
    "sample_logits",
    "generate",
    "llama_callables",
    "format_chat",
    "generate_text",
]

# apply_fn(params, input_ids_BxL, attention_mask_BxL, positions_BxL, cache) -> (logits_BxLxV, cache)
ApplyFn = Callable[..., tuple[jax.Array, Any]]
# init_cache(batch_size, max_len) -> cache pytree
InitCacheFn = Callable[[int, int], Any]


class GenerateOutput(NamedTuple):
    tokens_BxT: jax.Array  # generated ids; pad_id after a row's stop token
    lengths_B: jax.Array  # generated tokens per row, the stop token included
    stopped_B: jax.Array  # whether the row produced a stop token
    steps: jax.Array  # model calls made (prefill included): < T when all rows stopped early


def left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int = 0, *, multiple_of: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(ids_BxP, mask_BxP) int32 with prompts right-aligned; P rounded up to ``multiple_of``.

    Rounding the length up bounds the number of distinct compiled shapes.
    """
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(s) for s in seqs)
    P = -(-longest // multiple_of) * multiple_of
    ids_BxP = np.full((len(seqs), P), pad_id, np.int32)
    mask_BxP = np.zeros((len(seqs), P), np.int32)
    for b, s in enumerate(seqs):
        ids_BxP[b, P - len(s) :] = np.asarray(s, np.int32)
        mask_BxP[b, P - len(s) :] = 1
    return ids_BxP, mask_BxP


def sample_logits(logits_BxV, rng, *, temperature=0.0, top_k=0, top_p=1.0, greedy=None):
    """Next token ids (B,): argmax when greedy, else temperature / top-k / nucleus sampling.

    ``temperature``, ``top_k`` and ``top_p`` may be traced values, so one compiled
    loop serves every sampling setting; ``greedy`` (default: ``temperature == 0``
    for Python numbers) must be static. ``top_k=0`` and ``top_p=1`` disable
    the filters; the top token always survives them.
    """
    if greedy is None:
        greedy = not isinstance(temperature, jax.Array) and temperature == 0
    if greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    V = logits_BxV.shape[-1]
    logits_BxV = logits_BxV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)  # descending
    # top-k: everything below the k-th largest logit goes.
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    kth_Bx1 = jax.lax.dynamic_slice_in_dim(sorted_BxV, k - 1, 1, axis=-1)
    sorted_BxV = jnp.where(sorted_BxV < kth_Bx1, -jnp.inf, sorted_BxV)
    # top-p: keep the shortest prefix whose mass reaches top_p.
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept_BxV = jnp.where((before_BxV < top_p) | (top_p >= 1.0), sorted_BxV, jnp.inf)
    cutoff_Bx1 = jnp.maximum(jnp.min(kept_BxV, axis=-1, keepdims=True), kth_Bx1)
    logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("apply_fn", "init_cache", "max_new_tokens", "greedy"))
def _generate(
    params,
    prompt_ids_BxP,
    prompt_mask_BxP,
    rng,
    stops_N,
    pad_id,
    temperature,
    top_k,
    top_p,
    *,
    apply_fn,
    init_cache,
    max_new_tokens,
    greedy,
):
    B, P = prompt_ids_BxP.shape
    T = max_new_tokens
    sample = functools.partial(
        sample_logits, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy
    )
    is_stop = lambda tok_B: jnp.any(tok_B[:, None] == stops_N[None, :], axis=-1)

    # Prefill: the whole prompt in one call; pads get position 0 and stay masked.
    mask_BxP = prompt_mask_BxP.astype(jnp.bool_)
    positions_BxP = jnp.where(mask_BxP, jnp.cumsum(mask_BxP, axis=-1) - 1, 0).astype(jnp.int32)
    cache = init_cache(B, P + T)
    logits_BxPxV, cache = apply_fn(params, prompt_ids_BxP, mask_BxP, positions_BxP, cache)
    tok_B = sample(logits_BxPxV[:, -1], jax.random.fold_in(rng, 0))
    out_BxT = jnp.full((B, T), pad_id, jnp.int32).at[:, 0].set(tok_B)
    done_B = is_stop(tok_B)
    lengths_B = jnp.ones((B,), jnp.int32)
    pos_B = jnp.sum(mask_BxP, axis=-1, dtype=jnp.int32)

    def cond(state):
        t, _, done_B, *_ = state
        return (t < T) & ~jnp.all(done_B)

    def body(state):
        t, tok_B, done_B, lengths_B, out_BxT, cache, pos_B = state
        ones_Bx1 = jnp.ones((B, 1), jnp.bool_)
        logits_Bx1xV, cache = apply_fn(params, tok_B[:, None], ones_Bx1, pos_B[:, None], cache)
        tok_B = sample(logits_Bx1xV[:, -1], jax.random.fold_in(rng, t))
        tok_B = jnp.where(done_B, pad_id, tok_B)
        out_BxT = jax.lax.dynamic_update_slice(out_BxT, tok_B[:, None], (0, t))
        lengths_B = lengths_B + (~done_B).astype(jnp.int32)
        done_B = done_B | is_stop(tok_B)
        return t + 1, tok_B, done_B, lengths_B, out_BxT, cache, pos_B + 1

    state = (jnp.int32(1), tok_B, done_B, lengths_B, out_BxT, cache, pos_B)
    steps, _, done_B, lengths_B, out_BxT, _, _ = jax.lax.while_loop(cond, body, state)
    return GenerateOutput(out_BxT, lengths_B, done_B, steps)


def generate(
    apply_fn: ApplyFn,
    params,
    prompt_ids_BxP,
    prompt_mask_BxP=None,
    *,
    init_cache: InitCacheFn,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng=None,
) -> GenerateOutput:
    """Decodes ``max_new_tokens`` (or until every row stops) after left-padded prompts.

    ``apply_fn(params, ids_BxL, mask_BxL, positions_BxL, cache) -> (logits_BxLxV,
    cache)`` and ``init_cache(B, S)`` are static: pass the same callables each
    time to reuse the compiled loop (``llama_callables`` memoises them per model).
    Besides shapes, only ``max_new_tokens`` and greedy-vs-sampling recompile;
    stop ids, pad id and sampling settings are traced. The cache is sized for
    prompt plus new tokens. ``rng`` (a key) matters only when ``temperature > 0``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"bad sampling settings: {temperature=}, {top_k=}, {top_p=}")
    prompt_ids_BxP = jnp.asarray(prompt_ids_BxP, jnp.int32)
    if prompt_mask_BxP is None:
        prompt_mask_BxP = jnp.ones_like(prompt_ids_BxP)
    if rng is None:
        rng = jax.random.key(0)
    # Stop ids padded to a multiple of 4 with -1 (never a token): few distinct shapes.
    stops = [int(s) for s in stop_ids]
    stops += [-1] * (max(4, -(-len(stops) // 4) * 4) - len(stops))
    return _generate(
        params,
        prompt_ids_BxP,
        jnp.asarray(prompt_mask_BxP, jnp.int32),
        rng,
        jnp.asarray(stops, jnp.int32),
        jnp.int32(pad_id),
        jnp.float32(temperature),
        jnp.int32(top_k),
        jnp.float32(top_p),
        apply_fn=apply_fn,
        init_cache=init_cache,
        max_new_tokens=int(max_new_tokens),
        greedy=temperature == 0,
    )


@functools.lru_cache(maxsize=32)
def llama_callables(model) -> tuple[ApplyFn, InitCacheFn]:
    """(apply_fn, init_cache) for a Linen ``LlamaForCausalLM`` (memoised: stable jit keys).

    ``apply_fn`` takes the bare ``params`` collection. For adapters, wrap
    ``morejax.call(model.apply, base, adapters, ...)`` in your own apply_fn.
    """
    from morejax.models.llama import init_cache as _init_cache

    def apply_fn(params, ids_BxL, mask_BxL, positions_BxL, cache):
        return model.apply({"params": params}, ids_BxL, mask_BxL, positions_BxL, cache)

    def init_cache(batch_size, max_len):
        return _init_cache(model.config, batch_size, max_len)

    return apply_fn, init_cache


# ----------------------------------------------------------------------------- text level

_CHATML_SYSTEM_RE = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.S)


def format_chat(
    messages: Sequence[dict], chat_template: str | None, *, add_generation_prompt=True
) -> str:
    """Renders chat messages with the model's template.

    jinja2 renders any template when installed; without it, ChatML templates
    (``<|im_start|>``, e.g. SmolLM2) are rendered here, including the default
    system prompt the template inserts when the messages have none.
    """
    if chat_template is None:
        raise ValueError("this tokenizer has no chat template")
    try:
        import jinja2
    except ImportError:
        jinja2 = None
    if jinja2 is not None:
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt
        )
    if "<|im_start|>" not in chat_template:
        raise ValueError("rendering this chat template needs jinja2 (pip install jinja2)")
    parts = []
    default = _CHATML_SYSTEM_RE.search(chat_template)
    if default and (not messages or messages[0]["role"] != "system"):
        parts.append(f"<|im_start|>system\n{default.group(1)}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def _unpack(pretrained):
    """(model, params, tokenizer) from a registry ``Pretrained`` or a 3-tuple."""
    if all(hasattr(pretrained, a) for a in ("model", "params", "tokenizer")):
        return pretrained.model, pretrained.params, pretrained.tokenizer
    model, params, tokenizer = pretrained
    from morejax.models.llama import LlamaConfig, LlamaForCausalLM

    if isinstance(model, LlamaConfig):  # (config, params, tokenizer) as load_smollm2 returns
        model = LlamaForCausalLM(model)
    return model, params, tokenizer


def default_stop_ids(tokenizer, config=None) -> tuple[int, ...]:
    """The tokenizer's (else the config's) EOS and the EOS our LM training appends:
    a model tuned here ends its answers with the latter, so stopping only at the
    former lets it run on past the answer."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    try:
        appended = appended_eos_id(tokenizer)
    except TypeError:  # not a tokenizers.Tokenizer: only its own EOS is known
        appended = None
    if appended is not None:
        ids.add(appended)
    return tuple(sorted(int(i) for i in ids))


def generate_text(
    pretrained,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_ids: Sequence[int] | None = None,
    chat: bool = False,
    system: str | None = None,
    apply_fn: ApplyFn | None = None,
    params=None,
    pad_to_multiple: int = 8,
    add_special_tokens: bool = True,
) -> list[str]:
    """Continuations (prompt excluded, stop token dropped) for a batch of prompts.

    ``pretrained`` is a registry ``Pretrained``, ``(model, params, tokenizer)`` or
    ``(config, params, tokenizer)``. Pass ``apply_fn``/``params`` to generate with
    an adapted model (e.g. ``morejax.call`` over ``(base, adapters)``); the model's
    own cache layout is still used. ``chat`` wraps each prompt as a user turn in
    the tokenizer's chat template. Stops at the tokenizer's EOS unless
    ``stop_ids`` says otherwise. ``add_special_tokens=False`` encodes prompts that already
    carry their special tokens (rendered by a chat template) as they are.
    """
    model, base_params, tokenizer = _unpack(pretrained)
    default_apply, init_cache = llama_callables(model)
    apply_fn = apply_fn or default_apply
    params = base_params if params is None else params
    if stop_ids is None:
        stop_ids = default_stop_ids(tokenizer, model.config)
    if chat:
        template = getattr(tokenizer, "chat_template", None)
        texts = []
        for p in prompts:
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": p}
            ]
            texts.append(format_chat(msgs, template))
    else:
        texts = list(prompts)
    seqs = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)]
    pad_id = 0
    ids_BxP, mask_BxP = left_pad(seqs, pad_id, multiple_of=pad_to_multiple)
    out = generate(
        apply_fn,
        params,
        ids_BxP,
        mask_BxP,
        init_cache=init_cache,
        max_new_tokens=max_new_tokens,
        stop_ids=stop_ids,
        pad_id=pad_id,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        rng=jax.random.key(seed),
    )
    tokens_BxT, lengths_B, stopped_B = (np.asarray(a) for a in out[:3])
    texts = []
    for row, n, stopped in zip(tokens_BxT, lengths_B, stopped_B):
        ids = row[: n - 1] if stopped else row[:n]
        texts.append(tokenizer.decode(ids.tolist(), skip_special_tokens=True))
    return texts


# ----------------------------------------------------------------------------- adapted models


@functools.lru_cache(maxsize=32)
def adapted_apply_fn(model, merged: bool = False) -> ApplyFn:
    """An apply_fn over ``{'base', 'adapters'}`` params (memoised: one jit per model)."""
    import morejax

    def apply_fn(params, ids_BxL, mask_BxL, positions_BxL, cache):
        return morejax.call(
            model.apply,
            params["base"],
            params["adapters"],
            ids_BxL,
            mask_BxL,
            positions_BxL,
            cache,
            merged=merged,
        )

    return apply_fn


def text_generator(
    pretrained, base=None, adapters=None, *, max_new_tokens=32, merged=False, **kwargs
) -> Callable[[list[str]], list[str]]:
    """``prompts -> continuations`` by greedy decoding, for ``reasoning.evaluate``.

    With ``adapters`` the model runs adapted (factored unless ``merged``); ``base``
    defaults to the pretrained params.
    """
    model, params, _ = _unpack(pretrained)
    extra = {}
    if adapters is not None:
        base = params if base is None else base
        extra = dict(
            apply_fn=adapted_apply_fn(model, merged), params={"base": base, "adapters": adapters}
        )

    def generate_fn(prompts):
        return generate_text(pretrained, prompts, max_new_tokens, **extra, **kwargs)

    return generate_fn
