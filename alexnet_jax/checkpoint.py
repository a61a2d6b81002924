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

What a checkpoint proves (format 2, `FORMAT`): beside the state it holds a `meta` item, the
code version that wrote it and a checksum of every array and of the schedule's and data's JSON
(alexnet_jax/integrity.py). A restore recomputes them; a difference is bytes that changed after
they were written.

Faults (`restore_latest`, `save`, `wait`), three kinds kept apart:
- bytes that cannot be read, or that differ from their checksums: reported in one line (naming
  the array), moved aside to `checkpoints/<step>.corrupt` (never deleted) and the previous
  checkpoint is tried;
- a readable checkpoint whose tree differs from the one this code builds: a known change is
  migrated (`migrations.MIGRATIONS`: one notice line each), anything else is refused in one
  line naming the differing leaves and the version that wrote it, and the checkpoint is left
  where it is;
- a save that would not fit on the disk (checked before each save) or that fails for lack of
  space stops the run with `DiskFullError`, naming the bytes needed and free and the last intact
  checkpoint, and leaves no temporary directory behind.
Checkpoints of format 1 (alexnet_jax 0.1.0, no `meta`) restore with a notice that their bytes
cannot be verified. What Orbax and TensorStore report on stderr about these faults, which the
one line says already, is dropped by `orbax_quiet.install()` (the command lines call it).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from alexnet_jax import integrity, migrations, orbax_quiet
from alexnet_jax import workdir as workdir_lib

CORRUPT_SUFFIX = ".corrupt"
DISK_FULL_EXIT_CODE = 74  # EX_IOERR of sysexits.h
FORMAT = 2  # 1: alexnet_jax 0.1.0, no 'meta' item; 2: 'meta' with the version and checksums


class DiskFullError(OSError):
    """A checkpoint does not fit on the workdir's disk (the message says what to do)."""


class NoReadableCheckpointError(ValueError):
    """Checkpoints exist, but none of them can be read."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose arrays are not the tree this code builds (left in place)."""


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


