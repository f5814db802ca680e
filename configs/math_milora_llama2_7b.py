# python -m morejax.cli params configs/math_milora_llama2_7b.py
# python -m morejax.cli train configs/math_milora_llama2_7b.py \
#     --set model.checkpoint=/path/to/llama-2-7b --set mesh.model=8 \
#     --workdir runs/math_milora_llama2_7b
"""MiLoRA's math recipe: LLaMA-2-7B on math_10k, r=64 (alpha = r, as the official code)
on q,k,v,up,down (112.2M params, 1.67%), lr 3e-4 linear with 100 warmup steps, batch 16,
3 epochs, dropout 0.05, no weight decay (decay would delete the minor components).
Trains on math_10k less a 200-record held-out slice (validation loss) and scores, like
MiLoRA's table, accuracy on gsm8k, AQuA, AddSub, MultiArith, SingleEq, SVAMP and mawps
test.json by greedy generation (data.generate_sets, 256 new tokens)."""

from configs import common


def config():
    cfg = common.reasoning_recipe(
        common.llama("llama-2-7b"),
        common.milora(rank=64),
        common.QKVUD_LLAMA,
        "math_10k",
        lr=3e-4,
        weight_decay=0.0,
    )
    cfg.name = "math-milora-llama2-7b"
    return cfg
