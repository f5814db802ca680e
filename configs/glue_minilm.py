# python -m morejax.cli train configs/glue_minilm.py --set task=mrpc --workdir runs/glue-mrpc
"""Any of the nine GLUE tasks with the pip-packaged MiniLM-L6 and MoRe (nb=4, r=4 on
query/key/value, head trainable), sized for a 2-core CPU.

`--set task=NAME` picks the task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli); the
task decides the head (STS-B: one regression output, MNLI: 3 classes), the metric, the
validation split(s) (MNLI: matched and mismatched, both reported) and the maximum length
(sentence pairs get room: see `morejax.data.glue.DEFAULT_MAX_LEN`). Data comes from
`../shared/data/glue` when present (CoLA, SST-2, RTE); for the others pass your copy of the
official GLUE layout with `--set data.local_dir=/path/to/glue`. Steps and learning rates
below are sized to finish in ~5-25 minutes here; the paper's recipe (epochs, lr, batch) is
`configs/glue_more_roberta_large.py` with `common.glue_task_overrides`.
"""

from configs import common

# task: (steps, learning rate). Batch 32, cosine schedule, 6% warmup, length-grouped batches.
CPU_RECIPE = {
    "cola": (800, 2e-3),
    "sst2": (900, 3e-3),  # the main job's recipe
    "mrpc": (600, 2e-3),
    "qqp": (1500, 2e-3),
    "stsb": (600, 2e-3),
    "mnli": (1500, 2e-3),
    "qnli": (1000, 2e-3),
    "rte": (400, 2e-3),
    "wnli": (100, 1e-3),  # no paper recipe; 635 training pairs, dev is adversarial
}


def config(task: str = "sst2"):
    from morejax.data import glue

    name = glue.spec(task).name
    steps, lr = CPU_RECIPE[name]
    cfg = common.glue_recipe(name, model=common.minilm_l6())
    cfg.name = f"glue-{name}-more-minilm"
    cfg.data.max_len = None  # the task decides
    cfg.data.pipeline = {"group_by_length": 50}
    cfg.batch_size = 32
    cfg.epochs = None
    cfg.steps = steps
    cfg.eval_every = max(steps // 8, 1)  # the best checkpoint on dev is kept
    cfg.dropout = False
    cfg.optimizer.learning_rate = lr
    cfg.optimizer.schedule = "cosine"
    return cfg
