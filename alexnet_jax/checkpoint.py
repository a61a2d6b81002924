"""Orbax checkpoints that resume a run exactly: parameters, optimizer state, step, RNG, the
learning-rate schedule's state and the data iterator's position, saved together.

Resume order (`train.train_and_evaluate`): build the mesh and an abstract train state with its
shardings; find the latest *complete* checkpoint (Orbax writes to a temporary directory and
renames it when done, so a run killed mid-save leaves the previous one as the latest); restore
the state into those shardings, the schedule from its JSON and the data iterator from its saved
position; continue from the restored step. Since every random number is
`fold_in(seed key, step)` and the batches come from the restored iterator, the resumed run
computes exactly what the uninterrupted run would have. The training metrics of the steps since
the last logged event are saved too, so the first event after a resume averages the same steps.

Faults (`restore_latest`, `save`, `wait`): a checkpoint that cannot be read is reported in one
line, moved aside to `checkpoints/<step>.corrupt` and the previous one is used; a save that
would not fit on the disk (checked before each save) or that fails for lack of space stops the
run with `DiskFullError`, naming the bytes needed and free and the last intact checkpoint, and
leaves no temporary directory behind.
"""

from __future__ import annotations

import errno
import gc
import glob
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CORRUPT_SUFFIX = ".corrupt"
DISK_FULL_EXIT_CODE = 74  # EX_IOERR of sysexits.h


class DiskFullError(OSError):
    """A checkpoint does not fit on the workdir's disk (the message says what to do)."""


class NoReadableCheckpointError(ValueError):
    """Checkpoints exist, but none of them can be read."""


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


_STATUS = ("OUT_OF_RANGE", "DATA_LOSS", "NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION",
           "RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNKNOWN")  # fmt: skip


def _gist(error: BaseException) -> str:
    """The most telling line of an error and its causes (TensorStore's status line if any)."""
    texts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = " ".join(str(error).split()).split(" See full TensorStore details")[0]
        texts.append(text or type(error).__name__)
        error = error.__cause__ or error.__context__
    text = next((t for t in texts if t.startswith(_STATUS)), texts[0])
    return text if len(text) <= 240 else text[:237] + "..."


