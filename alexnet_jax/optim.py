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

The rate lives in the optimizer state (`optax.inject_hyperparams`), so the training loop
changes it between steps without recompiling: the paper's rule divides it by 10 when the
validation error stops improving, which a function of the step cannot express. All four
schedules therefore run on the host in `LearningRateSchedule`, and the loop does

    opt_state = set_learning_rate(opt_state, schedule.learning_rate(step))
    state, metrics = train_step(state, batch)       # jitted once
    if step % eval_every == 0:
        schedule.on_eval(step, validation_error)

saving `schedule.state_dict()` (plain JSON) with each checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

UPDATE_RULES = ("paper", "optax")
WEIGHT_DECAY_ON = ("all", "weights")
SCHEDULES = ("plateau", "step", "constant", "cosine")


def _check_choice(field: str, value: Any, allowed: Sequence[str]) -> None:
    """Raises a ValueError naming the config field and its allowed values."""
    if value not in allowed:
        raise ValueError(
            f"config.optimizer.{field} must be one of {tuple(allowed)}, got {value!r}."
        )


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


def paper_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float,
    weight_decay: float,
    weight_decay_mask: Any = None,
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

    Returns:
      A GradientTransformation whose updates are v, to be added with `optax.apply_updates`.
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=momentum),
    )


def optax_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float,
    weight_decay: float,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
    """Optax's usual form: u <- m u + (g + d w); w <- w - lr u (the rate outside).

    Args:
      learning_rate: the rate lr.
      momentum: m.
      weight_decay: d.
      weight_decay_mask: as in `paper_sgd`.

    Returns:
      `add_decayed_weights` chained with `optax.sgd`.
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.sgd(learning_rate, momentum=momentum),
    )


def create_optimizer(optimizer_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Builds the SGD of §5 with the learning rate held in the optimizer state.

    Args:
      optimizer_config: `config.optimizer`; reads learning_rate (the initial rate), momentum,
        weight_decay, update_rule ('paper' | 'optax') and weight_decay_on ('all' | 'weights').

    Returns:
      An `optax.inject_hyperparams` transformation; read and change its rate with
      `get_learning_rate` and `set_learning_rate`.

    Raises:
      ValueError: if update_rule or weight_decay_on is not one of the allowed names.
    """
    _check_choice("update_rule", optimizer_config.update_rule, UPDATE_RULES)
    _check_choice("weight_decay_on", optimizer_config.weight_decay_on, WEIGHT_DECAY_ON)
    factory = paper_sgd if optimizer_config.update_rule == "paper" else optax_sgd
    # The paper decays every parameter (§5); Caffe's bvlc_alexnet sets decay_mult 0 on biases.
    mask = weights_only_mask if optimizer_config.weight_decay_on == "weights" else None
    # Only the rate is injected: momentum and decay stay Python constants of the compiled step,
    # and the mask is a function inject_hyperparams would otherwise take for a schedule.
    return optax.inject_hyperparams(
        factory, static_args=("momentum", "weight_decay", "weight_decay_mask")
    )(
        learning_rate=float(optimizer_config.learning_rate),
        momentum=float(optimizer_config.momentum),
        weight_decay=float(optimizer_config.weight_decay),
        weight_decay_mask=mask,
    )


def get_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The learning rate the next update will use.

    Args:
      opt_state: the state of `create_optimizer`'s transformation, alone or nested in a larger
        state (a chain, a train state), concrete or traced.

    Returns:
      The rate, a scalar array (`float()` it for logging).

    Raises:
      ValueError: if the state holds no injected learning rate.
    """
    # Searching by name (not a fixed path) finds the rate for both rules and in wrapped states.
    lr = optax.tree_utils.tree_get(opt_state, "learning_rate")
    if lr is None:
        raise ValueError(
            "No injected 'learning_rate' in the optimizer state: build it with create_optimizer."
        )
    return lr


def set_learning_rate(opt_state: optax.OptState, learning_rate: Any) -> optax.OptState:
    """Returns a copy of the state whose next update uses `learning_rate`.

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
    return optax.tree_utils.tree_set(opt_state, learning_rate=new)


# --------------------------------------------------------------------------------------------
# Schedules. §5: "divide the learning rate by 10 when the validation error rate stopped
# improving with the current learning rate ... reduced three times prior to termination."
# --------------------------------------------------------------------------------------------


