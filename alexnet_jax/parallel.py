"""The ('data', 'tower') device mesh and the tower split under `jax.shard_map` (paper §3.2).

The paper spread its two towers over two GTX 580s, which exchanged activations only at the inputs
of conv3, fc6, fc7 and fc8. Here the 'tower' mesh axis plays the GPUs: with `mesh.tower = 2` each
device holds the parameters of one tower (every AlexNet parameter has a leading tower axis,
sharded over 'tower') and computes that tower, and `AlexNet._all_towers` all-gathers activations
at exactly those points (and the logits). The 'data' axis replicates that pair of devices and
splits the batch, so the same step scales to many devices and, through JAX's multi-process
runtime (`jax.distributed.initialize()`), to many hosts. With `mesh.tower = 1` each device holds
both towers side by side and the same module code runs without any cross-device traffic.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import models

MESH_AXES = ("data", "tower")
GRAD_SUMS = ("ordered", "psum")
_OWN_SUM = 1 << 22  # gradient leaves of at least this many elements get their own ordered sum


def mesh_shape(mesh_config: Any, model_config: Any, num_devices: int) -> tuple[int, int]:
    """Resolves `config.mesh` to (data, tower) sizes for `num_devices` devices.

    Args:
      mesh_config: `config.mesh` with `data` (-1: every device the tower axis leaves) and `tower`
        (devices a model replica's towers are spread over: 1 keeps the towers side by side on
        each device; 0 picks `model.towers` when the device count allows it, else 1).
      model_config: `config.model`.
      num_devices: devices available (`jax.device_count()`).

    Returns:
      (data, tower).

    Raises:
      ValueError: the mesh does not fit the devices or the model, with the fix in the message.
    """
    towers = model_config.towers if model_config.name == "alexnet" else 1
    tower = mesh_config.tower
    if tower == 0:
        tower = towers if towers > 1 and num_devices % towers == 0 else 1
    if tower < 1 or towers % tower:
        raise ValueError(
            f"mesh.tower={tower} cannot hold model.towers={towers}: a device holds a whole number "
            f"of towers, so mesh.tower must divide {towers} (use 1, {towers} or 0 for automatic)."
        )
    if num_devices % tower:
        raise ValueError(
            f"mesh.tower={tower} does not divide the {num_devices} available devices; "
            "use mesh.tower=1 (both towers on every device) or 0 (automatic)."
        )
    data = mesh_config.data
    if data == -1:
        data = num_devices // tower
    if data < 1 or data * tower > num_devices:
        raise ValueError(
            f"mesh.data={data} x mesh.tower={tower} needs {max(data, 1) * tower} devices, "
            f"but {num_devices} are available; set mesh.data=-1 to use all of them."
        )
    return data, tower


def make_mesh(mesh_config: Any, model_config: Any, devices: list | None = None) -> Mesh:
    """Builds the ('data', 'tower') mesh that `config.mesh` describes.

    Args:
      mesh_config: `config.mesh` (see `mesh_shape`).
      model_config: `config.model`.
      devices: devices to use; default all of `jax.devices()` (all processes).

    Returns:
      A mesh with Auto axis types: the shard_map states the model's layout exactly, and jit
      propagates shardings through the code around it (augmentation, loss, metrics), which
      Explicit axes would make spell out every per-example gather.
    """
    devices = list(jax.devices() if devices is None else devices)
    data, tower = mesh_shape(mesh_config, model_config, len(devices))
    return jax.make_mesh(
        (data, tower),
        MESH_AXES,
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices[: data * tower],
    )


def process_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """The rows [lo, hi) of every global batch that this process's devices hold.

    Batches are split along 'data' and replicated along 'tower', so a process feeds exactly the
    data shards of its devices: with one tower per process (mesh (1, 2) over 2 processes)
    every process feeds the whole batch; with (2, 2) over 2 processes of 2 devices, each its
    half. The input pipeline reads rows [lo, hi) of global batch k as its local batch.

    Raises:
      ValueError: this process holds no device of the mesh, or rows that are not one
        contiguous, evenly aligned block (a layout the input pipeline cannot feed).
    """
    sharding = NamedSharding(mesh, P("data"))
    blocks = sorted(
        {
            (idx[0].start or 0, batch_size if idx[0].stop is None else idx[0].stop)
            for idx in sharding.addressable_devices_indices_map((batch_size,)).values()
        }
    )
    where = f"process {jax.process_index()} of {jax.process_count()}"
    if not blocks:
        raise ValueError(
            f"{where} holds no device of the {dict(mesh.shape)} mesh; use every device "
            "(mesh.data=-1) or start fewer processes."
        )
    lo, hi = blocks[0]
    for start, stop in blocks[1:]:
        if start != hi:
            raise ValueError(
                f"{where} holds rows {blocks} of each batch of {batch_size}, not one block; "
                "give each process whole data-parallel replicas (mesh.tower devices each) or "
                "set mesh.tower so that a replica's towers sit on one process."
            )
        hi = stop
    if batch_size % (hi - lo) or lo % (hi - lo):
        raise ValueError(
            f"{where} holds rows [{lo}, {hi}) of each batch of {batch_size}, which does not tile "
            "the batch; use a batch size and mesh whose data shards are equal per process."
        )
    return lo, hi


def param_spec(model_config: Any) -> P:
    """PartitionSpec of every parameter: AlexNet's leading tower axis over 'tower', else none."""
    return P("tower") if model_config.name == "alexnet" else P()


def shard(tree: Any, mesh: Mesh, specs: Any) -> Any:
    """Places a pytree on `mesh` with the given PartitionSpecs (one per leaf, or one for all)."""
    if isinstance(specs, P):
        specs = jax.tree.map(lambda _: specs, tree)
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)


