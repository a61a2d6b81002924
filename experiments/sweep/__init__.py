"""Sweeps: any grid of config changes x seeds, run here or on a Slurm cluster (submitit),
resumable through preemption, reported with paired confidence intervals and plots.

  python -m experiments.sweep run DIR --base=cifar --variant=no_lrn:model.lrn=False --seeds=3
  python -m experiments.sweep status DIR          # one line per run; imports no JAX
  python -m experiments.sweep report DIR          # results.md, results.json, two figures

A sweep folder holds `sweep.json` (the manifest: the base, each variant's overrides, the seeds,
every run's full config, the launcher and its submissions; written before anything runs),
`<variant>_seed<k>/` (each run's workdir), `status/<run>.json` (each run's state, written by the
job that runs it) and `logs/<run>.log`. Every run is `experiments.sweep.worker` in its own
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

The modules, each importing only those listed before it:
  folder.py   the folder: manifest, run folders, status files, `status` lines (no JAX)
  plan.py     the runs: variants (--variant, --grid, the ablation files), bases, grid x seeds
  worker.py   one run in this process: `run_inline`, and the training process of a job
  job.py      the submitit job of one run, which starts the training process and requeues it
  launch.py   `run`: plans or continues a sweep, submits its runs, waits for local ones
  report.py   `report`: the table of paired changes and the figures
  cli.py      the command line (`python -m experiments.sweep`, __main__.py)
"""
