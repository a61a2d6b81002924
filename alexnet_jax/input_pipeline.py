"""Host-side input with Grain: order, sharding, decoding workers, batches (paper §2, §5).

The host delivers uint8 batches of S x S images (S = 256 for ImageNet, §2); everything the
paper does after that (mean subtraction, random 224 crops, flips, PCA colour, 10-crop testing,
§4.1) runs on the device in `alexnet_jax/augment.py`.

Order. The training stream is one infinite sequence: epoch e is a permutation of the split
drawn from `config.seed` and e (Grain's index shuffle), so every epoch is reshuffled and the
whole order is a pure function of the seed. The stream is cut into blocks of b = batch_size /
process_count examples and process p takes blocks p, p + P, p + 2P, ...: the P blocks of
global step k are exactly the examples a single process would put in its global batch k, so
the data seen at every step is the same on any number of hosts (in a different order inside
the step). Batches are formed before they are handed to worker processes, so the batches do
not depend on `config.num_workers` either.

Bad examples (`images.BadExample`: unreadable, undecodable, truncated) never stop an epoch
unless `config.strict_data` is set. In a training batch the slot of a bad example is filled
with a copy of the next good example of the same batch (batches stay full, no step is
skipped, and every host still takes the same number of steps); in an evaluation batch it is
masked out like padding. Every skip is counted by reason and the counts travel with the
batches from the worker processes to `iterator.skipped`, and into the iterator state.

Iterator state. Batch k is a pure function of (config, source, process, k), so the state is the
index of the next batch plus the skip counts, `{'next_batch': int, 'skipped': {reason: int}}`:
JSON-serialisable, independent of Grain's internals and of `num_workers`. `set_state(state)`
resumes at exactly that batch. Orbax can save it as JSON (`ocp.args.JsonSave(state)`), or the
iterator itself with `grain.checkpoint.CheckpointSave(it)` (it is a `grain.DatasetIterator`).

Commands:
  python -m alexnet_jax.input_pipeline --config=configs/alexnet.py            # describe data
  python -m alexnet_jax.prepare --config=configs/alexnet.py --out=DIR  # the S x S copy (§2)
  python -m experiments.bench.input_pipeline_benchmark --config=configs/alexnet.py   # throughput
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from alexnet_jax import distributed, splits
from alexnet_jax.datasets import create_source
from alexnet_jax.images import SKIP_REASONS, BadExample, log_bad_example
from alexnet_jax.sources import Source

__all__ = [
    "SKIP_REASONS",
    "BadExample",
    "Source",
    "BatchIterator",
    "create_source",
    "create_train_iterator",
    "create_eval_iterator",
    "eval_data_stats",
    "load_data_stats",
    "stats_cache_path",
    "per_process_batch_size",
    "GuardedSource",
    "start_iterator",
]


def _process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # Only here: worker processes unpickle this module and need no JAX.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def per_process_batch_size(config: Any, process_count: int) -> int:
    """b = config.batch_size / process_count; raises unless it divides evenly."""
    if config.batch_size % process_count:
        raise ValueError(
            f"config.batch_size={config.batch_size} does not divide evenly over "
            f"{process_count} processes; use a multiple of {process_count}"
        )
    return config.batch_size // process_count


class GuardedSource:
    """The data source Grain reads: a `Source` whose bad examples become their reason.

    Index i returns the example dict, the skip reason (str) of a bad example, or None for
    padding positions (i >= len(source), evaluation only).
    """

    def __init__(self, source: Source, strict: bool, length: int | None = None):
        self._source, self._strict = source, strict
        self._length = len(source) if length is None else length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any] | str | None:
        if index >= len(self._source):
            return None
        try:
            return self._source[index]
        except BadExample as e:
            if self._strict:
                raise
            log_bad_example(e)
            return e.reason


class _Batcher:
    """Grain batch_fn: stacks examples, fills or masks bad slots, counts skips per reason.

    Args:
      size: S, for the zero images of masked slots.
      fill_bad: True (training): a bad slot gets a copy of the next good example of the batch
        (mask True); False (evaluation): a zero image with mask False.
    """

    def __init__(self, size: int, fill_bad: bool):
        self._size, self._fill_bad = size, fill_bad

    def __call__(self, values: Sequence[dict[str, Any] | str | None]) -> dict[str, np.ndarray]:
        n = len(values)
        good = [i for i, v in enumerate(values) if isinstance(v, dict)]
        skipped = np.zeros(len(SKIP_REASONS), np.int64)
        for v in values:
            if isinstance(v, str):
                skipped[SKIP_REASONS.index(v)] += 1
        source_of = list(range(n))
        if self._fill_bad and good:
            for i in range(n):
                if i not in good:  # The next good slot after i, wrapping around.
                    source_of[i] = min(good, key=lambda g, i=i: (g - i) % n)
        images = np.zeros((n, self._size, self._size, 3), np.uint8)
        labels = np.zeros((n,), np.int32)
        mask = np.zeros((n,), bool)
        for i, j in enumerate(source_of):
            if isinstance(values[j], dict):
                images[i] = values[j]["image"]
                labels[i] = values[j]["label"]
                mask[i] = True
        return {"image": images, "label": labels, "mask": mask, "_skipped": skipped}


class BatchIterator(grain.DatasetIterator):
    """The iterator the pipeline returns: batches of a Grain pipeline, counted and resumable.

    Batch k of a stream is a pure function of (config, source, k, process), whatever the
    number of worker processes, so the state is just the index of the next batch (plus the
    skip counts): `{'next_batch': int, 'skipped': {reason: int}}`, JSON-serialisable, and it
    can be restored with a different `num_workers`. Restoring starts the pipeline again at
    that batch.

    Attributes:
      skipped: dict reason -> number of examples skipped so far (SKIP_REASONS), counted in
        whichever process decoded them, restored with the state.
    """

    def __init__(self, batches: grain.MapDataset, config: Any):
        self._batches, self._config = batches, config
        self._next_batch = 0
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        super().__init__(start_iterator(batches, config))

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        try:
            element = next(self._parent)
        except StopIteration:
            self.close()  # An evaluation pass is over: stop its workers now.
            raise
        # Arrays from worker processes arrive in shared memory (a np.ndarray subclass). Copy
        # them out (~5 ms for 128 x 256 x 256 x 3) so the shared block is freed now: a batch
        # the caller still holds at interpreter exit would otherwise be reported as leaked.
        batch = {k: v if type(v) is np.ndarray else np.array(v) for k, v in element.items()}
        for reason, count in zip(SKIP_REASONS, batch.pop("_skipped").tolist()):
            self.skipped[reason] += count
        self._next_batch += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"next_batch": self._next_batch, "skipped": dict(self.skipped)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes at `state` (`get_state`'s, as a checkpoint's JSON gives it back).

        Raises:
          ValueError: a state that is not `{'next_batch': int >= 0, 'skipped': {reason: int}}`.
        """
        ok = isinstance(state, dict) and isinstance(state.get("skipped"), dict)
        numbers = [state.get("next_batch"), *state["skipped"].values()] if ok else []
        if not ok or not all(type(n) is int and n >= 0 for n in numbers):
            raise ValueError(
                f"the data iterator state {state!r:.120} is not {{'next_batch': int >= 0, "
                "'skipped': {reason: int >= 0}}: the checkpoint's data item is damaged; move "
                "that checkpoint aside to resume from the one before."
            )
        self._assert_not_closed()
        self._parent.close()
        self._next_batch = state["next_batch"]
        self.skipped = {r: state["skipped"].get(r, 0) for r in SKIP_REASONS}
        parent = start_iterator(self._batches[self._next_batch :], self._config)
        self._parents, self._ctx = (parent,), parent._ctx

    def close(self) -> None:
        """Stops the worker processes and frees the shared memory of prefetched batches."""
        if self._closed:
            return
        super().close()
        # Grain's interleave keeps its prefetched batches referenced until the iterator object
        # is deleted; let go of the pipeline now so that their shared memory is unlinked now,
        # not left to the resource tracker's warnings at interpreter exit.
        self._parents = ()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __str__(self) -> str:
        return f"BatchIterator(next_batch={self._next_batch})"


