"""Top-k error (the paper's tables report top-1 and top-5, §6) and the run's metric writers.

Every event goes to `workdir/metrics.jsonl` (one JSON object per line, with its `step`) and to
TensorBoard event files in `workdir/tensorboard`. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy (the multinomial logistic regression objective, §5).

    Written with one-hot labels rather than a gather so that batch-sharded logits need no
    resharding.
    """
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)


def topk_correct(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Per example, whether the label is among the k highest scores (ties count against).

    Counts the classes scoring strictly higher than the label, so it needs no sort and a
    constant output (all ties) is never counted as correct.
    """
    onehot = jax.nn.one_hot(labels, scores.shape[-1], dtype=bool)
    label_score = jnp.sum(jnp.where(onehot, scores, 0.0), axis=-1, keepdims=True)
    higher = jnp.sum((scores > label_score) | ((scores == label_score) & ~onehot), axis=-1)
    return higher < k


class MetricWriter:
    """Writes scalar events to metrics.jsonl and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str, *, resume_step: int = 0):
        """Opens the writers.

        Args:
          workdir: the run's directory.
          resume_step: the step the run starts from (that of the checkpoint it resumed, or 0).
            Events of later steps already in metrics.jsonl (written by an interrupted run after
            its last checkpoint) are dropped, so the file reads as one uninterrupted run.
        """
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.active:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                lines = f.readlines()
            events = _events(self.path, lines)  # without a line cut off by a kill
            kept = [line for line, e in zip(lines, events) if e["step"] <= resume_step]
            if len(kept) < len(lines):
                with open(self.path + ".tmp", "w") as f:
                    f.writelines(kept)
                os.replace(self.path + ".tmp", self.path)
        self._tb_dir, self._resume_step = os.path.join(workdir, "tensorboard"), resume_step

    def write(self, step: int, values: dict[str, Any]) -> None:
        """Writes one event: `values` (floats, ints) at `step`."""
        if not self.active:
            return
        clean = {k: _plain(v) for k, v in values.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **clean}) + "\n")
        if self._tb is None:  # opened at the first event: a run that logs nothing writes nothing
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(self._tb_dir, purge_step=self._resume_step)
        for key, value in clean.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(value: Any) -> Any:
    """A JSON-serialisable Python scalar from a NumPy/JAX scalar."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _events(path: str, lines: list[str]) -> list[dict[str, Any]]:
    """The events of metrics.jsonl's `lines`. A last line without its newline that does not
    parse was cut off by a kill mid-write and is left out; any other is an error.

    Raises:
      ValueError: a line that is not a JSON object with an integer step (naming the line).
    """
    events = []
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
            if number == len(lines) and not line.endswith("\n"):
                break
            event = f"{type(e).__name__}: {e}"
        if not isinstance(event, dict) or type(event.get("step")) is not int:
            raise ValueError(
                f"{path}, line {number}, is not an event with a step ({str(event):.80}); the "
                "file is damaged: remove that line (or restore the file) and run again."
            )
        events.append(event)
    return events


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All events of a run's metrics.jsonl, in order (`_events`)."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        return _events(path, f.readlines())
