"""Transfer in the small: pre-train on digits 0-4, then learn digits 5-9 from 10 images a class.

A proxy, on data that ships with scikit-learn, for what people do with AlexNet after ImageNet:
start from the trained network instead of from scratch (alexnet_jax/transfer.py), or take its
features for a linear classifier (alexnet_jax/features.py, experiments/paper/linear_probe.py). The
digits are 8x8 and the network is the §3.3 CIFAR net of the offline default (configs/default.py),
so the numbers say that the code transfers, not how much ImageNet features help your data.

  python -m experiments.paper.transfer_demo            # ~15 minutes on a 2-core CPU
  python -m experiments.paper.transfer_demo --seeds=1  # quicker

What runs (all through the real code paths: folder datasets of PNGs, the training CLI's
`train_and_evaluate`, `config.init_from`, `python -m experiments.paper.linear_probe`):

1. Folder datasets made from the digits' own 'train' / 'test' split (alexnet_jax/sources.py):
   `pretrain/` holds every training image of digits 0-4 (train/ and, held out by a fixed shuffle,
   20% in val/); `target/` holds digits 5-9: train/ the first `--per_class` (10) training
   images of each class, val/ the next 20 of each, test/ every test image of 5-9.
2. Pre-training: configs/default.py on `pretrain/` (5 classes, its 15 epochs), seed 0.
3. (a) Fine-tuning against from scratch, for each seed: the same config on `target/` (batch
   10, `--steps` steps, validation every 10 steps) in three arms: from the pre-trained run
   (`init_from.source`, fc10 excluded: it has new classes) with configs/finetune.py's recipe
   (rate 0.001, fc10 at 10x); from the pre-trained run with the default's constant rate 0.01;
   and from the config's initialisation with rate 0.01 (the last two differ only in
   `init_from`).
4. (b) The linear probe on `target/` (train: its train/ split; test: its test/ split) of the
   pre-trained net's features and of the same net randomly initialised (seed 0), per layer.

Writes experiments/results/transfer/: results.json, results.md (mean ± std over seeds, the
commands, date and machine) and learning_curves.png (validation error of both arms).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from alexnet_jax import metrics, orbax_quiet
from alexnet_jax import workdir as workdir_lib
from experiments import common, files

NAME = "transfer"
PRETRAIN_CLASSES = tuple(range(5))
TARGET_CLASSES = tuple(range(5, 10))


def write_folders(root: Path, per_class: int, val_per_class: int = 20) -> dict[str, int]:
    """The `pretrain/` and `target/` folder datasets (PNG files) under `root`; their counts."""
    from PIL import Image

    from alexnet_jax import sources

    counts = {}
    for split in ("train", "test"):
        src = sources.DigitsSource(split, 8)
        images, labels = src._images, src._labels  # 8x8 uint8, 0..255, the source's own split
        for digit in range(10):
            idx = np.flatnonzero(labels == digit)
            if digit in PRETRAIN_CLASSES:
                if split == "test":
                    continue
                order = np.random.default_rng(digit).permutation(len(idx))
                n_val = len(idx) // 5
                parts = {"val": idx[order[:n_val]], "train": idx[order[n_val:]]}
                base = root / "pretrain"
            else:
                if split == "train":
                    parts = {
                        "train": idx[:per_class],
                        "val": idx[per_class : per_class + val_per_class],
                    }
                else:
                    parts = {"test": idx}
                base = root / "target"
            for part, chosen in parts.items():
                folder = base / part / str(digit)
                folder.mkdir(parents=True, exist_ok=True)
                for i in chosen:
                    Image.fromarray(np.repeat(images[i][..., None], 3, -1)).save(
                        folder / f"{split}_{i:04d}.png"
                    )
                key = f"{base.name}/{part}"
                counts[key] = counts.get(key, 0) + len(chosen)
    return counts


def base_config(dataset: Path, seed: int):
    """configs/default.py on a 5-class folder dataset (train/, val/ and maybe test/)."""
    from configs import default

    config = default.get_config()
    config.dataset = f"folder:{dataset}"
    config.train_split = "train"
    config.eval_split = "validation"
    config.test_split = "test" if (dataset / "test").is_dir() else ""
    config.model.num_classes = 5
    config.seed = seed
    config.progress_bar = False
    return config


def target_config(data: Path, seed: int, steps: int, source: Path | None, recipe: str):
    """configs/default.py on `target/`; `recipe` 'default' (its constant rate 0.01 for every
    layer) or 'finetune' (configs/finetune.py's: a tenth of the rate, the new classifier 10x)."""
    config = base_config(data / "target", seed)
    config.batch_size = 10
    config.num_train_steps = steps
    config.eval_every_steps = 10
    config.log_every_steps = 10
    config.checkpoint_every_steps = steps
    if source is not None:
        config.init_from.source = str(source)
        config.init_from.exclude = ("fc10",)
    if recipe == "finetune":
        config.optimizer.learning_rate = 0.001
        config.optimizer.layer_lr_multipliers = (("fc10", 10.0),)
    return config


# (name, from the pre-trained run, recipe): the arms of (a).
ARMS = (
    ("fine-tuned, rate 0.001, fc10 x10", True, "finetune"),
    ("fine-tuned, rate 0.01", True, "default"),
    ("from scratch, rate 0.01", False, "default"),
)


def _curve(workdir: Path) -> list[tuple[int, float]]:
    return [
        (e["step"], e["eval_top1_error"])
        for e in metrics.read_metrics(str(workdir))
        if "eval_top1_error" in e
    ]


def _probe(out: Path, data: Path, source_args: list[str], layers: str) -> dict:
    cmd = [
        sys.executable, "-m", "experiments.paper.linear_probe", "--config=configs/default.py",
        f"--config.dataset=folder:{data / 'target'}", "--config.model.num_classes=5",
        "--config.progress_bar=False", "--train_split=train", "--test_split=test",
        f"--layers={layers}", f"--out={out}", *source_args,
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=common.ROOT, env=common.subprocess_env(), capture_output=True,
                         text=True)  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"the probe failed: {run.stderr.strip().splitlines()[-1:]}")
    return {"command": " ".join(cmd[1:]), **json.loads((out / "results.json").read_text())}