def _mark_flags_parsed() -> None:
    """Grain's worker processes read absl flags, which outside an absl app are unparsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _exit_with_parent(worker_index: int, worker_count: int, *, parent: int) -> None:
    """Grain worker init: exit when the process that started this worker (`parent`, its pid
    taken in that process, so a parent that died before this worker got here counts) is gone.

    A run killed with SIGKILL (preemption, OOM killer) cannot stop its workers, and Grain's
    workers would otherwise wait forever, each holding its memory.
    """
    del worker_index, worker_count
    distributed.exit_when_orphaned(parent=parent)


def start_iterator(ds: grain.MapDataset, config: Any) -> grain.DatasetIterator:
    """Decodes on `config.num_workers` processes (0: threads of this process), prefetching."""
    prefetch = max(1, int(config.prefetch_batches))
    # Pillow releases the GIL while it decodes and resizes, so without workers `prefetch`
    # threads build batches in parallel (1.7x with 2 threads on 2 cores); a worker process
    # gets one thread, as more would compete with the other workers for the same cores.
    threads = 1 if config.num_workers else max(1, min(prefetch, os.cpu_count() or 1))
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
    it_ds = ds.to_iter_dataset(read)
    if config.num_workers > 0:
        # Only the image arrays are worth a shared-memory block; labels and masks are pickled.
        it_ds = grain.experimental.WithOptionsIterDataset(
            it_ds, grain.experimental.DatasetOptions(min_shm_size=1 << 16)
        )
        _mark_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.num_workers, per_worker_buffer_size=prefetch
            ),
            worker_init_fn=functools.partial(_exit_with_parent, parent=os.getpid()),
        )
    return iter(it_ds)


def _order_seed(seed: int) -> int:
    """A 32-bit shuffle seed from config.seed (Grain wants 0 <= seed < 2**32)."""
    return zlib.crc32(f"alexnet_jax/train-order/{seed}".encode())


def _local_rows(
    config: Any, rows: tuple[int, int] | None, process_index: int | None, process_count: int | None
) -> tuple[int, int]:
    """Rows [lo, hi) of each global batch this process reads: `rows` (from the mesh,
    `parallel.process_rows`), else block p of P equal blocks."""
    if rows is None:
        process_index, process_count = _process_info(process_index, process_count)
        b = per_process_batch_size(config, process_count)
        return process_index * b, (process_index + 1) * b
    lo, hi = rows
    if not (0 <= lo < hi <= config.batch_size) or config.batch_size % (hi - lo) or lo % (hi - lo):
        raise ValueError(f"rows {rows} do not tile a batch of {config.batch_size}")
    return lo, hi


def _rows_of_each_batch(ds, batch_size: int, lo: int, hi: int, batch_fn):
    """Local batch k = rows [lo, hi) of global batch k (batches of `batch_size` in order)."""
    r = hi - lo
    return ds.batch(r, batch_fn=batch_fn)[lo // r :: batch_size // r]


def create_train_iterator(
    config: Any,
    source: Source,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    rows: tuple[int, int] | None = None,
) -> BatchIterator:
    """The endless, reshuffled-every-epoch training stream of this process (§5: batch 128).

    Args:
      config: uses batch_size (global), seed, num_workers, prefetch_batches, strict_data.
      source: the training `Source`.
      process_index: this host's index (default `jax.process_index()`).
      process_count: number of hosts (default `jax.process_count()`).
      rows: the rows [lo, hi) of every global batch this process feeds, from the mesh
        (`parallel.process_rows`); overrides process_index/process_count.

    Returns:
      An iterator of `{'image': uint8 (b, S, S, 3), 'label': int32 (b,), 'mask': bool (b,)}`
      with b = hi - lo (default batch_size / process_count); mask is True except in the
      degenerate case of a batch whose every example was unreadable. Close it (or use
      `with`) when done.
    """
    lo, hi = _local_rows(config, rows, process_index, process_count)
    ds = grain.MapDataset.source(GuardedSource(source, config.strict_data))
    ds = ds.shuffle(seed=_order_seed(config.seed)).repeat()  # A new permutation every epoch.
    ds = _rows_of_each_batch(ds, config.batch_size, lo, hi, _Batcher(source.size, fill_bad=True))
    return BatchIterator(ds, config)


def num_eval_batches(config: Any, source: Source, process_count: int) -> int:
    """Batches per process in one evaluation pass (the same on every process)."""
    global_batch = per_process_batch_size(config, process_count) * process_count
    return math.ceil(len(source) / global_batch)


def create_eval_iterator(
    config: Any,
    source: Source,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    rows: tuple[int, int] | None = None,
) -> BatchIterator:
    """One ordered pass over the split, padded so every process yields the same batch count.

    Global batch k holds examples [k B, (k + 1) B) (B = batch_size) in source order, process p
    the p-th block of b of them. The split is padded to a whole number of global batches.

    Args:
      config: uses batch_size, num_workers, prefetch_batches, strict_data.
      source: the evaluation `Source`.
      process_index: this host's index (default `jax.process_index()`).
      process_count: number of hosts (default `jax.process_count()`).
      rows: as in `create_train_iterator`.

    Returns:
      An iterator of `{'image': uint8 (b, S, S, 3), 'label': int32 (b,), 'mask': bool (b,)}`
      that stops after `num_eval_batches` batches; mask is False for padding and skipped
      examples (their image is zeros, label 0). Summing metrics over mask counts every
      readable example exactly once.
    """
    lo, hi = _local_rows(config, rows, process_index, process_count)
    padded = math.ceil(len(source) / config.batch_size) * config.batch_size
    ds = grain.MapDataset.source(GuardedSource(source, config.strict_data, length=padded))
    ds = _rows_of_each_batch(ds, config.batch_size, lo, hi, _Batcher(source.size, fill_bad=False))
    return BatchIterator(ds, config)


# ----------------------------------------------------------------------------------------------
# Mean image and PCA (§2, §4.1), computed once per training set.


def _default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "alexnet_jax")


def stats_cache_path(config: Any, source: Source) -> str:
    """Where the statistics of `source` are cached: keyed by dataset, split, S, resize mode
    (when not §2's) and length."""
    warp = "" if source.resize_mode == "shorter_side" else f"-{source.resize_mode}"
    key = f"{splits.split_file_stem(source.split)}-{source.size}px{warp}-{len(source)}.npz"
    if source.stats_dir:
        return os.path.join(source.stats_dir, f"stats-{key}")
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name).strip("_")
    return os.path.join(config.cache_dir or _default_cache_dir(), "stats", f"{name}-{key}")