def _is_disk_full(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if "RESOURCE_EXHAUSTED" in text or "No space left" in text or "ENOSPC" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


class _DropDiskFullReports(logging.Filter):
    """Orbax's writer threads log a full disk with a long traceback; `DiskFullError`'s one line
    says it instead (with the bytes needed and free, and what is intact)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg) + (str(record.exc_info[1]) if record.exc_info else "")
        return not ("RESOURCE_EXHAUSTED" in text or "No space left" in text)


logging.getLogger("absl").addFilter(_DropDiskFullReports())


class _DropAbandonedReads(logging.Filter):
    """asyncio's 'Task exception was never retrieved' for the other arrays' reads of a
    checkpoint whose restore already failed (reported in `restore_latest`'s one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("_read_array_index_and_device_put" in text or "async_deserialize" in text)


def _is_closed_loop_error(value: BaseException | None) -> bool:
    return isinstance(value, RuntimeError) and "Event loop is closed" in str(value)


def _quiet_abandoned_reads() -> None:
    """After a failed restore or save, Orbax's other coroutines, tasks and threads end with
    errors nobody retrieves, which Python and asyncio report on stderr (pages of TensorStore
    specs) when they are collected. Collects them now with stderr closed, and drops later
    reports of them."""
    if not getattr(sys.unraisablehook, "_alexnet_jax", False):
        previous = sys.unraisablehook

        def hook(unraisable):
            text = repr(unraisable.object) + str(unraisable.exc_value)
            if "_read_array_index_and_device_put" in text or "Event loop is closed" in text:
                return
            previous(unraisable)

        hook._alexnet_jax = True
        sys.unraisablehook = hook
        logging.getLogger("asyncio").addFilter(_DropAbandonedReads())
        previous_thread_hook = threading.excepthook

        def thread_hook(args):
            if "Event loop is closed" not in str(args.exc_value):
                previous_thread_hook(args)

        threading.excepthook = thread_hook
        # TensorStore reports an exception raised by a Python callback on one of its own C++
        # threads with PyErr_Print, i.e. sys.excepthook: the abandoned reads' callbacks then
        # hit asyncio's closed loop. Only those, and only off the main thread, are dropped.
        previous_excepthook = sys.excepthook

        def excepthook(kind, value, tb):
            if not (
                _is_closed_loop_error(value)
                and threading.current_thread() is not threading.main_thread()
            ):
                previous_excepthook(kind, value, tb)

        sys.excepthook = excepthook
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            for _ in range(3):
                gc.collect()
                time.sleep(0.1)
            sys.stderr.flush()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Checkpointer:
    """Saves and restores {state, schedule, data} under `workdir/checkpoints`."""

    def __init__(self, workdir: str, *, keep: int = 3, say: Callable[[str], None] = print):
        """Opens (or creates) the checkpoint directory.

        Args:
          workdir: the run's directory.
          keep: how many of the latest checkpoints to keep.
          say: prints a line (process 0).
        """
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self._say = say
        self._needed = 0
        self._warned_step = None
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        """Step of the latest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def set_aside(self) -> list[str]:
        """Checkpoint folders moved aside as unreadable by earlier runs."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(p for p in os.listdir(self.directory) if CORRUPT_SUFFIX in p)

    # --- saving ---------------------------------------------------------------------------

    def expect_size(self, state: Any) -> None:
        """Records the bytes a checkpoint of `state` needs (every array once, plus 1 MiB)."""
        self._needed = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(state))
        self._needed += 1 << 20

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.directory).free

    def _disk_full(self, step: int, free: int | None = None, cause: str = "") -> DiskFullError:
        self._remove_temporaries()
        free = self.free_bytes() if free is None else free
        last = self.latest_step()
        kept = (
            f"the checkpoint of step {last} is intact" if last is not None
            else "no checkpoint had been written yet"
        )  # fmt: skip
        return DiskFullError(
            f"disk full: the checkpoint of step {step} needs about {_mib(self._needed)} in "
            f"{self.directory}, {_mib(free)} free{cause}; {kept}. Free space (or lower "
            f"keep_checkpoints) and rerun the same command to resume (exit status "
            f"{DISK_FULL_EXIT_CODE})."
        )

    def warn_if_next_will_not_fit(self, next_step: int) -> None:
        """Warns once per upcoming save when the free space is below what it needs."""
        if not self._needed or self._warned_step == next_step:
            return
        free = self.free_bytes()
        if free < self._needed:
            self._warned_step = next_step
            self._say(
                f"warning: the next checkpoint (step {next_step}) needs about "
                f"{_mib(self._needed)} and {self.directory} has {_mib(free)} free; the run "
                "will stop there unless space is freed."
            )

    def save(self, step: int, state: Any, schedule: dict, data: Any, *, force: bool = False):
        """Saves a checkpoint of `step` (asynchronously; `wait` blocks until it is on disk).

        Args:
          step: the training step the state has completed.
          state: the train state pytree (arrays, possibly sharded).
          schedule: the learning-rate schedule's `state_dict()` (JSON).
          data: JSON: the training iterator's state and the unlogged metrics window.
          force: save even if a checkpoint of this step exists.

        Raises:
          DiskFullError: the checkpoint does not fit (checked first), or a save ran out of space.
        """
        if not force and step in self._manager.all_steps():
            return
        if self._needed:
            free = self.free_bytes()
            if free < self._needed:
                self.wait()  # a pending save may still fail or succeed first
                raise self._disk_full(step, free)
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    schedule=ocp.args.JsonSave(schedule),
                    data=ocp.args.JsonSave(data),
                ),
                force=True,
            )
        except Exception as e:
            if _is_disk_full(e):  # this save, or the one before it still being committed
                _quiet_abandoned_reads()
                pending = self._pending_steps()
                self._manager.reload()
                failed = pending[0] if pending else step
                raise self._disk_full(failed, cause=f" ({_gist(e)})") from None
            raise

    def wait(self) -> None:
        """Blocks until pending saves are on disk.

        Raises:
          DiskFullError: a pending save ran out of space.
        """
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            if _is_disk_full(e):
                _quiet_abandoned_reads()
                pending = self._pending_steps()
                step = pending[0] if pending else "?"
                self._manager.reload()
                raise self._disk_full(step, cause=f" ({_gist(e)})") from None
            raise

    def _temporaries(self) -> list[str]:
        """Folders of saves that Orbax has not committed (renamed to their step) yet."""
        return glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*"))

    def _pending_steps(self) -> list[int]:
        heads = (os.path.basename(path).split(".")[0] for path in self._temporaries())
        return sorted(int(head) for head in heads if head.isdigit())

    def _remove_temporaries(self) -> None:
        if jax.process_index() != 0:
            return
        for path in self._temporaries():
            shutil.rmtree(path, ignore_errors=True)

    # --- restoring ------------------------------------------------------------------------

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, Any]:
        """Restores (state, schedule state, data state) of `step`.

        Args:
          step: which checkpoint.
          abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings, the layout the
            arrays are restored into (so a run may resume on a different mesh).
        """
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                schedule=ocp.args.JsonRestore(),
                data=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["schedule"], restored["data"]

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict, Any] | None:
        """Restores the newest checkpoint that can be read; None when there is none at all.

        A checkpoint that fails to read is reported in one line and moved aside to
        `<step>.corrupt` (Orbax's commit marker still decides what is complete), then the
        previous one is tried.

        Raises:
          NoReadableCheckpointError: checkpoints were written, none can be read.
          ValueError: a checkpoint's arrays do not fit the model (another network).
        """
        while (step := self.latest_step()) is not None:
            try:
                return (step, *self.restore(step, abstract_state))
            except Exception as e:
                _quiet_abandoned_reads()
                if (
                    "tree structures do not match" in str(e)
                    or "shape" in str(e).lower()
                    and ("mismatch" in str(e).lower())
                ):
                    raise ValueError(
                        f"the checkpoint of step {step} in {self.directory} holds another "
                        f"network than this config builds ({_gist(e)[:160]}); use a new "
                        "--workdir for this config."
                    ) from None
                aside = self._move_aside(step)
                self._say(
                    f"checkpoint of step {step} cannot be read ({_gist(e)}); moved it to "
                    f"{aside} and trying the previous one."
                )
        if self.set_aside():
            raise NoReadableCheckpointError(
                f"no readable checkpoint in {self.directory} (set aside as unreadable: "
                f"{', '.join(self.set_aside())}); to start this run afresh, delete "
                f"{self.workdir} or use another --workdir."
            )
        return None

    def _move_aside(self, step: int) -> str:
        source = os.path.join(self.directory, str(step))
        target = source + CORRUPT_SUFFIX
        n = 1
        while os.path.exists(target):
            n += 1
            target = f"{source}{CORRUPT_SUFFIX}.{n}"
        if jax.process_index() == 0:
            os.rename(source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"alexnet_jax set aside checkpoint {step}")
        self._manager.reload()
        return target

    def reached_preemption(self, step: int) -> bool:
        """True when JAX's multi-process runtime reports a preemption notice (all processes
        agree on the step); always False in a single-process run."""
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


