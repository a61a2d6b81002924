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
import functools
import json
import os
import socket
import subprocess
from collections.abc import Sequence
from typing import Any

from alexnet_jax import migrations

LOCK_NAME = ".lock"

# Fields that may differ from the workdir's config.json when a run resumes: how often things
# are logged, evaluated and saved, how long the run is, where the data is read from, how it
# is fed, and the mesh (a checkpoint restores onto any mesh; multi-host reruns need that).
# The `experiments.paper.ablations` runner's bookkeeping fields are not training inputs either.
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

# The config record: config.json holds the config's fields and, under this key, the format of
# the record and the code version that wrote it (`code_version`). A record without the key is of
# format 1 (written before issue 23 of this project, by alexnet_jax 0.1.0).
RECORD_KEY = "__record__"
RECORD_FORMAT = 2


def code_version() -> dict[str, Any]:
    """{'package': alexnet_jax's version, 'commit': the git commit of the code (with '+dirty'
    when its tracked files have uncommitted changes), or None outside a git checkout}."""
    return {"package": _package_version(), "commit": _commit()}


def _package_version() -> str:
    import alexnet_jax

    return alexnet_jax.__version__


@functools.cache
def _commit() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    changed = dirty.returncode == 0 and dirty.stdout.strip()
    return head.stdout.strip() + ("+dirty" if changed else "")


def describe_version(record: dict[str, Any] | None) -> str:
    """'alexnet_jax 0.2.0 (commit abc1234)' of a record's `written_by`, or what an old record
    without one means."""
    if not record or "written_by" not in record:
        return "alexnet_jax 0.1.0 or earlier (format 1: no version recorded)"
    by = record["written_by"]
    if not isinstance(by, dict):
        return f"an unknown version (its record says {str(by)[:40]!r})"
    commit = f" (commit {str(by['commit'])[:12]})" if by.get("commit") else ""
    return f"alexnet_jax {str(by.get('package', '?'))[:20]}{commit}"


def new_record() -> dict[str, Any]:
    """The `RECORD_KEY` entry this code writes."""
    return {"format": RECORD_FORMAT, "written_by": code_version()}


