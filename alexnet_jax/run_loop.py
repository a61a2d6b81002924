"""The training loop of `train.train_and_evaluate`: one jitted step after another, then the
decisions to log, evaluate and save (flax's examples/imagenet shape), with the paper's recipe
around it (§5: the plateau rule reads each validation error; the test split is evaluated once,
at the end).

Also here: a NaN guard that keeps a non-finite step out of every checkpoint, SIGTERM handling
(save and stop; a multi-process run stops where JAX's preemption notice says), the case of a
finished run started again, and one evaluation pass over a split (`evaluate`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from alexnet_jax import augment, checkpoint, input_pipeline, metrics, optim

# `state` below is a `train.TrainState` (this module is imported by train.py, not the reverse).
TrainState = Any


def evaluate(
    eval_step, params, batches: Iterator[dict], stats, mesh, batch_size: int | None = None
) -> dict[str, float]:
    """Runs `eval_step` over every batch of an evaluation pass; returns the metric values.

    `batch_size` is the global batch (default: this process's batch times the processes)."""
    totals = None
    for batch in batches:
        images, labels, mask = _global_batch(batch, mesh, ("image", "label", "mask"), batch_size)
        # The per-batch sums are replicated: every process reads its own copy and adds them on
        # the host (an eager jnp.add of arrays spanning several processes could hang).
        out = jax.tree.map(
            lambda v: np.float64(jax.device_get(v)), eval_step(params, images, labels, mask, stats)
        )
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    if totals is None:
        raise ValueError("the evaluation split is empty.")
    result = {}
    for prefix, t in totals.items():
        n = float(t["count"])
        result[f"{prefix}_loss"] = float(t["loss"]) / n
        result[f"{prefix}_top1_error"] = 1.0 - float(t["top1"]) / n
        result[f"{prefix}_top5_error"] = 1.0 - float(t["top5"]) / n
    result["eval_examples"] = int(totals["eval"]["count"])
    return result


def _global_batch(batch: dict, mesh, keys, batch_size: int | None = None) -> list[jax.Array]:
    """This process's rows of a global batch (`parallel.process_rows`), assembled into arrays
    of `batch_size` rows sharded over 'data' (replicated over 'tower')."""
    sharding = NamedSharding(mesh, P("data"))
    out = []
    for k in keys:
        local = np.asarray(batch[k])
        shape = None if batch_size is None else (batch_size, *local.shape[1:])
        out.append(jax.make_array_from_process_local_data(sharding, local, shape))
    return out


class _Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint and stops at the next step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() > 1:
            # Several processes: jax.distributed.initialize installed JAX's own SIGTERM
            # notifier, whose preemption sync point (Orbax's `reached_preemption`, checked every
            # step) makes every process stop at the same step. A Python handler here would
            # replace it: the signalled process would stop alone and the others would wait for
            # it in the next collective forever.
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: rely on Orbax's multi-process notice only
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def say(message: str) -> None:
    """Prints a line on process 0 without breaking the progress bar."""
    if jax.process_index() == 0:
        tqdm.write(message)


def _checked(step: int, values: Any, checkpointer: checkpoint.Checkpointer) -> dict[str, float]:
    """Fetches a step's metrics; stops the run if its loss or its new parameters are NaN/inf.

    The loss is that of the parameters before the step; the parameter norm is of those after
    it, so checking both keeps a non-finite update out of the next checkpoint.
    """
    values = {k: float(v) for k, v in jax.device_get(values).items()}
    bad = [k for k in ("train_loss", "param_norm") if not math.isfinite(values[k])]
    if not bad:
        return values
    checkpointer.wait()
    what = ", ".join(f"{k} = {values[k]}" for k in bad)
    if checkpointer.resumed is not None and not checkpointer.saved_since_resume:
        # Nothing was saved since the resume: the checkpoint it came from is the first suspect.
        resumed, verified = checkpointer.resumed
        previous = [s for s in checkpointer.all_steps() if s < resumed]
        then = (
            f"rerun the same command to resume from step {max(previous)}"
            if previous
            else "rerun the same command to start afresh"
        )
        path = checkpointer.step_path(resumed)
        raise FloatingPointError(
            f"{what} at step {step}, {step - resumed} step(s) after resuming from the "
            f"checkpoint of step {resumed} ({verified}): that checkpoint is the first suspect, "
            f"and nothing was saved since. Move it aside (mv {path} {path}.suspect) and {then}; "
            "if the run diverges there again, lower optimizer.learning_rate or check the input "
            "data."
        )
    last = checkpointer.latest_step()
    kept = (
        f"the last good checkpoint (step {last}) in {checkpointer.directory} is kept"
        if last is not None
        else "no checkpoint had been written yet"
    )
    raise FloatingPointError(
        f"{what} at step {step}: the run is stopped and {kept}. Lower "
        "optimizer.learning_rate or check the input data."
    )


@dataclasses.dataclass
class Run:
    """What the training loop needs, built once by `train.train_and_evaluate`."""

    config: Any
    mesh: jax.sharding.Mesh
    stats: augment.DataStats
    steps_per_epoch: int
    total_steps: int
    plateau: optim.Plateau | None
    checkpointer: checkpoint.Checkpointer
    writer: metrics.MetricWriter
    train_step: Callable
    eval_step: Callable
    eval_source: Any
    test_source: Any = None
    rows: tuple[int, int] | None = None

    def _pass(self, source: Any, params: Any) -> dict[str, float]:
        """eval_* metrics of one pass over `source`, this process feeding its rows."""
        with input_pipeline.create_eval_iterator(self.config, source, rows=self.rows) as batches:
            return evaluate(
                self.eval_step, params, batches, self.stats, self.mesh, self.config.batch_size
            )

    def evaluate(self, step: int, state: TrainState) -> tuple[dict[str, float], TrainState]:
        """One evaluation pass, logged, printed and fed to the plateau rule, which may write a
        lower learning rate into the returned state."""
        result = self._pass(self.eval_source, state.params)
        self.writer.write(step, result)
        say(_format_eval(step, result, f"eval ({self.config.eval_split})"))
        if self.plateau is not None and self.plateau.on_eval(step, result["eval_top1_error"]):
            lr = self.plateau.learning_rate
            say(f"step {step}: validation error stopped improving; learning rate now {lr:g}")
            state = state.replace(opt_state=_with_learning_rate(state.opt_state, lr))
        return result, state

    def schedule_state(self) -> dict[str, Any]:
        """What the checkpoint keeps of the schedule: the plateau rule's state, or its name."""
        if self.plateau is not None:
            return self.plateau.state_dict()
        return {"schedule": self.config.optimizer.schedule}

    def _logged_at(self, step: int) -> dict[str, float]:
        """The evaluation (and test) results metrics.jsonl already holds for `step`."""
        found: dict[str, float] = {}
        if not os.path.exists(self.writer.path):
            return found
        for event in metrics.read_metrics(os.path.dirname(self.writer.path)):
            if event["step"] == step:
                found.update({k: v for k, v in event.items() if k.startswith(("eval", "test"))})
        return found

    def loop(
        self, state: TrainState, train_iter: Any, window: list | None = None
    ) -> dict[str, float]:
        """Trains from `state`'s step to `total_steps` and tests once; returns the final
        evaluation's (and test's) metrics.

        Flax's examples/imagenet loop: one step, then the decisions to log, evaluate and save.
        Metrics are fetched one step late so that dispatch stays asynchronous, and always
        before a checkpoint is written, so a NaN is never saved. SIGTERM (or the preemption
        notice of a multi-process run) saves a checkpoint and stops after the current step.

        `window`: the per-step training metrics since the last logged event, as the checkpoint
        that the run resumed from saved them, so that event averages the same steps.
        """
        first = int(state.step)
        if first >= self.total_steps:
            return self._finished(first, state)
        config = self.config
        bar = tqdm(
            total=self.total_steps,
            initial=first,
            unit="step",
            dynamic_ncols=True,
            disable=jax.process_index() != 0 or not config.progress_bar,
        )
        window = list(window or [])
        pending = None  # (step, its metrics, not fetched yet)
        result: dict[str, float] = {}
        tick, tick_step = time.perf_counter(), first
        with _Preemption() as preemption:
            # `step`: the steps completed once this batch's update is made.
            for step, batch in zip(range(first + 1, self.total_steps + 1), train_iter):
                images, labels = _global_batch(
                    batch, self.mesh, ("image", "label"), config.batch_size
                )
                state, out = self.train_step(state, images, labels, self.stats)
                if pending is not None:
                    window.append(_checked(*pending, self.checkpointer))
                pending = (step, out)
                bar.update(1)
                stop = preemption.requested or self.checkpointer.reached_preemption(step)
                last = step == self.total_steps
                log_now = step % config.log_every_steps == 0 or last
                eval_now = step % config.eval_every_steps == 0 or last
                save_now = step % config.checkpoint_every_steps == 0 or last or stop
                if not (log_now or eval_now or save_now):
                    continue
                window.append(_checked(*pending, self.checkpointer))
                pending = None
                if log_now:
                    now = time.perf_counter()
                    speed = (step - tick_step) * config.batch_size / (now - tick)
                    self._log(step, window, speed, bar)
                    window, tick, tick_step = [], now, step
                    if not save_now:  # a save due now is checked by the save itself
                        every = config.checkpoint_every_steps
                        self.checkpointer.warn_if_next_will_not_fit(
                            min(self.total_steps, (step // every + 1) * every)
                        )
                if eval_now:
                    result, state = self.evaluate(step, state)
                if save_now:
                    data_state = {"iterator": train_iter.get_state(), "window": window}
                    self.checkpointer.save(step, state, self.schedule_state(), data_state)
                if stop:
                    say(f"SIGTERM: saved the checkpoint of step {step} and stopped.")
                    break
        bar.close()
        if step < self.total_steps:  # stopped early: the next run resumes from the checkpoint
            return result
        return self._tested(step, state, result)

    def _log(self, step: int, window: list, images_per_sec: float, bar: tqdm) -> None:
        """Writes the mean of the training metrics of `window`'s steps (the learning rate of
        its last step) and shows them on the progress bar."""
        summary = {
            k: float(np.mean([w[k] for w in window])) for k in window[0] if k != "learning_rate"
        }
        summary["learning_rate"] = lr = window[-1]["learning_rate"]  # the last step's
        summary["images_per_sec"] = images_per_sec
        summary["epoch"] = step / self.steps_per_epoch
        self.writer.write(step, summary)
        bar.set_postfix(
            loss=f"{summary['train_loss']:.3f}", lr=f"{lr:.2g}", img_s=f"{images_per_sec:.0f}"
        )

    def _finished(self, step: int, state: TrainState) -> dict[str, float]:
        """A finished run started again: trains nothing and reports its final results from
        metrics.jsonl, measuring (and logging) only what it lacks, the final evaluation or the
        test."""
        done = self._logged_at(step)
        if "eval_top1_error" in done and (self.test_source is None or "test_top1_error" in done):
            say(f"this run finished at step {step}; its final results (from metrics.jsonl):")
            say(_format_eval(step, done, f"eval ({self.config.eval_split})"))
            if self.test_source is not None:
                values = {"eval" + k.removeprefix("test"): v for k, v in done.items()
                          if k.startswith("test")}  # fmt: skip
                say(_format_eval(step, values, f"TEST ({self.config.test_split}, reported once)"))
            return done
        result = {k: v for k, v in done.items() if k.startswith("eval")}
        if not result:
            result, state = self.evaluate(step, state)
        return self._tested(step, state, result)

    def _tested(self, step: int, state: TrainState, result: dict[str, float]) -> dict[str, float]:
        """`result` and, with a test split, its results at the last step: those metrics.jsonl
        already holds (the run reached that step before), else the one test pass, now."""
        if self.test_source is None:
            return result
        done = self._logged_at(step)
        if "test_top1_error" in done:  # logged before this rerun
            return {**result, **{k: v for k, v in done.items() if k.startswith("test")}}
        # The last checkpoint is written first: with several processes, Orbax's background
        # commit and the test pass's computations must not run side by side.
        self.checkpointer.wait()
        return {**result, **self.test(step, state.params)}

    def test(self, step: int, params: Any) -> dict[str, float]:
        """The one evaluation on the test split, at the end: logged and printed as test_*.

        Nothing reads it during training (the schedule reads `evaluate`'s validation error).
        """
        values = self._pass(self.test_source, params)
        result = {"test" + k.removeprefix("eval"): v for k, v in values.items()}
        self.writer.write(step, result)
        say(_format_eval(step, values, f"TEST ({self.config.test_split}, reported once)"))
        return result


def _with_learning_rate(opt_state: Any, learning_rate: float) -> Any:
    """`opt_state` with a new rate placed where the old one was (same dtype and sharding, so
    the jitted step is not compiled again); one host-to-device copy, at a plateau drop only."""
    old = optim.get_learning_rate(opt_state)
    new = jax.make_array_from_callback(
        (), old.sharding, lambda _: np.asarray(learning_rate, old.dtype)
    )
    return optim.set_learning_rate(opt_state, new)


def _format_eval(step: int, result: dict[str, float], what: str) -> str:
    text = (
        f"step {step}: {what} top-1 error {100 * result['eval_top1_error']:.2f}%, "
        f"top-5 {100 * result['eval_top5_error']:.2f}% (centre crop"
    )
    if "eval10_top1_error" in result:
        text += (
            f"); 10 crops: top-1 {100 * result['eval10_top1_error']:.2f}%, "
            f"top-5 {100 * result['eval10_top5_error']:.2f}%"
        )
    else:
        text += ")"
    return text + f" on {result['eval_examples']} examples"
