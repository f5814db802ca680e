"""Iteration: deterministic, process-sharded batches over a random-access source, with
exact resume.

Order: global batch ``k`` of epoch ``e`` holds positions ``k*G ... k*G+G-1`` of a
permutation of the source that depends only on ``(seed, e)`` (grain's index
shuffle); process ``p`` of ``P`` gets rows ``p*G/P ... (p+1)*G/P - 1`` of it. The
batch sequence is a pure function of the step number, so the iterator's state is a
step counter and restoring it replays exactly, even on a different process count.

Padding: a batch pads to the bucket of the longest example of the whole global batch,
which every process can compute (it knows the global order), so with several processes
all of them build arrays of one shape (``jax.make_array_from_process_local_data``
needs that). ``StackedBatches`` stacks several members' iterators (one seed each) for a
vectorised run, padded to one common bucket per step. Every batch also carries ``valid``
(int32, 0 on rows that only pad an evaluation remainder) and ``index`` (the row's
position in the source, -1 on padding rows).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import grain
import numpy as np

from morejax.data.collate import pick_bucket

__all__ = ["BatchIterator", "StackedBatches", "read_all", "read_many"]

_STATE_KEYS = ("epoch", "position", "seed")


def _process_defaults(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only when asked to look: importing jax is slow

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return int(process_index), int(process_count)


def read_many(source, indices) -> list:
    """Items of a random-access source, in one batched read when it has ``__getitems__``
    (ArrayRecord: ~5x faster than item by item)."""
    indices = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(indices)) if getitems else [source[i] for i in indices]


def read_all(source, chunk: int = 8192):
    """Every item of a source, read in chunks (length grouping reads a whole split)."""
    n = len(source)
    for start in range(0, n, chunk):
        yield from read_many(source, range(start, min(n, start + chunk)))


def _measures_length(collate) -> bool:
    return callable(getattr(collate, "length", None)) and hasattr(collate, "buckets")


class _Steps:
    """Iteration over ``_make_batch(step)``, a pure function of the step: inline, or up to
    ``prefetch`` batches ahead in grain threads (tokenizers releases the GIL)."""

    num_steps: int | None

    def _init_steps(self, num_threads: int, prefetch: int) -> None:
        stop = sys.maxsize if self.num_steps is None else self.num_steps
        self._batches = grain.MapDataset.range(0, stop).map(self._make_batch)
        self._read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        self.num_threads, self.prefetch = int(num_threads), int(prefetch)
        self._step = 0
        self._it = None

    def _make_batch(self, step: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_steps is not None and self._step >= self.num_steps:
            raise StopIteration
        if self.num_threads <= 0:
            batch = self._make_batch(self._step)
        else:
            if self._it is None:
                self._it = iter(self._batches[self._step :].to_iter_dataset(self._read))
            batch = next(self._it)
        self._step += 1
        return batch

    def __len__(self) -> int:
        """Batches left to yield (finite iterators only)."""
        if self.num_steps is None:
            raise TypeError("an iterator with epochs=None has no length")
        return self.num_steps - self._step

    @property
    def step(self) -> int:
        """Batches yielded so far (since the start of epoch 0)."""
        return self._step


class BatchIterator(_Steps):
    """Deterministic, process-sharded, restorable batches over a random-access source.

    ``batch_size`` is the global batch; each of ``process_count`` processes yields
    ``batch_size // process_count`` rows of every global batch. Training
    (``drop_remainder=True``) yields ``len(source) // batch_size`` batches per epoch;
    evaluation (``False``) yields ``ceil(len / batch_size)``, the last one completed
    with ``valid=0`` rows, so every example is seen exactly once over all processes.
    ``epochs=None`` repeats forever. ``num_threads`` > 0 prepares up to ``prefetch``
    batches ahead in grain threads (tokenizers releases the GIL); 0 runs inline.

    With several processes every batch pads to ``bucket_at(step)``, the bucket of the
    whole global batch's longest example (so each process tokenises the global batch
    once more to measure it: ~1.3 ms for 32 SST-2 sentences); the collator must then
    have ``length(examples)`` and ``buckets`` and take ``length=`` (as ours do). One
    process pads to its own longest, which is the same bucket.

    ``group_by_length=W`` (with a ``length_fn``) sorts each window of W batches of
    the epoch's order by length and then shuffles the batches, so a batch holds
    examples of similar length and pads to a small bucket: far less padding when
    lengths vary (SST-2 phrases), with the same examples per epoch. Without
    shuffling it sorts the whole split (evaluation order does not matter).
    """

    def __init__(
        self,
        source,
        collate: Callable[..., dict],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = 1,
        drop_remainder: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
        num_threads: int = 1,
        prefetch: int = 2,
        state: dict | None = None,
        group_by_length: int = 0,
        length_fn: Callable[[dict], int] | None = None,
    ):
        self.source = source
        self.collate = collate
        n = len(source)
        if n == 0:
            raise ValueError("the source is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.process_index, self.process_count = _process_defaults(process_index, process_count)
        if batch_size % self.process_count:
            raise ValueError(
                f"global batch_size {batch_size} is not divisible by process_count "
                f"{self.process_count}"
            )
        if self.process_count > 1 and not _measures_length(collate):
            raise ValueError(
                f"with {self.process_count} processes the collator must have length(examples) "
                "and buckets and accept length= (as EncoderCollator / DecoderCollator do), so "
                f"that every process pads to one shape; {type(collate).__name__} does not"
            )
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None (forever), got {epochs}")
        self.num_examples = n
        self.batch_size = batch_size
        self.local_batch_size = batch_size // self.process_count
        self.seed, self.shuffle, self.epochs = int(seed), bool(shuffle), epochs
        self.drop_remainder = drop_remainder
        self.steps_per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{n} examples make no full global batch of {batch_size} with drop_remainder=True"
            )
        self.num_steps = None if epochs is None else self.steps_per_epoch * epochs
        order = grain.MapDataset.range(n)
        # Indexing past n reshuffles with seed + epoch; range maps i to i % n.
        self._order = order.shuffle(seed=self.seed) if self.shuffle else order
        if group_by_length and length_fn is None:
            raise ValueError("group_by_length needs a length_fn (example -> length)")
        self.group_by_length = int(group_by_length)
        self._length_fn = length_fn
        self._lengths: np.ndarray | None = None
        self._epoch_cache: tuple[int, np.ndarray] | None = None
        self._init_steps(num_threads, prefetch)
        if state is not None:
            self.set_state(state)

    def _global_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the epoch, source indices) of global batch ``step``'s rows."""
        epoch, k = divmod(int(step), self.steps_per_epoch)
        n = self.num_examples
        positions = k * self.batch_size + np.arange(self.batch_size)
        if self.group_by_length:
            index = self._grouped_order(epoch)[positions % n]
        else:
            index = [int(self._order[epoch * n + int(q)]) for q in positions % n]
        return positions, np.asarray(index, np.int64)

    def bucket_at(self, step: int) -> int:
        """The padded length of global batch ``step``: the bucket of its longest example
        (tokenised here), the same on every process."""
        if not _measures_length(self.collate):
            raise TypeError(f"{type(self.collate).__name__} has no length(examples) / buckets")
        index = self._global_rows(step)[1]
        longest = self.collate.length(read_many(self.source, index))
        return pick_bucket(longest, self.collate.buckets)

    def batch_at(self, step: int, length: int | None = None) -> dict[str, np.ndarray]:
        """This process's rows of global batch ``step`` (a pure function of the step,
        seed and process), padded to the bucket of ``length`` when given, else to
        ``bucket_at(step)`` with several processes."""
        if length is None and self.process_count > 1:
            length = self.bucket_at(step)
        positions, index = self._global_rows(step)
        b, p = self.local_batch_size, self.process_index
        positions, index = positions[p * b : (p + 1) * b], index[p * b : (p + 1) * b]
        valid = positions < self.num_examples
        examples = read_many(self.source, index)
        batch = self.collate(examples) if length is None else self.collate(examples, length)
        batch["valid"] = valid.astype(np.int32)
        batch["index"] = np.where(valid, index, -1).astype(np.int32)
        if "idx" in batch:
            batch["idx"] = np.where(valid, batch["idx"], -1).astype(np.int32)
        return batch

    def _make_batch(self, step: int) -> dict[str, np.ndarray]:
        return self.batch_at(step)

    def _grouped_order(self, epoch: int) -> np.ndarray:
        """The epoch's example order with length-grouped batches: a pure function of
        (seed, epoch), so resuming and process sharding work as without grouping."""
        cached = self._epoch_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        n, size = self.num_examples, self.batch_size
        if self._lengths is None:
            self._lengths = np.asarray([self._length_fn(x) for x in read_all(self.source)])
        order = np.asarray([int(self._order[epoch * n + q]) for q in range(n)])
        if not self.shuffle:
            order = order[np.argsort(-self._lengths[order], kind="stable")]
        else:
            window = self.group_by_length * size
            order = np.concatenate(
                [
                    chunk[np.argsort(-self._lengths[chunk], kind="stable")]
                    for chunk in np.split(order, range(window, n, window))
                ]
            )
            full = (n // size) * size
            rng = np.random.default_rng([self.seed, epoch])
            batches = order[:full].reshape(-1, size)[rng.permutation(n // size)]
            order = np.concatenate([batches.reshape(-1), order[full:]])
        self._epoch_cache = (epoch, order)
        return order

    def state_at(self, step: int) -> dict:
        """The state of an iterator whose next batch is ``step``."""
        epoch, position = divmod(int(step), self.steps_per_epoch)
        return {
            "epoch": epoch,
            "position": position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "group_by_length": self.group_by_length,
        }

    def get_state(self) -> dict:
        """A JSON-serialisable position: the next batch is ``position`` of ``epoch``."""
        return self.state_at(self._step)

    def step_of(self, state: dict) -> int:
        """The next step of a ``get_state`` result; refuses another pipeline's state."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"iterator state lacks {missing}: {state}")
        for key, mine in (
            ("seed", self.seed),
            ("shuffle", self.shuffle),
            ("num_examples", self.num_examples),
            ("batch_size", self.batch_size),
            ("group_by_length", self.group_by_length),
        ):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"iterator state has {key}={state[key]!r} but this pipeline has {mine!r}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.steps_per_epoch:
            raise ValueError(
                f"state epoch {epoch} / position {position} out of range "
                f"({self.steps_per_epoch} batches per epoch)"
            )
        step = epoch * self.steps_per_epoch + position
        if self.num_steps is not None and step > self.num_steps:
            raise ValueError(f"state step {step} is past the end ({self.num_steps} batches)")
        return step

    def set_state(self, state: dict) -> None:
        """Continues exactly where ``get_state`` was taken; refuses another pipeline's."""
        self._step = self.step_of(state)
        self._it = None


class StackedBatches(_Steps):
    """Batches of several members at once, for a vectorised run (one program, several seeds).

    ``members`` are BatchIterators over the same source with the same batch size and
    sharding (typically one seed each). Every array gets a leading member axis; at each
    step all members pad to one bucket, the largest of their ``bucket_at(step)``, so a
    member's slice is exactly what its own iterator yields when padded to that length
    (``member.batch_at(step, length)``). The state holds each member's state, so
    restoring replays exactly. ``num_threads`` / ``prefetch`` default to the first
    member's. Iterate the stack only: the members' own positions do not move.
    """

    def __init__(
        self,
        members: Sequence[BatchIterator],
        *,
        num_threads: int | None = None,
        prefetch: int | None = None,
        state: dict | None = None,
    ):
        self.members = list(members)
        if not self.members:
            raise ValueError("StackedBatches needs at least one member iterator")
        first = self.members[0]
        for i, m in enumerate(self.members):
            if not isinstance(m, BatchIterator):
                raise TypeError(f"member {i} is a {type(m).__name__}, not a BatchIterator")
            if not _measures_length(m.collate):
                raise ValueError(
                    f"member {i}'s collator ({type(m.collate).__name__}) has no "
                    "length(examples) / buckets to pad members to a common length"
                )
            for key in (
                "batch_size",
                "process_index",
                "process_count",
                "steps_per_epoch",
                "num_steps",
            ):
                if getattr(m, key) != getattr(first, key):
                    raise ValueError(
                        f"member {i} has {key}={getattr(m, key)!r} but member 0 has "
                        f"{getattr(first, key)!r}: members must batch alike"
                    )
            if tuple(m.collate.buckets) != tuple(first.collate.buckets):
                raise ValueError(
                    f"member {i} has buckets {m.collate.buckets} but member 0 has "
                    f"{first.collate.buckets}: members must pad to the same buckets"
                )
        self.num_steps = first.num_steps
        self.steps_per_epoch = first.steps_per_epoch
        self.batch_size, self.local_batch_size = first.batch_size, first.local_batch_size
        self._init_steps(
            first.num_threads if num_threads is None else num_threads,
            first.prefetch if prefetch is None else prefetch,
        )
        if state is not None:
            self.set_state(state)

    def bucket_at(self, step: int) -> int:
        """The common padded length of step ``step``: the largest member bucket."""
        return max(m.bucket_at(step) for m in self.members)

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        length = self.bucket_at(step)
        parts = [m.batch_at(step, length) for m in self.members]
        return {k: np.stack([p[k] for p in parts]) for k in parts[0]}

    def _make_batch(self, step: int) -> dict[str, np.ndarray]:
        return self.batch_at(step)

    def get_state(self) -> dict:
        """``{'members': [each member's state]}``, JSON-serialisable."""
        return {"members": [m.state_at(self._step) for m in self.members]}

    def set_state(self, state: dict) -> None:
        """Continues exactly where ``get_state`` was taken (each member checks its own)."""
        states = state.get("members") if isinstance(state, dict) else None
        if not isinstance(states, list) or len(states) != len(self.members):
            raise ValueError(
                f"stacked state must be {{'members': [{len(self.members)} member states]}}, "
                f"got {state!r}"
            )
        steps = {m.step_of(s) for m, s in zip(self.members, states)}
        if len(steps) != 1:
            raise ValueError(f"member states are at different steps {sorted(steps)}: {state!r}")
        self._step = steps.pop()
        self._it = None
