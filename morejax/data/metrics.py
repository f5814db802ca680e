"""GLUE metrics in plain numpy.

No sklearn/scipy at run time: these run inside evaluation loops on every
machine, including the GPU image. Degenerate inputs (constant predictions,
zero variance) give 0.0 rather than NaN so that best-checkpoint selection
never compares against NaN; empty or unlabelled inputs raise.
"""

from __future__ import annotations

import numpy as np

# Metrics GLUE reports per task; the main score is their mean (one metric: itself).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}
_ALIASES = {"mnli_matched": "mnli", "mnli_mismatched": "mnli", "mnlim": "mnli", "mnlimm": "mnli"}


def canonical_task(task: str) -> str:
    """Accept 'SST-2', 'STS-B', 'sst2', ...; unknown names list the valid ones."""
    key = str(task).strip().lower().replace("-", "")
    key = _ALIASES.get(key, key)
    if key not in TASK_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; valid tasks: {', '.join(TASK_METRICS)}")
    return key


def _pair(predictions, labels, *, dtype) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions, dtype=dtype).reshape(-1)
    y = np.asarray(labels, dtype=dtype).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} predictions but {y.size} labels")
    if p.size == 0:
        raise ValueError("no examples to score")
    if dtype is np.float64 and not (np.isfinite(p).all() and np.isfinite(y).all()):
        raise ValueError("predictions and labels must be finite")
    return p, y


def accuracy(predictions, labels) -> float:
    p, y = _pair(predictions, labels, dtype=np.int64)
    return float(np.mean(p == y))


def matthews_corrcoef(predictions, labels) -> float:
    """Multiclass MCC (Gorodkin's R_K); 0.0 when either side is constant."""
    p, y = _pair(predictions, labels, dtype=np.int64)
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = classes.size
    yi, pi = inv[: y.size], inv[y.size :]
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (yi, pi), 1.0)
    t = conf.sum(axis=1)  # true counts per class
    q = conf.sum(axis=0)  # predicted counts per class
    c = np.trace(conf)
    s = float(y.size)
    cov = c * s - t @ q
    denom = (s * s - q @ q) * (s * s - t @ t)
    if denom <= 0.0:
        return 0.0
    return float(cov / np.sqrt(denom))


def f1_score(predictions, labels, *, positive: int = 1) -> float:
    """Binary F1 of class `positive`; 0.0 when it never occurs on either side."""
    p, y = _pair(predictions, labels, dtype=np.int64)
    tp = float(np.sum((p == positive) & (y == positive)))
    fp = float(np.sum((p == positive) & (y != positive)))
    fn = float(np.sum((p != positive) & (y == positive)))
    if tp + fp + fn == 0.0:
        return 0.0
    return 2.0 * tp / (2.0 * tp + fp + fn)


def pearson(predictions, labels) -> float:
    """Pearson r; 0.0 when either side has zero variance (scipy gives NaN)."""
    p, y = _pair(predictions, labels, dtype=np.float64)
    pc, yc = p - p.mean(), y - y.mean()
    denom = np.sqrt(np.sum(pc * pc) * np.sum(yc * yc))
    if denom == 0.0:
        return 0.0
    return float(np.clip(np.sum(pc * yc) / denom, -1.0, 1.0))


def rankdata(x) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's 'average')."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    starts_mask = np.r_[True, s[1:] != s[:-1]]
    group = np.cumsum(starts_mask) - 1
    starts = np.flatnonzero(starts_mask)
    ends = np.r_[starts[1:], a.size]  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def spearman(predictions, labels) -> float:
    p, y = _pair(predictions, labels, dtype=np.float64)
    return pearson(rankdata(p), rankdata(y))


_FUNCTIONS = {
    "accuracy": accuracy,
    "mcc": matthews_corrcoef,
    "f1": f1_score,
    "pearson": pearson,
    "spearman": spearman,
}


def glue_metrics(task: str, predictions, labels) -> dict[str, float]:
    """The task's GLUE metrics plus 'score', the main number GLUE reports.

    `predictions` may be class ids, or logits of shape (n, num_labels) which
    are argmax-ed; for STS-B, scores of shape (n,) or (n, 1). MNLI matched and
    mismatched are separate calls, labelled by the caller.
    """
    key = canonical_task(task)
    names = TASK_METRICS[key]
    p = np.asarray(predictions)
    y = np.asarray(labels)
    if y.size and np.any(y < 0):  # GLUE labels and STS-B scores are never negative
        raise ValueError(f"{task}: labels contain -1 (an unlabelled test split?)")
    if key == "stsb":
        if p.ndim == 2 and p.shape[-1] == 1:
            p = p[:, 0]
    elif p.ndim == 2:
        p = np.argmax(p, axis=-1)
    out = {name: _FUNCTIONS[name](p, y) for name in names}
    out["score"] = float(np.mean([out[name] for name in names]))
    return out


def macro_f1(predictions, labels) -> float:
    """The mean of per-class F1 over the classes in either the labels or the predictions
    (scikit-learn's `f1_score(average='macro')`)."""
    p, y = _pair(predictions, labels, dtype=np.int64)
    return float(np.mean([f1_score(p, y, positive=c) for c in np.union1d(p, y)]))


def label_metrics(predictions, labels, *, num_labels: int, metric: str) -> dict[str, float]:
    """Your own labelled data: accuracy and macro-F1 (and MCC for two classes), or Pearson and
    Spearman for scores (`num_labels=1`); 'score' is `metric`'s value."""
    p = np.asarray(predictions)
    if num_labels == 1:
        p = p.reshape(len(p), -1)[:, 0]
        out = {"pearson": pearson(p, labels), "spearman": spearman(p, labels)}
    else:
        p = np.argmax(p, axis=-1) if p.ndim == 2 else p
        out = {"accuracy": accuracy(p, labels), "macro_f1": macro_f1(p, labels)}
        if num_labels == 2:
            out["mcc"] = matthews_corrcoef(p, labels)
    out["score"] = out[metric]
    return out
