"""Runs recorded by earlier versions, read as what those versions computed: every known change
of a run's record (config.json) or of its checkpoints, in one place.

- Config fields added since a run was recorded (`ADDED_FIELDS`): the record is read with each
  field at the value that computes what the code did before the field existed
  (`fill_added_fields`, used by `workdir.config_changes` and `workdir.write_record`, which
  prints one notice line).
- Leaves of the checkpointed tree added since a checkpoint was written (`MIGRATIONS`): filled
  from what the checkpoint holds (`tree_plan`, used by `checkpoint.Checkpointer.restore`, one
  notice line each); any other difference is refused there.
- The checkpoint's data item before the metrics window was saved with it (`data_item`).

Standard library only (no JAX, no NumPy): `workdir` imports this module, and tools that only
read run folders (`experiments.sweep status`) import `workdir`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

# Fields added after runs were recorded, with the value (as JSON) that computes what the code did
# before the field existed: a config.json without the field resumes when the field has that
# value, and is refused (like any other change) when it has another.
ADDED_FIELDS = {
    "model.lrn_alpha_convention": "per_term",
    "model.lrn_before_relu": [],
    "model.within_map_after": [],
    "model.within_map_size": 5,
    "model.within_map_alpha": 4e-5,
    "model.within_map_beta": 0.75,
    "model.within_map_k": 1.0,
    "model.init_std": [],
    "model.dropout_scaling": "inverted",  # the only scaling before the field
    "model.dropout_on": "outputs",
    "model.conv1_padding": -1,
    "model.lrn_across_towers": False,
    "optimizer.manual_schedule": [],
    "optimizer.bias_learning_rate": -1.0,
    "optimizer.bias_manual_schedule": [],
    "optimizer.layer_lr_multipliers": [],
    "augment.mean_rgb": [0.0, 0.0, 0.0],
    "augment.std_rgb": [1.0, 1.0, 1.0],
    "augment.random_crop_end_epoch": -1,
    "augment.flip_end_epoch": -1,
    "augment.pca_color_end_epoch": -1,
    "resize_mode": "shorter_side",
    "augment.mean_file": "",
    "augment.mean_file_layout": "caffe",
    # Fields older than the ones above (runs recorded since the training loop first wrote
    # config.json, commit 3f3694d, lack them).
    "model.lrn_kind": "cross_map",  # the only LRN before the field
    "model.compute_dtype": "float32",
    "test_split": "",  # no test split: validation on eval_split only
    # The paper's eight layers, before the architecture switches of §7 and Table 2.
    "model.remove_conv": [],
    "model.extra_conv": 0,
    "model.extra_conv_sees": "own",
    # Issue 25: training from another network's parameters (none before).
    "init_from.source": "",
    "init_from.format": "",
    "init_from.step": -1,
    "init_from.exclude": [],
}


def added_field_value(field: str, recorded: dict[str, Any]) -> Any:
    """The value of a field added since a run was recorded that computes what the code did
    then (`ADDED_FIELDS`), for the network the run recorded: an AlexNet switch that a CIFAR net
    does not have takes the value that means "not used" there, the only one it accepts."""
    if field.startswith("model.") and recorded.get("model.name", "alexnet") != "alexnet":
        # Imported here, not at the top: config_checks imports JAX, and this module must not
        # (above).
        from alexnet_jax import config_checks

        unused = config_checks.ALEXNET_ONLY.get(field.removeprefix("model."), ADDED_FIELDS[field])
        return list(unused) if isinstance(unused, tuple) else unused
    return ADDED_FIELDS[field]


def fill_added_fields(saved: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the flat record with every field added since filled in, {field: the value filled})."""
    filled = {k: added_field_value(k, saved) for k in ADDED_FIELDS if k not in saved}
    return {**filled, **saved}, filled


# --- checkpoints ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Migration:
    """A known change of the checkpointed tree: leaves this code has that older checkpoints
    lack, and how their values follow from what those checkpoints hold."""

    name: str  # what the notice says was done
    since: str  # the version and commit that changed the tree
    matches: Callable[[str], bool]  # a leaf path this migration fills
    fill: Callable[[str, dict[str, Any], int], Any]  # (path, restored leaves, step) -> value


def _schedule_count(path: str) -> bool:
    parts = path.split("/")
    return len(parts) >= 3 and parts[-3] == "hyperparams_states" and parts[-1] == "count"


MIGRATIONS = (
    Migration(
        name="added the learning-rate schedule's update count, equal to the step (the number "
        "of updates made)",
        since="alexnet_jax 0.1.0 at commit 7bf32c6 (optim on Optax schedules)",
        matches=_schedule_count,
        fill=lambda path, restored, step: step,
    ),
)


def tree_plan(
    saved: dict[str, tuple], target: dict[str, tuple]
) -> tuple[dict[str, Migration], str]:
    """The migrations that turn a checkpoint's leaves into this code's tree.

    Args:
      saved: {leaf path: (shape tuple, NumPy dtype)} of the checkpoint.
      target: the same of the tree this code builds.

    Returns:
      ({path: migration} for every leaf of `target` the checkpoint lacks that a migration
      fills, the differences no migration explains in words: '' when there are none).
    """
    missing = [p for p in target if p not in saved]
    extra = [p for p in saved if p not in target]
    reshaped = [
        f"{p} {saved[p][0]} {saved[p][1].name} here {target[p][0]} {target[p][1].name}"
        for p in target
        if p in saved and saved[p] != target[p]
    ]
    plan = {}
    for path in missing:
        known = next((m for m in MIGRATIONS if m.matches(path)), None)
        if known is not None:
            plan[path] = known
    unexplained = [p for p in missing if p not in plan]

    def listed(what: str, paths: list[str]) -> str:
        more = f" and {len(paths) - 4} more" if len(paths) > 4 else ""
        return f"{what}: {', '.join(paths[:4])}{more}" if paths else ""

    parts = [
        listed("only in the checkpoint", extra),
        listed("only in this code's tree", unexplained),
        listed("other shape or dtype", reshaped),
    ]
    return plan, "; ".join(p for p in parts if p)


def data_item(data: dict[str, Any]) -> tuple[Any, list]:
    """(the training iterator's state, the training metrics since the last logged event) of a
    checkpoint's data item; one written before the metrics window was saved with it (commit
    492a3fe) holds the iterator's state alone, and its window is empty."""
    if "iterator" in data:
        return data["iterator"], data["window"]
    return data, []
