"""Experiment configs: --set overrides, error messages, resolved output, sweeps, `params`."""

import json
import os
from pathlib import Path

import fiddle as fdl
import pytest

import morejax
from morejax import cli
from morejax.train import config

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "configs" / "glue_more_minilm.py"
SMOKE = ROOT / "configs" / "smoke_tiny.py"


def test_overrides_reach_nested_values():
    cfg = config.load(
        MAIN,
        [
            "adapter.rank=8",
            "optimizer.learning_rate=3e-4",
            "optimizer.lr_groups['head/.*']=2.0",
            "optimizer.schedule=linear",
            "data.buckets=(16, 64)",
            "data.buckets[1]=48",
            "optimizer.no_decay[0]='.*/b'",
        ],
    )
    exp = config.build(cfg)
    assert exp.adapter == morejax.MoRe(nblocks=4, rank=8)
    assert exp.optimizer.learning_rate == 3e-4
    assert exp.optimizer.lr_groups == {"head/.*": 2.0}
    assert exp.optimizer.schedule == "linear"
    assert exp.data.buckets == (16, 48)  # items of tuples can be set; they stay tuples
    assert exp.optimizer.no_decay[0] == ".*/b" and isinstance(exp.optimizer.no_decay, tuple)
    assert exp.all_rules() == {r".*/(query|key|value)/kernel": morejax.MoRe(4, 8)}


def test_a_value_can_switch_the_method():
    cfg = config.load(MAIN, ["adapter=LoRA(rank=8, alpha=16.0)"])
    assert config.build(cfg).adapter == morejax.LoRA(rank=8, alpha=16.0)
    with pytest.raises(ValueError, match="unknown callable 'Lora'"):
        config.parse_value("Lora(rank=8)")


def test_values_are_python_literals():
    assert config.parse_value("3e-4") == 3e-4
    assert config.parse_value("(1, 2)") == (1, 2)
    assert config.parse_value("None") is None
    assert config.parse_value("'a b'") == "a b"
    assert config.parse_value("cosine") == "cosine"  # a bare word is a string
    with pytest.raises(ValueError, match="cannot parse value"):
        config.parse_value("1 +")


@pytest.mark.parametrize(
    "override, nearest",
    [
        ("adapter.rnak=8", "adapter.rank"),
        ("optimizer.learning_rat=1e-3", "optimizer.learning_rate"),
        ("optimiser.learning_rate=1e-3", "optimizer.learning_rate"),
    ],
)
def test_unknown_paths_name_the_nearest_valid_ones(override, nearest):
    cfg = config.load(MAIN)
    with pytest.raises(ValueError, match="unknown config path") as e:
        config.apply_overrides(cfg, [override])
    assert nearest in str(e.value)


def test_bad_items_and_values_are_reported():
    cfg = config.load(MAIN, ["data.buckets=(16, 32, 64)"])
    with pytest.raises(ValueError, match="index 5 out of range"):
        config.apply_overrides(cfg, ["data.buckets[5]=1"])
    with pytest.raises(ValueError, match="PATH=VALUE"):
        config.apply_overrides(cfg, ["adapter.rank"])


