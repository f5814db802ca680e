"""Every command in a fenced block of README.md and docs/ is accounted for: run here as
written, shrunk by appended `--set`s and with its folders moved under a temporary one, or run
by the named test (on a smaller config, or with data the test writes). A command added to or
changed in the docs fails `test_every_documented_command_is_mirrored` until it is listed here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from morejax import cli

ROOT = Path(__file__).resolve().parents[1]
RUN = "run here"
# A command -> RUN, or the test that runs it, or why it cannot run on this machine.
MIRROR = {
    "morejax train configs/glue_more_minilm.py --set optimizer.learning_rate=5e-4 "
    "--workdir runs/sst2": RUN,
    "morejax eval --workdir runs/sst2": RUN,
    "morejax params configs/commonsense_more_llama7b.py": RUN,
    "morejax plan configs/commonsense_more_llama7b.py --topology v5e-8 --mesh data=1,model=8": (
        "tests/test_plan.py::test_a_config_that_does_not_fit_says_so_and_names_a_setting_that_does"
    ),  # a 7B compile takes minutes; results/tpu_plan.md has its output
    "morejax train configs/glue_more_minilm.py --set mesh.sharding=fsdp --workdir runs/fsdp": RUN,
    "morejax sweep CONFIG --collect": (
        "tests/test_sweep_shards.py::test_shards_cover_every_point_once_and_collect_equals_one_run"
    ),
    "morejax sweep configs/glue_more_minilm.py [--vectorize]": (
        "tests/test_sweep.py::test_vectorised_sweep_equals_separate_runs"
    ),
    "morejax sweep configs/glue_more_minilm.py --shard 2/8": (
        "tests/test_sweep_shards.py::test_shards_cover_every_point_once_and_collect_equals_one_run"
    ),
    "morejax sweep configs/glue_more_minilm.py --collect": (
        "tests/test_sweep_shards.py::test_shards_cover_every_point_once_and_collect_equals_one_run"
    ),
    "morejax generate --model smollm2-135m --prompt 'The capital of France is'": RUN,
    "morejax train configs/glue_minilm.py --set task=rte": RUN,
    "morejax train configs/glue_minilm.py --set task=mnli --set data.local_dir=/path/to/glue": (
        "tests/test_glue_tasks.py::test_one_config_trains_and_scores_every_task"
    ),
    "morejax train configs/text_minilm.py --set data.train=train.csv --set "
    "data.validation=dev.csv --set data.text=sentence --set data.label=label "
    "[--set data.test=test.csv]": "tests/test_files.py::test_minilm_learns_a_real_looking_csv",
    "morejax train configs/commonsense_smollm2.py --set data.kind=chat --set "
    "data.train=chats.jsonl --set 'data.generate_sets=()' [--set data.exact_match=true --set "
    "'data.answer_regex=is (\\d+)']": (
        "tests/test_chat.py::test_a_chat_run_learns_on_assistant_turns_and_scores_exact_match"
    ),
    "morejax train configs/glue_minilm.py --set 'adapter=LoRA(rank=8, alpha=16)' "
    "--workdir runs/x": RUN,
    "morejax export --workdir runs/x --format peft --out out/peft": RUN,
    "morejax export --workdir runs/x --format merged --out out/hf": RUN,
    "morejax export --workdir runs/sst2 --format more --out out/more": RUN,
    "morejax import configs/glue_minilm.py out/peft --set 'adapter=LoRA(rank=8, alpha=16)' "
    "--workdir runs/imported": RUN,
    "morejax eval --workdir runs/imported": RUN,
}
# What each run here appends: a few steps on a few examples, one evaluation.
SHRINK = {
    "train": ["--set", "steps=3", "--set", "data.train_limit=96", "--set", "data.eval_limit=64",
              "--set", "eval_every=3", "--no-progress"],
    "generate": ["--max-new-tokens", "3"],
}  # fmt: skip


def documented_commands() -> list[str]:
    """`morejax ...` / `python ...` lines of the fenced blocks, continuations joined, comments
    dropped, normalised by shlex (quoting styles compare equal)."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.split(r"\s+#", line)[0].strip()
                if line.startswith(("morejax ", "python ")):
                    out.append(normalise(line))
    return out


def normalise(command: str) -> str:
    words = shlex.split(command.replace("[", " [ ").replace("]", " ] "))
    return shlex.join(words).replace(" '[' ", " [").replace(" ']'", "]")


def test_every_documented_command_is_mirrored():
    docs = set(documented_commands())
    mirrored = {normalise(c) for c in MIRROR}
    assert docs - mirrored == set(), "documented but not mirrored in this file"
    assert mirrored - docs == set(), "mirrored here but no longer documented"


@pytest.mark.parametrize("command", sorted(c for c, how in MIRROR.items() if how != RUN))
def test_the_tests_named_for_commands_exist(command):
    path, name = MIRROR[command].split("::")
    assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), MIRROR[command]


def test_the_documented_commands_run_in_order(shared_data, tmp_path, monkeypatch, capsys):
    """The README's commands as written, in its order (a run, then its eval and exports), each
    shrunk to a few steps; `runs/` and `out/` live under a temporary folder."""
    monkeypatch.setenv("MOREJAX_COMPILE_CACHE", str(tmp_path / "xla"))  # one model, few shapes
    monkeypatch.chdir(ROOT)
    for command, how in MIRROR.items():
        if how != RUN:
            continue
        argv = shlex.split(command)[1:]
        argv = [re.sub(r"^(runs|out)/", f"{tmp_path}/\\1/", a) for a in argv]
        argv += SHRINK.get(argv[0], [])
        assert cli.main(argv) == 0, command
        printed = capsys.readouterr().out
        if argv[0] == "generate":
            assert "Paris" in printed
    for folder in ("out/peft", "out/hf", "out/more", "runs/imported"):
        assert any((tmp_path / folder).iterdir()), folder
