"""Shared pieces of the experiment configs: model families, adapters, task recipes.

Config files import these and override fields; nothing here is run directly.
"""

import dataclasses

import fiddle as fdl

import morejax
from morejax import methods
from morejax.train.config import Data, Experiment, Mesh, Model, Optimizer, shared_dir

QKV_BERT = r".*/(query|key|value)/kernel"
QKV_LLAMA = r".*/(q_proj|k_proj|v_proj)/kernel"
QKVUD_LLAMA = r".*/(q_proj|k_proj|v_proj|up_proj|down_proj)/kernel"
HEAD = (r"head/.*",)


# ----------------------------------------------------------------------------- models


def minilm_l6(num_labels: int | None = None) -> fdl.Config:
    """all-MiniLM-L6-v2 from its pip package (offline), with a fresh classification head
    (num_labels None: the task decides)."""
    return fdl.Config(
        Model, name="minilm-l6", family="bert", head="classification", num_labels=num_labels
    )


def roberta_large(num_labels: int | None = None) -> fdl.Config:
    """RoBERTa-large: shapes built in; weights from `model.checkpoint` (a local HF folder)."""
    return fdl.Config(
        Model, name="roberta-large", family="bert", head="classification", num_labels=num_labels
    )


def llama(name: str) -> fdl.Config:
    """A LLaMA-family decoder by config name; weights from `model.checkpoint`."""
    return fdl.Config(Model, name=name, family="llama", head="lm", num_labels=0, dtype="bfloat16")


# ----------------------------------------------------------------------------- adapters


def more(nblocks: int = 4, rank: int = 4, dropout: float = 0.0) -> fdl.Config:
    return fdl.Config(morejax.MoRe, nblocks=nblocks, rank=rank, dropout=dropout)


def lora(rank: int = 8, alpha: float = 8.0, dropout: float = 0.0) -> fdl.Config:
    return fdl.Config(morejax.LoRA, rank=rank, alpha=alpha, dropout=dropout)


def milora(rank: int = 32, alpha: float | None = None, dropout: float = 0.05) -> fdl.Config:
    """MiLoRA as its recipe runs it: alpha = r, input dropout 0.05 (residual in the base dtype;
    `residual_dtype='float32'` keeps it exact when the model computes in float32)."""
    return fdl.Config(morejax.MiLoRA, rank=rank, alpha=alpha, dropout=dropout)


def pissa(rank: int = 32, alpha: float | None = None, dropout: float = 0.05) -> fdl.Config:
    return fdl.Config(morejax.PiSSA, rank=rank, alpha=alpha, dropout=dropout)


def dora(rank: int = 32, alpha: float = 64.0, dropout: float = 0.05) -> fdl.Config:
    return fdl.Config(morejax.DoRA, rank=rank, alpha=alpha, dropout=dropout)


def more_minor(
    nblocks: int = 4, rank: int = 4, dropout: float = 0.0, residual_dtype: str | None = None
) -> fdl.Config:
    """MoRe initialised from each Monarch block's smallest singular components (exploratory)."""
    return fdl.Config(
        morejax.MoReMinor,
        nblocks=nblocks,
        rank=rank,
        dropout=dropout,
        residual_dtype=residual_dtype,
    )


def adapter(method: str, rank: int, **settings) -> fdl.Config:
    """`method` (a `morejax.methods.REGISTRY` name) at the budget of a rank-`rank` LoRA;
    `settings` (dropout, residual_dtype, ...) set the fields the method has."""
    cls, kwargs = methods.at_budget(method, rank, **settings)
    return fdl.Config(cls, **kwargs)


REASONING_METHODS = ("lora", "pissa", "milora", "dora", "more", "more_minor")


def reasoning_adapter(
    method: str, rank: int, dropout: float = 0.05, residual_dtype: str | None = None
) -> fdl.Config:
    """One of REASONING_METHODS at the budget of a rank-`rank` LoRA (`adapter`).

    `residual_dtype` keeps SVD residuals float32 under a bf16 base."""
    if method not in REASONING_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(REASONING_METHODS)}")
    return adapter(method, rank, dropout=dropout, residual_dtype=residual_dtype)


# ----------------------------------------------------------------------------- tasks


