"""`morejax generate`: greedy or sampled decoding with a pretrained causal LM."""

from __future__ import annotations

import argparse
import sys


def load_model(name: str, *, scan_layers: bool = True, dtype=None, param_dtype=None):
    """(model, params, tokenizer) for a short name, a ``.gguf`` file, or a HF LLaMA dir.

    Short names go through ``morejax.models.registry.load_pretrained``.
    """
    from pathlib import Path

    path = Path(name)
    if path.suffix == ".gguf" and path.is_file():
        from morejax.models.gguf import load_gguf
        from morejax.models.llama import LlamaForCausalLM

        config, params, tokenizer = load_gguf(
            path, scan_layers=scan_layers, dtype=dtype, param_dtype=param_dtype
        )
        return LlamaForCausalLM(config), params, tokenizer
    if path.is_dir() and _is_llama_dir(path):
        from tokenizers import Tokenizer

        from morejax.models.llama import LlamaForCausalLM, load_hf_checkpoint

        overrides = {"scan_layers": scan_layers}
        if dtype is not None:
            overrides["dtype"] = dtype
        if param_dtype is not None:
            overrides["param_dtype"] = param_dtype
        config, params = load_hf_checkpoint(path, **overrides)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{path} has no tokenizer.json")
        tokenizer = Tokenizer.from_file(str(tok_file))
        tokenizer.eos_token_id = config.eos_token_id
        tokenizer.chat_template = None
        return LlamaForCausalLM(config), params, tokenizer

    from morejax.models.llama import LlamaConfig
    from morejax.models.registry import load_pretrained

    p = load_pretrained(name, scan_layers=scan_layers, dtype=dtype, param_dtype=param_dtype)
    if not isinstance(p.config, LlamaConfig):
        raise ValueError(
            f"{name} is an encoder ({type(p.config).__name__}), not a causal LM: generate with "
            "smollm2-135m, a .gguf file or a Hugging Face LLaMA folder"
        )
    return p.model, p.params, p.tokenizer


def _is_llama_dir(path) -> bool:
    import json

    from morejax.models.llama import FAMILIES

    cfg = path / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") in FAMILIES


def _run_generate(args) -> int:
    from morejax.models.generate import generate_text

    if args.max_new_tokens < 1:
        print("error: --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    model, params, tokenizer = load_model(
        args.model, scan_layers=not args.no_scan, dtype=args.dtype, param_dtype=args.param_dtype
    )
    prompts = args.prompt
    outs = generate_text(
        (model, params, tokenizer),
        prompts,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        chat=args.chat,
        system=args.system,
    )
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        if len(prompts) > 1:
            print(f"--- [{i}]")
        print(out if args.chat else prompt + out)
    return 0


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate text with a pretrained causal LM",
        description="Greedy (temperature 0) or sampled decoding with a KV cache.",
    )
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="short name (smollm2-135m), a .gguf file, or a Hugging Face LLaMA dir",
    )
    p.add_argument(
        "--prompt", action="append", required=True, help="prompt text (repeat for a batch)"
    )
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k filter")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass; 1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--dtype", default=None, help="compute dtype (float32, bfloat16)")
    p.add_argument("--param-dtype", default=None, help="stored parameter dtype")
    p.add_argument("--no-scan", action="store_true", help="unscanned layers (slower to compile)")
    p.set_defaults(func=_run_generate)
    return p
