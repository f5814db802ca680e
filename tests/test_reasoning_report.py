"""The reasoning tables' computed sentences: numbers from unrounded scores, never from cells."""

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.reasoning_report import averages_note  # noqa: E402


def test_averages_are_ordered_and_the_gap_comes_from_unrounded_scores():
    # Rounded cells would say 7.7 - 3.6 = 4.1; the unrounded gap is 4.17.
    rows = {"untuned": 10 / 168, "DoRA": 13 / 168, "MiLoRA": 6 / 168, "LoRA": 11 / 168}
    text = averages_note(rows, 168, "the 7 sets")
    assert "highest first: DoRA 7.7, LoRA 6.5, MiLoRA 3.6 (untuned 6.0)" in text
    assert "DoRA - MiLoRA = 4.17 (7.74 - 3.57)" in text
    p = sum(rows.values()) / 4
    one = 196 * math.sqrt(p * (1 - p) / 168)
    assert f"±{one:.1f} points" in text and f"±{one * math.sqrt(2):.1f} (95%)" in text


def test_averages_before_any_method_finished_say_so():
    assert "none finished yet" in averages_note({"untuned": 0.1}, 64)