def main() -> None:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    parser = common.argument_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="Fine-tuning seeds (default 3).")
    parser.add_argument("--per_class", type=int, default=10, help="Labelled images per class.")
    parser.add_argument("--steps", type=int, default=150, help="Fine-tuning steps (batch 10).")
    parser.add_argument("--layers", default="conv1,conv2,pool2,local3,local4,fc10")
    parser.add_argument("--workdir", default="/tmp/alexnet_jax_transfer_demo")
    parser.add_argument("--out", default=None, help="Results folder (default experiments/...).")
    parser.add_argument(
        "--report", action="store_true",
        help="Only rewrite results.md and the figure from the folder's results.json.",
    )  # fmt: skip
    args = parser.parse_args()
    if args.report:
        out = common.results_dir(NAME, args.out)
        summary = json.loads((out / "results.json").read_text())
        (out / "results.md").write_text(markdown(summary))
        args.per_class = summary["finetune"]["per_class"]
        plot(summary["finetune"]["runs"], out / "learning_curves.png", args)
        print((out / "results.md").read_text())
        return
    started = time.time()
    work = Path(args.workdir)
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    counts = write_folders(data, args.per_class)
    print(f"datasets: {counts}")

    pre = work / "pretrain"
    shutil.rmtree(pre, ignore_errors=True)
    pre_config = base_config(data / "pretrain", 0)
    pre_result = common.fresh_run(pre_config, pre)
    print(f"pre-trained on digits 0-4: validation top-1 error {pre_result['eval_top1_error']:.4f}")

    runs: dict[str, list[dict]] = {arm: [] for arm, _, _ in ARMS}
    for seed in range(args.seeds):
        for i, (arm, pretrained, recipe) in enumerate(ARMS):
            workdir = work / f"arm{i}_seed{seed}"
            config = target_config(data, seed, args.steps, pre if pretrained else None, recipe)
            result = common.fresh_run(config, workdir)
            runs[arm].append({"seed": seed, **result, "curve": _curve(workdir)})
            print(f"{arm}, seed {seed}: test top-1 error {result['test_top1_error']:.4f}")

    probes = {
        "pre-trained": _probe(work / "probe_pretrained", data, [f"--workdir={pre}"], args.layers),
        "random init": _probe(work / "probe_random", data, ["--random_init"], args.layers),
    }
    out = common.results_dir(NAME, args.out)
    summary = {
        "command": "python -m experiments.paper.transfer_demo " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": common.machine(),
        "seconds": time.time() - started,
        "datasets": counts,
        "pretrain": {"config": workdir_lib.flat_config(pre_config), "result": pre_result},
        "finetune": {
            "steps": args.steps, "batch_size": 10, "per_class": args.per_class,
            "runs": runs,
            "configs": {
                arm: workdir_lib.flat_config(
                    target_config(data, 0, args.steps, pre if pretrained else None, recipe)
                )
                for arm, pretrained, recipe in ARMS
            },
        },  # fmt: skip
        "probe": probes,
    }
    files.write_json(out / "results.json", summary)
    (out / "results.md").write_text(markdown(summary))
    plot(runs, out / "learning_curves.png", args)
    print((out / "results.md").read_text())


def _mean_std(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}"


