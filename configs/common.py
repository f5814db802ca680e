"""Shared pieces of the experiment configs: model families, adapters, task recipes.

Config files import these and override fields; nothing here is run directly.
"""

import fiddle as fdl

import morejax
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


# ----------------------------------------------------------------------------- tasks


def glue_data(task: str, **kw) -> fdl.Config:
    """GLUE from ../shared/data/glue when present (offline), else through TFDS."""
    return fdl.Config(Data, kind="glue", task=task, local_dir=shared_dir("glue"), **kw)


def _no_recipe():
    from morejax.data import glue

    # WNLI has no paper recipe: RTE-like settings (another small entailment set).
    return glue.Recipe(lr=5.4e-4, batch_size=16, epochs=20, schedule="cosine")


NO_RECIPE = _no_recipe()


def glue_recipe(task: str, model: fdl.Config | None = None) -> fdl.Config:
    """The MoRe paper's GLUE recipe: nb4 r4 on q,k,v, head trains, AdamW wd 0.001,
    warmup 0.06, max len 128, fp32, per-task lr/batch/epochs/schedule, best on validation."""
    from morejax.data import glue

    spec = glue.spec(task)
    r = spec.recipe or NO_RECIPE
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
    r = spec.recipe or NO_RECIPE
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
