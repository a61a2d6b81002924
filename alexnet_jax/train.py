"""Training and evaluation: the paper's recipe (§5) over the ('data', 'tower') mesh.

`train_and_evaluate(config, workdir)` reads top to bottom: check the config, build the mesh and
the data, initialise or restore the state, then loop over jitted train steps with evaluation,
logging and checkpoints at their cadences. Every random number of step s is derived from
`fold_in(train key, s)`, so a run restored from a checkpoint computes exactly what the
uninterrupted run would have. The loop is `run_loop.Run.loop`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import (
    augment,
    checkpoint,
    config_checks,
    datasets,
    input_pipeline,
    metrics,
    migrations,
    models,
    optim,
    parallel,
    splits,
    transfer,
)
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.images import check_resize_mode
from alexnet_jax.run_loop import Run, say

# The errors `train_and_evaluate` raises on purpose (a refused config, data, checkpoint or
# source; a NaN; a full disk): each one line naming the problem and the fix, which the command
# lines (main, the sweep worker) print as `error: <line>` without a traceback.
DELIBERATE = (ValueError, FileNotFoundError, FloatingPointError, checkpoint.DiskFullError)


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: saved whole in every checkpoint."""

    step: jax.Array  # int32 scalar: steps completed
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data of the training key; step s uses fold_in(key, s)


# --- Configuration checks ----------------------------------------------------------------------


# Config fields that were replaced: a command line that still sets one is told the new field
# (the locked config alone would only say that the old one does not exist).
RENAMED_FIELDS = {
    "model.conv1_matmul": "config.model.kernels: 'cpu' (conv1 as a matmul and the other "
    "CPU-tuned ops), 'xla' (XLA's own convolutions and pooling) or 'auto' (by backend)",
}


def renamed_field_message(argv: list[str]) -> str | None:
    """The one-line message for the first `--config.<field>` of `argv` that was replaced."""
    for arg in argv:
        for old, new in RENAMED_FIELDS.items():
            if arg.split("=", 1)[0] == f"--config.{old}":
                return f"--config.{old} was replaced by {new}."
    return None


def check_config(config: Any, num_devices: int, num_processes: int = 1) -> None:
    """Raises one ValueError listing every problem of `config`, before anything is compiled."""
    problems = []

    def check(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ValueError as e:
            problems.append(str(e))
            return None

    check(lambda: config_checks.check_model(config.model))
    if config.model.name == "alexnet":
        m = config.model
        check(
            lambda: config_checks.check_image_size(
                config.image_size, m.pool_window, m.conv1_padding
            )
        )
    if config.image_size > config.resize_size:
        problems.append(
            f"image_size={config.image_size} is larger than resize_size={config.resize_size}: "
            "crops are taken from the resized image; raise resize_size or lower image_size."
        )
    check(lambda: check_resize_mode(config.resize_mode))
    check(lambda: datasets.parse_dataset(config.dataset))
    shape = check(lambda: parallel.mesh_shape(config.mesh, config.model, num_devices))
    if config.mesh.grad_sum not in parallel.GRAD_SUMS:
        problems.append(
            f"mesh.grad_sum={config.mesh.grad_sum!r} is not one of {parallel.GRAD_SUMS}: "
            "'ordered' (the same bits for any process count) or 'psum'."
        )
    if shape is not None and config.batch_size % shape[0]:
        problems.append(
            f"batch_size={config.batch_size} is not divisible by the {shape[0]} data-parallel "
            f"replicas of the mesh (mesh.data={config.mesh.data}); use a multiple of {shape[0]}."
        )
    if config.batch_size % num_processes:
        problems.append(
            f"batch_size={config.batch_size} is not divisible by the {num_processes} processes."
        )
    problems += config_checks.split_problems(config)
    problems += transfer.check_init_from(config)
    check(lambda: optim.create_optimizer(config.optimizer))
    check(
        lambda: optim.check_multiplier_keys(
            [key for key, _ in optim.parameter_rates(config.optimizer, 1)[1]],
            models.parameter_names(config.model),
        )
    )
    check(lambda: augment.check_augment_config(config.augment))
    if config.augment.mean_file and config.augment.mean in augment.MEAN_IMAGE_MODES:
        # Read now (one array): a bad file is refused before the workdir is touched.
        check(lambda: input_pipeline.mean_file_image(config))
    if config.optimizer.schedule == "plateau":
        check(lambda: optim.Plateau(config.optimizer))
    for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "batch_size"):
        if config[field] <= 0:
            problems.append(f"{field} must be positive, got {config[field]}.")
    if config.num_train_steps <= 0 and config.num_train_steps != -1 and config.num_epochs <= 0:
        problems.append("set num_train_steps > 0, or num_train_steps=-1 and num_epochs > 0.")
    if problems:  # once each: two checks may read the same bad field
        problems = list(dict.fromkeys(problems))
        raise ValueError("Invalid config:\n  - " + "\n  - ".join(problems))


