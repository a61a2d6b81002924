"""The paper's SGD update and learning-rate schedules in Optax (paper §5).

The update (§5), with momentum m = 0.9 and weight decay d = 0.0005:

    v <- m * v - d * lr * w - lr * dL/dw
    w <- w + v

The learning rate sits *inside* the momentum: each step's gradient enters v already scaled by
the rate of that step. Optax's usual form, `add_decayed_weights(d)` then `sgd(lr, m)`, keeps
the rate outside:

    u <- m * u + (dL/dw + d * w)
    w <- w - lr * u

With a constant rate the two are the same optimizer (v = -lr * u, identical weights up to
rounding). They differ whenever the rate changes: from lr_a to lr_b, the Optax form rescales
the whole accumulated momentum to lr_b at once, while the paper's velocity keeps the
contributions made at lr_a and lets them decay by m per step (the first step after the change
differs by -(lr_b - lr_a) * m * u). `update_rule='paper'` is the default; 'optax' is there to
measure that difference. In Optax terms the two are the same three transformations in a
different order: decay, scale by -lr, momentum trace (paper) versus decay, momentum trace,
scale by -lr (optax).

The rate lives in the optimizer state (`optax.inject_hyperparams`). The fixed schedules
('step', 'cosine', 'constant') are Optax schedules evaluated inside the jitted step at the
update's count, so they cost the host nothing and resume with the state. The paper's rule
(§5, 'plateau') divides the rate by 10 when the validation error stops improving, which no
function of the step can express: `Plateau` watches the evaluations on the host, and the
training loop writes the new rate into the state with `set_learning_rate` when it drops
(`train.py`); its small state is saved as JSON with each checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax.errors import check_choice

UPDATE_RULES = ("paper", "optax")
WEIGHT_DECAY_ON = ("all", "weights")
SCHEDULES = ("plateau", "step", "constant", "cosine", "manual")


# --------------------------------------------------------------------------------------------
# The update (§5).
# --------------------------------------------------------------------------------------------


def _leaf_name(path: tuple[Any, ...]) -> Any:
    """The last key of a pytree path: 'kernel' or 'bias' for a Flax parameter."""
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None))


def weights_only_mask(params: optax.Params) -> Any:
    """Marks the leaves Caffe decays: every parameter except those named 'bias'.

    Args:
      params: a Flax parameter pytree.

    Returns:
      A pytree of bools with the structure of `params`, False for biases.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) != "bias", params)


