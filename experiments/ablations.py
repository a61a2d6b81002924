"""The paper's ablations (§3.1-§4.2): each switch's change of top-1/top-5 error, over seeds.

Every variant is one file of configs/ablations/ (it imports the paper config and changes one
field); this script reads which fields each file changes and applies the same change to a base
config, so the ablation files stay the one definition. Each (variant, seed) is one
`train.train_and_evaluate` run; the change is paired by seed (variant minus paper, same seed)
and reported as mean ± std over seeds, in percentage points, beside the paper's claim.

Bases:
  alexnet  configs/alexnet.py, the paper's AlexNet: every switch applies (ImageNet: GPU-days).
  cifar    configs/default.py, the §3.3 CIFAR net (cuda-convnet layers-conv-local-11pct) on
           scikit-learn's digits: the offline run. Only the switches that exist in that net run
           (LRN, PCA colour, activation); the rest (pooling overlap, towers, dropout) are AlexNet
           structure and are listed as not run.

  python -m experiments.ablations                                   # offline: cifar on digits
  python -m experiments.ablations --base=alexnet --dataset=tfds:imagenet2012 --epochs=90 \
      --seeds=2 --data_dir=$HOME/tensorflow_datasets                # the paper's table (GPUs)
  python -m experiments.ablations --quick                           # smoke run, seconds
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path
from typing import Any

from configs import alexnet as alexnet_config
from configs import default as default_config
from experiments import common

VARIANTS = ("no_lrn", "no_overlap", "one_tower", "no_pca", "no_dropout", "tanh")

# The paper's claimed change of (top-1, top-5) error in points when the switch is turned off.
PAPER_CLAIMS = {
    "no_lrn": ("+1.4", "+1.2", "§3.3"),
    "no_overlap": ("+0.4", "+0.3", "§3.4"),
    "one_tower": ("+1.7", "+1.2", "§3.2"),
    "no_pca": ("> +1", "n/a", "§4.1"),
    "no_dropout": ("'substantial overfitting'", "n/a", "§4.2"),
    "tanh": ("n/a (CIFAR-10: 6x more epochs to 25% train error)", "n/a", "§3.1"),
    "ungrouped": ("not in the paper", "", ""),
}

# Fields that the CIFAR nets honour; a switch touching any other model field needs AlexNet.
CIFAR_FIELDS = ("model.lrn", "model.activation", "augment.", "optimizer.")


def _flat(config: Any) -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        else:
            out[key] = value
    return out


def switch(name: str) -> dict[str, Any]:
    """The fields configs/ablations/<name>.py changes in the paper config, and their values."""
    module = importlib.import_module(f"configs.ablations.{name}")
    paper, ablated = _flat(alexnet_config.get_config()), _flat(module.get_config())
    return {k: v for k, v in ablated.items() if paper.get(k) != v}


def base_config(base: str, dataset: str | None, data_dir: str) -> Any:
    config = (alexnet_config if base == "alexnet" else default_config).get_config()
    if dataset:
        config.dataset = dataset
        if dataset == "digits":
            config.eval_split = "test"
    if data_dir:
        config.data_dir = data_dir
    source = common.input_pipeline.create_source(config, config.train_split)
    config.model.num_classes = source.num_classes
    config.progress_bar = False
    config.keep_checkpoints = 1
    config.eval_every_steps = 10**9  # only the last step evaluates
    config.checkpoint_every_steps = 10**9
    return config


def runnable(base: str, overrides: dict[str, Any]) -> bool:
    return base == "alexnet" or all(k.startswith(CIFAR_FIELDS) for k in overrides)


def run(base_cfg, base: str, variants, seeds: int, budget: dict, root: Path) -> dict:
    """{variant: {'overrides', 'runs': [{seed, eval_*}] or None when not runnable}}."""
    results = {}
    for name in ("paper", *variants):
        overrides = {} if name == "paper" else switch(name)
        entry = {"overrides": overrides, "runs": None}
        if runnable(base, overrides):
            entry["runs"] = []
            for seed in range(seeds):
                config = base_cfg.copy_and_resolve_references()
                config.update_from_flattened_dict({**overrides, **budget, "seed": seed})
                result = common.fresh_run(config, root / f"{name}_seed{seed}")
                entry["runs"].append({"seed": seed, **result})
                print(
                    f"{name:10s} seed {seed}: top-1 {100 * result['eval_top1_error']:.2f}%, "
                    f"top-5 {100 * result['eval_top5_error']:.2f}%"
                )
        else:
            print(f"{name:10s} not run: {overrides} is AlexNet structure, not in the {base} net")
        results[name] = entry
    return results


def table(results: dict, base: str) -> str:
    paper_runs = results["paper"]["runs"]
    rows = []
    for name, entry in results.items():
        change = ", ".join(f"{k}={v}" for k, v in entry["overrides"].items()) or "-"
        claim = PAPER_CLAIMS.get(name, ("", "", ""))
        if entry["runs"] is None:
            ours = ["not run (AlexNet only)"] * 2
        else:
            ours = []
            for key in ("eval_top1_error", "eval_top5_error"):
                values = [100 * r[key] for r in entry["runs"]]
                mean, std = common.mean_std(values)
                if name == "paper":
                    ours.append(f"{mean:.2f} ± {std:.2f} (error)")
                else:
                    deltas = [100 * (r[key] - p[key]) for r, p in zip(entry["runs"], paper_runs)]
                    d, s = common.mean_std(deltas)
                    ours.append(f"{d:+.2f} ± {s:.2f} (abs. {mean:.2f})")
        rows.append([name, f"`{change}`", *ours, claim[0], claim[1], claim[2]])
    return common.markdown_table(
        [
            "variant",
            "change",
            f"top-1 change, {base} (pts)",
            f"top-5 change, {base} (pts)",
            "paper top-1",
            "paper top-5",
            "where",
        ],
        rows,
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", choices=("cifar", "alexnet"), default="cifar")
    parser.add_argument("--dataset", default=None, help="default: the base config's")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=-1, help="> 0: overrides --epochs")
    parser.add_argument("--out", default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--quick", action="store_true", help="paper + no_lrn, 4 steps, 1 seed")
    args = parser.parse_args(argv)

    variants = [v for v in args.variants.split(",") if v]
    seeds, steps = args.seeds, args.steps
    if args.quick:
        variants, seeds, steps = ["no_lrn", "one_tower"], 1, 4
    base_cfg = base_config(args.base, args.dataset, args.data_dir)
    if args.quick:
        base_cfg.mesh.data = 1  # one device: no sharded compile for a smoke run
    budget = {"num_epochs": args.epochs, "num_train_steps": steps}
    budget["log_every_steps"] = max(1, min(base_cfg.log_every_steps, steps if steps > 0 else 10**9))
    out = common.results_dir("ablations", args.out)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="ablations_"))
    what = f"{steps} steps" if steps > 0 else f"{args.epochs} epochs"
    measured = (
        f"Base `{args.base}` ({base_cfg.model.name}) on {base_cfg.dataset}, {what} of batch "
        f"{base_cfg.batch_size} per run, {seeds} seeds, error of the centre crop on the "
        f"'{base_cfg.eval_split}' split; change = variant minus paper with the same seed, "
        f"mean ± std over seeds, in points; machine: {common.machine()}."
    )
    print(measured)
    results = run(base_cfg, args.base, variants, seeds, budget, root)
    text = table(results, args.base)
    (out / "results.md").write_text(f"# Ablations\n\n{measured}\n\n{text}\n")
    common.write_json(
        out / "results.json",
        {"base": args.base, "dataset": base_cfg.dataset, "budget": budget, "seeds": seeds,
         "machine": common.machine(), "results": results},
    )  # fmt: skip
    print("\n" + text + f"\n\nwritten to {out}")
    return results


if __name__ == "__main__":
    main()
