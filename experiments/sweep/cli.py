"""The command line of a sweep: `python -m experiments.sweep run|status|report` (the usage is
experiments/sweep/__init__.py's docstring). `status` reads the folder alone and imports no JAX.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import experiments.sweep
from alexnet_jax import orbax_quiet
from experiments.sweep import folder


def add_base_flags(parser: argparse.ArgumentParser) -> None:
    """The seeds, data, budget, cadence and --set flags of a sweep (and of
    experiments/paper/ablations.py, the paper's named sweep); `plan.cadences` reads the cadences."""
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dataset", default=None, help="default: the base config's")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--epochs", type=int, default=3, help="budget per run")
    parser.add_argument("--steps", type=int, default=-1, help="> 0: overrides --epochs")
    parser.add_argument("--eval_every", type=int, default=None, help="default: the base's")
    parser.add_argument("--checkpoint_every", type=int, default=None, help="default: the base's")
    parser.add_argument("--log_every", type=int, default=None, help="default: the base's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a base config field (repeatable)")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    doc = experiments.sweep.__doc__.split("\n\nThe modules")[0]
    top = argparse.ArgumentParser(
        prog="python -m experiments.sweep", description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc.split("\n\n", 1)[1],
    )  # fmt: skip
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="plan (or continue) a sweep and submit its runs")
    run.add_argument("dir", help="the sweep folder")
    run.add_argument("--base", default=None, help="cifar | alexnet | a config file (default cifar)")
    run.add_argument("--base_variant", default="base", help="the base run's variant name")
    run.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...")
    run.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
    run.add_argument("--ablations", default="", help="NAMES of configs/ablations/, or 'all'")
    add_base_flags(run)
    run.add_argument("--scale_schedule", action="store_true",
                     help="scale the base's epoch-keyed settings to --epochs")  # fmt: skip
    run.add_argument("--retry_failed", action="store_true", help="resubmit the failed runs")
    run.add_argument("--launcher", choices=("local", "slurm", "inline"), default="local",
                     help="local: submitit's local executor; slurm: a job array; inline: in this "
                     "process, one run after another")  # fmt: skip
    run.add_argument("--parallel", type=int, default=1, help="local: runs at a time")
    run.add_argument("--nodes", type=int, default=1, help="slurm: nodes per run")
    run.add_argument("--gpus_per_node", type=int, default=1,
                     help="slurm: GPUs per node (one task, i.e. one process, per GPU)")  # fmt: skip
    run.add_argument("--cpus_per_task", type=int, default=8)
    run.add_argument("--partition", default="")
    run.add_argument("--time", type=int, default=24 * 60, help="minutes per job")
    run.add_argument("--account", default="")
    run.add_argument("--array_parallelism", type=int, default=64)
    run.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                     help="slurm: an extra #SBATCH option, e.g. qos=high (repeatable)")  # fmt: skip
    run.add_argument("--signal_delay", type=int, default=120,
                     help="seconds before the time limit that a job checkpoints")  # fmt: skip
    run.add_argument("--max_requeues", type=int, default=20, help="slurm: time-outs requeued")
    status = commands.add_parser("status", help="one line per run (fast; no JAX)")
    status.add_argument("dir")
    report = commands.add_parser("report", help="results.md, results.json and figures")
    report.add_argument("dir")
    report.add_argument("--out", default=None, help="default: DIR/report")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "status":
        print("\n".join(folder.status_lines(Path(args.dir))))
        return 0
    # Imported here, not above: `status` imports no JAX, and these do.
    if args.command == "report":
        from experiments.sweep import report

        report.report(Path(args.dir), Path(args.out) if args.out else None)
        return 0
    for item in args.sbatch:
        if "=" not in item:
            raise folder.SweepError(f"--sbatch {item!r}: expected KEY=VALUE (an sbatch option).")
    from experiments.sweep import launch

    orbax_quiet.install()  # the inline launcher trains here: as alexnet_jax.main does
    return launch.command_run(args)