def _path_name(path: tuple[Any, ...]) -> str:
    """'conv1/kernel' for the pytree path of a Flax parameter."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _selects(key: str, name: str) -> bool:
    """Whether a `layer_lr_multipliers` key ('conv1', 'conv1/bias') selects parameter `name`."""
    return name == key or name.startswith(key + "/")


class ParameterRatesState(NamedTuple):
    """The update count the bias and per-layer rate schedules are evaluated at."""

    count: jax.Array


def scale_by_parameter_rates(
    learning_rate: Any,
    bias_learning_rate: optax.Schedule | None = None,
    multipliers: Sequence[tuple[str, optax.Schedule]] = (),
) -> optax.GradientTransformation:
    """Scales each parameter's update by minus its own rate (the released 2012 code's epsW/epsB).

    A weight's rate is `learning_rate`; a parameter named 'bias' takes `bias_learning_rate(count)`
    instead when that is given (its own value and schedule, e.g. constant while the weights'
    rate drops); then every multiplier whose key selects the parameter ('conv1' selects conv1's
    kernel and bias, 'conv1/bias' the bias alone) multiplies the rate by its value at the count.

    Args:
      learning_rate: the weights' rate (a scalar: `create_optimizer` injects it).
      bias_learning_rate: the biases' rate as a function of the update count, or None.
      multipliers: (key, schedule of the count) pairs.

    Returns:
      A GradientTransformation; its init refuses keys that select no parameter.
    """

    def init(params):
        names = [_path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
        check_multiplier_keys([key for key, _ in multipliers], names)
        return ParameterRatesState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        count = state.count

        def scale(path, u):
            name = _path_name(path)
            rate = learning_rate
            if bias_learning_rate is not None and _leaf_name(path) == "bias":
                rate = bias_learning_rate(count)
            for key, multiplier in multipliers:
                if _selects(key, name):
                    rate = rate * multiplier(count)
            return (u * -jnp.asarray(rate, u.dtype)).astype(u.dtype)

        updates = jax.tree_util.tree_map_with_path(scale, updates)
        return updates, ParameterRatesState(count=optax.safe_increment(count))

    return optax.GradientTransformation(init, update)


def check_multiplier_keys(keys: Sequence[str], names: Sequence[str]) -> None:
    """Raises ValueError for a `layer_lr_multipliers` key that selects none of the parameter
    `names` ('conv1/kernel', ...)."""
    for key in keys:
        if not any(_selects(key, n) for n in names):
            layers = sorted({n.split("/")[0] for n in names})
            raise ValueError(
                f"config.optimizer.layer_lr_multipliers names {key!r}, which selects no "
                f"parameter of this model; its layers are {layers} ('conv1' or "
                "'conv1/kernel', 'conv1/bias')."
            )


def _scale_by_rates(
    learning_rate: Any,
    bias_learning_rate: optax.Schedule | None,
    multipliers: Sequence[tuple[str, optax.Schedule]],
) -> optax.GradientTransformation:
    """One rate for every parameter (the paper), or `scale_by_parameter_rates`."""
    if bias_learning_rate is None and not multipliers:
        return optax.scale_by_learning_rate(learning_rate)
    return scale_by_parameter_rates(learning_rate, bias_learning_rate, multipliers)


def paper_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float,
    weight_decay: float,
    weight_decay_mask: Any = None,
    bias_learning_rate: optax.Schedule | None = None,
    lr_multipliers: Sequence[tuple[str, optax.Schedule]] = (),
) -> optax.GradientTransformation:
    """The update of §5: v <- m v - d lr w - lr g; w <- w + v.

    Scaling by -lr before the momentum trace puts the rate inside the velocity, so a rate
    change affects only the gradients that arrive after it.

    Args:
      learning_rate: the rate lr (a scalar; `create_optimizer` injects it into the state).
      momentum: m.
      weight_decay: d; the decay term d * w joins the gradient before the rate scales it.
      weight_decay_mask: None to decay every parameter, or an Optax mask (pytree of bools or a
        function of the parameters) selecting the decayed leaves.
      bias_learning_rate, lr_multipliers: per-parameter rates (`scale_by_parameter_rates`); a
        parameter's decay is scaled by its own rate, as the released code's wc * epsW.

    Returns:
      A GradientTransformation whose updates are v, to be added with `optax.apply_updates`.
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        _scale_by_rates(learning_rate, bias_learning_rate, lr_multipliers),
        optax.trace(decay=momentum),
    )


def optax_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float,
    weight_decay: float,
    weight_decay_mask: Any = None,
    bias_learning_rate: optax.Schedule | None = None,
    lr_multipliers: Sequence[tuple[str, optax.Schedule]] = (),
) -> optax.GradientTransformation:
    """Optax's usual form: u <- m u + (g + d w); w <- w - lr u (the rate outside).

    Args:
      learning_rate: the rate lr.
      momentum: m.
      weight_decay: d.
      weight_decay_mask, bias_learning_rate, lr_multipliers: as in `paper_sgd`.

    Returns:
      `add_decayed_weights` chained with `optax.sgd` (with per-parameter rates: the momentum
      trace, then `scale_by_parameter_rates`).
    """
    if bias_learning_rate is not None or lr_multipliers:
        return optax.chain(
            optax.add_decayed_weights(weight_decay, weight_decay_mask),
            optax.trace(decay=momentum),
            scale_by_parameter_rates(learning_rate, bias_learning_rate, lr_multipliers),
        )
    return optax.chain(
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.sgd(learning_rate, momentum=momentum),
    )