def load_data_stats(config: Any, source: Source) -> Any:
    """The mean image and RGB PCA of the training source, computed once and cached (§2, §4.1).

    The first call reads the whole split once (in order, with `config.num_workers` decoding
    processes and a progress bar) and saves an .npz next to prepared data, else under
    `config.cache_dir`; later calls load it. Skipped examples are left out.

    Args:
      config: uses cache_dir, batch_size, num_workers, prefetch_batches, strict_data.
      source: the training `Source` (the statistics are those of the images it delivers).

    Returns:
      `augment.DataStats`.
    """
    from tqdm import tqdm

    from alexnet_jax import augment

    path = stats_cache_path(config, source)
    if os.path.exists(path):
        return _with_mean_file(config, augment.DataStats.load(path))
    logging.info("Computing the mean image and PCA of %r into %s", source, path)

    def real_images() -> Iterator[np.ndarray]:
        with create_eval_iterator(config, source, process_index=0, process_count=1) as it:
            total = num_eval_batches(config, source, 1)
            for batch in tqdm(it, total=total, desc=f"stats {source.name} {source.split}"):
                yield batch["image"][batch["mask"]]
            if any(it.skipped.values()):
                logging.warning("Statistics skipped %s", it.skipped)

    stats = augment.compute_data_stats(real_images())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stats.save(path)
    return _with_mean_file(config, stats)


