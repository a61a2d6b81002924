"""The tower split under shard_map (paper §3.2) and data parallelism, on simulated CPU devices.

tests/conftest.py gives the process four CPU devices.
"""

import importlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from alexnet_jax import models, optim, parallel, train
from configs import alexnet as alexnet_config
from tests.helpers import digit_images, mean_cross_entropy, model_config, rel_err

BATCH = 4


def _mesh_config(data, tower):
    return ml_collections.ConfigDict({"data": data, "tower": tower})


@pytest.fixture(scope="module")
def setup():
    mc = model_config()  # the paper's net: two towers, LRN, dropout 0.5
    params = parallel.init_params(mc, (227, 227, 3), jax.random.key(0))
    images = 60.0 * jax.random.normal(jax.random.key(1), (BATCH, 227, 227, 3))
    labels = jnp.array([3, 141, 592, 653])
    return mc, params, images, labels


def _one_device(mc, params, images, labels, rng):
    model = models.create_model(mc)

    def loss_fn(p):
        logits = model.apply({"params": p}, images, train=True, rngs={"dropout": rng})
        return mean_cross_entropy(logits, labels), logits

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


def _sharded_step(mc, mesh):
    apply = parallel.sharded_apply(mc, mesh, train=True)

    def loss_fn(p, images, labels, rng):
        logits = apply(p, images, rng)
        return mean_cross_entropy(logits, labels), logits

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def _on_mesh(mc, mesh, params, images, labels, rng):
    step = _sharded_step(mc, mesh)
    with jax.set_mesh(mesh):
        args = (
            parallel.shard(params, mesh, parallel.param_spec(mc)),
            parallel.shard(images, mesh, P("data")),
            parallel.shard(labels, mesh, P("data")),
            rng,
        )
        out = step(*args)
        hlo = step.lower(*args).compile().as_text()
    return out, hlo


@pytest.mark.parametrize(
    "data, tower",
    [
        pytest.param(1, 2, marks=pytest.mark.slow),
        pytest.param(2, 2, marks=pytest.mark.slow),
        pytest.param(2, 1, marks=pytest.mark.slow),
    ],
)
def test_mesh_gives_the_one_device_logits_and_gradients(setup, data, tower):
    """Dropout on: masks are drawn for the global batch, so they match across meshes too."""
    mc, params, images, labels = setup
    rng = jax.random.key(7)
    (loss1, logits1), grads1 = _one_device(mc, params, images, labels, rng)
    mesh = parallel.make_mesh(_mesh_config(data, tower), mc)
    assert dict(mesh.shape) == {"data": data, "tower": tower}
    ((loss2, logits2), grads2), _ = _on_mesh(mc, mesh, params, images, labels, rng)
    assert abs(float(loss2) - float(loss1)) <= 1e-5 * abs(float(loss1))
    assert rel_err(logits2, logits1) <= 1e-5
    for path, g1 in jax.tree_util.tree_leaves_with_path(grads1):
        g2 = dict(jax.tree_util.tree_leaves_with_path(grads2))[path]
        assert rel_err(g2, g1) <= 1e-5, (jax.tree_util.keystr(path), rel_err(g2, g1))
    # Each device of a two-tower mesh holds one tower's parameters.
    if tower == 2:
        shard = grads2["conv1"]["kernel"].addressable_shards[0]
        assert shard.data.shape == (1, 11, 11, 3, 48)


def _shape(hlo_type: str) -> tuple[int, ...]:
    return tuple(int(d) for d in re.match(r"f32\[([\d,]*)\]", hlo_type).group(1).split(","))


def _collectives(hlo: str) -> dict[str, list[str]]:
    found = {}
    for op in (
        "all-gather",
        "reduce-scatter",
        "all-reduce",
        "collective-permute",
        "all-to-all",
        "collective-broadcast",
    ):
        found[op] = re.findall(rf"= (\S+) {op}(?:-start)?\(", hlo)
    return found


@pytest.mark.slow
def test_towers_exchange_activations_only_where_the_paper_gpus_did(setup):
    """Compiled forward-backward on 2 tower devices: the inputs of conv3, fc6, fc7, fc8 and the
    logits are all-gathered; the backward pass has the transposes of the four in-network
    gathers (reduce-scatters); there is no other collective."""
    mc, params, images, labels = setup
    mesh = parallel.make_mesh(_mesh_config(1, 2), mc)
    _, hlo = _on_mesh(mc, mesh, params, images, labels, jax.random.key(7))
    ops = _collectives(hlo)
    gathered = sorted(_shape(s) for s in ops["all-gather"])
    assert gathered == sorted(
        [
            (BATCH, 13, 13, 256),  # conv3 reads both towers' pool2 maps
            (BATCH, 6, 6, 256),  # fc6 reads both towers' pool5 maps (9216)
            (BATCH, 4096),  # fc7 reads both towers' fc6
            (BATCH, 4096),  # fc8 reads both towers' fc7
            (BATCH, 1000),  # the logits
        ]
    )
    scattered = sorted(_shape(s) for s in ops["reduce-scatter"])
    assert scattered == sorted(
        [(BATCH, 13, 13, 128), (BATCH, 6, 6, 128), (BATCH, 2048), (BATCH, 2048)]
    )
    for op in ("all-reduce", "collective-permute", "all-to-all", "collective-broadcast"):
        assert ops[op] == [], (op, ops[op])


@pytest.mark.slow
def test_cifar_net_runs_data_parallel():
    mc = model_config(name="cifar_lrn", towers=1, dropout_rate=0.0, num_classes=10)
    params = parallel.init_params(mc, (32, 32, 3), jax.random.key(0))
    images, labels = digit_images(8)
    mesh = parallel.make_mesh(_mesh_config(-1, 0), mc)
    assert dict(mesh.shape) == {"data": 4, "tower": 1}
    apply = parallel.sharded_apply(mc, mesh, train=False)
    with jax.set_mesh(mesh):
        logits = jax.jit(apply)(
            parallel.shard(params, mesh, P()),
            parallel.shard(images, mesh, P("data")),
            jax.random.key(0),
        )
    expected = models.create_model(mc).apply({"params": params}, images)
    assert rel_err(logits, expected) <= 1e-5


@pytest.mark.parametrize(
    "data, tower, devices, expected",
    [
        (-1, 0, 4, (2, 2)),
        (-1, 0, 1, (1, 1)),
        (-1, 0, 3, (3, 1)),
        (-1, 1, 4, (4, 1)),
        (1, 2, 4, (1, 2)),
        (-1, 2, 2, (1, 2)),
    ],
)
def test_mesh_shape_resolution(data, tower, devices, expected):
    assert parallel.mesh_shape(_mesh_config(data, tower), model_config(), devices) == expected


@pytest.mark.parametrize(
    "data, tower, devices, overrides, match",
    [
        (-1, 3, 4, {}, "must divide 2"),
        (-1, 2, 3, {}, "does not divide the 3"),
        (4, 2, 4, {}, "needs 8 devices"),
        (-1, 2, 4, {"name": "cifar_fig1", "towers": 1}, "must divide 1"),
    ],
)
def test_mesh_that_cannot_hold_the_towers_is_refused(data, tower, devices, overrides, match):
    with pytest.raises(ValueError, match=match):
        parallel.mesh_shape(_mesh_config(data, tower), model_config(**overrides), devices)


def test_mesh_has_the_axes_of_the_design():
    mesh = parallel.make_mesh(_mesh_config(-1, 2), model_config())
    assert mesh.axis_names == ("data", "tower")
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    np.testing.assert_array_equal(mesh.devices.shape, (2, 2))


