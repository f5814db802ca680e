# python -m morejax.cli train configs/math_smollm2.py --set method=milora --workdir runs/math
# every method, lr picked on validation: python experiments/reasoning_tables.py --table math
# paper scale (MiLoRA's LLaMA-2-7B run, r=64, math_10k.json beside the sets):
#   python -m morejax.cli train configs/math_smollm2.py --set scale=paper \
#     --set model.checkpoint=/path/to/llama-2-7b --set mesh.model=8 --workdir runs/math7b
"""MiLoRA's arithmetic table at small scale: SmolLM2-135M (float32, dequantised from its
GGUF) on GSM8K's training split (../shared/data/gsm8k/train.jsonl: 7,473 worked problems less
200 held out, none of them a problem of the scored sets), scored on
gsm8k, AQuA, AddSub, MultiArith, SingleEq, SVAMP and mawps by greedy generation and
numeric / option answer extraction. `method` in lora|pissa|milora|dora|more|more_minor on
q,k,v,up,down at the budget of a rank-8 LoRA (1,658,880 params, 1.23% of 134.5M; the paper's
r=64 is 1.67% of LLaMA-2-7B, twice its commonsense budget, as here).
CPU sizing (2.5 h per table on 2 cores, from `experiments/reasoning_tables.py --measure`):
14 steps of batch 16 (224 examples, 3% of an epoch), sequences up to 288 tokens (5% of GSM8K's
prompt + solution are longer and are cut), 24 test records per set, at most 160 new tokens
(decoding stops at EOS). `LR` is each method's default; the driver trains it and 3x it
as one vectorised program and keeps the lower validation loss. `scale=paper` runs the
paper's recipe unchanged."""

from configs import common

TASK = "gsm8k_train"
LR = common.MILORA_TABLES_LR


def config(method: str = "milora", scale: str = "small"):
    return common.milora_tables(
        TASK,
        method,
        scale,
        rank=8,
        paper_rank=64,
        paper_task="math_10k",
        steps=14,
        max_len=288,
        buckets=(96, 128, 160, 192, 224, 288),
        generate_limit=24,
        generate_tokens=160,
    )