class LearningRateSchedule:
    """The learning rate for each step, run on the host.

    'plateau' (§5): the rate is multiplied by `plateau_factor` when the validation error has not
    improved on its best by more than `plateau_min_delta` for `plateau_patience` consecutive
    evaluations, at most `plateau_max_drops` times. After a drop the count of evaluations
    without improvement restarts from zero; the best error is kept (as in PyTorch's
    ReduceLROnPlateau), so the lower rate has to beat the error reached before it.
    'step': multiplied by `step_factor` at each epoch in `step_epochs`.
    'constant': the initial rate throughout.
    'cosine': 0.5 * lr0 * (1 + cos(pi * step / total_steps)), lr0 at step 0, 0 at total_steps.
    """

    def __init__(
        self,
        schedule: str,
        base_learning_rate: float,
        *,
        steps_per_epoch: int = 1,
        total_steps: int = 1,
        step_epochs: Sequence[float] = (30, 60, 80),
        step_factor: float = 0.1,
        plateau_patience: int = 2,
        plateau_factor: float = 0.1,
        plateau_max_drops: int = 3,
        plateau_min_delta: float = 0.0,
    ):
        """Validates the settings; see the class docstring for their meaning.

        Args:
          schedule: 'plateau' | 'step' | 'constant' | 'cosine'.
          base_learning_rate: the rate at step 0.
          steps_per_epoch: training steps per epoch ('step' converts epochs with it).
          total_steps: steps in the run ('cosine' reaches 0 there).
          step_epochs: epochs at which 'step' multiplies the rate by step_factor.
          step_factor: the factor of each 'step' drop.
          plateau_patience: evaluations without improvement before a 'plateau' drop.
          plateau_factor: the factor of each 'plateau' drop.
          plateau_max_drops: the most 'plateau' drops in a run.
          plateau_min_delta: how much lower than the best an error must be to count as better.

        Raises:
          ValueError: for an unknown schedule name or settings it cannot use.
        """
        _check_choice("schedule", schedule, SCHEDULES)
        if schedule == "step" and steps_per_epoch < 1:
            raise ValueError(f"schedule='step' needs steps_per_epoch >= 1, got {steps_per_epoch}.")
        if schedule == "cosine" and total_steps < 1:
            raise ValueError(f"schedule='cosine' needs total_steps >= 1, got {total_steps}.")
        if schedule == "plateau" and plateau_patience < 1:
            raise ValueError(
                f"config.optimizer.plateau_patience must be >= 1, got {plateau_patience}."
            )
        self.schedule = schedule
        self.base_learning_rate = float(base_learning_rate)
        self.total_steps = int(total_steps)
        # Boundaries in steps, rounded once so that resumed runs agree on them.
        self.step_boundaries = sorted(round(e * steps_per_epoch) for e in step_epochs)
        self.step_factor = float(step_factor)
        self.plateau_patience = int(plateau_patience)
        self.plateau_factor = float(plateau_factor)
        self.plateau_max_drops = int(plateau_max_drops)
        self.plateau_min_delta = float(plateau_min_delta)
        # Plateau state: what a checkpoint must hold for a resumed run to continue exactly.
        self.best_error: float | None = None
        self.num_bad_evals = 0
        self.drop_steps: list[int] = []

    def learning_rate(self, step: int) -> float:
        """The rate the update at `step` should use.

        Args:
          step: the index of the next training step (0-based).

        Returns:
          The learning rate, a Python float.
        """
        lr0 = self.base_learning_rate
        if self.schedule == "plateau":
            return lr0 * self.plateau_factor ** len(self.drop_steps)
        if self.schedule == "step":
            passed = sum(step >= b for b in self.step_boundaries)
            return lr0 * self.step_factor**passed
        if self.schedule == "cosine":
            t = min(max(step, 0), self.total_steps) / self.total_steps
            return 0.5 * lr0 * (1.0 + math.cos(math.pi * t))
        return lr0

    def on_eval(self, step: int, error: float) -> bool:
        """Records a validation evaluation; only 'plateau' reacts to it.

        Args:
          step: the training step at which the evaluation ran (kept with each drop).
          error: the validation error (any unit, the same for every call; lower is better).
            A non-finite error never counts as an improvement.

        Returns:
          True if the rate was dropped by this evaluation.
        """
        if self.schedule != "plateau":
            return False
        error = float(error)
        if math.isfinite(error) and (
            self.best_error is None or error < self.best_error - self.plateau_min_delta
        ):
            self.best_error = error
            self.num_bad_evals = 0
            return False
        self.num_bad_evals += 1
        if (
            self.num_bad_evals >= self.plateau_patience
            and len(self.drop_steps) < self.plateau_max_drops
        ):
            self.drop_steps.append(int(step))
            self.num_bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """The mutable state, JSON-serialisable, for checkpoints.

        Returns:
          A dict of the schedule name, best error (None before any evaluation), the count of
          evaluations without improvement and the steps at which the rate dropped.
        """
        return {
            "schedule": self.schedule,
            "best_error": self.best_error,
            "num_bad_evals": self.num_bad_evals,
            "drop_steps": list(self.drop_steps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned, so a resumed run continues the schedule.

        Args:
          state: a dict from `state_dict` (possibly through JSON).

        Raises:
          ValueError: if it was saved by a different kind of schedule.
        """
        if state["schedule"] != self.schedule:
            raise ValueError(
                f"Schedule state saved for {state['schedule']!r}, this run uses "
                f"config.optimizer.schedule={self.schedule!r}."
            )
        best = state["best_error"]
        self.best_error = None if best is None else float(best)
        self.num_bad_evals = int(state["num_bad_evals"])
        self.drop_steps = [int(s) for s in state["drop_steps"]]


def create_schedule(
    optimizer_config: ml_collections.ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> LearningRateSchedule:
    """Builds the schedule named by `config.optimizer.schedule`.

    Args:
      optimizer_config: `config.optimizer` (learning_rate, schedule, step_*, plateau_*).
      steps_per_epoch: training steps per epoch.
      total_steps: training steps in the run.

    Returns:
      A LearningRateSchedule starting at `optimizer_config.learning_rate`.

    Raises:
      ValueError: if the schedule name is unknown.
    """
    c = optimizer_config
    return LearningRateSchedule(
        c.schedule,
        c.learning_rate,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        step_epochs=tuple(c.step_epochs),
        step_factor=c.step_factor,
        plateau_patience=c.plateau_patience,
        plateau_factor=c.plateau_factor,
        plateau_max_drops=c.plateau_max_drops,
        plateau_min_delta=c.plateau_min_delta,
    )
