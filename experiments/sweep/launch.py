"""`python -m experiments.sweep run`: plans a sweep (or continues the one in its folder),
submits its runs to a launcher (inline, submitit's local executor, or Slurm) and, here, waits
for them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from experiments import common
from experiments.sweep import folder, plan, worker
from experiments.sweep.folder import SweepError

LAUNCHER_FLAGS = ("launcher", "parallel", "nodes", "gpus_per_node", "cpus_per_task", "partition",
                  "time", "account", "array_parallelism", "sbatch", "signal_delay")  # fmt: skip


def _executor(args: argparse.Namespace, sweep: Path):
    import submitit

    job_files = sweep / "submitit" / "%j"
    if args.launcher == "local":
        executor = submitit.LocalExecutor(folder=job_files)
        executor.update_parameters(timeout_min=args.time, signal_delay_s=args.signal_delay)
        return executor
    if not (shutil.which("srun") and shutil.which("sbatch")):
        raise SweepError(
            "--launcher=slurm needs Slurm's commands (srun, sbatch) on PATH and they are not "
            "there: run from a Slurm login node, or use --launcher=local."
        )
    executor = submitit.SlurmExecutor(folder=job_files, max_num_timeout=args.max_requeues)
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
        status = folder.read_status(sweep, rid)
        state = folder.effective_state(status)
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


def submit(args: argparse.Namespace, sweep: Path, manifest: dict, rids: list[str]) -> dict:
    """Submits `rids`; local: waits for them (at most --parallel at a time). Returns the job ids."""
    if args.launcher == "inline":
        for rid in rids:
            config = common.config_from_flat(manifest["runs"][rid]["config"])
            try:
                worker.run_inline(sweep, rid, config)
            except Exception as e:  # failed: recorded in its status; the others still run
                print(f"{rid}: failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            status = folder.read_status(sweep, rid)
            print(folder.describe(sweep, rid, manifest["runs"][rid], status), flush=True)
        return {rid: f"inline {os.getpid()}" for rid in rids}
    from experiments.sweep.job import SweepRun  # submitit: the inline launcher runs without it

    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(common.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    executor = _executor(args, sweep)
    jobs = {}
    for rid in rids:
        folder.update_status(sweep, rid, state="queued", reason=None)
    if args.launcher == "slurm":
        with executor.batch():
            submitted = [executor.submit(SweepRun(str(sweep), rid)) for rid in rids]
        for rid, job in zip(rids, submitted):
            jobs[rid] = job.job_id
            folder.update_status(sweep, rid, job_id=job.job_id)
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
            folder.update_status(sweep, rid, job_id=job.job_id)
            print(f"{rid}: submitted (local job {job.job_id})", flush=True)
        for rid, (job, slot) in list(active.items()):
            if job.done():
                del active[rid]
                free.append(slot)
                status = folder.read_status(sweep, rid)
                print(folder.describe(sweep, rid, manifest["runs"][rid], status), flush=True)
        time.sleep(0.5)
    return jobs


def command_run(args: argparse.Namespace) -> int:
    sweep = Path(args.dir).resolve()
    planned = bool(args.variant or args.grid or args.ablations or args.base)
    existing = (sweep / folder.MANIFEST).is_file()
    if existing:
        manifest = folder.read_manifest(sweep)
        if planned:
            runs = _plan_from_args(args)
            plan.refuse_another_sweep(manifest, runs, sweep)
    else:
        if not planned:
            raise SweepError(f"{sweep} has no sweep yet: give --base (and variants) to start one.")
        runs = _plan_from_args(args)
        variants = plan.parse_variants(args.variant, args.grid, args.ablations)
        budget = {"epochs": args.epochs, "steps": args.steps}
        manifest = folder.new_manifest(
            args.base or "cifar", args.base_variant, variants, args.seeds, budget, runs
        )
    rids = _to_submit(sweep, manifest, args.retry_failed)
    launcher = {k: getattr(args, k) for k in LAUNCHER_FLAGS}
    manifest["submissions"].append(
        {
            "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "launcher": launcher,
            "runs": rids,
            "job_ids": {},
        }  # fmt: skip
    )
    folder.write_manifest(sweep, manifest)  # before anything runs
    if not rids:
        print("\n".join(folder.status_lines(sweep)))
        print("nothing to submit (finished, running, or failed: --retry_failed resubmits those)")
        return 0
    print(f"sweep {sweep}: {len(rids)} of {len(manifest['runs'])} runs to {args.launcher}")
    jobs = submit(args, sweep, manifest, rids)
    manifest["submissions"][-1]["job_ids"] = jobs
    folder.write_manifest(sweep, manifest)
    print("\n".join(folder.status_lines(sweep)))
    if args.launcher == "slurm":
        print(f"submitted; watch with: python -m experiments.sweep status {sweep}")
        return 0
    failed = [r for r in rids if folder.effective_state(folder.read_status(sweep, r)) != "finished"]
    return 1 if failed else 0


def _plan_from_args(args: argparse.Namespace) -> dict:
    base = args.base or "cifar"
    overrides = {"num_epochs": args.epochs, "num_train_steps": args.steps}
    overrides.update({k: v for k, v in plan.cadences(args).items() if v is not None})
    overrides.update(plan.parse_set(plan.load_base(base), args.set))
    base_config = plan.base_config(base, args.dataset, args.data_dir, overrides,
                                        args.scale_schedule)  # fmt: skip
    variants = plan.parse_variants(args.variant, args.grid, args.ablations)
    typed = {
        name: plan.parse_set(base_config, assignments) for name, assignments in variants.items()
    }
    if args.base_variant in typed:
        raise SweepError(f"a variant is named {args.base_variant!r}, the base's name; rename it.")
    return plan.plan(base_config, args.base_variant, typed, args.seeds)
