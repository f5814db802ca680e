"""Model FLOPs utilisation of a morejax training step on a LLaMA-style decoder with random
weights: bf16 base, adapters trained in float32, one compiled step of the framework's own
`make_member_step` (forward, LM loss, gradients w.r.t. the adapters, AdamW).

    python benchmarks/llama_mfu.py                        # ~1.1B params, 2048 tokens (GPU)
    python benchmarks/llama_mfu.py --size tiny --batch 2 --length 64 --repeats 2 --no-record
    bash benchmarks/gpu_mfu.sh                            # the GPU runs, several settings

MFU = model FLOPs per step / step time / the device's peak. Model FLOPs of adapter training:
forward 2N per token plus the backward pass through activations 2N (frozen weights get no
weight gradient; N leaves out the input embedding table, a lookup, not a matmul), attention
4·L·d per token per layer forward and 8 backward (causal: half of that counted, as usual);
the adapters' own (small) FLOPs from XLA's count are not added. The peak is the datasheet's
dense bf16 rate for known GPUs; on CPU it is the float32 GEMM rate measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import morejax  # noqa: E402
from benchmarks import write_section  # noqa: E402
from morejax.models import llama  # noqa: E402
from morejax.train import config, optim  # noqa: E402
from morejax.train import step as steps  # noqa: E402

SIZES = {
    # ~1.1B: TinyLlama-1.1B's shapes (22 layers, d 2048, GQA 32/4, MLP 5632, vocab 32000).
    "1b": dict(hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4,
               intermediate_size=5632, vocab_size=32000),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 intermediate_size=128, vocab_size=512),
}  # fmt: skip
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}  # dense TFLOP/s
ALL_LINEAR = r".*/(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)/kernel"


def peak_flops() -> tuple[float, str]:
    dev = jax.devices()[0]
    for name, peak in PEAK_BF16.items():
        if name in dev.device_kind:
            return peak, f"{dev.device_kind} datasheet dense bf16"
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(f(a, a))
        times.append(time.perf_counter() - t)
    return 2 * 2048**3 / statistics.median(times), f"{dev.device_kind} measured f32 GEMM"


def model_flops(cfg: llama.LlamaConfig, n_params: int, tokens: int, length: int) -> float:
    """Adapter training: forward (2N) + backward through activations (2N), plus attention."""
    if not cfg.tie_embeddings:  # a tied table is the LM head's matmul too: counted once
        n_params -= cfg.vocab_size * cfg.hidden_size
    attn = cfg.num_layers * cfg.num_heads * cfg.head_dim * length * 2 * 2  # QK^T and PV
    return tokens * (4 * n_params + 1.5 * attn)  # fwd 1x + bwd 2x, causal halves it


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="1b")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--method", choices=["lora", "more"], default="lora")
    p.add_argument("--remat", default="none", help="a key of llama.REMAT_POLICIES")
    p.add_argument(
        "--attention",
        choices=llama.ATTENTION,
        help="default: cudnn on a GPU (einsum's scores do not fit at 2048), else einsum",
    )
    p.add_argument("--no-scan", action="store_true", help="unroll the layers (longer compile)")
    p.add_argument("--profile", help="also trace 3 steps into this folder (Perfetto JSON)")
    p.add_argument("--section", default="LLaMA MFU", help="results/benchmarks.md section")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    if args.attention is None:
        args.attention = "cudnn" if jax.default_backend() == "gpu" else "einsum"
    cfg = llama.LlamaConfig(
        **SIZES[args.size], max_seq_len=args.length, dtype="bfloat16", param_dtype="bfloat16",
        scan_layers=not args.no_scan, remat=args.remat, attention=args.attention,
    )  # fmt: skip
    model = llama.LlamaForCausalLM(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(shapes))))
    params = jax.tree.map(
        lambda s: (0.02 * jax.random.normal(next(keys), s.shape, jnp.float32)).astype(s.dtype),
        shapes,
    )
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    method = morejax.LoRA(16, 32.0) if args.method == "lora" else morejax.MoRe(4, 8)
    layout = morejax.kernel_layout(model, jnp.ones((1, 8), jnp.int32))
    base, adapters = morejax.adapt(params, {ALL_LINEAR: method}, jax.random.key(1), layout=layout)

    def forward(adapters, base, batch, rng):
        return morejax.call(model.apply, base, adapters, batch["input_ids"])[0]

    opt = config.Optimizer(learning_rate=1e-4)
    tx = optim.make_optimizer(opt, 1000, adapters)
    member = steps.make_member_step(forward, "lm", tx, optim.schedule_shape(opt, 1000), False)

    def train_step(adapters, opt_state, base, batch):
        return member(adapters, opt_state, jnp.int32(0), jax.random.key(0), base, batch)[:2]

    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, (1, args.batch, args.length)).astype(np.int32)
    batch = {"input_ids": ids, "loss_mask": np.ones_like(ids), "valid": np.ones((1, args.batch))}
    state = [adapters, tx.init(adapters)]
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(*state, base, batch).compile()

    def one():
        state[0], state[1] = compiled(*state, base, batch)
        return state[0]

    jax.block_until_ready(one())
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        jax.block_until_ready(one())
        times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    if args.profile:
        with jax.profiler.trace(args.profile, create_perfetto_trace=True):
            for _ in range(3):
                jax.block_until_ready(one())
    tokens = args.batch * args.length
    flops = model_flops(cfg, n_params, tokens, args.length)
    peak, peak_from = peak_flops()
    text = (
        f"LLaMA-style {args.size} ({n_params / 1e9:.2f}B params, random, bf16 base), "
        f"{type(method).__name__} on all linear layers, batch {args.batch} x {args.length}, "
        f"{'unrolled' if args.no_scan else 'scanned'} layers, remat {args.remat}, "
        f"attention {args.attention}, jax {jax.__version__}: "
        f"{seconds:.3f} s/step, {tokens / seconds:.0f} tokens/s, "
        f"{flops / seconds / 1e12:.2f} model TFLOP/s; peak {peak / 1e12:.1f} TFLOP/s "
        f"({peak_from}); MFU {flops / seconds / peak:.1%}"
    )
    print(text)
    if not args.no_record:
        print(f"wrote {write_section(args.section, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