def glue_data(task: str, **kw) -> fdl.Config:
    """GLUE from ../shared/data/glue when present (offline), else through TFDS."""
    return fdl.Config(Data, kind="glue", task=task, local_dir=shared_dir("glue"), **kw)


@dataclasses.dataclass(frozen=True)
class GlueRecipe:
    """The MoRe paper's GLUE hyperparameters (docs: methods.md, "MoRe GLUE recipe")."""

    lr: float
    batch_size: int
    epochs: int
    schedule: str  # 'cosine' | 'linear'
    max_length: int = 128
    weight_decay: float = 0.001
    warmup_ratio: float = 0.06


GLUE_RECIPES = {
    "cola": GlueRecipe(2.1e-4, 16, 20, "cosine"),
    "sst2": GlueRecipe(5.4e-4, 16, 10, "cosine"),
    "mrpc": GlueRecipe(3.2e-4, 32, 20, "cosine"),
    "qqp": GlueRecipe(6.2e-4, 32, 20, "cosine"),
    "stsb": GlueRecipe(4e-4, 32, 20, "cosine"),
    "mnli": GlueRecipe(2e-4, 32, 10, "linear"),
    "qnli": GlueRecipe(3e-4, 32, 10, "cosine"),
    "rte": GlueRecipe(5.4e-4, 16, 20, "cosine"),
}
# WNLI has no paper recipe: RTE-like settings (another small entailment set).
NO_RECIPE = GlueRecipe(lr=5.4e-4, batch_size=16, epochs=20, schedule="cosine")


def glue_recipe(task: str, model: fdl.Config | None = None) -> fdl.Config:
    """The MoRe paper's GLUE recipe: nb4 r4 on q,k,v, head trains, AdamW wd 0.001,
    warmup 0.06, max len 128, fp32, per-task lr/batch/epochs/schedule, best on validation."""
    from morejax.data import glue

    spec = glue.spec(task)
    r = GLUE_RECIPES.get(spec.name, NO_RECIPE)
    return fdl.Config(
        Experiment,
        name=f"glue-{spec.name}-more",
        model=model or roberta_large(),
        adapter=more(4, 4),
        targets=QKV_BERT,
        trainable=HEAD,
        data=glue_data(spec.name, max_len=r.max_length),
        optimizer=fdl.Config(
            Optimizer,
            learning_rate=r.lr,
            schedule=r.schedule,
            warmup_ratio=r.warmup_ratio,
            weight_decay=r.weight_decay,
        ),
        mesh=fdl.Config(Mesh),
        batch_size=r.batch_size,
        epochs=r.epochs,
        eval_every=0,
    )


def glue_task_overrides(task: str) -> dict:
    """What changes when a GLUE recipe config switches task (for sweeps over tasks)."""
    from morejax.data import glue

    spec = glue.spec(task)
    r = GLUE_RECIPES.get(spec.name, NO_RECIPE)
    return {
        "data.task": spec.name,
        "optimizer.learning_rate": r.lr,
        "optimizer.schedule": r.schedule,
        "batch_size": r.batch_size,
        "epochs": r.epochs,
    }


def reasoning_recipe(
    model: fdl.Config,
    adapter: fdl.Config,
    targets: str,
    task: str,
    *,
    lr: float,
    weight_decay: float = 0.0,
) -> fdl.Config:
    """LLM-Adapters style fine-tuning: batch 16, 3 epochs, cutoff 256, linear schedule,
    100 warmup steps, frozen base in bf16 sharded over a 'model' axis.

    Trains on the task's 'train' split (the file minus a held-out slice), reports loss on
    that slice ('validation') and scores the papers' test sets by greedy generation
    (`reasoning.mixture_test_sets`: 32 new tokens for commonsense answers, 256 for worked
    arithmetic, like LLM-Adapters' evaluation scripts). With eval_every=0 that happens
    once, at the end; with periodic evaluation the validation loss picks the best
    checkpoint (test accuracy is reported, never used to choose)."""
    from morejax.data import reasoning

    sets = reasoning.mixture_test_sets(task)
    return fdl.Config(
        Experiment,
        name=f"{task}-{fdl.get_callable(adapter).__name__.lower()}",
        model=model,
        adapter=adapter,
        targets=targets,
        data=fdl.Config(
            Data,
            kind="reasoning",
            task=task,
            local_dir=shared_dir("llm-adapters"),
            train_split="train",
            eval_split="validation",
            generate_sets=sets,
            generate_tokens=32 if set(sets) <= set(reasoning.COMMONSENSE_SETS) else 256,
            max_len=256,
            eval_batch_size=16,
        ),
        optimizer=fdl.Config(
            Optimizer,
            learning_rate=lr,
            schedule="linear",
            warmup_steps=100,
            weight_decay=weight_decay,
        ),
        mesh=fdl.Config(Mesh, data=-1, model=1),
        batch_size=16,
        epochs=3,
        dropout=True,
        base_dtype="bfloat16",
    )


