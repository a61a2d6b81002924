"""Orbax checkpoints that resume a run exactly: parameters, optimizer state, step, RNG, the
learning-rate schedule's state and the data iterator's position, saved together.

Resume order (`train.train_and_evaluate`): build the mesh and an abstract train state with its
shardings; find the latest *complete* checkpoint (Orbax writes to a temporary directory and
renames it when done, so a run killed mid-save leaves the previous one as the latest); restore
the state into those shardings, the schedule from its JSON and the data iterator from its saved
position; continue from the restored step. Since every random number is
`fold_in(seed key, step)` and the batches come from the restored iterator, the resumed run
computes exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores {state, schedule, data} under `workdir/checkpoints`."""

    def __init__(self, workdir: str, *, keep: int = 3):
        """Opens (or creates) the checkpoint directory.

        Args:
          workdir: the run's directory.
          keep: how many of the latest checkpoints to keep.
        """
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        """Step of the latest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, schedule: dict, data: Any, *, force: bool = False):
        """Saves a checkpoint of `step` (asynchronously; `wait` blocks until it is on disk).

        Args:
          step: the training step the state has completed.
          state: the train state pytree (arrays, possibly sharded).
          schedule: the learning-rate schedule's `state_dict()` (JSON).
          data: the training iterator's state (JSON-serialisable).
          force: save even if a checkpoint of this step exists.
        """
        if not force and step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                schedule=ocp.args.JsonSave(schedule),
                data=ocp.args.JsonSave(data),
            ),
            force=True,
        )

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

    def reached_preemption(self, step: int) -> bool:
        """True when JAX's multi-process runtime reports a preemption notice (all processes
        agree on the step); always False in a single-process run."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )
