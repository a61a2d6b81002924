"""Sweeps: any grid of config changes x seeds, run here or on a Slurm cluster (submitit),
resumable through preemption, reported with paired confidence intervals and plots.

  python -m experiments.sweep run DIR --base=cifar --variant=no_lrn:model.lrn=False --seeds=3
  python -m experiments.sweep status DIR          # one line per run; imports no JAX
  python -m experiments.sweep report DIR          # results.md, results.json, two figures

A sweep folder holds `sweep.json` (the manifest: the base, each variant's overrides, the seeds,
every run's full config, the launcher and its submissions; written before anything runs),
`<variant>_seed<k>/` (each run's workdir), `status/<run>.json` (each run's state, written by the
job that runs it) and `logs/<run>.log`. Every run is `experiments.sweep_worker` in its own
process, which checkpoints on SIGTERM (the training loop's preemption path) and is requeued:
the requeued job resumes from that checkpoint with the same data position.

Variants (`run`; the base itself is always run, as the variant named by --base_variant):
  --variant NAME:KEY=VALUE,KEY=VALUE   repeatable; values typed as the base's field
  --grid KEY=V1,V2 [--grid KEY2=A,B]   the product of the values, one variant each
  --ablations NAMES|all                the files of configs/ablations/ (their one change each)

Launchers: --launcher=local (submitit's LocalExecutor: the runs one after another here, or
--parallel K at a time, each job given its share of the GPUs) or --launcher=slurm (submitit's
SlurmExecutor: one job array, one element per run, with --nodes, --gpus_per_node,
--cpus_per_task, --partition, --time, --account, --array_parallelism and --sbatch KEY=VALUE
passed through). `run DIR` again continues the sweep: finished runs are kept, failed ones are
resubmitted only with --retry_failed; the same folder with another plan is refused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

MANIFEST = "sweep.json"
FORMAT = 1
STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL: the worker checkpointed on SIGTERM and is to be resumed
STATES = ("queued", "running", "requeued", "finished", "failed")


class SweepError(SystemExit):
    """A refusal of the sweep command, one line (exit status 1)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


# --- the folder: manifest, runs, status (no JAX: `status` must stay fast) -------------------


def run_id(variant: str, seed: int) -> str:
    return f"{variant}_seed{seed}"


def run_folder(sweep: Path, rid: str) -> Path:
    return Path(sweep) / rid


def log_file(sweep: Path, rid: str) -> Path:
    return sweep / "logs" / f"{rid}.log"


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes JSON to a temporary file renamed over `path`: a reader sees all of it or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")  # in the order of the plan
    os.replace(tmp, path)


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
    write_json_atomic(Path(sweep) / "status" / f"{rid}.json", status)
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
    from alexnet_jax import workdir as workdir_lib  # standard library only: no JAX

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


# --- planning a sweep -------------------------------------------------------------------------


def _split_assignments(text: str) -> list[str]:
    """'a.b=1,c=(1, 2)' -> ['a.b=1', 'c=(1, 2)']: commas split only before the next KEY=."""
    return [part for part in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", text) if part]


def parse_variants(specs: list[str], grids: list[str], ablations: str) -> dict[str, list[str]]:
    """{name: ['KEY=VALUE', ...]} of --variant, --grid and --ablations (unparsed values)."""
    variants: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, assignments = spec.partition(":")
        if not sep or not name or not re.fullmatch(r"[\w.+=-]+", name):
            raise SweepError(
                f"--variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE...] with a NAME of "
                "letters, digits and _.+=-"
            )
        variants[name] = _split_assignments(assignments)
    if grids:
        axes = []
        for grid in grids:
            key, sep, values = grid.partition("=")
            if not sep or not values:
                raise SweepError(f"--grid {grid!r}: expected KEY=V1,V2,...")
            axes.append([(key, v) for v in values.split(",")])
        for combination in itertools.product(*axes):
            name = "+".join(f"{key.split('.')[-1]}={value}" for key, value in combination)
            variants[name] = [f"{key}={value}" for key, value in combination]
    if ablations:
        from experiments import ablations as ablation_files

        names = ablation_files.VARIANTS if ablations == "all" else ablations.split(",")
        for name in names:
            try:
                switch = ablation_files.switch(name)
            except ModuleNotFoundError:
                raise SweepError(f"--ablations: no configs/ablations/{name}.py") from None
            variants[name] = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                              for k, v in switch.items()]  # fmt: skip
    return variants


def plan(base_config: Any, base_variant: str, variants: dict[str, dict], seeds: int) -> dict:
    """{run id: {'variant', 'seed', 'config': the run's flat config}} of the base and each
    variant (its overrides applied after the budget, then the seed)."""
    from alexnet_jax import workdir as workdir_lib

    runs = {}
    for name, overrides in {base_variant: {}, **variants}.items():
        for seed in range(seeds):
            config = base_config.copy_and_resolve_references()
            config.update_from_flattened_dict({**overrides, "seed": seed})
            runs[run_id(name, seed)] = {
                "variant": name,
                "seed": seed,
                "config": workdir_lib.flat_config(config),
            }
    return runs


def _differences(old: dict, new: dict) -> list[str]:
    """The fields of two flat configs that make them other experiments."""
    from alexnet_jax import workdir as workdir_lib
    from experiments import common

    ignore = workdir_lib.MAY_CHANGE_ON_RESUME + common.NOT_COMPARED
    return [
        f"{k}: {a!r} there, {b!r} now"
        for k, (a, b) in workdir_lib.config_differences(old, new, ignore).items()
    ]


def refuse_another_sweep(manifest: dict, runs: dict, sweep: Path) -> None:
    """SweepError with one line if the folder's manifest plans other runs than `runs`."""
    old = manifest["runs"]
    if set(old) != set(runs):
        gone, new = sorted(set(old) - set(runs)), sorted(set(runs) - set(old))
        raise SweepError(
            f"{sweep} holds another sweep (runs only there: {gone[:4]}, only now: {new[:4]}); "
            "use another folder, or `run DIR` alone to continue the one there."
        )
    for rid in old:
        diff = _differences(old[rid]["config"], runs[rid]["config"])
        if diff:
            raise SweepError(
                f"{sweep} holds another sweep (run {rid}: {'; '.join(diff[:3])}); use another "
                "folder, or `run DIR` alone to continue the one there."
            )


def new_manifest(base: str, base_variant: str, variants: dict[str, list[str]], seeds: int,
                 budget: dict, runs: dict) -> dict:  # fmt: skip
    """The manifest of a new sweep (`variants`: each one's KEY=VALUE overrides, as given)."""
    from alexnet_jax import workdir as workdir_lib

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


# --- running ----------------------------------------------------------------------------------


def _executor(args: argparse.Namespace, sweep: Path):
    import submitit

    folder = sweep / "submitit" / "%j"
    if args.launcher == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=args.time, signal_delay_s=args.signal_delay)
        return executor
    if not (shutil.which("srun") and shutil.which("sbatch")):
        raise SweepError(
            "--launcher=slurm needs Slurm's commands (srun, sbatch) on PATH and they are not "
            "there: run from a Slurm login node, or use --launcher=local."
        )
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.max_requeues)
    tasks = args.gpus_per_node if args.gpus_per_node > 0 else 1
    extra = dict(item.split("=", 1) for item in args.sbatch)
    parameters = dict(
        nodes=args.nodes,
        ntasks_per_node=tasks,
        cpus_per_task=args.cpus_per_task,
        time=args.time,
        array_parallelism=args.array_parallelism,
        signal_delay_s=args.signal_delay,
        job_name=f"sweep_{sweep.name}",
        additional_parameters=extra,
    )
    if args.gpus_per_node > 0:
        parameters["gpus_per_node"] = args.gpus_per_node
    for name in ("partition", "account"):
        if getattr(args, name):
            parameters[name] = getattr(args, name)
    executor.update_parameters(**parameters)
    return executor


def _to_submit(sweep: Path, manifest: dict, retry_failed: bool) -> list[str]:
    chosen = []
    for rid in manifest["runs"]:
        status = read_status(sweep, rid)
        state = effective_state(status)
        if state == "finished" or (state == "running" and status.get("state") == "running"):
            continue
        if state == "failed" and not retry_failed:
            continue
        chosen.append(rid)
    return chosen


