"""What the paper-reproduction scripts share: fresh runs of the training system, their curves,
result folders and tables. No training loop lives here: every run is
`alexnet_jax.train.train_and_evaluate(config, workdir)`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import input_pipeline, metrics, sources, train
from alexnet_jax import workdir as workdir_lib
from experiments import files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
# The full AlexNet in the smallest run that trains it (64 synthetic images, 6 steps of 8, one
# evaluation and one checkpoint at the end): the multi-process checks' and their tests' run.
SMALL_ALEXNET = [
    "--config=configs/alexnet.py",
    "--config.dataset=synthetic",
    "--config.synthetic_examples=64",
    "--config.batch_size=8",
    "--config.num_train_steps=6",
    "--config.eval_every_steps=6",
    "--config.checkpoint_every_steps=6",
    "--config.log_every_steps=1",
    "--config.num_workers=0",
    "--config.optimizer.learning_rate=0.001",
]


def results_dir(name: str, out: str | None = None) -> Path:
    """experiments/results/<name>/ (or `out`), created."""
    path = Path(out) if out else RESULTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def use_dataset(config: Any, dataset: str) -> None:
    """Points `config` at `dataset`; for the digits, with the offline config's splits.

    The digits have only 'train' and 'test': configs/default.py holds validation out of
    'train' (train[:80%] / train[80%:]) and tests once on 'test'. Other datasets keep the
    config's splits.
    """
    if dataset == config.dataset:
        return
    config.dataset = dataset
    if dataset == "digits":
        from configs import default

        offline = default.get_config()
        for split in ("train_split", "eval_split", "test_split"):
            config[split] = offline[split]


def dataset_prepared(config: Any) -> bool:
    """Whether `config.dataset`'s training split can be read here (TFDS data prepared)."""
    try:
        input_pipeline.create_source(config, config.train_split)
    except sources.DatasetNotPreparedError:
        return False
    return True


def fresh_run(config: Any, workdir: str | Path) -> dict[str, float]:
    """Trains `config` from scratch in `workdir` (an old run there is deleted, not resumed)."""
    shutil.rmtree(workdir, ignore_errors=True)
    return train.train_and_evaluate(config, str(workdir))


# --- Resumable runs: a run folder is resumed, skipped when finished, never silently mixed -------

RESULT_FILE = "result.json"  # Written (atomically) once train_and_evaluate has returned.
# Fields that say where things are or how they are shown, not what is computed: a run may
# continue with other values of them.
NOT_COMPARED = ("progress_bar", "data_dir", "cache_dir")


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first line as the description, the rest as epilog."""
    return argparse.ArgumentParser(
        description=doc.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("\n\n", 1)[1],
    )  # fmt: skip


def refuse_other_configs(runs: Any) -> None:
    """SystemExit with one line if a (config, folder) of `runs` holds a run of another config."""
    for config, folder in runs:
        diff = config_differences(config, folder)
        if diff:
            fields = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise SystemExit(
                f"{folder} holds a run of another config ({fields}): rerun with --fresh to "
                "delete this invocation's runs, or pass another --workdir."
            )


def scale_epochs(config: Any, factor: float) -> None:
    """Multiplies every epoch-keyed setting of `config` by `factor`, in place."""
    o = config.optimizer

    def scaled(pairs):
        return tuple((epoch * factor, value) for epoch, value in pairs)

    o.manual_schedule = scaled(o.manual_schedule)
    o.bias_manual_schedule = scaled(o.bias_manual_schedule)
    o.layer_lr_multipliers = tuple(
        (key, scaled(value) if isinstance(value, (tuple, list)) else value)
        for key, value in o.layer_lr_multipliers
    )
    o.step_epochs = tuple(e * factor for e in o.step_epochs)
    for name in ("random_crop", "flip", "pca_color"):
        field = f"{name}_end_epoch"
        if config.augment[field] != -1:
            config.augment[field] = config.augment[field] * factor


def subprocess_env(cpu_devices: int | None = None) -> dict:
    """The environment for a `python -m alexnet_jax.*` subprocess on simulated CPU devices: the
    repository importable, no multi-process variables inherited, `cpu_devices` devices (one
    when None)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).parents[1]))
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS"):
        env.pop(var, None)
    if cpu_devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={cpu_devices}"
    return env