def test_ordered_sum_adds_the_replicas_in_order():
    """Values chosen so that float32 addition order matters: the result must be the bits of
    ((x0 + x1) + x2) + x3 computed by NumPy, which other orders do not give."""
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = np.array(
        [
            [1e8, 1.0, 3.0, 0.1, 7.0],
            [1.0, -1e8, 0.2, 1e-8, 3e7],
            [-1e8, 1e8, 0.3, 5.0, -3e7],
            [1.0, 1.0, 1e-7, -0.1, 0.5],
        ],
        np.float32,
    )
    total = jax.jit(
        jax.shard_map(
            lambda x: parallel.ordered_sum(x[0], "data"),
            mesh=mesh,
            in_specs=P("data"),
            out_specs=P(),
        )
    )(rows)
    expected = ((rows[0] + rows[1]) + rows[2]) + rows[3]
    np.testing.assert_array_equal(np.asarray(total), expected)
    other = ((rows[3] + rows[2]) + rows[1]) + rows[0]
    assert not np.array_equal(other, expected)  # the check above can fail


def _elements(hlo: str, op: str) -> list[int]:
    """Elements of each `op` in compiled HLO (a tuple result counts all its arrays)."""
    found = []
    for result in re.findall(rf"= (\(.*?\)|\S+) {op}(?:-start)?\(", hlo):
        found.append(
            sum(
                int(np.prod([int(d) for d in dims.split(",") if d]))
                for dims in re.findall(r"f32\[([\d,]*)\]", result)
            )
        )
    return found


@pytest.mark.slow
@pytest.mark.parametrize("grad_sum", ["ordered", "psum"])
def test_grad_sum_sums_over_the_replicas_with_its_collective(setup, grad_sum):
    """Both give the one-device gradients; 'ordered' moves them with an all-to-all and an
    all-gather (no all-reduce of gradients), 'psum' with all-reduces (no all-to-all)."""
    mc, params, images, labels = setup
    rng = jax.random.key(7)
    _, grads1 = _one_device(mc, params, images, labels, rng)
    mesh = parallel.make_mesh(_mesh_config(4, 1), mc)  # 4 replicas: 2 would take psum
    apply = parallel.sharded_apply(mc, mesh, train=True, grad_sum=grad_sum)
    step = jax.jit(jax.grad(lambda p, x, y: mean_cross_entropy(apply(p, x, rng), y)))
    with jax.set_mesh(mesh):
        args = (
            parallel.shard(params, mesh, parallel.param_spec(mc)),
            parallel.shard(images, mesh, P("data")),
            parallel.shard(labels, mesh, P("data")),
        )
        grads2 = step(*args)
        hlo = step.lower(*args).compile().as_text()
    for path, g1 in jax.tree_util.tree_leaves_with_path(grads1):
        g2 = dict(jax.tree_util.tree_leaves_with_path(grads2))[path]
        assert rel_err(g2, g1) <= 1e-5, (jax.tree_util.keystr(path), rel_err(g2, g1))
    # The gradients travel as one vector: all parameters, a quarter to each replica.
    quarter = sum(x.size for x in jax.tree.leaves(params)) // 4
    moved, reduced = _elements(hlo, "all-to-all"), _elements(hlo, "all-reduce")
    if grad_sum == "ordered":
        assert moved and sum(moved) >= quarter, moved
        assert sum(reduced) < quarter // 100, reduced  # at most the loss and metrics
    else:
        assert moved == []
        assert sum(reduced) >= quarter, reduced


