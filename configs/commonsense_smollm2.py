# python -m morejax.cli train configs/commonsense_smollm2.py --set method=milora --workdir runs/cs
# every method, lr picked on validation: python experiments/reasoning_tables.py --table commonsense
# paper scale (MiLoRA's LLaMA-2-7B run, r=32, commonsense_170k.json beside the sets):
#   python -m morejax.cli train configs/commonsense_smollm2.py --set scale=paper \
#     --set model.checkpoint=/path/to/llama-2-7b --set mesh.model=8 --workdir runs/cs7b
"""MiLoRA's commonsense table at small scale: SmolLM2-135M (float32, dequantised from its
GGUF) on the mixture of the four commonsense train sets in ../shared/data/llm-adapters
(boolq, ARC-Easy, ARC-Challenge, openbookqa: 17,187 records less 567 held out), LLM-Adapters
prompts, `method` in lora|pissa|milora|dora|more|more_minor on q,k,v,up,down at the budget of
a rank-4 LoRA (829,440 params, 0.62% of 134.5M; the paper's r=32 is 0.83% of LLaMA-2-7B).
CPU sizing (2.5 h per table on 2 cores, from `experiments/reasoning_tables.py --measure`):
34 steps of batch 16 (544 examples, 3% of an epoch), sequences up to 192 tokens (a few long
ARC records are cut), 64 test records per set answered by greedy decoding (32 new tokens at
most, stopping at EOS). `LR` is each method's default; the driver trains it and 3x it as
one vectorised program and keeps the lower validation loss. `scale=paper` runs the paper's
recipe unchanged."""

from configs import common

TASK = "boolq+ARC-Easy+ARC-Challenge+openbookqa"
LR = common.MILORA_TABLES_LR


def config(method: str = "milora", scale: str = "small"):
    return common.milora_tables(
        TASK,
        method,
        scale,
        rank=4,
        paper_rank=32,
        paper_task="commonsense_170k",
        steps=34,
        max_len=192,
        buckets=(64, 96, 128, 160, 192),
        generate_limit=64,
        generate_tokens=32,
    )
