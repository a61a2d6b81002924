"""The paper's ablations (§3.1-§4.2): each switch's change of top-1/top-5 error, over seeds.

Every variant is one file of configs/ablations/ (it imports the paper config and changes one
field); this script reads which fields each file changes and applies the same change to a base
config, so the ablation files stay the one definition. Each (variant, seed) is one
`train.train_and_evaluate` run in its own folder `<workdir>/<variant>_seed<k>`, trained with the
base config's recipe: its evaluation, checkpoint and logging cadences and its learning-rate
schedule (the paper's 'plateau' drops the rate only at evaluations). The change is paired by
seed (variant minus paper, same seed) and reported as mean ± std over seeds, in percentage
points, beside the paper's claim. The table reports the test split's error when the base
config has a `test_split` (evaluated once, at the end of each run), else the error of the last
evaluation on its `eval_split`; nothing is chosen from the numbers.

Bases (--base):
  cifar    configs/default.py, the §3.3 CIFAR net (cuda-convnet layers-conv-local-11pct) on
           scikit-learn's digits: the offline run.
  alexnet  configs/alexnet.py, the paper's AlexNet: every switch applies (ImageNet: GPU-days).
  PATH     any config file with a get_config(), e.g. configs/cifar10_lrn.py.
A switch that changes structure the base network does not have (pooling overlap, towers,
dropout are AlexNet structure; decided from the base's model.name) is listed as not run.

--scale_schedule multiplies the base's epoch-keyed settings by --epochs / its num_epochs, so a
short run keeps the shape of its recipe (the 2012 code's rate drops at 25, 51 and 79 of 91
become 2.7, 5.6 and 8.7 of 10); without it they stay at the base's epochs.

Reruns: the same command again continues what is unfinished and skips what is finished (a run
is finished once its folder has result.json, written when train_and_evaluate returned); a run
killed on the way resumes from its latest checkpoint. A run folder that holds a run of another
config (another budget, --set, dataset ...) is refused, never mixed: pass --fresh to delete
this invocation's runs first, or another --workdir. The default --workdir is
<tmp>/alexnet_jax_ablations/<base> (<base>_quick for --quick).

Flags: --epochs / --steps set the budget only; --eval_every, --checkpoint_every and
--log_every change the base's cadences (default: untouched); --set KEY=VALUE (repeatable)
changes any base config field, e.g. --set optimizer.schedule=plateau
--set optimizer.plateau_patience=1 (values are parsed as the field's type; applied after the
budget and cadences, before the switch and the seed).

  python -m experiments.paper.ablations                             # offline: cifar on digits
  python -m experiments.paper.ablations --base=alexnet --dataset=tfds:imagenet2012 --epochs=90 \
      --seeds=2 --data_dir=$HOME/tensorflow_datasets                # the paper's table (GPUs)
  python -m experiments.paper.ablations --base=configs/cifar10_lrn.py --variants=no_lrn,no_pca
  python -m experiments.paper.ablations --quick                     # smoke run, seconds
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from alexnet_jax import orbax_quiet
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.published import ABLATION_CLAIMS
from experiments import common, files
from experiments.sweep import cli, worker
from experiments.sweep import folder as sweep_folder
from experiments.sweep import plan as sweep_plan

# Fields that the CIFAR nets honour; a switch touching any other model field needs AlexNet.
CIFAR_FIELDS = ("model.lrn", "model.activation", "augment.", "optimizer.")


def base_name(base: str) -> str:
    """A short name of a base for folders: 'cifar', 'alexnet' or the config file's stem."""
    return base if base in sweep_plan.BASES else Path(base).stem


def runnable(model_name: str, overrides: dict[str, Any]) -> bool:
    """Whether a network `model_name` has what the switch `overrides` changes."""
    return model_name == "alexnet" or all(k.startswith(CIFAR_FIELDS) for k in overrides)


def plan(base_cfg, variants, seeds: int, root: Path) -> dict:
    """{variant: {'overrides', 'runs': [(seed, config, folder)] or None when not runnable}}."""
    out = {}
    for name in ("paper", *variants):
        overrides = {} if name == "paper" else sweep_plan.switch(name)
        runs = None
        if runnable(base_cfg.model.name, overrides):
            runs = []
            for seed in range(seeds):
                config = base_cfg.copy_and_resolve_references()
                config.update_from_flattened_dict({**overrides, "seed": seed})
                runs.append((seed, config, root / f"{name}_seed{seed}"))
        out[name] = {"overrides": overrides, "runs": runs}
    return out


def refuse_changed(planned: dict) -> None:
    """SystemExit with one line if a run folder holds a run of another config."""
    common.refuse_other_configs(
        (config, folder) for entry in planned.values() for _, config, folder in entry["runs"] or ()
    )


def metric_keys(results: dict) -> tuple[str, str, str]:
    """(top-1 key, top-5 key, label): the test split's error when every run has it."""
    runs = [r for e in results.values() for r in e["runs"] or ()]
    if runs and all(r.get("test_top1_error") is not None for r in runs):
        return "test_top1_error", "test_top5_error", "test"
    return "eval_top1_error", "eval_top5_error", "eval"