@pytest.mark.slow
def test_two_replicas_sum_with_psum_in_either_mode(setup):
    """x0 + x1 does not depend on the order, so 'ordered' keeps psum's all-reduce there."""
    mc, params, images, labels = setup
    mesh = parallel.make_mesh(_mesh_config(2, 1), mc)
    apply = parallel.sharded_apply(mc, mesh, train=True, grad_sum="ordered")
    step = jax.jit(jax.grad(lambda p, x, y: mean_cross_entropy(apply(p, x, jax.random.key(7)), y)))
    with jax.set_mesh(mesh):
        hlo = (
            step.lower(
                parallel.shard(params, mesh, parallel.param_spec(mc)),
                parallel.shard(images, mesh, P("data")),
                parallel.shard(labels, mesh, P("data")),
            )
            .compile()
            .as_text()
        )
    assert _elements(hlo, "all-to-all") == []
    assert sum(_elements(hlo, "all-reduce")) >= sum(x.size for x in jax.tree.leaves(params))


def test_unknown_grad_sum_is_refused():
    mc = model_config()
    with pytest.raises(ValueError, match="mesh.grad_sum='tree'"):
        parallel.sharded_apply(
            mc, parallel.make_mesh(_mesh_config(2, 2), mc), train=True, grad_sum="tree"
        )


@pytest.mark.parametrize("placed", [True, False])
def test_the_momentum_starts_sharded_like_its_parameter_so_the_step_compiles_once(placed):
    """A two-tower parameter and the paper's optimizer (momentum, weight decay, the schedule in
    the state): `train.placed_like_params` puts the zero momentum where the step will return
    it, so the second step reuses the first one's program. Without it the momentum starts
    replicated and the second call compiles again (`placed=False` shows the check can fail)."""
    mesh = parallel.make_mesh(_mesh_config(1, 2), model_config())
    tx = optim.create_optimizer(alexnet_config.get_config().optimizer, steps_per_epoch=1)
    tree = {"conv": {"kernel": jnp.ones((2, 3, 3, 1, 4)), "bias": jnp.ones((2, 4))}}
    with jax.set_mesh(mesh):
        params = parallel.shard(tree, mesh, P("tower"))
        opt_state = jax.jit(tx.init)(params)
        if placed:
            opt_state = train.placed_like_params(opt_state, params)

        @jax.jit
        def step(params, opt_state):
            grads = jax.tree.map(lambda p: 0.5 * p, params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        for _ in range(3):
            params, opt_state = step(params, opt_state)
    momentum = [leaf for leaf in jax.tree.leaves(opt_state) if leaf.shape == (2, 4)]
    assert momentum and all(m.sharding.spec == P("tower") for m in momentum)
    assert step._cache_size() == (1 if placed else 2)


def _same_placement(abstract, state) -> None:
    """Every leaf of `abstract` has the shape, dtype and sharding of `state`'s."""
    pairs = zip(jax.tree.leaves(abstract), jax.tree.leaves(state), strict=True)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, s in pairs:
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype, a.sharding) == (s.shape, s.dtype, s.sharding), (a, s.sharding)


@pytest.mark.slow  # an initialisation and tx.init compiled for each mesh: seconds each
@pytest.mark.parametrize(
    "config_module, data, tower",
    [
        ("default", 2, 1),  # replicated parameters, data split over two devices
        ("alexnet", 1, 2),  # the towers on two devices
    ],
)
def test_the_restore_target_is_the_initial_state_without_drawing_it(config_module, data, tower):
    """`train.abstract_train_state` (what a resumed run restores into) names the shapes, dtypes
    and shardings `train.create_train_state` gives, momentum included, without initialising."""
    config = importlib.import_module(f"configs.{config_module}").get_config()
    config.mesh.update(data=data, tower=tower)
    mesh = parallel.make_mesh(config.mesh, config.model)
    tx = optim.create_optimizer(config.optimizer, steps_per_epoch=1)
    with jax.set_mesh(mesh):
        abstract = train.abstract_train_state(config, mesh, tx, jax.random.key(0))
        state = train.create_train_state(config, mesh, tx, jax.random.key(0))
    _same_placement(abstract, state)
    momentum = [x for x in jax.tree.leaves(abstract.opt_state) if x.ndim >= 2]
    spec = P("tower") if tower == 2 else P()
    assert momentum and all(x.sharding.spec == spec for x in momentum)