def restore_params(workdir_or_checkpoint: str) -> tuple[int, Any]:
    """(step, params as NumPy) of a run's latest checkpoint, or of one checkpoint folder.

    Accepts a workdir, its `checkpoints` folder, a step folder or its `state` folder. The
    arrays come back as NumPy, so a checkpoint written by several processes (or on another
    device count) restores on any machine without its shardings.

    Raises:
      NoReadableCheckpointError: when there is no checkpoint to read.
    """
    path = Path(workdir_or_checkpoint)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if path.name == "checkpoints":
        steps = [int(p.name) for p in path.iterdir() if p.name.isdigit()] if path.is_dir() else []
        if not steps:
            raise NoReadableCheckpointError(
                f"{workdir_or_checkpoint} has no checkpoint (no step folder in {path}); train it "
                "first, or pass the folder of one checkpoint."
            )
        path = path / str(max(steps))
    if (path / "state").is_dir():
        path = path / "state"
    if not path.is_dir():
        raise NoReadableCheckpointError(
            f"{workdir_or_checkpoint}: no checkpoint at {path} (give a run's workdir or one of "
            "its checkpoints/<step> folders)."
        )
    step = int(path.parent.name) if path.parent.name.isdigit() else -1
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.metadata(path.resolve()).item_metadata.tree
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        state = ckptr.restore(path.resolve(), restore_args=args)
    return step, jax.tree.map(np.asarray, state["params"])
