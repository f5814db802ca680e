# python -m morejax.cli train configs/text_minilm.py --set data.train=PATH --set data.validation=PATH --set data.text=COL[,COL2] --set data.label=COL  # noqa: E501
"""Your own labelled sentences (or sentence pairs) with the pip-packaged MiniLM-L6 and MoRe
(nb=4, r=4 on query/key/value, head trainable), sized for a 2-core CPU.

The training file decides the head: its labels become sorted classes, or scores
(regression) when they are numbers not all whole or `data.task_type=regression`; the
class list is written to the run's config.json and its checkpoints. Without
`data.validation` a 10% slice of the training file is held out (`data.validation_fraction`);
`data.test` is scored beside validation but never picks the best checkpoint
(`data.metric` does, on validation). Short texts are packed several to a row of 128 tokens.
"""

import fiddle as fdl

from configs import common
from morejax.train.config import Data, Experiment, Mesh, Optimizer


def config():
    return fdl.Config(
        Experiment,
        name="text-more-minilm",
        model=common.minilm_l6(),
        adapter=common.more(4, 4),
        targets=common.QKV_BERT,
        trainable=common.HEAD,
        data=fdl.Config(Data, kind="text", pack=True),
        optimizer=fdl.Config(
            Optimizer, learning_rate=2e-3, schedule="cosine", warmup_ratio=0.06, weight_decay=0.001
        ),
        mesh=fdl.Config(Mesh),
        batch_size=32,
        epochs=3,
        eval_every=100,
        dropout=False,
    )
