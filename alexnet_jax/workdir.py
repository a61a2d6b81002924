"""The workdir as the record of one run: a lock for its lifetime, and a config that may change
on resume only where the run's numbers do not depend on it.

`train.train_and_evaluate` validates the config and the data first, then (process 0) takes the
lock, compares the config with the workdir's `config.json`, and only then writes anything. A
refused run leaves the workdir as it found it.

The lock is `workdir/.lock`, created with O_CREAT | O_EXCL (atomic on local file systems and
on NFS v3 and later) and holding the holder's pid, host, start time and the pid's kernel start
time. A second run finds it and refuses, naming the holder. A lock whose holder is gone is
stale: on the holder's host it is detected (the pid is gone, or is another process with a
different kernel start time) and taken over with a notice; a lock held from another host
cannot be checked from here and is never taken over: the message says how to remove it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from typing import Any

LOCK_NAME = ".lock"

# Fields that may differ from the workdir's config.json when a run resumes: how often things
# are logged, evaluated and saved, how long the run is, where the data is read from, how it
# is fed, and the mesh (a checkpoint restores onto any mesh; multi-host reruns need that).
# The `experiments.ablations` runner's bookkeeping fields are not training inputs either.
MAY_CHANGE_ON_RESUME = (
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "progress_bar",
    "num_train_steps",
    "num_epochs",
    "keep_checkpoints",
    "num_workers",
    "prefetch_batches",
    "data_dir",
    "cache_dir",
    "mesh.",
    # Speed-only switches (the same numbers either way, tested), and the one they replaced.
    "model.kernels",
    "model.grouped_conv",
    "model.conv1_matmul",
)

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
}


def recorded_config(workdir: str) -> dict[str, Any]:
    """The flat config a run recorded (workdir/config.json, as `flat_config`), a field added
    since filled with its `ADDED_FIELDS` value: what the run computed, in today's fields."""
    with open(os.path.join(workdir, "config.json")) as f:
        saved = flat_config(json.load(f))
    return {**{k: v for k, v in ADDED_FIELDS.items() if k not in saved}, **saved}


class WorkdirError(ValueError):
    """A workdir that cannot be used as asked (the message says why and what to do)."""


def check_path(workdir: str) -> None:
    """Refuses a workdir that is a file, or one inside a file."""
    path = os.path.abspath(workdir)
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(
            f"--workdir={workdir}: {path} is a file, not a directory; give a directory path "
            "(it is created if it does not exist)."
        )


def flat_config(config: Any) -> dict[str, Any]:
    """{'model.lrn': True, ...} of a ConfigDict or of a run's config.json dict, as JSON values."""
    data = config if isinstance(config, dict) else json.loads(config.to_json_best_effort())

    def flat(d: dict, prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    return flat(data, "")


def config_changes(config: Any, workdir: str) -> tuple[dict, dict]:
    """Differences between `config` and the workdir's config.json.

    Returns:
      (allowed, refused): each {field: (in config.json, now)}; both empty when the workdir
      has no config.json.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return {}, {}
    try:
        with open(path) as f:
            old = flat_config(json.load(f))
    except (OSError, ValueError) as e:
        raise WorkdirError(
            f"{path} cannot be read ({e}); it is the record of the run in {workdir}: repair "
            "it, or use another --workdir."
        ) from None
    new = flat_config(config)
    allowed, refused = {}, {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b or (key not in old and key in ADDED_FIELDS and b == ADDED_FIELDS[key]):
            continue
        may = any(key == f or (f.endswith(".") and key.startswith(f)) for f in MAY_CHANGE_ON_RESUME)
        (allowed if may else refused)[key] = (a, b)
    return allowed, refused


def refuse_config_changes(refused: dict, workdir: str) -> None:
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise WorkdirError(
            f"--workdir={workdir} holds a run with another config ({listed}). Resuming would "
            "mix two experiments: use a new --workdir for this config, or rerun with the values "
            f"recorded in {os.path.join(workdir, 'config.json')}."
        )


def _kernel_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _kernel_start(pid)
    return start is None or now is None or now == start


class Lock:
    """`workdir/.lock` for the lifetime of a run (a context manager).

    Raises WorkdirError on entry when another live run holds it.
    """

    def __init__(self, workdir: str, say=print):
        self.path = os.path.join(workdir, LOCK_NAME)
        self._say = say
        self._held = False

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> Lock:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "kernel_start": _kernel_start(os.getpid()),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not holder:  # being written by its creator this very moment, or garbage
                    holder = {"pid": None, "host": "?", "started": "?"}
                same_host = holder.get("host") == me["host"]
                pid = holder.get("pid")
                if (
                    same_host
                    and isinstance(pid, int)
                    and not _alive(pid, holder.get("kernel_start"))
                ):
                    self._say(
                        f"notice: took over the stale lock {self.path} of pid {pid} (started "
                        f"{holder.get('started')}), which is no longer running."
                    )
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                where = (
                    "on this host"
                    if same_host
                    else f"on host {holder.get('host')} (not checkable from here)"
                )
                raise WorkdirError(
                    f"{os.path.dirname(self.path)} is in use by another run: pid "
                    f"{holder.get('pid')} {where}, started {holder.get('started')}. Wait for it "
                    f"to end, or, if that run is gone, delete {self.path}."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held = True
            return self
        raise WorkdirError(f"could not take the lock {self.path}; try again.")

    def __exit__(self, *exc) -> None:
        if self._held:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self._held = False
