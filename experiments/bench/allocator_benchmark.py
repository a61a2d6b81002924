"""The host allocator's effect on the JAX training step: glibc as it is, glibc tuned, tcmalloc.

Each allocator needs its own process (it is chosen before anything allocates), so this script
runs the PyTorch-comparison harness JAX-only (`experiments/bench/benchmark.py --skip-torch`) once
per allocator and round, the allocators in turn within every round, and reports the median over
rounds of each one's images/s and its ratio to glibc as it is:

  system       glibc malloc with its defaults (what a plain `pip install` gets)
  glibc_tuned  glibc malloc with `allocator.GLIBC_TUNED` (no install: GLIBC_TUNABLES)
  tcmalloc     tcmalloc preloaded (`apt-get install libtcmalloc-minimal4`), when installed

  python -m experiments.bench.allocator_benchmark [--batch 128] [--rounds 3] [--repeats 3]

Writes experiments/results/benchmark/allocator_cpu.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from alexnet_jax import allocator
from experiments import common, files


def measure(name: str, args: argparse.Namespace) -> dict[str, float]:
    """One harness run with allocator `name`: its training and inference images/s."""
    command = [sys.executable, "-m", "experiments.bench.benchmark", "--skip-torch", "--json", "-"]
    command += ["--allocator", name, "--batch", str(args.batch), "--repeats", str(args.repeats)]
    command += ["--warmup", "1", "--matmul-size", "512"]
    env = common.subprocess_env()
    for var in ("LD_PRELOAD", "GLIBC_TUNABLES", allocator._PRELOAD_GUARD):
        env.pop(var, None)  # each run starts from glibc as it is and chooses for itself
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    r = json.loads(done.stdout)
    return {
        "train": r["jax_train_images_per_sec"],
        "infer": r["jax_infer_images_per_sec"],
        "in_use": r["allocator"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="Results directory (default: results/).")
    args = parser.parse_args(argv)
    names = ["system", "glibc_tuned"] + (["tcmalloc"] if allocator.find_tcmalloc() else [])
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for round_ in range(args.rounds):
        for name in names:
            runs[name].append(measure(name, args))
            r = runs[name][-1]
            line = f"round {round_ + 1}: {name}: train {r['train']:.2f}, infer {r['infer']:.2f}"
            print(line + " img/s", file=sys.stderr, flush=True)
    med = {
        n: {k: statistics.median(r[k] for r in rs) for k in ("train", "infer")}
        for n, rs in runs.items()
    }
    command = "python -m experiments.bench.allocator_benchmark" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    rows = [
        [
            n,
            runs[n][0]["in_use"],
            f"{med[n]['train']:.2f}",
            f"{med[n]['train'] / med['system']['train']:.2f}x",
            f"{med[n]['infer']:.2f}",
            f"{med[n]['infer'] / med['system']['infer']:.2f}x",
        ]
        for n in names
    ]
    table = common.markdown_table(
        ["--allocator", "in use", "train img/s", "vs system", "infer img/s", "vs system"], rows
    )
    text = (
        f"# {command}  ({common.machine()}; AlexNet batch "
        f"{args.batch}, JAX only, float32; medians over {args.rounds} rounds, the allocators in "
        f"turn, each a fresh process timing {args.repeats} steps)\n{table}\n"
    )
    result = {"command": command, "machine": common.machine(), "date": time.strftime("%Y-%m-%d"),
              "batch": args.batch, "rounds": args.rounds, "runs": runs, "medians": med}  # fmt: skip
    out = common.results_dir("benchmark", args.out)
    files.write_report(out, "allocator_cpu", text, result)
    return result


if __name__ == "__main__":
    main()