def epoch_schedule(start: float, changes: Any, steps_per_epoch: int, field: str) -> optax.Schedule:
    """A piecewise-constant schedule keyed by epochs: `start`, then each listed value from its
    epoch on (the released 2012 code's hand-set rates, e.g. ((25, 1e-3), (51, 1e-4))).

    Epochs are rounded to steps once (round(epoch * steps_per_epoch)); the values are looked up,
    not multiplied, so each is exactly the configured float.

    Args:
      start: the value before the first listed epoch.
      changes: (epoch, value) pairs, epochs >= 0 and increasing, values >= 0.
      steps_per_epoch: training steps per epoch.
      field: the config field, named in errors.

    Raises:
      ValueError: for pairs that are not (epoch, value), epochs not increasing, negative values.
    """
    example = "((25, 0.001), (51, 0.0001))"
    if isinstance(changes, str) or not isinstance(changes, (tuple, list)):
        raise ValueError(f"config.optimizer.{field} must be (epoch, value) pairs, e.g. {example}.")
    epochs, values = [], [float(start)]
    for pair in changes:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair
        ):
            raise ValueError(
                f"config.optimizer.{field} entry {pair!r} is not an (epoch, value) pair of "
                f"numbers, e.g. {example}."
            )
        epoch, value = pair
        if epoch < 0 or (epochs and epoch <= epochs[-1]) or value < 0:
            raise ValueError(
                f"config.optimizer.{field}={tuple(changes)!r}: epochs must be >= 0 and "
                f"increasing and values >= 0, e.g. {example}."
            )
        epochs.append(epoch)
        values.append(float(value))
    if steps_per_epoch < 1:
        raise ValueError(f"config.optimizer.{field} needs steps_per_epoch >= 1.")
    boundaries = np.array([round(e * steps_per_epoch) for e in epochs], np.int64)
    table = np.array(values, np.float32)

    def schedule(count):
        return jnp.asarray(table)[jnp.searchsorted(boundaries, count, side="right")]

    return schedule


