"""Tables 1 and 2 (§6): a trained checkpoint's error with one centre patch and with the 10
patches of §4.1 (four corners, centre, and their reflections; softmaxes averaged), printed
beside the paper's rows and the released 2012 code's own results (`CODE_ROWS`).

The evaluation is the training system's own (`train.make_eval_step` and `run_loop.evaluate`, the
code that logs eval_* and eval10_* during training), run on the run's config.json.

  python -m experiments.paper.paper_tables --workdir=/tmp/alexnet            # the run's eval split
  python -m experiments.paper.paper_tables --workdir=/tmp/alexnet --split=validation \
      --data_dir=$HOME/tensorflow_datasets                           # ILSVRC-2012 val (Table 2)
  python -m experiments.paper.paper_tables --checkpoint=/tmp/alexnet/checkpoints/450000
"""

from __future__ import annotations

import argparse

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import input_pipeline, orbax_quiet, parallel, run_loop, train
from alexnet_jax.published import CODE_ROWS, PAPER_ROWS
from experiments import common, files


def evaluate(config, params, split: str) -> dict[str, float]:
    """Centre-crop and 10-patch error of `params` on `split`, with `config`'s model."""
    config.eval_ten_crop = True
    config.mesh.data, config.mesh.tower = 1, 1  # one device holds both towers: any machine
    mesh = parallel.make_mesh(config.mesh, config.model)
    train_source = input_pipeline.create_source(config, config.train_split)
    source = input_pipeline.create_source(config, split)
    with jax.set_mesh(mesh):
        stats = input_pipeline.load_data_stats(config, train_source)
        stats = jax.device_put(stats, NamedSharding(mesh, P()))
        params = parallel.shard(params, mesh, parallel.param_spec(config.model))
        eval_step = train.make_eval_step(config, mesh)
        with input_pipeline.create_eval_iterator(config, source) as batches:
            return run_loop.evaluate(eval_step, params, batches, stats, mesh)


def main(argv=None) -> dict:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None, help="a training run's workdir")
    parser.add_argument("--checkpoint", default=None, help="or one checkpoint folder")
    parser.add_argument(
        "--split", default=None, help="default: the run's test_split, else its eval_split"
    )
    parser.add_argument("--dataset", default=None, help="default: the run's dataset")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not (args.workdir or args.checkpoint):
        parser.error("give --workdir or --checkpoint")

    config, step, params = common.load_run(
        args.workdir,
        args.checkpoint,
        dataset=args.dataset,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        progress_bar=False,
    )
    if config.dataset in ("digits", "synthetic"):
        config.num_workers = 0  # tiny in-memory images: decoding in this process is fastest
    # The tables report test error where the run has a test split (ImageNet: validation, as
    # the paper's Table 2 does).
    split = args.split or config.get("test_split") or config.eval_split
    result = evaluate(config, params, split)
    ours = f"ours: {config.model.name} step {step}, {config.dataset} '{split}'"
    rows = [[t, s, m, f"{e1:.1f}", f"{e5:.1f}"] for t, s, m, e1, e5 in PAPER_ROWS]
    rows += [[t, s, m, f"{e1:.2f}", f"{e5:.2f}"] for t, s, m, e1, e5 in CODE_ROWS]
    for prefix, what in (("eval", "centre patch"), ("eval10", "10 patches")):
        rows.append(
            [
                "ours",
                f"{config.dataset} {split} ({result['eval_examples']} images)",
                f"{config.model.name} step {step}, {what}",
                f"{100 * result[f'{prefix}_top1_error']:.2f}",
                f"{100 * result[f'{prefix}_top5_error']:.2f}",
            ]
        )
    text = common.markdown_table(["table", "set", "model", "top-1 err %", "top-5 err %"], rows)
    measured = f"{ours}; machine: {common.machine()}."
    out = common.results_dir("paper_tables", args.out)
    (out / "results.md").write_text(f"# Tables 1 and 2\n\n{measured}\n\n{text}\n")
    files.write_json(
        out / "results.json",
        {"run": args.workdir or args.checkpoint, "step": step, "dataset": config.dataset,
         "split": split, "result": result, "machine": common.machine()},
    )  # fmt: skip
    print(measured + "\n\n" + text + f"\n\nwritten to {out}")
    return result


if __name__ == "__main__":
    main()
