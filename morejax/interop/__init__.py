"""Hugging Face interop: adapters to and from PEFT's on-disk layout, merged and MoRe exports.

Researchers train here and serve elsewhere. One module per job:

- `hf`: the `transformers` class of a morejax model and its tensor names (each model
  family's one rename table, read both ways), and what every format writes alike.
- `peft`: `export_peft` / `import_peft`: LoRA, DoRA, PiSSA and MiLoRA in PEFT's layout.
- `merged`: `export_merged`: K + ΔK of any method as a Hugging Face model folder.
- `more_format`: `export_more` / `import_more`: MoRe's own adapter file and its JSON.
- `importing`: adapters assembled from a folder's tensors and checked against the model;
  `pretrained_leaves` from a checkpoint.
"""

from morejax.interop.hf import HFModel, flatten_adapters, hf_model, plain_params, warn_quantized
from morejax.interop.importing import pretrained_leaves
from morejax.interop.merged import TOKENIZER_FILES, export_merged
from morejax.interop.more_format import MORE_CONFIG, MORE_WEIGHTS, export_more, import_more
from morejax.interop.peft import (
    PEFT_CONFIG,
    PEFT_PREFIX,
    PEFT_WEIGHTS,
    RESIDUAL_DIR,
    SVD_MODES,
    export_peft,
    import_peft,
    initial_adapters,
)

__all__ = [
    "HFModel",
    "hf_model",
    "export_peft",
    "export_merged",
    "export_more",
    "import_peft",
    "import_more",
    "initial_adapters",
    "flatten_adapters",
    "plain_params",
    "pretrained_leaves",
    "warn_quantized",
    "PEFT_CONFIG",
    "PEFT_WEIGHTS",
    "PEFT_PREFIX",
    "RESIDUAL_DIR",
    "SVD_MODES",
    "MORE_CONFIG",
    "MORE_WEIGHTS",
    "TOKENIZER_FILES",
]