def markdown(s: dict) -> str:
    f = s["finetune"]
    lines = [
        "# Transfer in the small: digits 0-4 -> digits 5-9",
        "",
        f"`{s['command'].strip()}` on {s['machine']} ({s['seconds'] / 60:.1f} min; other jobs "
        "shared the 2 cores).",
        "",
        "A proxy for ImageNet-to-your-data, not a measurement of it: the §3.3 CIFAR net of "
        "configs/default.py, 8x8 digits upscaled to 36x36, pre-trained on the digits 0-4 and "
        "transferred to the digits 5-9 (classes it never saw).",
        "",
        f"Images: {s['datasets']}.",
        f"Pre-training (digits 0-4, seed 0): validation top-1 error "
        f"{100 * s['pretrain']['result']['eval_top1_error']:.2f}%.",
        "",
        f"## (a) Fine-tuning vs from scratch: {f['per_class']} labelled images a class, "
        f"{f['steps']} steps of {f['batch_size']}, {len(next(iter(f['runs'].values())))} seeds",
        "",
        "Every arm: configs/default.py on the target folder, the same seeds, budget, momentum "
        "0.9 and augmentation. Fine-tuned: `init_from.source` = the pre-trained run, fc10 "
        "excluded (new classes), either with configs/finetune.py's recipe (rate 0.001, fc10 at "
        "10x through `optimizer.layer_lr_multipliers`) or with the from-scratch arm's constant "
        "rate 0.01.",
        "",
        "| arm | test top-1 error % (mean ± std) | per seed | validation top-1 % (final) |",
        "|---|---|---|---|",
    ]
    for arm, runs in f["runs"].items():
        per_seed = ", ".join(f"{100 * r['test_top1_error']:.2f}" for r in runs)
        lines.append(
            f"| {arm} | {_mean_std([r['test_top1_error'] for r in runs])} | {per_seed} | "
            f"{_mean_std([r['eval_top1_error'] for r in runs])} |"
        )
    scratch = f["runs"][ARMS[-1][0]]
    lines += ["", f"Paired by seed, minus {ARMS[-1][0]} (points of test top-1 error):", ""]
    for arm, _, _ in ARMS[:-1]:
        pairs = zip(f["runs"][arm], scratch)
        d = 100 * np.asarray([a["test_top1_error"] - b["test_top1_error"] for a, b in pairs])
        spread = f" ± {d.std(ddof=1):.2f}" if len(d) > 1 else ""
        per_seed = ", ".join(f"{x:+.2f}" for x in d)
        lines.append(f"- {arm}: {d.mean():+.2f}{spread} ({per_seed})")
    lines += ["", "Learning curves: learning_curves.png (validation error, mean and range).", ""]
    probes = s["probe"]
    lines += [
        f"## (b) Linear probe on the digits 5-9 ({f['per_class']} training images a class)",
        "",
        "Logistic regression on each layer's features of the target's train/ split (C chosen "
        "on a stratified 20% of it, then refit on all of it), evaluated once on its test/ split "
        "(experiments/paper/linear_probe.py). Features of the pre-trained net against those of the "
        "same net at its random initialisation (seed 0).",
        "",
        "| layer | dim | " + " | ".join(f"{n}: test top-1 error % (C)" for n in probes) + " |",
        "|---|---|" + "---|" * len(probes),
    ]
    by_name = {n: {r["layer"]: r for r in p["layers"]} for n, p in probes.items()}
    first = next(iter(by_name.values()))
    for layer, row in first.items():
        picked = [by_name[n][layer] for n in probes]
        cells = [f"{100 * r['test_top1_error']:.2f} (C {r['chosen_C']:g})" for r in picked]
        lines.append(f"| {layer} | {row['dim']:,} | " + " | ".join(cells) + " |")
    n_test = first[next(iter(first))]["n_test"]
    lines += [
        "",
        f"{n_test} test images: one is {100 / n_test:.2f}%. The validation split that chooses C "
        f"is 20% of {f['per_class']} images a class, two a class: most Cs tie there and the "
        "smallest wins. Commands:",
        "",
    ]
    lines += [f"- {n}: `{p['command']}`" for n, p in probes.items()]
    lines += [
        "",
        "This is a proxy: it shows the transfer machinery working end to end (a run's "
        "parameters start a new run with a new classifier; any layer's features feed a probe) "
        "on 8x8 digits with 50 labelled images. It is not evidence about ImageNet features on "
        "your data.",
    ]
    return "\n".join(lines) + "\n"


def plot(runs: dict, path: Path, args) -> None:
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (arm, _, _), color in zip(ARMS, ("C0", "C2", "C1")):
        steps = [s for s, _ in runs[arm][0]["curve"]]
        errors = np.asarray([[100 * e for _, e in r["curve"]] for r in runs[arm]])
        ax.plot(steps, errors.mean(0), color=color, label=f"{arm} (mean of {len(errors)} seeds)")
        ax.fill_between(steps, errors.min(0), errors.max(0), color=color, alpha=0.2)
    ax.set_xlabel(f"step (batch 10; {args.per_class} images a class)")
    ax.set_ylabel("validation top-1 error (%)")
    ax.set_title("Digits 5-9: fine-tuned from digits 0-4 vs from scratch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
