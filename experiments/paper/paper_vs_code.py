"""The paper's AlexNet against the released 2012 code's run #145, trained the same way, over seeds.

configs/alexnet.py is the network and recipe of the paper's text; configs/alexnet_2012_code.py
is run #145 of Krizhevsky's released code (experiments/paper/paper_vs_code.md lists every difference
with its source line). This script trains both on the same data, budget and seeds, and reports
the test error of each and the paired difference (code minus paper, same seed), in points.

Both configs are moved onto `--dataset` the same way: its splits (the digits: the offline
config's train[:80%] / train[80%:] / test), `--epochs`, batch size, class count, and for the
digits no flips or ten patches (a mirrored digit is another symbol). Every epoch-keyed setting
of the released code (the rate drops at epochs 25, 51 and 79 of 91, conv1's freeze at 67 and 72,
the end of colour noise at 67) is scaled by epochs / 91, so a short run keeps the shape of the
recipe; the paper's plateau rule evaluates once per epoch.

On the digits (8x8 images upscaled to 256x256, 224 crops) this is a proxy: it shows what the
differences do to a short training run of the full network, not what they did on ImageNet.

  python -m experiments.paper.paper_vs_code                       # digits, 3 seeds (CPU: ~1 h)
  python -m experiments.paper.paper_vs_code --quick               # smoke run, a few steps
  python -m experiments.paper.paper_vs_code --dataset=tfds:imagenet2012 --epochs=91 \
      --batch_size=128 --data_dir=$HOME/tensorflow_datasets  # the real comparison (GPUs)

Reruns continue unfinished runs and skip finished ones (experiments.common.resumable_run); a
run folder holding another config is refused (pass --fresh or another --workdir).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from alexnet_jax import orbax_quiet
from configs import alexnet as paper_config
from configs import alexnet_2012_code as code_config
from experiments import common, files

CONFIGS = {"paper": paper_config, "2012_code": code_config}
CODE_EPOCHS = 91  # run #145 was stopped at epoch 91 (layer-params-145.cfg:181)


def build(name: str, args: argparse.Namespace, seed: int) -> Any:
    """The config of `name` ('paper' or '2012_code') on the comparison's data and budget."""
    config = CONFIGS[name].get_config()
    common.use_dataset(config, args.dataset)
    if args.data_dir:
        config.data_dir = args.data_dir
    config.seed = seed
    config.batch_size = args.batch_size
    config.num_epochs = args.epochs
    config.num_train_steps = args.steps
    config.progress_bar = False
    if args.dataset == "digits":
        config.model.num_classes = 10
        config.augment.flip = False
        config.eval_ten_crop = False
        config.num_workers = 0
    if args.quick and args.dataset == "digits":  # a smoke run: 32 images evaluated, not 647
        config.eval_split, config.test_split = "train[1150:1166]", "test[:16]"
    common.scale_epochs(config, args.epochs / CODE_EPOCHS)
    steps = common.steps_per_epoch(config)
    config.eval_every_steps = steps  # the plateau rule reads one evaluation per epoch
    config.checkpoint_every_steps = steps
    config.log_every_steps = max(1, steps // 4)
    return config


def main(argv=None) -> dict:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    started = time.perf_counter()
    parser = common.argument_parser(__doc__)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=-1, help="-1: from --epochs")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="default: <tmp>/alexnet_jax_paper_vs_code")
    parser.add_argument("--out", default=None, help="default: experiments/results/paper_vs_code")
    parser.add_argument("--fresh", action="store_true", help="delete this invocation's runs first")
    parser.add_argument(
        "--quick", action="store_true",
        help="2 steps, 1 seed, 16 evaluation and 16 test images: a smoke run",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.epochs = 2, 1, 1
    if args.seeds < 1:
        raise SystemExit(f"--seeds={args.seeds}: need at least 1.")
    suffix = "_quick" if args.quick else ""
    root = Path(args.workdir or Path(tempfile.gettempdir()) / f"alexnet_jax_paper_vs_code{suffix}")
    out = common.results_dir(f"paper_vs_code{suffix}", args.out)

    planned = {
        name: [(s, build(name, args, s), root / f"{name}_seed{s}") for s in range(args.seeds)]
        for name in CONFIGS
    }
    if args.fresh:
        for runs in planned.values():
            for _, _, folder in runs:
                shutil.rmtree(folder, ignore_errors=True)
    common.refuse_other_configs((c, f) for runs in planned.values() for _, c, f in runs)

    results: dict[str, list[dict]] = {}
    for seed in range(args.seeds):  # seed by seed, so a stopped invocation has pairs done
        for name, runs in planned.items():
            _, config, folder = runs[seed]
            outcome = common.resumable_run(config, folder)
            m = outcome["metrics"]
            results.setdefault(name, []).append(
                {"seed": seed, "workdir": str(folder), "status": outcome["status"],
                 "seconds": outcome["seconds"], "run_seconds": outcome["run_seconds"], **m}
            )  # fmt: skip
            print(
                f"{name:10s} seed {seed}: test top-1 {100 * m['test_top1_error']:.2f}%, "
                f"top-5 {100 * m['test_top5_error']:.2f}% ({outcome['status']}, "
                f"{outcome['run_seconds']:.0f} s)",
                flush=True,
            )

    rows = []
    for name, runs in results.items():
        cells = []
        for key in ("test_top1_error", "test_top5_error"):
            mean, std = common.mean_std([100 * r[key] for r in runs])
            if name == "paper":
                cells.append(f"{mean:.2f} ± {std:.2f}")
            else:
                paired = {r["seed"]: r for r in results["paper"]}
                d = [100 * (r[key] - paired[r["seed"]][key]) for r in runs]
                dm, ds = common.mean_std(d)
                cells.append(f"{mean:.2f} ± {std:.2f} ({dm:+.2f} ± {ds:.2f})")
        per_seed = ", ".join(f"{100 * r['test_top1_error']:.2f}" for r in runs)
        rows.append([name, *cells, per_seed])
    header = [
        "config",
        "test top-1 error % (code - paper, paired)",
        "test top-5 error %",
        "top-1 per seed",
    ]
    table = common.markdown_table(header, rows)
    config0 = planned["paper"][0][1]
    budget = (
        f"{args.steps} steps" if args.steps > 0 else f"{args.epochs:g} epochs"
    ) + f" of batch {args.batch_size}"
    report = (
        f"# Paper config vs the 2012 code's run #145 ({args.dataset}, proxy)\n\n"
        f"Command: `python -m experiments.paper.paper_vs_code "
        f"{' '.join(argv) if argv is not None else ' '.join(__import__('sys').argv[1:])}`\n\n"
        f"Dataset {args.dataset} ({config0.train_split} / {config0.eval_split} / "
        f"{config0.test_split}), {budget}, seeds 0-{args.seeds - 1}, mean ± std over seeds; "
        f"{common.machine()}; "
        f"{time.perf_counter() - started:.0f} s this invocation.\n\n{table}\n"
    )
    (out / "paper_vs_code.md").write_text(report)
    files.write_json(out / "paper_vs_code.json", {"args": vars(args), "results": results})
    print(report)
    return results


if __name__ == "__main__":
    main()