def config_differences(config: Any, workdir: str | Path) -> dict[str, tuple[Any, Any]]:
    """{field: (value in workdir/config.json, value in `config`)} of the fields that differ
    (a field added since the run was recorded reads as `migrations.added_field_value`, one
    missing on one side as `workdir.ABSENT`); {} when there is no config.json."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        return {}
    saved = workdir_lib.recorded_config(str(workdir))
    return workdir_lib.config_differences(
        saved, workdir_lib.flat_config(config), ignore=NOT_COMPARED
    )


def latest_checkpoint_step(workdir: str | Path) -> int | None:
    """Step of the latest complete checkpoint in workdir/checkpoints (Orbax renames a
    checkpoint's temporary folder to its step when it is complete), or None."""
    path = Path(workdir) / "checkpoints"
    steps = [int(p.name) for p in path.iterdir() if p.name.isdigit()] if path.is_dir() else []
    return max(steps, default=None)


def finished_result(workdir: str | Path) -> dict[str, Any] | None:
    """The result file of a finished run, or None."""
    path = Path(workdir) / RESULT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def total_steps(config: Any) -> int:
    """Training steps of the whole run (what train.py computes)."""
    source = input_pipeline.create_source(config, config.train_split)
    return train.num_steps(config, len(source))[1]


def resumable_run(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir`, or continues it, or returns it when it is finished.

    The caller checks `config_differences` first (this function trusts the folder to hold a
    run of `config`). Returns {'status': 'skipped' | 'resumed' | 'started', 'resumed_from_step',
    'seconds' (of this call), 'run_seconds' (of the call that finished the run), 'metrics'};
    raises SystemExit if training stopped early (SIGTERM: its checkpoint is saved, the same
    call continues it).
    """
    workdir = Path(workdir)
    done = finished_result(workdir)
    if done is not None:
        return {**done, "status": "skipped", "seconds": 0.0}
    start = latest_checkpoint_step(workdir)
    status = "started" if start is None else "resumed"
    started = time.perf_counter()
    result = train.train_and_evaluate(config, str(workdir))
    seconds = time.perf_counter() - started
    reached, total = latest_checkpoint_step(workdir) or 0, total_steps(config)
    if reached < total:
        raise SystemExit(
            f"{workdir}: training stopped at step {reached} of {total} (SIGTERM); its "
            "checkpoint is saved: run the same command again to continue."
        )
    record = {"resumed_from_step": start, "run_seconds": seconds, "metrics": result}
    files.write_json(workdir / RESULT_FILE, record)
    return {**record, "status": status, "seconds": seconds}


def steps_per_epoch(config: Any) -> int:
    """Training steps in one epoch of `config`'s training split (what train.py computes)."""
    source = input_pipeline.create_source(config, config.train_split)
    return train.num_steps(config, len(source))[0]


def train_curve(workdir: str | Path) -> list[dict[str, float]]:
    """The logged training events of a run: epoch, train_top1_error, train_loss, seconds (the
    training time of the logging window, from its images/s, so the sum up to an event is the
    wall time of the training loop until then, the first step's compilation included)."""
    curve, previous = [], 0
    for event in metrics.read_metrics(str(workdir)):
        if "train_loss" not in event:
            continue
        images = (event["step"] - previous) * _batch_size(workdir)
        curve.append(
            {
                "step": event["step"],
                "epoch": event["epoch"],
                "train_top1_error": event["train_top1_error"],
                "train_loss": event["train_loss"],
                "seconds": images / event["images_per_sec"],
            }
        )
        previous = event["step"]
    return curve


def _batch_size(workdir: str | Path) -> int:
    with open(Path(workdir) / "config.json") as f:
        return json.load(f)["batch_size"]


def restore_params(workdir_or_checkpoint: str | Path) -> tuple[int, Any]:
    """(step, params as NumPy) of a run's latest checkpoint (`checkpoint.restore_params`)."""
    return checkpoint_lib.restore_params(str(workdir_or_checkpoint))


def run_config(workdir: str | Path) -> Any:
    """The ConfigDict a run was trained with (its workdir/config.json), on top of today's
    configs/alexnet.py: a field added since the run has the value that computes what the code
    did before the field existed (`migrations.ADDED_FIELDS`, e.g. dropout_scaling='inverted'), or
    its default for a speed switch; a field the code no longer has is dropped with a note."""
    return config_from_flat(workdir_lib.recorded_config(str(workdir)), f"{workdir}/config.json")


def config_from_flat(saved: dict[str, Any], where: str = "the record") -> Any:
    """A ConfigDict from a flat {'model.lrn': True, ...} record (`workdir.flat_config`), on top of
    today's configs/alexnet.py (tuples where the field is a tuple); a field the code no longer
    has is dropped with a note on stderr."""
    from configs import alexnet

    config = alexnet.get_config()
    current = workdir_lib.flat_config(config)
    dropped = sorted(k for k in saved if k not in current)
    if dropped:
        print(f"note: {where} has fields this code no longer has, ignored: "
              f"{', '.join(dropped)}", file=sys.stderr)  # fmt: skip
    with config.unlocked():
        for key, value in saved.items():
            if key in current:
                *path, leaf = key.split(".")
                section = config
                for p in path:
                    section = section[p]
                section[leaf] = tuple(value) if isinstance(section[leaf], tuple) else value
    return config


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """Where the numbers were measured."""
    return (
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
        f"{jax.devices()[0].platform} (JAX {jax.__version__}), "
        f"{datetime.date.today().isoformat()}"
    ).replace("  ", " ")


def plt():
    """matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def load_run(workdir: str | None, checkpoint: str | None = None, **overrides: Any):
    """(config, step, params) of a trained run: its config.json, changed by `overrides`
    (flattened keys, e.g. dataset='digits'), and its latest checkpoint (or `checkpoint`)."""
    config = run_config(workdir or Path(checkpoint).parents[1])
    config.update_from_flattened_dict({k: v for k, v in overrides.items() if v is not None})
    step, params = restore_params(checkpoint or workdir)
    return config, step, params