def mean_file_image(config: Any) -> np.ndarray:
    """The (S, S, 3) RGB mean image of `config.augment.mean_file` (`augment.load_mean_file`)."""
    from alexnet_jax import augment

    a = config.augment
    path = os.path.expanduser(a.mean_file)
    return augment.load_mean_file(path, a.mean_file_layout, int(config.resize_size))


def _with_mean_file(config: Any, stats: Any) -> Any:
    """`stats` with `config.augment.mean_file`'s mean image in place of the computed one."""
    if not config.augment.mean_file:
        return stats
    return dataclasses.replace(stats, mean_image=mean_file_image(config))


def eval_data_stats(config: Any) -> Any:
    """The statistics evaluation needs: None for augment.mean 'fixed' or 'none'; the mean
    file's image when `augment.mean_file` is set (no training data read: for anyone who
    holds only the validation set); else the training split's (`load_data_stats`)."""
    from alexnet_jax import augment

    if config.augment.mean not in augment.MEAN_IMAGE_MODES:
        return None
    if config.augment.mean_file:  # evaluation adds no colour noise: no PCA
        return augment.DataStats(
            mean_image=mean_file_image(config),
            pca_eigvals=np.zeros(3, np.float32),
            pca_eigvecs=np.eye(3, dtype=np.float32),
        )
    return load_data_stats(config, create_source(config, config.train_split))


def _describe(config: Any) -> None:
    """Prints each split's size and classes and the shapes of a first training batch."""
    for split in dict.fromkeys([config.train_split, config.eval_split, config.test_split]):
        if split:
            print(create_source(config, split))
    source = create_source(config, config.train_split)
    with create_train_iterator(config, source, process_index=0, process_count=1) as it:
        batch = next(it)
        shapes = {k: (v.shape, v.dtype.name) for k, v in batch.items()}
        print(f"first training batch: {shapes}; skipped so far: {it.skipped}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    # Moved: the flags stay so that the old command stops with one line naming the new one.
    _PREPARE = flags.DEFINE_bool("prepare", False, "Moved: python -m alexnet_jax.prepare.")
    flags.DEFINE_string("out", None, "Moved with --prepare.")
    _BENCH = flags.DEFINE_bool(
        "bench", False, "Moved: python -m experiments.bench.input_pipeline_benchmark."
    )

    def main(argv: Sequence[str]) -> None:
        del argv
        config = _CONFIG.value
        if _PREPARE.value:
            raise SystemExit(
                "error: --prepare moved: python -m alexnet_jax.prepare --config=... --out=DIR"
            )
        if _BENCH.value:
            raise app.UsageError(
                "--bench moved out of the library: run `python -m "
                "experiments.bench.input_pipeline_benchmark --config=...` from the repository root."
            )
        else:
            _describe(config)

    flags.mark_flag_as_required("config")
    app.run(main)