def _gpu_shares(parallel: int) -> list[list[int]]:
    """Each of `parallel` local slots' GPUs (CUDA_VISIBLE_DEVICES), [] when none are visible."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [int(g) for g in visible.split(",") if g.strip().isdigit()]
    else:
        try:
            import subprocess

            done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                  timeout=20)  # fmt: skip
            listed = done.stdout.strip().splitlines() if done.returncode == 0 else []
            gpus = list(range(len(listed)))
        except (OSError, ValueError):
            gpus = []
    if not gpus:
        return [[] for _ in range(parallel)]
    per = max(1, len(gpus) // parallel)
    return [gpus[i * per : (i + 1) * per] for i in range(parallel)]


def run_inline(sweep: Path, rid: str, config: Any) -> dict:
    """Runs one run of a sweep in this process (the `inline` launcher, and what
    experiments.ablations runs through): `common.resumable_run` in its folder, its state in
    its status file. Returns resumable_run's outcome.

    Raises:
      SystemExit: training stopped on SIGTERM (its checkpoint is saved; rerun to continue).
      Exception: the run failed (its status says why).
    """
    from experiments import common

    previous = read_status(sweep, rid)
    from alexnet_jax import workdir as workdir_lib

    update_status(sweep, rid, state="running", pid=os.getpid(), job_pid=os.getpid(),
                  job_start=workdir_lib.kernel_start(os.getpid()), host=socket.gethostname(),
                  attempts=previous.get("attempts", 0) + 1, reason=None,
                  started=time.time())  # fmt: skip
    try:
        outcome = common.resumable_run(config, run_folder(sweep, rid))
    except SystemExit as e:
        update_status(sweep, rid, state="requeued", reason=str(e),
                      requeues=previous.get("requeues", 0) + 1)  # fmt: skip
        raise
    except BaseException as e:
        update_status(sweep, rid, state="failed", reason=f"error: {e}".splitlines()[0])
        raise
    update_status(sweep, rid, state="finished", metrics=outcome["metrics"])
    return outcome


def submit(args: argparse.Namespace, sweep: Path, manifest: dict, rids: list[str]) -> dict:
    """Submits `rids`; local: waits for them (at most --parallel at a time). Returns the job ids."""
    if args.launcher == "inline":
        from experiments import common

        for rid in rids:
            config = common.config_from_flat(manifest["runs"][rid]["config"])
            try:
                run_inline(sweep, rid, config)
            except Exception as e:  # failed: recorded in its status; the others still run
                print(f"{rid}: failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            print(describe(sweep, rid, manifest["runs"][rid], read_status(sweep, rid)), flush=True)
        return {rid: f"inline {os.getpid()}" for rid in rids}
    from experiments.sweep_worker import SweepRun

    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    executor = _executor(args, sweep)
    jobs = {}
    for rid in rids:
        update_status(sweep, rid, state="queued", reason=None)
    if args.launcher == "slurm":
        with executor.batch():
            submitted = [executor.submit(SweepRun(str(sweep), rid)) for rid in rids]
        for rid, job in zip(rids, submitted):
            jobs[rid] = job.job_id
            update_status(sweep, rid, job_id=job.job_id)
        return jobs
    shares = _gpu_shares(args.parallel)
    pending, active = list(rids), {}
    free = list(range(args.parallel))
    while pending or active:
        while pending and free:
            slot = free.pop(0)
            rid = pending.pop(0)
            executor.update_parameters(visible_gpus=shares[slot])
            job = executor.submit(SweepRun(str(sweep), rid))
            active[rid] = (job, slot)
            jobs[rid] = job.job_id
            update_status(sweep, rid, job_id=job.job_id)
            print(f"{rid}: submitted (local job {job.job_id})", flush=True)
        for rid, (job, slot) in list(active.items()):
            if job.done():
                del active[rid]
                free.append(slot)
                print(describe(sweep, rid, manifest["runs"][rid], read_status(sweep, rid)),
                      flush=True)  # fmt: skip
        time.sleep(0.5)
    return jobs


def command_run(args: argparse.Namespace) -> int:
    sweep = Path(args.dir).resolve()
    planned = bool(args.variant or args.grid or args.ablations or args.base)
    existing = (sweep / MANIFEST).is_file()
    if existing:
        manifest = read_manifest(sweep)
        if planned:
            runs = _plan_from_args(args)
            refuse_another_sweep(manifest, runs, sweep)
    else:
        if not planned:
            raise SweepError(f"{sweep} has no sweep yet: give --base (and variants) to start one.")
        runs = _plan_from_args(args)
        variants = parse_variants(args.variant, args.grid, args.ablations)
        budget = {"epochs": args.epochs, "steps": args.steps}
        manifest = new_manifest(args.base or "cifar", args.base_variant, variants, args.seeds,
                                budget, runs)  # fmt: skip
    rids = _to_submit(sweep, manifest, args.retry_failed)
    launcher = {k: getattr(args, k) for k in LAUNCHER_FLAGS}
    manifest["submissions"].append(
        {"time": time.strftime("%Y-%m-%d %H:%M:%S %z"), "launcher": launcher, "runs": rids,
         "job_ids": {}}  # fmt: skip
    )
    write_json_atomic(sweep / MANIFEST, manifest)  # before anything runs
    if not rids:
        print("\n".join(status_lines(sweep)))
        print("nothing to submit (finished, running, or failed: --retry_failed resubmits those)")
        return 0
    print(f"sweep {sweep}: {len(rids)} of {len(manifest['runs'])} runs to {args.launcher}")
    jobs = submit(args, sweep, manifest, rids)
    manifest["submissions"][-1]["job_ids"] = jobs
    write_json_atomic(sweep / MANIFEST, manifest)
    print("\n".join(status_lines(sweep)))
    if args.launcher == "slurm":
        print(f"submitted; watch with: python -m experiments.sweep status {sweep}")
        return 0
    failed = [r for r in rids if effective_state(read_status(sweep, r)) != "finished"]
    return 1 if failed else 0


def _plan_from_args(args: argparse.Namespace) -> dict:
    from experiments import ablations

    base = args.base or "cifar"
    overrides = {"num_epochs": args.epochs, "num_train_steps": args.steps}
    overrides.update({k: v for k, v in cadences(args).items() if v is not None})
    overrides.update(ablations.parse_set(ablations.load_base(base), args.set))
    base_config = ablations.base_config(base, args.dataset, args.data_dir, overrides,
                                        args.scale_schedule)  # fmt: skip
    typed = {
        name: ablations.parse_set(base_config, assignments)
        for name, assignments in parse_variants(args.variant, args.grid, args.ablations).items()
    }
    if args.base_variant in typed:
        raise SweepError(f"a variant is named {args.base_variant!r}, the base's name; rename it.")
    return plan(base_config, args.base_variant, typed, args.seeds)


def add_base_flags(parser: argparse.ArgumentParser) -> None:
    """The seeds, data, budget, cadence and --set flags of a sweep (and of experiments.ablations,
    the paper's named sweep)."""
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


def cadences(args: argparse.Namespace) -> dict[str, int | None]:
    """The config's cadence fields as `add_base_flags` sets them (None: the base's)."""
    return {
        "eval_every_steps": args.eval_every,
        "checkpoint_every_steps": args.checkpoint_every,
        "log_every_steps": args.log_every,
    }


LAUNCHER_FLAGS = ("launcher", "parallel", "nodes", "gpus_per_node", "cpus_per_task", "partition",
                  "time", "account", "array_parallelism", "sbatch", "signal_delay")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m experiments.sweep", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
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
        print("\n".join(status_lines(Path(args.dir))))
        return 0
    if args.command == "report":
        from experiments import sweep_report

        sweep_report.report(Path(args.dir), Path(args.out) if args.out else None)
        return 0
    for item in args.sbatch:
        if "=" not in item:
            raise SweepError(f"--sbatch {item!r}: expected KEY=VALUE (an sbatch option).")
    return command_run(args)


if __name__ == "__main__":
    sys.exit(main())