def smollm2_f32() -> fdl.Config:
    """SmolLM2-135M from its pip GGUF, dequantised to float32 at load: every run starts from
    the same tensors (deterministic dequantisation; the drivers record their checksum)."""
    return fdl.Config(
        Model, name="smollm2-135m", family="llama", head="lm", num_labels=0, dtype="float32"
    )


# Each method's learning rate in the small-scale MiLoRA tables (the driver also tries 3x it).
MILORA_TABLES_LR = {
    "lora": 1e-3,
    "pissa": 3e-4,
    "milora": 1e-3,
    "dora": 1e-3,
    "more": 1e-3,
    "more_minor": 1e-3,
}


def milora_tables(
    task: str,
    method: str,
    scale: str,
    *,
    rank: int,
    paper_rank: int,
    paper_task: str,
    steps: int,
    max_len: int,
    buckets: tuple[int, ...],
    generate_limit: int,
    generate_tokens: int,
) -> fdl.Config:
    """The MiLoRA tables' recipe on q,k,v,up,down: `scale='paper'` is MiLoRA's LLaMA-2-7B run
    unchanged (paper_rank, paper_task, 3 epochs, lr 3e-4, bf16 base; weights from
    model.checkpoint); `scale='small'` shrinks it for SmolLM2-135M on a 2-core CPU: float32
    throughout, `rank`, `steps` of batch 16 grouped by length, MILORA_TABLES_LR[method]
    decaying linearly after 5% warmup, dropout 0.05, no weight decay, validation loss on 96
    held-out records (interleaved over the mixture's sets), `generate_limit` test records per
    set answered by greedy decoding (at most `generate_tokens` new tokens, stopping at EOS)."""
    if scale not in ("small", "paper"):
        raise ValueError(f"scale must be 'small' or 'paper', got {scale!r}")
    if scale == "paper":
        cfg = reasoning_recipe(
            llama("llama-2-7b"),
            reasoning_adapter(method, paper_rank),
            QKVUD_LLAMA,
            paper_task,
            lr=3e-4,
            weight_decay=0.0,
        )
        cfg.name = f"{paper_task}-{method}-llama2-7b"
        return cfg
    cfg = reasoning_recipe(
        smollm2_f32(),
        reasoning_adapter(method, rank),
        QKVUD_LLAMA,
        task,
        lr=MILORA_TABLES_LR.get(method, 1e-3),
        weight_decay=0.0,
    )
    cfg.name = f"{task.split('+')[0] if '+' in task else task}-{method}-smollm2".replace("/", "_")
    cfg.base_dtype = "float32"
    cfg.epochs = None
    cfg.steps = steps
    cfg.optimizer.warmup_steps = None
    cfg.optimizer.warmup_ratio = 0.05
    cfg.data.max_len = max_len
    cfg.data.buckets = buckets
    cfg.data.eval_limit = 96
    cfg.data.generate_limit = generate_limit
    cfg.data.generate_tokens = generate_tokens
    cfg.data.num_threads = 0
    cfg.data.pipeline = {"group_by_length": 20}  # batches of similar length: less padding
    # Two learning rates x batch 16 do not fit a 24 GB machine's memory in one pass (nor in
    # two past 192 tokens): micro-batches bound the activations with the same gradient sums
    # (dropout masks of the later micro-batches are drawn differently).
    cfg.micro_batches = 4 if max_len > 192 else 2
    cfg.log_every = 10
    return cfg