def write_manifest(planned: dict, args: Any, root: Path, budget: dict) -> None:
    """The sweep manifest of the runs (experiments/sweep/): `sweep status` and `sweep report`
    read an ablation folder like any sweep. The run folders' own records decide what may be
    continued (`refuse_changed`); the manifest follows the plan of the latest invocation."""
    runs = {
        sweep_folder.run_id(name, seed): {
            "variant": name, "seed": seed, "config": workdir_lib.flat_config(config)
        }
        for name, entry in planned.items()
        for seed, config, _ in entry["runs"] or ()
    }  # fmt: skip
    variants = {
        name: [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
               for k, v in entry["overrides"].items()]
        for name, entry in planned.items()
        if name != "paper" and entry["runs"] is not None
    }  # fmt: skip
    seeds = max((len(e["runs"]) for e in planned.values() if e["runs"]), default=0)
    manifest = sweep_folder.new_manifest(args.base, "paper", variants, seeds, budget, runs)
    path = root / sweep_folder.MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            manifest["submissions"] = old.get("submissions", [])
        except ValueError:
            pass
    manifest["submissions"].append({
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "launcher": {"launcher": "inline", "by": "experiments.paper.ablations"},
        "runs": list(runs), "job_ids": {},
    })  # fmt: skip
    sweep_folder.write_manifest(root, manifest)


def run(planned: dict, model_name: str, root: Path | None = None) -> dict:
    """{variant: {'overrides', 'runs': [{seed, status, seconds, ..., metrics}] or None}}: each
    run through the sweep runner's inline launcher (`worker.run_inline`), in this process."""
    results = {}
    for name, entry in planned.items():
        results[name] = {"overrides": entry["overrides"], "runs": None}
        if entry["runs"] is None:
            print(f"{name:10s} not run: {entry['overrides']} is AlexNet structure, not in "
                  f"the {model_name} net")  # fmt: skip
            continue
        results[name]["runs"] = []
        for seed, config, folder in entry["runs"]:
            start = common.latest_checkpoint_step(folder)
            if common.finished_result(folder) is not None:
                print(f"{name:10s} seed {seed}: skipped, finished in {folder}")
            elif start is not None:
                print(f"{name:10s} seed {seed}: resumed from step {start} in {folder}")
            else:
                print(f"{name:10s} seed {seed}: started in {folder}")
            outcome = worker.run_inline(folder.parent, sweep_folder.run_id(name, seed), config)
            metrics = outcome["metrics"]
            results[name]["runs"].append(
                {
                    "seed": seed,
                    "workdir": str(folder),
                    "status": outcome["status"],
                    "resumed_from_step": outcome["resumed_from_step"],
                    "seconds": outcome["seconds"],
                    "run_seconds": outcome["run_seconds"],
                    **metrics,
                }
            )
            top1, top5, label = (
                ("test_top1_error", "test_top5_error", "test")
                if metrics.get("test_top1_error") is not None
                else ("eval_top1_error", "eval_top5_error", config.eval_split)
            )
            print(
                f"{name:10s} seed {seed}: {label} top-1 {100 * metrics[top1]:.2f}%, "
                f"top-5 {100 * metrics[top5]:.2f}% ({outcome['status']}, "
                f"{outcome['seconds']:.1f} s)"
            )
    return results


def table(results: dict, base: str, label: str | None = None) -> str:
    top1, top5, kind = metric_keys(results)
    label = label or kind
    paper_runs = results["paper"]["runs"]
    rows = []
    for name, entry in results.items():
        change = ", ".join(f"{k}={v}" for k, v in entry["overrides"].items()) or "-"
        claim = ABLATION_CLAIMS.get(name, ("", "", ""))
        if entry["runs"] is None:
            ours = ["not run (AlexNet only)"] * 2
        else:
            ours = []
            for key in (top1, top5):
                values = [100 * r[key] for r in entry["runs"]]
                mean, std = common.mean_std(values)
                # One seed has no spread to show: say so rather than print ± 0.00.
                spread = f" ± {std:.2f}" if len(values) > 1 else ""
                if name == "paper":
                    ours.append(f"{mean:.2f}{spread} (error{', n = 1' if not spread else ''})")
                else:
                    paired = {p["seed"]: p for p in paper_runs}
                    deltas = [100 * (r[key] - paired[r["seed"]][key]) for r in entry["runs"]]
                    d, s = common.mean_std(deltas)
                    spread = f" ± {s:.2f}" if len(deltas) > 1 else " (n = 1)"
                    ours.append(f"{d:+.2f}{spread} (abs. {mean:.2f})")
        rows.append([name, f"`{change}`", *ours, claim[0], claim[1], claim[2]])
    return common.markdown_table(
        [
            "variant",
            "change",
            f"top-1 change, {base}, {label} (pts)",
            f"top-5 change, {base}, {label} (pts)",
            "paper top-1",
            "paper top-5",
            "where",
        ],
        rows,
    )


