"""The sweep folder (experiments/sweep/__init__.py): its manifest, its run folders and their
status files, and the lines of `status`. Imports no JAX: `status` stays fast.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from alexnet_jax import workdir as workdir_lib
from experiments import files

MANIFEST = "sweep.json"
FORMAT = 1
STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL: the worker checkpointed on SIGTERM and is to be resumed
STATES = ("queued", "running", "requeued", "finished", "failed")


class SweepError(SystemExit):
    """A refusal of the sweep command, one line (exit status 1)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def run_id(variant: str, seed: int) -> str:
    return f"{variant}_seed{seed}"


def run_folder(sweep: Path, rid: str) -> Path:
    return Path(sweep) / rid


def log_file(sweep: Path, rid: str) -> Path:
    return sweep / "logs" / f"{rid}.log"


def read_manifest(sweep: Path) -> dict:
    path = Path(sweep) / MANIFEST
    if not path.is_file():
        raise SweepError(f"{sweep} is not a sweep folder (no {MANIFEST}); start one with `run`.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SweepError(f"{path} cannot be read ({e}); it is the sweep's record.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SweepError(f"{path} is not a sweep manifest of format {FORMAT}.")
    return manifest


def read_status(sweep: Path, rid: str) -> dict:
    path = Path(sweep) / "status" / f"{rid}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"state": "queued", "requeues": 0, "attempts": 0}


def update_status(sweep: Path, rid: str, **fields: Any) -> dict:
    """Merges `fields` into the run's status file (one writer at a time: the run's own job)."""
    status = {**read_status(sweep, rid), **fields, "updated": time.time()}
    files.write_json(Path(sweep) / "status" / f"{rid}.json", status, sort_keys=False)
    return status


def _tail_lines(path: Path, size: int) -> list[str]:
    """The lines of a text file's last `size` bytes ([] if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - size))
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def last_line(path: Path, size: int = 8192) -> str:
    """The last non-empty line of a text file (its last `size` bytes), '' if none."""
    lines = _tail_lines(path, size)
    # A progress bar's carriage returns leave its last state on the line.
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in lines]
    return next((ln for ln in reversed(lines) if ln), "")


def last_training_event(folder: Path, size: int = 16384) -> dict | None:
    """The last logged training event of a run (metrics.jsonl's tail), or None."""
    for line in reversed(_tail_lines(folder / "metrics.jsonl", size)):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "train_loss" in event:
            return event
    return None


def _alive(status: dict) -> bool:
    """Whether a 'running' run's job still runs (checkable on its own host only)."""
    pid = status.get("job_pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True
    return workdir_lib.process_alive(pid, status.get("job_start"))


def effective_state(status: dict) -> str:
    """The status file's state, with a 'running' run whose process is gone read as failed."""
    state = status.get("state", "queued")
    if state == "running" and not _alive(status):
        return "failed"
    return state


def describe(sweep: Path, rid: str, entry: dict, status: dict) -> str:
    """One line of `status` for a run."""
    state = effective_state(status)
    folder = run_folder(sweep, rid)
    requeued = f", requeued {status['requeues']}x" if status.get("requeues") else ""
    if state == "finished":
        metrics = status.get("metrics", {})
        key = "test_top1_error" if metrics.get("test_top1_error") is not None else "eval_top1_error"
        value = metrics.get(key)
        shown = f"{key} {100 * value:.2f}%" if isinstance(value, (int, float)) else "no metric"
        return f"{rid:28s} finished: {shown}{requeued}"
    if state == "failed":
        reason = status.get("reason") or "its process is gone (killed?)"
        if status.get("state") == "running":
            reason = f"its job {status.get('job_pid')} on {status.get('host')} is gone (killed?)"
        return f"{rid:28s} failed: {reason}{requeued}"
    event = last_training_event(folder)
    where = (
        f" at step {event['step']}, epoch {event.get('epoch', 0):.2f}"
        if event
        else " (no step logged yet)"
    )
    if state == "running":
        job = f", job {status['job_id']}" if status.get("job_id") else ""
        return f"{rid:28s} running{where}{job}{requeued}"
    if state == "requeued":
        return f"{rid:28s} requeued{where}{requeued}"
    return f"{rid:28s} queued{where if event else ''}{requeued}"


def status_lines(sweep: Path) -> list[str]:
    sweep = Path(sweep)
    manifest = read_manifest(sweep)
    lines, counts = [], dict.fromkeys(STATES, 0)
    for rid, entry in manifest["runs"].items():
        status = read_status(sweep, rid)
        counts[effective_state(status)] += 1
        lines.append(describe(sweep, rid, entry, status))
    total = sum(counts.values())
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    return [*lines, f"{total} runs: {summary}"]


def new_manifest(base: str, base_variant: str, variants: dict[str, list[str]], seeds: int,
                 budget: dict, runs: dict) -> dict:  # fmt: skip
    """The manifest of a new sweep (`variants`: each one's KEY=VALUE overrides, as given)."""
    return {
        "format": FORMAT,
        "base": base,
        "base_variant": base_variant,
        "variants": variants,
        "seeds": seeds,
        "budget": budget,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "written_by": workdir_lib.code_version(),
        "runs": runs,
        "submissions": [],
    }


def write_manifest(sweep: Path, manifest: dict) -> None:
    """Writes the manifest whole (its runs in the order of the plan)."""
    files.write_json(Path(sweep) / MANIFEST, manifest, sort_keys=False)
