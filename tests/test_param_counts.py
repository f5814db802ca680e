"""The papers' parameter columns, reproduced from model shapes alone (no weights)."""

import pytest

from experiments.param_counts import SETTINGS, count

EXACT = [s for s in SETTINGS if s[3][0].isdigit() and "," in s[3] and "M" not in s[3]]


@pytest.mark.parametrize("setting,model,rules,published", EXACT, ids=[s[0] for s in EXACT])
def test_more_counts_match_the_papers(setting, model, rules, published):
    n, _ = count(model, rules)
    assert f"{n:,}" == published


def test_milora_llama2_r64_share():
    setting = next(s for s in SETTINGS if "r=64" in s[0])
    n, total = count(setting[1], setting[2])
    assert round(n / 1e6, 1) == 112.2 and round(100 * n / total, 2) == 1.67


def test_scanned_layout_counts_the_same_through_the_params_command(capsys):
    from morejax import cli

    rc = cli.main(
        [
            "params",
            "configs/commonsense_more_llama7b.py",
            "--set",
            "model.scan_layers=True",
            "--totals",
        ]
    )
    assert rc == 0
    assert "3,145,728" in capsys.readouterr().out
