"""The offline default run (README quickstart), with its output kept: configs/default.py trained
by `train.train_and_evaluate`, then results.json / results.md (final validation and test error,
every evaluation, wall time, machine) and the run's metrics.jsonl under
experiments/results/default/.

  python -m experiments.paper.default_run                  # the README's quickstart numbers
  python -m experiments.paper.default_run --steps=20       # a smoke run (tests)

It is the same computation as `python -m alexnet_jax.main --config=configs/default.py
--workdir=...` (which also preloads tcmalloc when installed; the numbers do not depend on the
allocator, only the time does).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from alexnet_jax import metrics, orbax_quiet, train
from configs import default
from experiments import common, files


def main(argv=None) -> dict:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=-1, help="> 0: this many steps instead")
    parser.add_argument("--workdir", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--out", default=None, help="default: experiments/results/default")
    args = parser.parse_args(argv)

    config = default.get_config()
    config.progress_bar = False
    if args.steps > 0:
        config.num_train_steps = args.steps
        config.eval_every_steps = config.checkpoint_every_steps = max(1, args.steps // 2)
        config.log_every_steps = max(1, args.steps // 4)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="alexnet_jax_default_"))
    started = time.perf_counter()
    result = train.train_and_evaluate(config, str(workdir))
    seconds = time.perf_counter() - started

    events = metrics.read_metrics(str(workdir))
    evals = [
        {"step": e["step"], "eval_top1_error": e["eval_top1_error"]}
        for e in events
        if "eval_top1_error" in e
    ]
    out = common.results_dir("default", args.out)
    shutil.copy(workdir / "metrics.jsonl", out / "metrics.jsonl")
    command = "python -m experiments.paper.default_run" + (
        f" --steps={args.steps}" if args.steps > 0 else ""
    )
    summary = {
        "command": command,
        "config": "configs/default.py",
        "dataset": config.dataset,
        "splits": {
            "train": config.train_split,
            "validation (every eval_every_steps)": config.eval_split,
            "test (once, at the end)": config.test_split,
        },
        "steps": evals[-1]["step"] if evals else None,
        "batch_size": config.batch_size,
        "seconds": seconds,
        "machine": common.machine(),
        "result": result,
        "evaluations": evals,
    }
    files.write_json(out / "results.json", summary)
    series = ", ".join(f"{100 * e['eval_top1_error']:.2f}% (step {e['step']})" for e in evals)
    text = (
        f"# Offline default run\n\n`{command}` (configs/default.py: the §3.3 CIFAR net on "
        f"scikit-learn's digits, {summary['steps']} steps of {config.batch_size}), "
        f"{seconds / 60:.1f} min on {common.machine()}.\n\n"
        f"Trained on `{config.train_split}` (1,150 images), validated on `{config.eval_split}` "
        f"(287) every {config.eval_every_steps} steps: {series}.\n\n"
        f"**Test** (`{config.test_split}`, 360 images, evaluated once at the end): top-1 error "
        f"{100 * result['test_top1_error']:.2f}%, top-5 {100 * result['test_top5_error']:.2f}%.\n"
        "\nThe run's events are in metrics.jsonl beside this file.\n"
    )
    (out / "results.md").write_text(text)
    print(text + f"\nwritten to {out}")
    return summary


if __name__ == "__main__":
    main()
