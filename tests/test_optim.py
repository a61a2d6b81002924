"""The §5 SGD update against hand-computed NumPy, the learning-rate schedules, jit behaviour."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import models, optim
from configs import alexnet as alexnet_config
from tests.helpers import model_config

MOMENTUM = 0.9
# Far above the paper's 5e-4 so that decaying a bias or not changes the result visibly.
WEIGHT_DECAY = 0.1
# Rates of steps 1, 2 and 3: the rate is cut between steps 2 and 3.
RATES = (0.01, 0.01, 0.001)


def _optimizer_config(**overrides):
    c = alexnet_config.get_config().optimizer
    c.momentum = MOMENTUM
    c.weight_decay = WEIGHT_DECAY
    c.learning_rate = RATES[0]
    c.update(overrides)
    return c


def _problem():
    """A kernel and a bias, and the gradients of three steps (float64 NumPy)."""
    rng = np.random.default_rng(0)
    params = {"fc": {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=(2,))}}
    grads = [
        {"fc": {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=(2,))}} for _ in RATES
    ]
    return params, grads


def _to_jax(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _run(tx, params, grads, rates, jit=False):
    """Applies len(rates) updates, setting the rate before each; returns all parameters."""
    params = _to_jax(params)
    opt_state = tx.init(params)

    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    step = jax.jit(step) if jit else step
    history = []
    for lr, g in zip(rates, grads):
        opt_state = optim.set_learning_rate(opt_state, lr)
        params, opt_state = step(params, opt_state, _to_jax(g))
        history.append(params)
    return history, opt_state


def _paper_numpy(params, grads, rates, decay_bias):
    """v <- m v - d lr w - lr g; w <- w + v (§5), leaf by leaf."""
    history, v = [], {k: np.zeros_like(w) for k, w in params["fc"].items()}
    w = dict(params["fc"])
    for lr, g in zip(rates, grads):
        for k in w:
            d = WEIGHT_DECAY if (k == "kernel" or decay_bias) else 0.0
            v[k] = MOMENTUM * v[k] - d * lr * w[k] - lr * g["fc"][k]
            w[k] = w[k] + v[k]
        history.append({"fc": dict(w)})
    return history


def _optax_numpy(params, grads, rates, decay_bias):
    """u <- m u + (g + d w); w <- w - lr u (add_decayed_weights, then optax.sgd)."""
    history, u = [], {k: np.zeros_like(w) for k, w in params["fc"].items()}
    w = dict(params["fc"])
    for lr, g in zip(rates, grads):
        for k in w:
            d = WEIGHT_DECAY if (k == "kernel" or decay_bias) else 0.0
            u[k] = MOMENTUM * u[k] + g["fc"][k] + d * w[k]
            w[k] = w[k] - lr * u[k]
        history.append({"fc": dict(w)})
    return history


def _assert_trees_close(actual, expected, rtol=1e-6, atol=1e-7):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("rule, reference", [("paper", _paper_numpy), ("optax", _optax_numpy)])
@pytest.mark.parametrize("decay_on", ["all", "weights"])
@pytest.mark.parametrize("jit", [False, True])
def test_update_matches_hand_computed_numpy(rule, reference, decay_on, jit):
    params, grads = _problem()
    tx = optim.create_optimizer(_optimizer_config(update_rule=rule, weight_decay_on=decay_on))
    history, _ = _run(tx, params, grads, RATES, jit=jit)
    expected = reference(params, grads, RATES, decay_bias=decay_on == "all")
    for step in range(len(RATES)):
        _assert_trees_close(history[step], expected[step])


def test_weights_only_leaves_the_bias_undecayed():
    # The mask matters: with the same gradients the bias ends elsewhere when it is decayed,
    # and with zero gradients an undecayed bias does not move at all.
    params, grads = _problem()
    ends = {}
    for decay_on in optim.WEIGHT_DECAY_ON:
        tx = optim.create_optimizer(_optimizer_config(weight_decay_on=decay_on))
        ends[decay_on] = _run(tx, params, grads, RATES)[0][-1]["fc"]
    assert not np.allclose(ends["all"]["bias"], ends["weights"]["bias"])
    np.testing.assert_array_equal(ends["all"]["kernel"], ends["weights"]["kernel"])

    zeros = [jax.tree.map(np.zeros_like, g) for g in grads]
    tx = optim.create_optimizer(_optimizer_config(weight_decay_on="weights"))
    end = _run(tx, params, zeros, RATES)[0][-1]["fc"]
    np.testing.assert_array_equal(end["bias"], np.float32(params["fc"]["bias"]))
    assert not np.allclose(end["kernel"], params["fc"]["kernel"])


def test_weights_only_mask_on_alexnet_spares_exactly_the_eight_biases():
    mc = model_config()
    model = models.create_model(mc)
    x = jnp.zeros((1, 224, 224, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x)["params"])
    mask = optim.weights_only_mask(params)
    decayed = sum(p.size for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
    spared = [path for path, m in jax.tree_util.tree_leaves_with_path(mask) if not m]
    assert len(spared) == 8 and all(path[-1].key == "bias" for path in spared)
    # 60,965,224 parameters less the biases 96+256+384+384+256+4096+4096+1000 = 10,568.
    assert decayed == 60_965_224 - 10_568


def test_paper_and_optax_rules_agree_at_a_constant_rate_and_differ_after_a_change():
    # What we find: at a constant rate the two rules give the same weights (to float32
    # rounding) and velocity_paper = -lr * trace_optax. After the rate changes from lr_a to
    # lr_b, the first step differs by exactly w_optax - w_paper = -(lr_b - lr_a) * m * u,
    # u the Optax trace before the change: Optax rescales the old momentum to the new rate,
    # the paper keeps it at the old one.
    params, grads = _problem()
    runs = {}
    for rule in optim.UPDATE_RULES:
        tx = optim.create_optimizer(_optimizer_config(update_rule=rule))
        runs[rule] = _run(tx, params, grads[:2], RATES[:2])
    for a, b in zip(runs["paper"][0], runs["optax"][0]):
        _assert_trees_close(a, jax.tree.map(np.asarray, b), rtol=1e-6, atol=1e-8)
    trace = {r: optax.tree_utils.tree_get(runs[r][1], "TraceState").trace for r in runs}
    _assert_trees_close(
        trace["paper"], jax.tree.map(lambda u: -RATES[0] * np.asarray(u), trace["optax"])
    )

    history = {}
    for rule in optim.UPDATE_RULES:
        tx = optim.create_optimizer(_optimizer_config(update_rule=rule))
        history[rule] = _run(tx, params, grads, RATES)[0]
    diff = jax.tree.map(
        lambda o, p: np.asarray(o, np.float64) - p, history["optax"][2], history["paper"][2]
    )
    u2 = jax.tree.map(lambda u: np.asarray(u, np.float64), trace["optax"])
    expected = jax.tree.map(lambda u: -(RATES[2] - RATES[1]) * MOMENTUM * u, u2)
    _assert_trees_close(diff, expected, rtol=1e-3, atol=1e-8)
    assert max(np.abs(d).max() for d in jax.tree.leaves(diff)) > 1e-3


@pytest.mark.parametrize("rule", optim.UPDATE_RULES)
def test_rate_changes_between_jitted_steps_without_retracing(rule):
    params, grads = _problem()
    tx = optim.create_optimizer(_optimizer_config(update_rule=rule))
    traces = 0

    @jax.jit
    def step(params, opt_state, grads):
        nonlocal traces
        traces += 1
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    p, opt_state = _to_jax(params), tx.init(_to_jax(params))
    # As a training loop does it: the rate set only at some steps (None: left as it is), so the
    # step sees states from init, from itself and from set_learning_rate, all one trace.
    sets = (None, 0.003, None, 1e-4, 0.02, None)
    rates = []
    for lr in sets:
        if lr is not None:
            opt_state = optim.set_learning_rate(opt_state, lr)
        rates.append(float(optim.get_learning_rate(opt_state)))
        p, opt_state = step(p, opt_state, _to_jax(grads[0]))
    assert rates == pytest.approx([0.01, 0.003, 0.003, 1e-4, 0.02, 0.02])
    assert traces == 1
    reference = _paper_numpy if rule == "paper" else _optax_numpy
    expected = reference(params, [grads[0]] * len(rates), rates, decay_bias=True)[-1]
    _assert_trees_close(p, expected, rtol=1e-5)


def test_rate_can_be_read_and_set_inside_jit():
    tx = optim.create_optimizer(_optimizer_config(weight_decay_on="weights"))
    opt_state = tx.init(_to_jax(_problem()[0]))
    divided = jax.jit(lambda s: optim.set_learning_rate(s, optim.get_learning_rate(s) / 10))
    opt_state = divided(opt_state)
    assert float(optim.get_learning_rate(opt_state)) == pytest.approx(RATES[0] / 10)
    assert optim.get_learning_rate(opt_state).dtype == jnp.float32


def test_state_without_injected_rate_is_refused():
    with pytest.raises(ValueError, match="learning_rate"):
        optim.get_learning_rate(optax.sgd(0.1).init(jnp.zeros(2)))


# --------------------------------------------------------------------------------------------
# Schedules.
# --------------------------------------------------------------------------------------------

# Validation errors, evaluation by evaluation, with patience 2 and no min_delta:
#   0: 0.90 best  1: 0.80 best  2: 0.80 equal, bad 1  3: 0.81 bad 2 -> drop 1
#   4: 0.70 best  5: 0.72 bad 1  6: 0.71 bad 2 -> drop 2
#   7: 0.60 best  8: 0.60 bad 1  9: 0.59 best (the count restarts)  10: 0.60 bad 1
#   11: 0.60 bad 2 -> drop 3   12-15: no improvement, but the three drops are spent.
ERRORS = [0.9, 0.8, 0.8, 0.81, 0.7, 0.72, 0.71, 0.6, 0.6, 0.59, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
DROPS_AT = [3, 6, 11]
EVAL_EVERY = 1000


def _plateau(**overrides):
    c = alexnet_config.get_config().optimizer
    c.update(overrides)
    return optim.Plateau(c)


def _feed(plateau, errors, start=0):
    """on_eval for each error; returns the indices that dropped the rate and the rates."""
    drops, rates = [], []
    for i, err in enumerate(errors, start):
        if plateau.on_eval((i + 1) * EVAL_EVERY, err):
            drops.append(i)
        rates.append(plateau.learning_rate)
    return drops, rates


def test_plateau_drops_at_the_expected_evaluations():
    plateau = _plateau()
    assert plateau.learning_rate == 0.01
    drops, rates = _feed(plateau, ERRORS)
    assert drops == DROPS_AT
    assert plateau.drop_steps == [(i + 1) * EVAL_EVERY for i in DROPS_AT]
    expected = [0.01 * 0.1 ** sum(d <= i for d in DROPS_AT) for i in range(len(ERRORS))]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert rates[-1] == pytest.approx(1e-5)
    # Never on an improvement: every drop comes on an error no better than an earlier one.
    for i in drops:
        assert ERRORS[i] >= min(ERRORS[:i])


def test_plateau_min_delta_patience_and_max_drops():
    # 0.97 and 0.96 are not better than 1.0 by more than 0.05: two bad evaluations, one drop.
    assert _feed(_plateau(plateau_min_delta=0.05), [1.0, 0.97, 0.96])[0] == [2]
    assert _feed(_plateau(plateau_patience=1), [1.0, 1.0, 0.9, 0.95])[0] == [1, 3]
    assert _feed(_plateau(plateau_max_drops=1), ERRORS)[0] == DROPS_AT[:1]
    # A flat error: the count restarts after each drop, so drops come every second evaluation,
    # and stop after three.
    assert _feed(_plateau(), [1.0] * 9)[0] == [2, 4, 6]
    # A NaN evaluation never counts as the best, even as the first one.
    assert _feed(_plateau(), [math.nan, 0.5, math.nan, math.nan])[0] == [3]


@pytest.mark.parametrize("split", range(len(ERRORS) + 1))
def test_plateau_state_dict_round_trip_continues_identically(split):
    first = _plateau()
    _feed(first, ERRORS[:split])
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    resumed = _plateau()
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == first.state_dict()
    assert _feed(resumed, ERRORS[split:], split) == _feed(first, ERRORS[split:], split)
    assert resumed.state_dict() == first.state_dict()


def test_load_state_dict_refuses_another_schedule():
    with pytest.raises(ValueError, match="schedule"):
        _plateau().load_state_dict({"schedule": "step"})


def _rates_used(c, steps, *, steps_per_epoch, total_steps):
    """The rate each of `steps` jitted updates used, the optimizer left alone by the host."""
    tx = optim.create_optimizer(c, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    params = {"w": jnp.zeros(2)}

    @jax.jit
    def update(opt_state):
        _, opt_state = tx.update({"w": jnp.ones(2)}, opt_state, params)
        return opt_state, optim.get_learning_rate(opt_state)

    opt_state, rates = tx.init(params), []
    for _ in range(steps):
        opt_state, lr = update(opt_state)
        rates.append(float(lr))
    return rates


def test_step_schedule_at_its_boundaries():
    c = _optimizer_config(schedule="step", learning_rate=0.01)
    schedule = optim.learning_rate_schedule(c, steps_per_epoch=100, total_steps=9000)
    # Default boundaries: epochs 30, 60, 80 = steps 3000, 6000, 8000.
    expected = {
        0: 0.01,
        2999: 0.01,
        3000: 1e-3,
        5999: 1e-3,
        6000: 1e-4,
        7999: 1e-4,
        8000: 1e-5,
        8999: 1e-5,
    }
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step
    # The optimizer itself follows it, step by step on the device: boundaries at steps 4 and 8
    # (epochs 2 and 4 of 2 steps), and two epochs on one step multiply their factors there.
    c.step_epochs = (2, 4)
    want = [0.01] * 4 + [1e-3] * 4 + [1e-4] * 4
    assert _rates_used(c, 12, steps_per_epoch=2, total_steps=12) == pytest.approx(want, rel=1e-6)
    c.step_epochs = (2, 2.1)
    want = [0.01] * 4 + [1e-4] * 4
    assert _rates_used(c, 8, steps_per_epoch=2, total_steps=8) == pytest.approx(want, rel=1e-6)


def test_cosine_and_constant_schedules():
    c = _optimizer_config(schedule="cosine", learning_rate=0.01)
    rates = _rates_used(c, 1001, steps_per_epoch=10, total_steps=1000)
    assert rates[0] == pytest.approx(0.01)
    assert rates[500] == pytest.approx(0.005, rel=1e-6)
    assert rates[250] == pytest.approx(0.005 * (1 + math.cos(math.pi / 4)), rel=1e-6)
    assert rates[1000] == pytest.approx(0.0, abs=1e-12)
    for step in (1, 123, 999):
        assert rates[step] == pytest.approx(0.005 * (1 + math.cos(math.pi * step / 1000)), abs=1e-9)
    schedule = optim.learning_rate_schedule(c, steps_per_epoch=10, total_steps=1000)
    assert float(schedule(5000)) == pytest.approx(0.0, abs=1e-12)

    constant = _optimizer_config(schedule="constant")
    assert _rates_used(constant, 5, steps_per_epoch=10, total_steps=1000) == pytest.approx(
        [0.01] * 5
    )


def test_plateau_rate_is_held_in_the_state_until_set():
    c = _optimizer_config(schedule="plateau", learning_rate=0.01)
    assert _rates_used(c, 3, steps_per_epoch=10, total_steps=1000) == pytest.approx([0.01] * 3)
    assert optim.learning_rate_schedule(c, steps_per_epoch=1, total_steps=1) == 0.01


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("update_rule", "sgd", "('paper', 'optax')"),
        ("weight_decay_on", "kernels", "('all', 'weights')"),
        ("schedule", "linear", "('plateau', 'step', 'constant', 'cosine', 'manual')"),
    ],
)
def test_invalid_names_raise_naming_field_and_choices(field, value, allowed):
    c = _optimizer_config(**{field: value})
    with pytest.raises(ValueError) as info:
        optim.create_optimizer(c, steps_per_epoch=10, total_steps=100)
    message = str(info.value)
    assert f"config.optimizer.{field}" in message and allowed in message and repr(value) in message