def init_params(model_config: Any, image_shape: tuple[int, ...], rng: jax.Array) -> Any:
    """Initialises the parameters of all towers on one device (the towers' values do not depend
    on how they will be placed)."""
    model = models.create_model(model_config)
    images = np.zeros((1, *image_shape), np.float32)
    return jax.jit(lambda r: model.init(r, images)["params"])(rng)


def ordered_sum(x: jax.Array, axis: str) -> jax.Array:
    """The sum of `x` over mesh axis `axis` (under `jax.shard_map`), added in replica order.

    A reduce-scatter and an all-gather built from data movement only: every device sends the
    k-th of n equal chunks of `x` to replica k (an all-to-all), adds the n chunks it receives
    as ((x_0 + x_1) + x_2) + ..., and the sums are all-gathered. It moves the bytes of a ring
    all-reduce, and the result is the same bits whichever devices, processes or collective
    library (in-process, gloo, NCCL) carry it, which `jax.lax.psum` does not promise.

    Args:
      x: an array varying over `axis`.
      axis: the manual mesh axis to sum over.

    Returns:
      The sum, invariant over `axis`, with the shape and dtype of `x`.
    """
    n = jax.lax.axis_size(axis)
    flat = x.reshape(-1)
    size = flat.shape[0]
    chunks = jnp.pad(flat, (0, -size % n)).reshape(n, -1)
    received = jax.lax.all_to_all(chunks, axis, 0, 0)  # row i: replica i's chunk of ours
    total = functools.reduce(operator.add, [received[i] for i in range(n)])
    return jax.lax.all_gather(total, axis, tiled=True, to="invarying")[:size].reshape(x.shape)


def _ordered_grad_sum(axis: str) -> Callable[[Any], Any]:
    """Identity on the parameters whose backward pass sums their gradients with `ordered_sum`.

    Applied to the replicated parameters at the start of the shard_map body, it makes them
    varying over `axis` itself (what autodiff would otherwise do implicitly, and transpose into
    a `psum`), so the gradient sum over the data replicas is this function's. Large leaves are
    summed one by one (concatenating them would copy every gradient twice more); the small ones
    of each dtype travel as one vector (one collective instead of many tiny ones). The split is
    speed only: each element is summed the same way either way
    (experiments/bench/grad_sum_benchmark.py).
    """

    def total(cotangents):
        leaves, treedef = jax.tree.flatten(cotangents)
        out = [ordered_sum(leaf, axis) if leaf.size >= _OWN_SUM else None for leaf in leaves]
        for dtype in sorted({leaf.dtype for leaf, o in zip(leaves, out) if o is None}, key=str):
            idx = [i for i, leaf in enumerate(leaves) if out[i] is None and leaf.dtype == dtype]
            summed = ordered_sum(jnp.concatenate([leaves[i].ravel() for i in idx]), axis)
            offsets = np.cumsum([0] + [leaves[i].size for i in idx])
            for j, i in enumerate(idx):
                out[i] = summed[offsets[j] : offsets[j + 1]].reshape(leaves[i].shape)
        return jax.tree.unflatten(treedef, out)

    @jax.custom_vjp
    def replicas(params):
        return jax.lax.pcast(params, axis, to="varying")

    replicas.defvjp(lambda params: (replicas(params), None), lambda _, ct: (total(ct),))
    return replicas


def sharded_apply(
    model_config: Any, mesh: Mesh, *, train: bool, grad_sum: str = "ordered"
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """The model applied under `jax.shard_map` over `mesh`.

    Args:
      model_config: `config.model`.
      mesh: the ('data', 'tower') mesh.
      train: enables dropout.
      grad_sum: how the gradient is summed over the 'data' replicas (`config.mesh.grad_sum`):
        'ordered' (`ordered_sum`: the same bits for any number of processes) or 'psum'
        (`jax.lax.psum`, the collective library's own order, which may differ between an
        in-process and a cross-process reduction in the last bits, and so between runs on one
        host and on several).

    Returns:
      `apply(params, images, rng) -> logits`: params sharded by `param_spec`, images and logits
      sharded over 'data' (logits replicated over 'tower'), `rng` the dropout key (replicated).
      Differentiate it from outside (`jax.grad` of a loss of its logits): the transposes of the
      forward all-gathers are the only collectives of the backward pass besides the gradient sum
      over 'data'.
    """
    if grad_sum not in GRAD_SUMS:
        raise ValueError(f"mesh.grad_sum={grad_sum!r} is not one of {GRAD_SUMS}.")
    model = models.create_model(model_config, tower_axis="tower", data_axis="data")

    spec = param_spec(model_config)
    tower_split = spec == P("tower")
    # A sum of two replicas is x0 + x1 in any order (IEEE addition commutes), so psum is exact
    # there; the order matters from three replicas on.
    ordered = train and grad_sum == "ordered" and mesh.shape["data"] > 2
    replicas = _ordered_grad_sum("data") if ordered else (lambda params: params)

    def body(params, images, rng):
        rngs = {"dropout": rng} if train else {}
        return model.apply({"params": replicas(params)}, images, train=train, rngs=rngs)

    # Each tower device returns its towers' share of fc8; the out_specs concatenate the shares
    # and the reshard gathers the logits (the paper's last exchange), which the loss then reads
    # whole on every device.
    out_spec = P("data", "tower") if tower_split else P("data")
    body = jax.shard_map(body, mesh=mesh, in_specs=(spec, P("data"), P()), out_specs=out_spec)

    def apply(params, images, rng):
        logits = body(params, images, rng)
        if tower_split:
            logits = jax.lax.with_sharding_constraint(logits, NamedSharding(mesh, P("data")))
            logits = logits[:, : model_config.num_classes]
        return logits

    return apply