def _check_split_overlap(config: Any, train_source, eval_source, test_source) -> None:
    """Raises ValueError if the evaluation or test examples are also trained on."""
    pairs = [("eval_split", eval_source)]
    if test_source is not None:
        pairs.append(("test_split", test_source))
    for field, source in pairs:
        shared = splits.shared_examples(train_source, source)
        if shared:
            raise ValueError(
                f"{field}={config[field]!r} shares {shared:,} examples with train_split="
                f"{config.train_split!r}; hold it out, e.g. train_split='train[:80%]' with "
                f"{field}='train[80%:]'."
            )
    if test_source is not None and splits.shared_examples(eval_source, test_source):
        raise ValueError(
            f"eval_split={config.eval_split!r} overlaps test_split={config.test_split!r}: the "
            "evaluations that drive the schedule would see test examples; use disjoint splits."
        )


def num_steps(config: Any, train_examples: int) -> tuple[int, int]:
    """(steps per epoch, total steps) for a training set of `train_examples` examples."""
    steps_per_epoch = max(1, train_examples // config.batch_size)
    if config.num_train_steps > 0:
        return steps_per_epoch, config.num_train_steps
    return steps_per_epoch, max(1, math.ceil(config.num_epochs * steps_per_epoch))


# --- State and steps ---------------------------------------------------------------------------


def create_train_state(
    config: Any,
    mesh: jax.sharding.Mesh,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    imported: transfer.Imported | None = None,
) -> TrainState:
    """Initialises the parameters (§5 initialisation, or `config.model.init`'s) and places them
    on the mesh; `imported` (`transfer.load`) replaces its layers bit for bit (fine-tuning:
    step 0, a fresh optimizer state)."""
    init_rng, train_rng = jax.random.split(rng)
    params = parallel.init_params(config.model, (config.image_size,) * 2 + (3,), init_rng)
    if imported is not None:
        params = transfer.merge(params, imported)
    params = parallel.shard(params, mesh, parallel.param_spec(config.model))
    opt_state = placed_like_params(jax.jit(tx.init)(params), params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        rng=jax.random.key_data(train_rng),
    )


def abstract_train_state(
    config: Any, mesh: jax.sharding.Mesh, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    """`create_train_state`'s result as ShapeDtypeStructs with the same shardings, computed
    without drawing a parameter: what a checkpoint is restored into. A resumed run thus neither
    compiles nor runs the initialisers (seconds for AlexNet on a CPU) and never holds a second
    copy of the state."""
    init_rng, train_rng = jax.random.split(rng)
    image_shape = (config.image_size,) * 2 + (3,)
    shapes = jax.eval_shape(lambda r: parallel.init_params(config.model, image_shape, r), init_rng)
    spec = NamedSharding(mesh, parallel.param_spec(config.model))
    params = jax.tree.map(lambda s: _abstract(s, spec), shapes)
    # tx.init's outputs where jit puts them for these inputs: its compiled program says, unrun.
    placed = jax.jit(tx.init).lower(params).compile().out_info
    opt_state = jax.tree.map(lambda s: _abstract(s, s.sharding), placed)
    return TrainState(
        step=checkpoint.abstract_like(jnp.zeros((), jnp.int32)),  # tiny: made as the state's
        params=params,
        opt_state=_map_like_params(
            opt_state, params, lambda node, shardings: jax.tree.map(_abstract, node, shardings)
        ),
        rng=checkpoint.abstract_like(jax.random.key_data(train_rng)),
    )


def _abstract(x: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def placed_like_params(opt_state: Any, params: Any) -> Any:
    """`opt_state` with each subtree shaped like `params` (the momentum) placed like them.

    `tx.init`'s zeros depend on no parameter's value, so jit leaves them replicated: until the
    first step every device would hold both towers' momentum, and the step, which returns it
    sharded like the parameters, would compile a second program for its second call."""
    return _map_like_params(opt_state, params, jax.device_put)


def _map_like_params(opt_state: Any, params: Any, place: Callable[[Any, Any], Any]) -> Any:
    """`place(subtree, the params' shardings)` on each subtree of `opt_state` shaped like
    `params`; the other leaves as they are."""
    shape = jax.tree.structure(params)
    shardings = jax.tree.map(lambda p: p.sharding, params)

    def like_params(node: Any) -> bool:
        return jax.tree.structure(node) == shape

    return jax.tree.map(
        lambda node: place(node, shardings) if like_params(node) else node,
        opt_state,
        is_leaf=like_params,
    )


def make_train_step(
    config: Any,
    mesh: jax.sharding.Mesh,
    tx: optax.GradientTransformation,
    *,
    augment_on_device: bool = True,
    steps_per_epoch: int | None = None,
):
    """The jitted training step `(state, images_u8, labels, stats) -> (state, metrics)`.

    Augmentation (§4.1) runs on the device inside the step. The learning rate comes from the
    optimizer state (`optim.create_optimizer`) and is returned as `metrics['learning_rate']`.
    `augment_on_device=False` takes `images` as the network's float inputs (image_size square,
    mean already subtracted) and ignores `stats`: the same step without augmentation, which is
    what the benchmarks time against frameworks that augment elsewhere. `steps_per_epoch`
    places the augmentations' end epochs (`config.augment.*_end_epoch`), if any are set.
    """
    if augment_on_device:
        augment.end_steps(config.augment, steps_per_epoch)  # refuse a bad setting now
    apply = parallel.sharded_apply(config.model, mesh, train=True, grad_sum=config.mesh.grad_sum)

    def whole(per_example):
        # The batch's values gathered on every device before they are averaged: a mean of the
        # shards' partial sums would add them in the collective library's order, which differs
        # between one process and several (the parameters do not depend on it; the logged loss
        # would).
        return jax.lax.with_sharding_constraint(per_example, NamedSharding(mesh, P()))

    def train_step(state, images, labels, stats):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        aug_rng, dropout_rng = jax.random.split(rng)
        if augment_on_device:
            x = augment.train_views(
                aug_rng, images, stats, config.augment, config.image_size,
                step=state.step, steps_per_epoch=steps_per_epoch,
            )  # fmt: skip
        else:
            x = images

        def loss_fn(params):
            logits = apply(params, x, dropout_rng)
            return jnp.mean(whole(metrics.cross_entropy(logits, labels))), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {
            "train_loss": loss,
            "train_top1_error": 1.0 - jnp.mean(whole(metrics.topk_correct(logits, labels, 1))),
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": optim.get_learning_rate(opt_state),  # the rate this update used
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

    return jax.jit(train_step, donate_argnums=(0,))


def single_device_step(
    config: Any,
    *,
    augment_on_device: bool = False,
    total_steps: int = 1,
    steps_per_epoch: int | None = None,
) -> tuple[jax.sharding.Mesh, TrainState, Callable]:
    """`make_train_step` on `jax.devices()[0]` alone, both towers side by side (mesh (1, 1)),
    with the initial state of `config.seed`: the step that experiments/ time and run."""
    return mesh_step(
        config, (1, 1), augment_on_device=augment_on_device, total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )  # fmt: skip


def mesh_step(
    config: Any,
    shape: tuple[int, int],
    *,
    augment_on_device: bool = False,
    total_steps: int = 1,
    steps_per_epoch: int | None = None,
) -> tuple[jax.sharding.Mesh, TrainState, Callable]:
    """`make_train_step` on the first data x tower devices, with the initial state of
    `config.seed`.

    Args:
      config: a full config; its mesh section is replaced by `shape`.
      shape: (data, tower) of the mesh.
      augment_on_device: as in `make_train_step` (default off: images are the network's inputs).
      total_steps: the run length the schedule is built for ('cosine' reaches 0 there).
      steps_per_epoch: converts epochs ('step', 'manual', end epochs) to steps; None: 1 for
        the schedules, and end epochs are refused.

    Returns:
      (mesh, state, step): call `step(state, images, labels, stats)` under `jax.set_mesh(mesh)`.
    """
    config = config.copy_and_resolve_references()
    config.mesh.data, config.mesh.tower = shape
    mesh = parallel.make_mesh(config.mesh, config.model, jax.devices()[: shape[0] * shape[1]])
    tx = optim.create_optimizer(
        config.optimizer, steps_per_epoch=steps_per_epoch or 1, total_steps=total_steps
    )
    with jax.set_mesh(mesh):
        state = create_train_state(config, mesh, tx, jax.random.key(config.seed))
    step = make_train_step(
        config, mesh, tx, augment_on_device=augment_on_device, steps_per_epoch=steps_per_epoch
    )
    return mesh, state, step


def make_eval_step(config: Any, mesh: jax.sharding.Mesh):
    """The jitted evaluation step `(params, images_u8, labels, mask, stats) -> sums`.

    Centre crop ('eval_*') and, when `config.eval_ten_crop`, the average of the softmaxes of
    the ten patches of §4.1 ('eval10_*'). Returns sums over the real (mask) examples.
    """
    apply = parallel.sharded_apply(config.model, mesh, train=False)
    no_rng = jax.random.key(0)  # no dropout in evaluation

    def sums(probs_or_logits, labels, mask, losses):
        mask = mask.astype(jnp.float32)
        return {
            "loss": jnp.sum(losses * mask),
            "top1": jnp.sum(metrics.topk_correct(probs_or_logits, labels, 1) * mask),
            "top5": jnp.sum(metrics.topk_correct(probs_or_logits, labels, 5) * mask),
            "count": jnp.sum(mask),
        }

    def eval_step(params, images, labels, mask, stats):
        x = augment.eval_views(images, stats, config.augment, config.image_size, ten_crop=False)
        logits = apply(params, x, no_rng)
        out = {"eval": sums(logits, labels, mask, metrics.cross_entropy(logits, labels))}
        if config.eval_ten_crop:
            views = augment.eval_views(
                images, stats, config.augment, config.image_size, ten_crop=True
            )
            b, v = views.shape[:2]
            logits10 = apply(params, views.reshape(b * v, *views.shape[2:]), no_rng)
            probs = jnp.mean(jax.nn.softmax(logits10).reshape(b, v, -1), axis=1)
            onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
            losses = -jnp.log(jnp.maximum(jnp.sum(probs * onehot, axis=-1), 1e-30))
            out["eval10"] = sums(probs, labels, mask, losses)
        return out

    return jax.jit(eval_step)


# --- The run -----------------------------------------------------------------------------------


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
    """Trains `config`'s model, evaluating and checkpointing along the way.

    Args:
      config: the run's ConfigDict (configs/alexnet.py documents every field).
      workdir: where checkpoints, metrics.jsonl, TensorBoard events and config.json go. A run
        started again with the same workdir resumes from its latest complete checkpoint.

    Returns:
      The final evaluation's metrics (eval_top1_error, eval_top5_error, eval10_*, ...).
    """
    # Everything is validated before anything is written: a refused run leaves the workdir
    # (the record of the run in it) as it was.
    check_config(config, jax.device_count(), jax.process_count())
    workdir_lib.check_path(workdir)
    mesh = parallel.make_mesh(config.mesh, config.model)
    # The rows of every batch this process's devices hold: what it loads (all of them when
    # its devices are one replica's towers, its share when they are whole replicas).
    rows = parallel.process_rows(mesh, config.batch_size)
    train_source = input_pipeline.create_source(config, config.train_split)
    _check_readable(train_source, config.train_split)
    eval_source = input_pipeline.create_source(config, config.eval_split)
    test_source = (
        input_pipeline.create_source(config, config.test_split) if config.test_split else None
    )
    _check_split_overlap(config, train_source, eval_source, test_source)
    if train_source.num_classes != config.model.num_classes:
        raise ValueError(
            f"{config.dataset} has {train_source.num_classes} classes but model.num_classes="
            f"{config.model.num_classes}; set --config.model.num_classes="
            f"{train_source.num_classes}."
        )
    allowed, refused = workdir_lib.config_changes(config, workdir)
    workdir_lib.refuse_config_changes(refused, workdir)
    # A run that starts afresh from another network reads it now, before anything is written;
    # a run with checkpoints resumes from its own and never reads the source again.
    imported = None
    if config.init_from.source and not checkpoint.has_checkpoints(workdir):
        imported = transfer.load(config)
    with _locked(workdir):
        return _train_and_evaluate(
            config, workdir, mesh, rows, train_source, eval_source, test_source, allowed,
            imported,
        )  # fmt: skip


@contextlib.contextmanager
def _locked(workdir: str) -> Iterator[None]:
    """Holds `workdir`'s lock (`workdir.Lock`, taken by process 0) for the run.

    Raises:
      WorkdirError: on every process, when process 0 could not take the lock.
    """
    with contextlib.ExitStack() as held:
        refused = None
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            try:
                held.enter_context(workdir_lib.Lock(workdir, say=say))
            except workdir_lib.WorkdirError as e:
                refused = e
        if jax.process_count() > 1:  # every process stops if process 0 could not take it
            taken = multihost_utils.broadcast_one_to_all(np.int32(refused is None))
            if not int(taken) and refused is None:
                refused = workdir_lib.WorkdirError(
                    f"process 0 could not take the lock of {workdir} (another run holds it; "
                    "process 0 says which)."
                )
        if refused is not None:
            raise refused
        yield


def _check_readable(source: Any, split: str, sample: int = 16) -> None:
    """Refuses a split none of whose sampled images (evenly spaced) can be read."""
    n = len(source)
    picks = sorted({i * n // min(n, sample) for i in range(min(n, sample))})
    errors = []
    for i in picks:
        try:
            source[i]
        except input_pipeline.BadExample as e:
            errors.append(e)
        else:
            return
    raise ValueError(
        f"{source.name} split {split!r}: 0 of {len(picks)} sampled images (of {n:,}) could be "
        f"read; first error: {errors[0]}. Check the files, or point --config.dataset elsewhere."
    )


def _train_and_evaluate(
    config, workdir, mesh, rows, train_source, eval_source, test_source, allowed, imported=None
) -> dict[str, float]:
    steps_per_epoch, total_steps = num_steps(config, len(train_source))
    tx = optim.create_optimizer(
        config.optimizer, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )
    plateau = optim.Plateau(config.optimizer) if config.optimizer.schedule == "plateau" else None
    tested = (
        f", {len(test_source):,} test ({config.test_split}, once at the end)" if test_source else ""
    )
    say(
        f"{config.dataset}: {len(train_source):,} training ({config.train_split}), "
        f"{len(eval_source):,} evaluation ({config.eval_split})"
        + tested
        + f" examples; {total_steps:,} steps of {config.batch_size} ({steps_per_epoch:,} per "
        f"epoch) on a {dict(mesh.shape)} mesh of {jax.devices()[0].platform} devices"
    )

    with jax.set_mesh(mesh):
        stats = input_pipeline.load_data_stats(config, train_source)
        stats = jax.device_put(stats, NamedSharding(mesh, P()))
        # The state is drawn only when no checkpoint restores: a resumed run initialises
        # nothing. With a source read above, its layers are in place from the start.
        abstract = abstract_train_state(config, mesh, tx, jax.random.key(config.seed))
        checkpointer = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints, say=say)
        checkpointer.expect_size(abstract)
        train_iter = input_pipeline.create_train_iterator(config, train_source, rows=rows)
        restored = checkpointer.restore_latest(abstract)
        if restored is None and config.init_from.source and imported is None:
            imported = transfer.load(config)  # a step folder the restore did not count
        if restored is None:
            state = create_train_state(config, mesh, tx, jax.random.key(config.seed), imported)
        if restored is None and config.init_from.source:
            r = imported.record
            say(
                f"initialised from {r['source']} ({r['format']}"
                + (f", step {r['step']}" if "step" in r else f", sha256 {r['sha256'][:16]}")
                + f"): imported {', '.join(r['imported'])}"
                + (f"; {', '.join(r['excluded'])} from this config's init" if r["excluded"] else "")
            )
        elif restored is not None:
            imported = None  # resumed: the record keeps what the run was started from
        # The record is written once the checkpoint is known to be this run's (a refused
        # restore leaves config.json as it was).
        if jax.process_index() == 0:
            record = None if imported is None else imported.record
            for notice in workdir_lib.write_record(config, workdir, allowed, record):
                say(notice)
        start, window = None, []
        if restored is not None:
            start, state, schedule_state, data_state = restored
            if plateau is not None:
                plateau.load_state_dict(schedule_state)
            iterator_state, window = migrations.data_item(data_state)
            train_iter.set_state(iterator_state)
            say(f"resumed from the checkpoint of step {start} in {checkpointer.directory}")
        run = Run(
            config=config,
            mesh=mesh,
            stats=stats,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            plateau=plateau,
            checkpointer=checkpointer,
            writer=metrics.MetricWriter(workdir, resume_step=start or 0),
            train_step=make_train_step(config, mesh, tx, steps_per_epoch=steps_per_epoch),
            eval_step=make_eval_step(config, mesh),
            eval_source=eval_source,
            test_source=test_source,
            rows=rows,
        )
        try:
            result = run.loop(state, train_iter, window)
        finally:
            try:
                checkpointer.wait()  # may raise DiskFullError: the rest is closed regardless
            finally:
                checkpointer.close()
                run.writer.close()
                train_iter.close()
    skipped = getattr(train_iter, "skipped", None)
    if skipped and any(skipped.values()):
        say(f"skipped unreadable training examples: {skipped}")
    return result