def read_record(workdir: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the config.json as written, its record or None for format 1).

    Raises:
      WorkdirError: for a config.json that is not a JSON object, or of a newer format.
    """
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise WorkdirError(
            f"{path} cannot be read ({e}); it is the record of the run in {workdir}: repair "
            "it, or use another --workdir."
        ) from None
    if not isinstance(data, dict):
        raise WorkdirError(
            f"{path} holds a JSON {type(data).__name__}, not a config record; it is not a run "
            "of this project: use another --workdir."
        )
    record = data.get(RECORD_KEY)
    if record is not None and (
        not isinstance(record, dict) or not isinstance(record.get("format"), int)
    ):
        raise WorkdirError(f"{path}: its {RECORD_KEY!r} entry is not a record {{'format': N}}.")
    if record is not None and record["format"] > RECORD_FORMAT:
        raise WorkdirError(
            f"{path} is a config record of format {record['format']}, written by "
            f"{describe_version(record)}; this code ({describe_version(new_record())}) reads "
            f"formats up to {RECORD_FORMAT}: resume the run with that version or a newer one."
        )
    return data, record


def recorded_config(workdir: str) -> dict[str, Any]:
    """The flat config a run recorded (workdir/config.json, as `flat_config`), a field added
    since filled with its `migrations.added_field_value`: what the run computed, in today's
    fields."""
    return migrations.fill_added_fields(flat_config(read_record(workdir)[0]))[0]


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
    """{'model.lrn': True, ...} of a ConfigDict or of a run's config.json dict, as JSON values
    (a config.json's `RECORD_KEY` is not a field)."""
    data = config if isinstance(config, dict) else json.loads(config.to_json_best_effort())
    data = {k: v for k, v in data.items() if k != RECORD_KEY}

    def flat(d: dict, prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    return flat(data, "")


ABSENT = "<absent>"  # how a field one side lacks reads in `config_differences`


def matches(key: str, fields: Sequence[str]) -> bool:
    """Whether the flat field `key` is one of `fields` (a name ending in '.' names a section:
    every field under it)."""
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in fields)


def config_differences(
    old: dict[str, Any], new: dict[str, Any], ignore: Sequence[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """{field: (old value, new value)} of two flat configs (`flat_config`), in sorted order, of
    the fields that differ, a field one side lacks read as `ABSENT`; the fields `ignore` names
    (as `matches` reads them) are left out."""
    return {
        key: (old.get(key, ABSENT), new.get(key, ABSENT))
        for key in sorted(set(old) | set(new))
        if old.get(key, ABSENT) != new.get(key, ABSENT) and not matches(key, ignore)
    }


def config_changes(config: Any, workdir: str) -> tuple[dict, dict]:
    """Differences between `config` and the workdir's config.json.

    Returns:
      (allowed, refused): each {field: (in config.json, now)}; both empty when the workdir
      has no config.json.
    """
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return {}, {}
    old, filled = migrations.fill_added_fields(flat_config(read_record(workdir)[0]))
    new = flat_config(config)
    # A field filled in for the old record that this config lacks is no change.
    changed = config_differences(old, new, ignore=[k for k in filled if k not in new])
    allowed = {k: v for k, v in changed.items() if matches(k, MAY_CHANGE_ON_RESUME)}
    refused = {k: v for k, v in changed.items() if k not in allowed}
    return allowed, refused


def write_record(
    config: Any, workdir: str, allowed: dict, init_from: dict[str, Any] | None = None
) -> list[str]:
    """Writes the run's config.json (its fields and this code's `RECORD_KEY` entry) and
    appends what changed since the record to config_changes.jsonl: the allowed changes, the
    fields an older record lacked (filled with `migrations.added_field_value`) and the version
    that wrote it. Atomic (a temporary file renamed over it). Process 0 only.

    `init_from`: what a run starting from another network imported (`transfer.load`), kept in
    the record as 'init_from'; None keeps the record's own (a resumed run never re-imports).

    Returns:
      The notices to print, one line each: the allowed changes, and the record's migration.
    """
    path = os.path.join(workdir, "config.json")
    old_record, filled = None, {}
    if os.path.exists(path):
        data, old_record = read_record(workdir)
        filled = migrations.fill_added_fields(flat_config(data))[1]
    record = new_record()
    if init_from is None and old_record and "init_from" in old_record:
        init_from = old_record["init_from"]
    if init_from is not None:
        record["init_from"] = init_from
    notices, change = [], {}
    if allowed:
        notices.append(
            "config changed on resume (allowed): "
            + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in allowed.items())
        )
        change["changes"] = {k: list(v) for k, v in allowed.items()}
    if filled:
        notices.append(
            f"migrated the config record of {describe_version(old_record)}: {len(filled)} "
            "fields added since, read as what that code computed: "
            + ", ".join(f"{k}={v!r}" for k, v in filled.items())
        )
        change["migrated_fields"] = filled
    if os.path.exists(path) and (old_record or {}).get("written_by") != record["written_by"]:
        change["record"] = {"from": describe_version(old_record), "to": describe_version(record)}
    if change:
        with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
            f.write(json.dumps(change) + "\n")
    data = {RECORD_KEY: record, **json.loads(config.to_json_best_effort())}
    text = json.dumps(data, indent=2, sort_keys=True)
    if not os.path.exists(path) or open(path).read() != text:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return notices


def refuse_config_changes(refused: dict, workdir: str) -> None:
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise WorkdirError(
            f"--workdir={workdir} holds a run with another config ({listed}). Resuming would "
            "mix two experiments: use a new --workdir for this config, or rerun with the values "
            f"recorded in {os.path.join(workdir, 'config.json')}."
        )


def kernel_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` of this host runs and, when `start` (its `kernel_start`) is
    known, is the same process (not a later one given the same pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = kernel_start(pid)
    return start is None or now is None or now == start


def init_from_record(workdir: str) -> dict[str, Any] | None:
    """What a run was initialised from (`transfer.load`'s record, kept in config.json's
    `RECORD_KEY` entry), or None for a run that started from its config's initialisation."""
    try:
        record = read_record(workdir)[1]
    except WorkdirError:
        return None
    found = (record or {}).get("init_from")
    return found if isinstance(found, dict) else None


def live_holder(workdir: str) -> str | None:
    """Who holds `workdir`'s lock, in words, when that run may still be running (a live pid on
    this host, or any holder on another host); None when the workdir is free or the holder is
    gone. For tools that delete run folders: never under a running run."""
    lock = Lock(workdir)
    if not os.path.exists(lock.path):
        return None
    holder = lock._holder()
    pid, host = holder.get("pid"), holder.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        if not process_alive(pid, holder.get("kernel_start")):
            return None
        return f"pid {pid} on this host, started {holder.get('started')}"
    return f"pid {pid} on host {host} (not checkable from here), started {holder.get('started')}"


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
                holder = json.load(f)
        except (OSError, ValueError, RecursionError):
            return {}
        return holder if isinstance(holder, dict) else {}  # garbage: an unknown holder

    def __enter__(self) -> Lock:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "kernel_start": kernel_start(os.getpid()),
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
                    and not process_alive(pid, holder.get("kernel_start"))
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
