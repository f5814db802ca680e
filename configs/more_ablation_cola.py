# python -m morejax.cli sweep configs/more_ablation_cola.py --vectorize
"""The MoRe paper's CoLA ablations at CPU scale (`experiments/more_ablation.py` runs them and
writes `results/more_ablation.md`): MoRe against LoRA on CoLA with MiniLM-L6, q,k,v targets,
head trained, the table's CoLA sizing (`configs/glue_table_minilm.py`: 300 steps of batch 32,
length 64), 3 seeds per setting in one vectorised program.

Series (MiniLM-L6: 18 matrices 384x384; counts from `morejax params`):
- blocks: nb = 2, 4, 8, 16 at block rank r = 4 (55,296 params each: the count does not
  depend on nb);
- rank: nb = 4, nb*r = 4, 8, 16, 32, 64 (r = 1..16; 13,824 .. 221,184 params);
- block size b: square b x b blocks of full rank, nb = hidden / b, r = b, b = 1, 4, 16, 32, 64
  (2 * hidden * b per matrix: 13,824 .. 884,736 params); the paper's series at RoBERTa-large
  gives 0.14 .. 9 M, the same formula with hidden 1024;
- LoRA r = 4, 8, 16 (alpha = 2r; 55,296 .. 221,184 params).

One learning rate per method, the middle of the table's grid (MoRe 3e-3, LoRA 1.5e-3): the
paper's ablation also holds the recipe fixed. Paper scale: `--set hidden=1024 --set
recipe=paper --set model.name=roberta-large --set model.checkpoint=/path`.
"""

from configs import common, glue_table_minilm

SEEDS = (0, 1, 2)
LR = {"more": 3e-3, "lora": 1.5e-3}


def settings(hidden: int = 384) -> list[dict]:
    """Each series' points as config() arguments; a setting shared by two series runs once."""
    out = {}

    def add(series, method, nblocks, rank):
        key = (method, nblocks, rank)
        out.setdefault(key, {"method": method, "nblocks": nblocks, "rank": rank, "series": []})
        out[key]["series"].append(series)

    for nb in (2, 4, 8, 16):
        add("blocks", "more", nb, 4)
    for total in (4, 8, 16, 32, 64):
        add("rank", "more", 4, total // 4)
    for b in (1, 4, 16, 32, 64):
        add("block size", "more", hidden // b, b)
    for r in (4, 8, 16):
        add("lora", "lora", 0, r)
    return list(out.values())


def config(method: str = "more", nblocks: int = 4, rank: int = 4, recipe: str = "cpu"):
    cfg = glue_table_minilm.config("cola", method, recipe)
    if method not in LR:
        raise ValueError(f"method must be 'more' or 'lora', got {method!r}")
    cfg.adapter = common.adapter(method, rank, nblocks=nblocks)
    blocks = f"-nb{nblocks}" if method == "more" else ""
    cfg.name = f"more-ablation-cola-{method}{blocks}-r{rank}"
    cfg.optimizer.learning_rate = LR[method]
    return cfg


def sweep():
    """Every setting x seed (`--vectorize` runs a setting's seeds as one program)."""
    return [
        {"method": s["method"], "nblocks": s["nblocks"], "rank": s["rank"], "seed": seed}
        for s in settings()
        for seed in SEEDS
    ]
