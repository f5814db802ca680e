"""Train/test overlap: training and validation records that are also scored test problems.

A table that trains on its test problems measures memorisation. Records are matched on their
instruction + input with whitespace collapsed and case folded (a GSM8K line's question is its
instruction), so a copy that differs only in spacing still counts as the same problem.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["record_key", "test_keys", "Overlap", "Guard", "drop_overlap", "count_text_overlap"]

_SPACE_RE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACE_RE.sub(" ", text).strip().casefold()


def record_key(record: Mapping) -> str:
    """What identifies a problem: its normalised instruction and input."""
    return _norm(record.get("instruction", "")) + "\n" + _norm(record.get("input", "") or "")


def test_keys(sets: Iterable[str], root: str | os.PathLike | None = None):
    """({key: first set holding it}, [sets whose test file is not there]) for test sets."""
    from morejax.data import reasoning

    keys: dict[str, str] = {}
    absent = []
    for name in sets:
        try:
            records = reasoning.load_records(name, "test", root)
        except FileNotFoundError:
            absent.append(name)
            continue
        for r in records:
            keys.setdefault(record_key(r), name)
    return keys, absent


@dataclasses.dataclass
class Overlap:
    """What one split lost to the guard: the count, per test set, out of how many."""

    split: str
    dropped: int
    total: int
    per_set: dict
    checked: tuple[str, ...]
    absent: tuple[str, ...] = ()
    allowed: bool = False

    def line(self, source: str) -> str:
        where = ", ".join(f"{k} {v}" for k, v in sorted(self.per_set.items()))
        checked = f"checked against the test sets {', '.join(self.checked) or '(none)'}"
        if self.absent:
            checked += f"; not found, unchecked: {', '.join(self.absent)}"
        if not self.dropped:
            return f"test overlap: {source} {self.split}: 0 of {self.total} records ({checked})"
        if self.allowed:
            return (
                f"WARNING test overlap: {source} {self.split}: {self.dropped} of {self.total} "
                f"records are test problems ({where}) and are KEPT because "
                f"data.allow_test_overlap=True: scores on those sets measure memorisation "
                f"({checked})"
            )
        return (
            f"test overlap: {source} {self.split}: dropped {self.dropped} of {self.total} "
            f"records that are test problems ({where}; {checked}; "
            "data.allow_test_overlap=True keeps them)"
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Guard:
    """A record filter against the given test sets that counts what it drops."""

    def __init__(self, sets: Sequence[str], root=None, *, allow: bool = False):
        self.checked = tuple(sets)
        self.keys, absent = test_keys(sets, root)
        self.absent = tuple(absent)
        self.allow = allow
        self.seen = 0
        self.per_set: dict[str, int] = {}

    def keep(self, record: Mapping) -> bool:
        self.seen += 1
        hit = self.keys.get(record_key(record))
        if hit is not None:
            self.per_set[hit] = self.per_set.get(hit, 0) + 1
        return hit is None or self.allow

    def report(self, split: str) -> Overlap:
        dropped = sum(self.per_set.values())
        per_set = dict(self.per_set)
        return Overlap(split, dropped, self.seen, per_set, self.checked, self.absent, self.allow)


def drop_overlap(
    records: Sequence[Mapping], sets: Sequence[str], root=None, *, split: str, allow=False
) -> tuple[list, Overlap]:
    """The records that are not problems of the test sets (all of them with ``allow``)."""
    guard = Guard(sets, root, allow=allow)
    return [r for r in records if guard.keep(r)], guard.report(split)


def count_text_overlap(train: Iterable[str], evaluation: Iterable[str]) -> tuple[int, int]:
    """(evaluation texts that also occur in training, evaluation texts), normalised."""
    seen = {_norm(t) for t in train}
    texts = [_norm(t) for t in evaluation]
    return sum(t in seen for t in texts), len(texts)
