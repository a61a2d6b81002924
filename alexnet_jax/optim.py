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


def learning_rate_schedule(
    optimizer_config: ml_collections.ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> optax.Schedule | float:
    """The rate of each step as an Optax schedule, or the constant start of 'plateau'.

    'constant': the initial rate throughout. 'step': multiplied by `step_factor` at each epoch
    in `step_epochs` (rounded to steps once, so resumed runs agree on the boundaries).
    'cosine': 0.5 * lr0 * (1 + cos(pi * step / total_steps)), 0 from total_steps on.
    'plateau': a float; `Plateau` changes it between steps, since a function of the step
    cannot see the validation error.

    Raises:
      ValueError: for an unknown schedule name or settings it cannot use.
    """
    c = optimizer_config
    _check_choice("schedule", c.schedule, SCHEDULES)
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
        learning_rate=learning_rate_schedule(
            optimizer_config, steps_per_epoch=steps_per_epoch, total_steps=total_steps
        ),
        momentum=float(optimizer_config.momentum),
        weight_decay=float(optimizer_config.weight_decay),
        weight_decay_mask=mask,
    )


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