def learning_rate_schedule(
    optimizer_config: ml_collections.ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> optax.Schedule | float:
    """The rate of each step as an Optax schedule, or the constant start of 'plateau'.

    'constant': the initial rate throughout. 'step': multiplied by `step_factor` at each epoch
    in `step_epochs` (rounded to steps once, so resumed runs agree on the boundaries).
    'cosine': 0.5 * lr0 * (1 + cos(pi * step / total_steps)), 0 from total_steps on.
    'manual': the initial rate, then `manual_schedule`'s (epoch, rate) pairs (`epoch_schedule`).
    'plateau': a float; `Plateau` changes it between steps, since a function of the step
    cannot see the validation error.

    Raises:
      ValueError: for an unknown schedule name or settings it cannot use.
    """
    c = optimizer_config
    check_choice("config.optimizer.schedule", c.schedule, SCHEDULES)
    lr0 = float(c.learning_rate)
    if c.schedule == "step":
        if steps_per_epoch < 1:
            raise ValueError(f"schedule='step' needs steps_per_epoch >= 1, got {steps_per_epoch}.")
        boundaries: dict[int, float] = {}
        for epoch in c.step_epochs:  # two epochs on one step multiply their factors there
            b = round(epoch * steps_per_epoch)
            boundaries[b] = boundaries.get(b, 1.0) * float(c.step_factor)
        return optax.piecewise_constant_schedule(lr0, boundaries)
    if c.schedule == "cosine":
        if total_steps < 1:
            raise ValueError(f"schedule='cosine' needs total_steps >= 1, got {total_steps}.")
        return optax.cosine_decay_schedule(lr0, total_steps)
    if c.schedule == "constant":
        return optax.constant_schedule(lr0)
    if c.schedule == "manual":
        return epoch_schedule(lr0, c.manual_schedule, steps_per_epoch, "manual_schedule")
    return lr0  # 'plateau'


def create_optimizer(
    optimizer_config: ml_collections.ConfigDict, *, steps_per_epoch: int = 1, total_steps: int = 1
) -> optax.GradientTransformation:
    """Builds the SGD of §5 with its learning-rate schedule inside the optimizer state.

    Args:
      optimizer_config: `config.optimizer`; reads learning_rate (the initial rate), momentum,
        weight_decay, update_rule ('paper' | 'optax'), weight_decay_on ('all' | 'weights') and
        the schedule fields (`learning_rate_schedule`).
      steps_per_epoch: training steps per epoch ('step' converts epochs with it).
      total_steps: steps in the run ('cosine' reaches 0 there).

    Returns:
      An `optax.inject_hyperparams` transformation. A fixed schedule is evaluated on the
      device at the update's own count; under 'plateau' the rate is a state value that
      `set_learning_rate` changes. `get_learning_rate` reads the rate of the last update.

    Raises:
      ValueError: if a name is not one of the allowed ones, or the schedule cannot be built.
    """
    check_choice("config.optimizer.update_rule", optimizer_config.update_rule, UPDATE_RULES)
    check_choice(
        "config.optimizer.weight_decay_on", optimizer_config.weight_decay_on, WEIGHT_DECAY_ON
    )
    bias_rate, multipliers = parameter_rates(optimizer_config, steps_per_epoch)
    factory = paper_sgd if optimizer_config.update_rule == "paper" else optax_sgd
    # The paper decays every parameter (§5); Caffe's bvlc_alexnet sets decay_mult 0 on biases.
    mask = weights_only_mask if optimizer_config.weight_decay_on == "weights" else None
    # Only the rate is injected: momentum and decay stay Python constants of the compiled step,
    # and the mask is a function inject_hyperparams would otherwise take for a schedule.
    static = ("momentum", "weight_decay", "weight_decay_mask")
    return optax.inject_hyperparams(
        factory, static_args=static + ("bias_learning_rate", "lr_multipliers")
    )(
        learning_rate=learning_rate_schedule(
            optimizer_config, steps_per_epoch=steps_per_epoch, total_steps=total_steps
        ),
        momentum=float(optimizer_config.momentum),
        weight_decay=float(optimizer_config.weight_decay),
        weight_decay_mask=mask,
        bias_learning_rate=bias_rate,
        lr_multipliers=multipliers,
    )


def parameter_rates(
    optimizer_config: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple[optax.Schedule | None, tuple[tuple[str, optax.Schedule], ...]]:
    """The biases' own rate schedule (None: they follow the weights) and the per-layer
    multiplier schedules of `config.optimizer` (bias_learning_rate, bias_manual_schedule,
    layer_lr_multipliers), validated.

    Raises:
      ValueError: naming the field and what is wrong.
    """
    c = optimizer_config
    bias = c.bias_learning_rate
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or (bias < 0 and bias != -1):
        raise ValueError(
            f"config.optimizer.bias_learning_rate must be -1 (biases follow the weights' rate, "
            f"the paper) or a rate >= 0 (the 2012 code's epsB, e.g. 0.02), got {bias!r}."
        )
    if bias == -1 and len(c.bias_manual_schedule):
        raise ValueError(
            "config.optimizer.bias_manual_schedule changes the biases' own rate; set "
            "config.optimizer.bias_learning_rate >= 0 (e.g. 0.02) or leave the schedule empty."
        )
    bias_rate = (
        None
        if bias == -1
        else epoch_schedule(bias, c.bias_manual_schedule, steps_per_epoch, "bias_manual_schedule")
    )
    multipliers = []
    example = "(('conv1', 0.0),) or (('conv1', ((67, 0.1), (72, 0.0))),)"
    entries = c.layer_lr_multipliers
    if isinstance(entries, str) or not isinstance(entries, (tuple, list)):
        raise ValueError(f"config.optimizer.layer_lr_multipliers must be pairs, e.g. {example}.")
    for entry in entries:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError(
                f"config.optimizer.layer_lr_multipliers entry {entry!r} is not a (layer, "
                f"multiplier or (epoch, multiplier) pairs) pair, e.g. {example}."
            )
        key, value = entry
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(
                    f"config.optimizer.layer_lr_multipliers: {key}'s multiplier must be >= 0, "
                    f"got {value}."
                )
            value = ((0, value),)
        field = f"layer_lr_multipliers[{key!r}]"
        multipliers.append((key, epoch_schedule(1.0, value, steps_per_epoch, field)))
    return bias_rate, tuple(multipliers)


def _injected(path: tuple[Any, ...], value: Any) -> bool:
    """The injected rate itself, not a schedule's own state stored under the same name."""
    return len(path) >= 2 and getattr(path[-2], "name", None) == "hyperparams"


def get_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The learning rate of the last update (before any update: of the first one).

    Args:
      opt_state: the state of `create_optimizer`'s transformation, alone or nested in a larger
        state (a chain, a train state), concrete or traced.

    Returns:
      The rate, a scalar array (`float()` it for logging).

    Raises:
      ValueError: if the state holds no injected learning rate.
    """
    # Searching by name (not a fixed path) finds the rate for both rules and in wrapped states.
    lr = optax.tree_utils.tree_get(opt_state, "learning_rate", filtering=_injected)
    if lr is None:
        raise ValueError(
            "No injected 'learning_rate' in the optimizer state: build it with create_optimizer."
        )
    return lr


def set_learning_rate(opt_state: optax.OptState, learning_rate: Any) -> optax.OptState:
    """Returns a copy of the state whose next update uses `learning_rate` (under 'plateau'; a
    fixed schedule overwrites the rate at every update).

    The new value takes the dtype of the old one, so a jitted step that receives the state sees
    the same abstract value and is not traced again.

    Args:
      opt_state: as in `get_learning_rate`.
      learning_rate: the new rate, a Python float or a scalar array (traced or not).

    Returns:
      The state with the rate replaced; nothing else changes.
    """
    old = get_learning_rate(opt_state)
    new = jnp.asarray(learning_rate, dtype=jnp.asarray(old).dtype)
    return optax.tree_utils.tree_set(opt_state, _injected, learning_rate=new)


# --------------------------------------------------------------------------------------------
# The plateau rule. §5: "divide the learning rate by 10 when the validation error rate stopped
# improving with the current learning rate ... reduced three times prior to termination."
# --------------------------------------------------------------------------------------------


class Plateau:
    """The validation-plateau rule of §5, on the host: it sees evaluations, not steps.

    The rate is multiplied by `plateau_factor` when the validation error has not improved on its
    best by more than `plateau_min_delta` for `plateau_patience` consecutive evaluations, at
    most `plateau_max_drops` times. After a drop the count of evaluations without improvement
    restarts from zero; the best error is kept (as in PyTorch's ReduceLROnPlateau), so the lower
    rate has to beat the error reached before it.

    Not `optax.contrib.reduce_on_plateau`: that transformation counts its patience in update
    calls and reads a loss passed to every update, while §5 counts validation evaluations, which
    happen on the host every `eval_every_steps` steps. The training loop writes the new rate into
    the optimizer state (`set_learning_rate`) only when this object drops it, so between drops
    no value travels from the host to the step.
    """

    def __init__(self, optimizer_config: ml_collections.ConfigDict):
        """Reads learning_rate and the plateau_* fields of `config.optimizer`."""
        c = optimizer_config
        self.base_learning_rate = float(c.learning_rate)
        self.patience = int(c.plateau_patience)
        self.factor = float(c.plateau_factor)
        self.max_drops = int(c.plateau_max_drops)
        self.min_delta = float(c.plateau_min_delta)
        if self.patience < 1:
            raise ValueError(
                f"config.optimizer.plateau_patience must be >= 1, got {self.patience}."
            )
        # What a checkpoint must hold for a resumed run to continue exactly.
        self.best_error: float | None = None
        self.num_bad_evals = 0
        self.drop_steps: list[int] = []

    @property
    def learning_rate(self) -> float:
        """The rate after the drops so far."""
        return self.base_learning_rate * self.factor ** len(self.drop_steps)

    def on_eval(self, step: int, error: float) -> bool:
        """Records a validation evaluation.

        Args:
          step: the training step at which the evaluation ran (kept with each drop).
          error: the validation error (any unit, the same for every call; lower is better).
            A non-finite error never counts as an improvement.

        Returns:
          True if the rate was dropped by this evaluation.
        """
        error = float(error)
        if math.isfinite(error) and (
            self.best_error is None or error < self.best_error - self.min_delta
        ):
            self.best_error = error
            self.num_bad_evals = 0
            return False
        self.num_bad_evals += 1
        if self.num_bad_evals >= self.patience and len(self.drop_steps) < self.max_drops:
            self.drop_steps.append(int(step))
            self.num_bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """The mutable state, JSON-serialisable, for checkpoints: the best error (None before
        any evaluation), the evaluations without improvement since the last drop or best, and
        the steps at which the rate dropped."""
        return {
            "schedule": "plateau",
            "best_error": self.best_error,
            "num_bad_evals": self.num_bad_evals,
            "drop_steps": list(self.drop_steps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned, so a resumed run continues the rule.

        Raises:
          ValueError: if it was saved by a run with another schedule.
        """
        if state.get("schedule") != "plateau":
            raise ValueError(
                f"Schedule state saved for {state.get('schedule')!r}, this run uses "
                "config.optimizer.schedule='plateau'."
            )
        best = state["best_error"]
        self.best_error = None if best is None else float(best)
        self.num_bad_evals = int(state["num_bad_evals"])
        self.drop_steps = [int(s) for s in state["drop_steps"]]