def test_unknown_path_through_the_command_line(capsys):
    rc = cli.main(["params", str(MAIN), "--set", "adapter.rnak=8"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown config path 'adapter.rnak'" in err and "adapter.rank" in err


def test_resolved_config_is_written_as_text_and_json(tmp_path):
    cfg = config.load(MAIN, ["adapter.rank=8"])
    config.write_resolved(cfg, tmp_path)
    text = (tmp_path / "config.txt").read_text()
    assert "adapter.rank = 8" in text
    assert "optimizer.weight_decay = 0.001" in text  # defaults and recipe values included
    flat = json.loads((tmp_path / "config.json").read_text())["config"]
    assert flat["adapter.rank"] == 8
    assert flat["adapter.__fn__"] == "morejax.methods.more.MoRe"
    assert flat["data.task"] == "sst2"


def test_sweep_points_and_names():
    points = config.sweep_points(MAIN)
    assert len(points) == 4
    assert {p["optimizer.learning_rate"] for p in points} == {2e-3, 4e-3}
    assert config.point_name(points[0]) == "learning_rate=0.002,seed=0"
    assert config.product(a=[1, 2], b=[3]) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    assert config.zipped(a=[1, 2], b=[3, 4]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(ValueError):
        config.zipped(a=[1, 2], b=[3])


def test_every_config_file_builds():
    for path in sorted((ROOT / "configs").glob("*.py")):
        if path.stem in ("__init__", "common"):
            continue
        first = path.read_text().splitlines()[0]
        assert first.startswith("# python -m morejax"), f"{path.name} lacks its command line"
        cfg = config.load(path)
        assert isinstance(cfg, fdl.Config)
        assert isinstance(config.build(cfg), config.Experiment)


def _totals(capsys, path, *sets):
    argv = ["params", str(ROOT / "configs" / path), "--totals"]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "% of the model" in out
    return {
        line.split(":")[0]: int(line.split(":")[1].split("(")[0].replace(",", ""))
        for line in out.splitlines()
    }


def test_params_reproduces_the_papers_counts_without_weights(capsys):
    llama = _totals(capsys, "commonsense_more_llama7b.py")
    assert llama["adapter params"] == 3_145_728
    assert llama["model params"] == 6_738_415_616
    roberta = _totals(capsys, "glue_more_roberta_large.py")
    assert roberta["adapter params"] == 589_824
    assert roberta["other trainable"] > 0  # the classifier head, counted apart


def test_reasoning_configs_resolve_to_llama2_7b_at_paper_scale(capsys):
    # MiLoRA's LLaMA-2-7B runs: q,k,v,up,down over 32 layers (d 4096, MLP 11008);
    # per layer r * ((4096+4096) * 3 + (4096+11008) * 2) = r * 54,784.
    commonsense = _totals(capsys, "commonsense_smollm2.py", "scale=paper")
    assert commonsense["model params"] == 6_738_415_616
    assert commonsense["adapter params"] == 32 * 32 * 54_784  # r=32
    math = _totals(capsys, "math_smollm2.py", "scale=paper")
    assert math["adapter params"] == 32 * 64 * 54_784  # r=64


def test_params_table_lists_adapted_kernels(capsys):
    assert cli.main(["params", str(MAIN)]) == 0
    out = capsys.readouterr().out
    assert "encoder/layers_0/attention/query/kernel" in out
    assert "MoRe(nblocks=4, rank=4" in out
    assert "55,296" in out  # 6 layers x q,k,v x r*nb*(p+s) = 4*4*(96+96)


def test_a_rule_matching_nothing_fails_clearly(capsys):
    rc = cli.main(["params", str(MAIN), "--set", "targets='.*/nothing/kernel'"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "matched no kernel" in err and ".*/nothing/kernel" in err


# ----------------------------------------------------------------------------- issue 8, item 1


@pytest.mark.parametrize(
    "text, want",
    [
        ("/some/abs/path", "/some/abs/path"),
        ("~/glue data", "~/glue data"),
        ("C:\\glue", "C:\\glue"),
        ("'quoted'", "quoted"),
        ("None", None),
        ("123", "123"),  # a text field keeps digits as text
    ],
)
def test_text_fields_take_values_without_quotes(text, want):
    cfg = config.load(MAIN, [f"data.local_dir={text}"])
    assert config.build(cfg).data.local_dir == want


def test_config_arguments_are_set_like_fields():
    cfg = config.load(ROOT / "configs" / "glue_minilm.py", ["task=mrpc"])
    exp = config.build(cfg)
    assert exp.data.task == "mrpc" and exp.model.num_labels == 2
    with pytest.raises(ValueError, match="config\\(\\) arguments: task"):
        config.load(ROOT / "configs" / "glue_minilm.py", ["tsak=mrpc"])


def _cli(*argv, env=None):
    import subprocess
    import sys

    env = dict(os.environ, **(env or {}))
    cmd = [sys.executable, "-c", "import sys; from morejax.cli import main; sys.exit(main())"]
    return subprocess.run(
        cmd + list(argv), capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def test_user_errors_are_one_line_without_a_traceback(tmp_path):
    # The installed `morejax` command is morejax.cli:main; run it as a fresh process.
    bad_value = _cli("params", str(MAIN), "--set", "adapter.rank=(", "--totals")
    assert bad_value.returncode == 2
    assert "Traceback" not in bad_value.stderr
    lines = bad_value.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot parse value '('")
    # Even with SST-2 prepared before (in the default TFDS folder), a folder that does not
    # exist is an error, never a silent fallback to what was prepared.
    smoke = ROOT / "configs" / "smoke_tiny.py"
    missing_data = _cli(
        "train", str(smoke), "--workdir", str(tmp_path), "--set", f"data.local_dir={tmp_path}/nope"
    )
    assert missing_data.returncode == 2 and "Traceback" not in missing_data.stderr
    assert f"{tmp_path}/nope does not exist" in missing_data.stderr.strip().splitlines()[-1]
    shown = _cli("--debug", "params", str(MAIN), "--set", "adapter.rank=(")
    assert "Traceback" in shown.stderr
    env_debug = _cli("params", str(MAIN), "--set", "adapter.rank=(", env={"MOREJAX_DEBUG": "1"})
    assert "Traceback" in env_debug.stderr


def test_configs_find_the_offline_data_beside_the_checkout(shared_data, monkeypatch):
    """Without this, GLUE configs fall back to whatever TFDS prepared earlier (or fail)."""
    monkeypatch.delenv("MOREJAX_SHARED_DATA", raising=False)
    monkeypatch.delenv("MOREJAX_GLUE_DIR", raising=False)
    monkeypatch.chdir(ROOT / "tests")  # anywhere inside the project
    assert config.shared_dir("glue") == str(ROOT.parent / "shared" / "data" / "glue")
    exp = config.build(config.load(MAIN))
    assert exp.data.local_dir == str(ROOT.parent / "shared" / "data" / "glue")


# ----------------------------------------------------------------------------- issue 29, item 1


@pytest.mark.parametrize(
    "override, want",
    [
        ("data.pack=false", False),
        ("data.pack=No", False),
        ("data.pack=TRUE", True),
        ("data.pack=1", True),
        ("steps=1e3", 1000),
        ("steps=none", None),
        ("adapter.dropout=0", 0.0),
        ("data.eval_split=validation", "validation"),
        ("data.eval_split=('a', 'b')", ("a", "b")),
        ("data.buckets=[16, 32]", (16, 32)),
    ],
)
def test_set_values_take_the_type_of_their_field(override, want):
    path = override.split("=", 1)[0]
    got = config.get_path(config.load(MAIN, [override]), path)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    "override, want",
    [
        ("steps=1.5", "int | None"),
        ("steps=ten", "int | None"),
        ("data.pack=maybe", "bool"),
        ("batch_size=None", "int"),
        ("steps=LoRA(rank=8)", "int | None"),
        ("data.buckets=(16.5,)", "tuple[int, ...] | None"),
    ],
)
def test_set_values_that_do_not_fit_fail_before_anything_loads(tmp_path, capsys, override, want):
    workdir = tmp_path / "run"
    rc = cli.main(["train", str(SMOKE), "--workdir", str(workdir), "--set", override])
    lines = capsys.readouterr().err.strip().splitlines()
    path, value = override.split("=", 1)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{path} takes {want}" in lines[0] and value in lines[0]
    assert not workdir.exists()


def test_config_arguments_are_checked_against_their_annotation():
    ablation = ROOT / "configs" / "more_ablation_cola.py"
    assert config.build(config.load(ablation, ["rank=8"])).adapter.rank == 8
    with pytest.raises(ValueError, match=r"--set rank=8.5: rank takes int, not 8.5"):
        config.load(ablation, ["rank=8.5"])


# ----------------------------------------------------------------------------- issue 29, item 4


def test_debug_goes_before_or_after_the_command_and_keeps_the_exit_code(capsys, monkeypatch):
    monkeypatch.delenv("MOREJAX_DEBUG", raising=False)
    argv = ["params", str(MAIN), "--set", "adapter.rank=(", "--totals"]
    for debug in ([], ["--debug"], "after"):
        line = argv + ["--debug"] if debug == "after" else debug + argv
        assert cli.main(line) == 2
        err = capsys.readouterr().err
        assert ("Traceback" in err) == bool(debug)
        assert err.strip().splitlines()[-1].startswith("error: cannot parse value '('")
    assert "MOREJAX_DEBUG" not in os.environ  # the switch ends with the command


def test_a_file_that_is_not_a_config_is_one_error_line(capsys):
    assert cli.main(["params", str(ROOT / "README.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "README.md is not a config file" in err[0]


# ----------------------------------------------------------------------------- issue 29, item 7


def test_offline_data_is_found_beside_the_project_the_user_runs_in(tmp_path, monkeypatch):
    for name in ("MOREJAX_SHARED_DATA", "MOREJAX_GLUE_DIR"):
        monkeypatch.delenv(name, raising=False)
    project, glue = tmp_path / "proj", tmp_path / "shared" / "data" / "glue"
    (project / "runs").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    glue.mkdir(parents=True)
    monkeypatch.chdir(project / "runs")
    assert config.shared_dir("glue") == str(glue)  # not beside the installed package
    assert config.shared_dir("llm-adapters") is None
    mine = tmp_path / "my_glue"
    mine.mkdir()
    monkeypatch.setenv("MOREJAX_GLUE_DIR", str(mine))
    assert config.shared_dir("glue") == str(mine)
    monkeypatch.setenv("MOREJAX_SHARED_DATA", str(tmp_path / "shared"))
    assert config.shared_dir("data", "glue") == str(glue)