def timing_table(results: dict) -> str:
    rows = []
    for name, entry in results.items():
        for r in entry["runs"] or ():
            status = r["status"]
            if status == "resumed":
                status += f" from step {r['resumed_from_step']}"
            rows.append([name, r["seed"], status, f"{r['seconds']:.1f}", f"{r['run_seconds']:.1f}"])
    header = ["variant", "seed", "this invocation", "seconds now", "seconds of the last call"]
    return common.markdown_table(header, rows)


def main(argv=None) -> dict:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    started = time.perf_counter()
    parser = common.argument_parser(__doc__)
    parser.add_argument("--base", default="cifar", help="cifar | alexnet | a config file path")
    parser.add_argument(
        "--variants", default=",".join(sweep_plan.VARIANTS), help="'' = the paper run only"
    )
    cli.add_base_flags(parser)  # --seeds, --epochs, --steps, cadences, --set
    parser.add_argument("--out", default=None)
    parser.add_argument("--workdir", default=None, help="default: <tmp>/alexnet_jax_ablations/")
    parser.add_argument("--fresh", action="store_true", help="delete this invocation's runs")
    parser.add_argument(
        "--scale_schedule", action="store_true",
        help="multiply the base's epoch-keyed settings (step_epochs, manual schedules, layer "
        "multipliers, augmentation end epochs) by --epochs / the base's num_epochs",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="paper + no_lrn (+ one_tower, not run), 4 steps, 1 seed, cadences of 2 steps",
    )  # fmt: skip
    args = parser.parse_args(argv)

    variants = [v for v in args.variants.split(",") if v]
    seeds, steps = args.seeds, args.steps
    cadences = sweep_plan.cadences(args)
    if args.quick:
        variants, seeds, steps = ["no_lrn", "one_tower"], 1, 4
        cadences = {k: v or 2 for k, v in cadences.items()}
    overrides = {"num_epochs": args.epochs, "num_train_steps": steps}
    overrides.update({k: v for k, v in cadences.items() if v is not None})
    if args.quick:
        overrides["mesh.data"] = 1  # one device: no sharded compile for a smoke run
    overrides.update(sweep_plan.parse_set(sweep_plan.load_base(args.base), args.set))
    base_cfg = sweep_plan.base_config(
        args.base, args.dataset, args.data_dir, overrides, args.scale_schedule
    )
    name = base_name(args.base) + ("_quick" if args.quick else "")
    root = Path(args.workdir or Path(tempfile.gettempdir()) / "alexnet_jax_ablations" / name)
    out = common.results_dir("ablations", args.out)
    print(f"runs in {root} (the same command again resumes them)")

    planned = plan(base_cfg, variants, seeds, root)
    if args.fresh:
        folders = [f for entry in planned.values() for _, _, f in entry["runs"] or ()]
        for folder in folders:  # never delete a folder under a run that is still going
            holder = workdir_lib.live_holder(str(folder))
            if holder:
                raise SystemExit(
                    f"--fresh: {folder} is in use by a running run ({holder}); stop it or wait "
                    "for it to end, then run this command again."
                )
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
            rid = folder.name
            (root / "status" / f"{rid}.json").unlink(missing_ok=True)
            sweep_folder.log_file(root, rid).unlink(missing_ok=True)
    refuse_changed(planned)

    what = f"{steps} steps" if steps > 0 else f"{args.epochs} epochs"
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(planned, args, root, {"epochs": args.epochs, "steps": steps})
    results = run(planned, base_cfg.model.name)
    _, _, kind = metric_keys(results)
    split = f"'{base_cfg.get('test_split')}'" if kind == "test" else f"'{base_cfg.eval_split}'"
    label = "test" if kind == "test" else base_cfg.eval_split
    seconds = time.perf_counter() - started
    measured = (
        f"Base `{args.base}` ({base_cfg.model.name}) on {base_cfg.dataset}, {what} of batch "
        f"{base_cfg.batch_size} per run (evaluation every {base_cfg.eval_every_steps} steps, "
        f"schedule '{base_cfg.optimizer.schedule}'), {seeds} seeds, error of the centre crop "
        f"on the {split} split; change = variant minus paper with the same seed, mean ± std "
        f"over seeds, in points; machine: {common.machine()}; this invocation took "
        f"{seconds:.1f} s."
    )
    text = table(results, args.base, label)
    (out / "results.md").write_text(
        f"# Ablations\n\n{measured}\n\n{text}\n\nRuns in `{root}`:\n\n{timing_table(results)}\n"
    )
    files.write_json(
        out / "results.json",
        {"base": args.base, "model": base_cfg.model.name, "dataset": base_cfg.dataset,
         "budget": {"num_epochs": args.epochs, "num_train_steps": steps},
         "overrides": overrides, "seeds": seeds, "workdir": str(root), "metric": kind,
         "seconds": seconds, "machine": common.machine(), "results": results},
    )  # fmt: skip
    print("\n" + text + f"\n\n{measured}\n\nwritten to {out}")
    return results


if __name__ == "__main__":
    main()
