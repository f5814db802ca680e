# python -m morejax.cli train configs/smoke_tiny.py --workdir runs/smoke_tiny
"""A seconds-long smoke run of the main job's pipeline: the MiniLM tokenizer and config
shrunk to one tiny random-init layer, 256 SST-2 training and 64 dev examples. Tests use it."""

from configs import glue_more_minilm
from morejax.train.config import zipped


def config():
    cfg = glue_more_minilm.config()
    cfg.name = "smoke-tiny"
    cfg.model.pretrained = False
    cfg.model.tokenizer = "minilm-l6"
    cfg.model.overrides = dict(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    cfg.data.max_len = 32
    cfg.data.buckets = (16, 32)
    cfg.data.train_limit = 256
    cfg.data.eval_limit = 64
    cfg.data.eval_batch_size = 32
    cfg.data.num_threads = 0
    cfg.batch_size = 16
    cfg.steps = 8
    cfg.eval_every = 4
    cfg.log_every = 1
    cfg.optimizer.learning_rate = 3e-3
    return cfg


def sweep():
    """Two points that differ in seed and learning rate (the vectorised sweep covers both)."""
    return zipped(**{"optimizer.learning_rate": [1e-3, 3e-3], "seed": [0, 1]})
