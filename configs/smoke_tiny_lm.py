# python -m morejax.cli train configs/smoke_tiny_lm.py --set model.tokenizer=TOKENIZER_JSON
"""A seconds-long decoder run: a one-layer random LLaMA on 64 ARC-Easy training records,
loss on the responses, evaluated by loss on 16 held-out training records ('validation')
and by greedy generation on 4 ARC-Easy test records (accuracy per set).
Tests use it with a small BPE tokenizer they train (vocab 1024)."""

from configs import common


def config():
    cfg = common.reasoning_recipe(
        common.llama("smollm2-135m"),
        common.more(nblocks=4, rank=4),
        "all-linear",  # a one-layer random model learns little through q,k,v alone
        "ARC-Easy",
        lr=1e-2,
    )
    cfg.name = "smoke-tiny-lm"
    cfg.model.pretrained = False
    cfg.model.dtype = "float32"
    cfg.model.overrides = dict(
        num_layers=1,
        hidden_size=32,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        intermediate_size=64,
        vocab_size=1024,
    )
    cfg.base_dtype = "float32"
    cfg.mesh.model = 1
    cfg.data.max_len = 384
    cfg.data.buckets = (128, 256, 384)
    cfg.data.train_limit = 64
    cfg.data.eval_limit = 16
    cfg.data.generate_sets = ("ARC-Easy",)
    cfg.data.generate_limit = 4
    cfg.data.generate_tokens = 4
    cfg.data.num_threads = 0
    cfg.batch_size = 8
    cfg.epochs = None
    cfg.steps = 8
    cfg.eval_every = 8
    cfg.log_every = 1
    cfg.optimizer.warmup_steps = 1
    return cfg
