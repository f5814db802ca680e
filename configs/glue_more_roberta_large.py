# python -m morejax.cli params configs/glue_more_roberta_large.py
# python -m morejax.cli train configs/glue_more_roberta_large.py \
#     --set model.checkpoint=/path/to/roberta-large --workdir runs/glue_more_roberta_large
"""The MoRe paper's GLUE setting: RoBERTa-large, MoRe nb4 r4 on q,k,v (589,824 adapter
params; the classifier head trains too and is counted separately). The task's recipe
(lr, batch, epochs, schedule) comes from `common.GLUE_RECIPES`; `sweep()` covers the 8 tasks."""

from configs import common


def config():
    return common.glue_recipe("sst2", model=common.roberta_large())


def sweep():
    tasks = ["cola", "sst2", "mrpc", "stsb", "qnli", "qqp", "rte", "mnli"]
    return [common.glue_task_overrides(t) for t in tasks]