def _shapes(leaves: dict[str, Any]) -> dict[str, tuple]:
    """{path: (shape, NumPy dtype)} of leaves (arrays, or Orbax's metadata of them)."""
    return {p: (tuple(x.shape), np.dtype(x.dtype)) for p, x in leaves.items()}


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
        # (step, what its verification said) of the checkpoint last restored (the one this run
        # resumed from), and whether a checkpoint was saved since: a NaN before that names it.
        self.resumed: tuple[int, str] | None = None
        self.saved_since_resume = False
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
        meta = {
            "format": FORMAT,
            "written_by": workdir_lib.code_version(),
            "step": step,
            "checksums": {
                "state": integrity.checksums(state),
                "schedule": integrity.json_checksum(schedule),
                "data": integrity.json_checksum(data),
            },
        }
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    schedule=ocp.args.JsonSave(schedule),
                    data=ocp.args.JsonSave(data),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )
            self.saved_since_resume = True
        except Exception as e:
            if _is_disk_full(e):  # this save, or the one before it still being committed
                orbax_quiet.collect_abandoned_reads()
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
                orbax_quiet.collect_abandoned_reads()
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

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def read_meta(self, step: int) -> dict | None:
        """The `meta` item of a checkpoint (version, checksums), None for format 1."""
        path = os.path.join(self.step_path(step), "meta", "metadata")
        if not os.path.isdir(os.path.dirname(path)):
            return None
        with open(path) as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or not isinstance(meta.get("format"), int):
            raise ValueError("its meta item is not a checkpoint record {'format': N, ...}")
        return meta

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, Any]:
        """Restores (state, schedule state, data state) of `step`, checked and migrated.

        The arrays are read as the checkpoint's own tree (its metadata), each into the sharding
        of the same path in `abstract_state`, checked against the checksums saved with them,
        and then arranged as `abstract_state`; a leaf the checkpoint lacks is filled by its
        `migrations.MIGRATIONS` entry (one notice line each).

        Args:
          step: which checkpoint.
          abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings, the layout the
            arrays are restored into (so a run may resume on a different mesh).

        Raises:
          CheckpointMismatchError: the checkpoint is readable and holds another tree.
          integrity.ChecksumError: bytes differ from the checksums saved with them.
          Exception: whatever Orbax and TensorStore raise for bytes they cannot read.
        """
        meta = self.read_meta(step)
        if meta is not None and meta["format"] > FORMAT:
            raise CheckpointMismatchError(
                f"the checkpoint of step {step} is of format {meta['format']}, written by "
                f"{workdir_lib.describe_version(meta)}; this code reads formats up to {FORMAT}: "
                "resume the run with that version or a newer one. It is left where it is."
            )
        version = workdir_lib.describe_version(meta)
        with ocp.PyTreeCheckpointer() as reader:
            tree = reader.metadata(os.path.join(self.step_path(step), "state")).item_metadata.tree
        saved = integrity.leaf_paths(tree)
        target = integrity.leaf_paths(abstract_state)
        plan, unexplained = migrations.tree_plan(_shapes(saved), _shapes(target))
        if unexplained:
            raise CheckpointMismatchError(
                f"the checkpoint of step {step} was written by {version} and holds another "
                f"tree than this code builds ({unexplained}); it is left where it is. If it is "
                "another network, use a new --workdir for this config; if it is this run "
                "written by another version of alexnet_jax, resume it with that version (no "
                "migration of this difference is known)."
            )
        as_saved = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(tree),
            [
                jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=target[path].sharding)
                for path, m in saved.items()
            ],
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(as_saved),
                schedule=ocp.args.JsonRestore(),
                data=ocp.args.JsonRestore(),
            ),
        )
        state, schedule, data = restored["state"], restored["schedule"], restored["data"]
        if meta is None:
            self._say(
                f"notice: the checkpoint of step {step} was written by {version}, before "
                "checkpoints carried checksums: its bytes cannot be verified."
            )
            self.resumed = (step, "format 1: not verifiable")
        else:
            integrity.verify(meta, state, schedule, data)
            self.resumed = (step, "its checksums matched")
        leaves = integrity.leaf_paths(state)
        for migration in dict.fromkeys(plan.values()):
            paths = [p for p, m in plan.items() if m is migration]
            self._say(
                f"migrated the checkpoint of step {step} (written by {version}; the tree "
                f"changed in {migration.since}): {migration.name}: {', '.join(paths)}."
            )
        values = []
        for path, abstract in target.items():
            if path in leaves:
                values.append(leaves[path])
            else:
                value = np.asarray(plan[path].fill(path, leaves, step), abstract.dtype)
                values.append(jax.device_put(np.broadcast_to(value, abstract.shape),
                                             abstract.sharding))  # fmt: skip
        state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_state), values)
        return state, schedule, data

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict, Any] | None:
        """Restores the newest checkpoint that can be read; None when there is none at all.

        A checkpoint whose bytes cannot be read, or differ from their checksums, is reported
        in one line and moved aside to `<step>.corrupt` (Orbax's commit marker still decides
        what is complete), then the previous one is tried. A readable checkpoint of another
        tree stops the run and stays where it is.

        Raises:
          NoReadableCheckpointError: checkpoints were written, none can be read.
          CheckpointMismatchError: a readable checkpoint holds another tree (another network,
            or another version's without a known migration).
        """
        while (step := self.latest_step()) is not None:
            try:
                restored = (step, *self.restore(step, abstract_state))
            except CheckpointMismatchError:
                orbax_quiet.collect_abandoned_reads()
                raise
            except Exception as e:
                orbax_quiet.collect_abandoned_reads()
                aside = self._move_aside(step)
                why = (
                    f"is damaged: {e}"
                    if isinstance(e, integrity.ChecksumError)
                    else (f"cannot be read ({_gist(e)})")
                )
                self._say(
                    f"checkpoint of step {step} {why}; moved it to {aside} and trying the "
                    "previous one."
                )
            else:
                return restored
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
            multihost_utils.sync_global_devices(f"alexnet_jax set aside checkpoint {step}")
        self._manager.reload()
        return target

    def reached_preemption(self, step: int) -> bool:
        """True when JAX's multi-process runtime reports a preemption notice (all processes
        agree on the step); always False in a single-process run."""
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        self._manager.close()


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir/checkpoints` holds a complete step folder (Orbax names a checkpoint by
    its step once it is complete): a run that will resume, or try to. Reads the listing only."""
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(p.isdigit() for p in os.listdir(directory))


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
    others = sorted(
        (p.name for p in path.parent.parent.iterdir() if p.name.isdigit() and p != path.parent),
        key=int,
    )
    instead = (
        f"evaluate another checkpoint ({path.parent.parent}/{others[-1]})"
        if others
        else "train the run again"
    )
    try:
        meta_file = path.parent / "meta" / "metadata"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
        with ocp.PyTreeCheckpointer() as ckptr:
            tree = ckptr.metadata(path.resolve()).item_metadata.tree
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            state = ckptr.restore(path.resolve(), restore_args=args)
        if meta is not None:
            want = meta["checksums"]["state"]
            bad = [k for k, v in integrity.checksums(state).items() if want.get(k) != v]
            if bad:
                raise integrity.ChecksumError(
                    f"array {bad[0]} differs from the checksum saved with it"
                )
    except Exception as e:
        orbax_quiet.collect_abandoned_reads()
        why = str(e) if isinstance(e, integrity.ChecksumError) else f"cannot be read ({_gist(e)})"
        raise NoReadableCheckpointError(
            f"the checkpoint {path.parent} is damaged: {why}; {instead}, or resume the run, "
            "which sets it aside and continues from the previous one."
        ) from None
    return step, jax.tree.map(np.asarray, state["params"])
