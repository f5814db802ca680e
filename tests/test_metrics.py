"""Metrics against values worked out by hand (scipy only as a cross-check)."""

import math

import numpy as np
import pytest
from scipy import stats

from morejax.data import metrics as M

# A binary case used throughout: TP=2 (0, 4), FP=2 (1, 2), FN=1 (5), TN=1 (3).
Y = [1, 0, 0, 0, 1, 1]
P = [1, 1, 1, 0, 1, 0]


def test_accuracy():
    assert M.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert M.accuracy(P, Y) == 0.5


def test_mcc_binary_by_hand():
    # TP=2 TN=2 FP=1 FN=1: (4 - 1) / sqrt(3 * 3 * 3 * 3) = 1/3
    assert M.matthews_corrcoef([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]) == pytest.approx(1 / 3)
    # TP=2 TN=1 FP=2 FN=1: (2 - 2) / ... = 0
    assert M.matthews_corrcoef(P, Y) == pytest.approx(0.0)
    assert M.matthews_corrcoef([0, 1, 1], [0, 1, 1]) == pytest.approx(1.0)
    assert M.matthews_corrcoef([1, 0, 0], [0, 1, 1]) == pytest.approx(-1.0)


def test_mcc_multiclass_by_hand():
    # trace 4 of 6, all row/column sums 2: (4*6 - 12) / (36 - 12) = 0.5
    assert M.matthews_corrcoef([0, 1, 2, 0, 2, 1], [0, 1, 2, 0, 1, 2]) == pytest.approx(0.5)


def test_mcc_degenerate_is_zero_not_nan():
    assert M.matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
    assert M.matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0
    assert M.matthews_corrcoef([1, 1], [1, 1]) == 0.0


def test_f1_by_hand():
    assert M.f1_score(P, Y) == pytest.approx(4 / 7)  # 2TP / (2TP + FP + FN)
    assert M.f1_score(P, Y, positive=0) == pytest.approx(2 / 5)  # TP=1 FP=1 FN=2
    assert M.f1_score([0, 0], [0, 0]) == 0.0  # no positives anywhere


def test_pearson_by_hand_and_scipy():
    assert M.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert M.pearson([2, 2, 2], [1, 2, 3]) == 0.0  # zero variance: 0, not NaN


def test_rankdata_ties_average():
    np.testing.assert_array_equal(M.rankdata([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    np.testing.assert_array_equal(M.rankdata([3, 3, 3]), [2, 2, 2])
    x = np.random.default_rng(1).integers(0, 5, size=40)
    np.testing.assert_allclose(M.rankdata(x), stats.rankdata(x))


def test_spearman_ties_by_hand_and_scipy():
    # ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]: 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert M.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    rng = np.random.default_rng(2)
    x = rng.integers(0, 6, size=60).astype(float)  # many ties, like STS-B scores
    y = x + rng.normal(scale=2.0, size=60)
    assert M.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_glue_metrics_main_scores():
    out = M.glue_metrics("mrpc", P, Y)
    assert out["f1"] == pytest.approx(4 / 7) and out["accuracy"] == 0.5
    assert out["score"] == pytest.approx((4 / 7 + 0.5) / 2)
    assert set(M.glue_metrics("qqp", P, Y)) == {"f1", "accuracy", "score"}
    cola = M.glue_metrics("CoLA", [1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1])
    assert cola == {"mcc": pytest.approx(1 / 3), "score": pytest.approx(1 / 3)}
    assert M.glue_metrics("rte", [0, 1], [0, 0])["score"] == 0.5
    sts = M.glue_metrics("STS-B", [[1.0], [2.0], [3.0]], [1.0, 3.0, 2.0])  # (n, 1) scores
    assert sts["pearson"] == pytest.approx(0.5) and sts["spearman"] == pytest.approx(0.5)
    assert sts["score"] == pytest.approx(0.5)


def test_glue_metrics_argmaxes_logits():
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [0.0, 5.0]])
    assert M.glue_metrics("sst2", logits, [0, 1, 0]) == {"accuracy": 2 / 3, "score": 2 / 3}
    three = np.eye(3)[[0, 2, 1]]
    assert M.glue_metrics("mnli_mismatched", three, [0, 2, 2])["accuracy"] == 2 / 3


def test_errors():
    with pytest.raises(ValueError, match="valid tasks: cola, sst2"):
        M.glue_metrics("sst3", [1], [1])
    with pytest.raises(ValueError, match="labels contain -1"):
        M.glue_metrics("sst2", [1, 0], [-1, -1])
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        M.accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no examples"):
        M.pearson([], [])
    with pytest.raises(ValueError, match="finite"):
        M.spearman([1.0, np.nan], [1.0, 2.0])
