# python -m morejax.cli params configs/commonsense_more_llama7b.py
# python -m morejax.cli train configs/commonsense_more_llama7b.py \
#     --set model.checkpoint=/path/to/llama-7b --set mesh.model=8 \
#     --workdir runs/commonsense_more_llama7b
"""MoRe paper Table 1: LLaMA-7B on commonsense_170k, MoRe nb4 r4 on q,k,v (3,145,728
params, 0.047%), adapter output dropout 0.1, LLM-Adapters recipe (batch 16, 3 epochs,
cutoff 256). The frozen base is bf16 and can be sharded over a 'model' mesh axis.
Trains on commonsense_170k less a 200-record held-out slice (validation loss) and scores,
like the table, accuracy on the 8 sets' test.json by greedy generation (data.generate_sets:
the sets go beside the mixture in data.local_dir)."""

from configs import common


def config():
    cfg = common.reasoning_recipe(
        common.llama("llama-7b"),
        common.more(nblocks=4, rank=4, dropout=0.1),
        common.QKV_LLAMA,
        "commonsense_170k",
        lr=3e-4,
    )
    cfg.name = "commonsense-more-llama7b"
    return cfg


def sweep():
    return [{"adapter.rank": r} for r in (4, 8)]
