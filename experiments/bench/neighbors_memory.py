"""Peak memory of experiments/paper/neighbors.py against the number of training images.

On synthetic data (random 36 x 36 images, 10 classes) and an untrained cifar_lrn of
configs/default.py (its initial parameters saved as a step-0 checkpoint), runs
`neighbors.main` in a fresh subprocess for each training-set size N, with the same queries
(the first --queries test images), and records the subprocess's peak resident set size
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, read at its end; the mean-image statistics pass
over the N images is included). Next to it: what the arrays of the old all-in-memory method
alone would take, N x (4 D + P) bytes of training features and uint8 images, plus the float32
copy of the training pixels (4 N P) and the Q x N float32 distance matrix with its int64
argsort (12 Q N) it built.

  python -m experiments.bench.neighbors_memory                       # N = 1k, 4k, 16k, 64k
  python -m experiments.bench.neighbors_memory --sizes=1000,2000 --out=/tmp/m
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments import common, files

ROOT = Path(__file__).resolve().parents[2]


def synthetic_config(num_examples: int, cache_dir: str, batch_size: int):
    """configs/default.py on synthetic data: cifar_lrn, 36 x 36 images, 32 x 32 patches."""
    from configs import default

    config = default.get_config()
    config.dataset = "synthetic"
    config.train_split, config.eval_split = "train", "test"
    config.synthetic_examples = num_examples
    config.synthetic_classes = config.model.num_classes
    config.cache_dir = cache_dir
    config.batch_size = batch_size
    config.progress_bar = False
    return config


def make_run(root: Path, sizes: list[int], batch_size: int) -> dict[int, Path]:
    """A workdir per size: its config.json, and a shared step-0 checkpoint of initial params."""
    import jax
    import orbax.checkpoint as ocp

    from alexnet_jax import parallel

    config = synthetic_config(sizes[0], str(root / "cache"), batch_size)
    params = parallel.init_params(
        config.model, (config.image_size, config.image_size, 3), jax.random.key(0)
    )
    checkpoints = root / "checkpoints"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((checkpoints / "0" / "state").resolve(), {"params": params})
    runs = {}
    for n in sizes:
        run = root / f"run_{n}"
        run.mkdir()
        config = synthetic_config(n, str(root / "cache"), batch_size)
        (run / "config.json").write_text(config.to_json_best_effort())
        (run / "checkpoints").symlink_to(checkpoints)
        runs[n] = run
    return runs


def child(argv: list[str]) -> None:
    """Runs neighbors.main(argv) and prints one JSON line with its peak RSS and wall time."""
    if not any(a.startswith("--out=") for a in argv):
        raise ValueError("the child writes its figure into --out, not experiments/results")
    from experiments.paper import neighbors  # the child alone runs it: its peak is measured

    start = time.perf_counter()
    summary = neighbors.main(argv)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux.
    print(
        "MEMORY "
        + json.dumps(
            {
                "peak_rss_mib": peak_kib / 1024,
                "seconds": seconds,
                "train_images": summary["train_images"],
                "test_queries": summary["test_queries"],
                "layer": summary["layer"],
            }
        )
    )


def old_method_bytes(n: int, q: int, d: int, p: int) -> int:
    """The old script's arrays: training features float32 and uint8 images, the float32 pixel
    copy, and a (Q, N) float32 distance matrix with its int64 argsort."""
    return n * (4 * d + p) + 4 * n * p + 12 * q * n


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:  # The rest is neighbors.main's command line, untouched.
        child(argv[1:])
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000,64000", help="training-set sizes")
    parser.add_argument("--queries", type=int, default=256, help="test queries (max_queries)")
    parser.add_argument("--batch_size", type=int, default=128, help="evaluation batch")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    command = " ".join(["python -m experiments.bench.neighbors_memory", *argv])
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        runs = make_run(Path(tmp), sizes, args.batch_size)
        for n in sizes:
            cmd = [
                sys.executable,
                "-m",
                "experiments.bench.neighbors_memory",
                "--child",
                f"--workdir={runs[n]}",
                f"--out={Path(tmp) / f'out_{n}'}",
                f"--max_queries={args.queries}",
                "--queries=2",
            ]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
            line = next(x for x in done.stdout.splitlines() if x.startswith("MEMORY "))
            record = {"train_size": n, **json.loads(line[len("MEMORY ") :])}
            config = synthetic_config(n, "", args.batch_size)
            d = 32 * (config.image_size // 4) ** 2  # local4_out: 8 x 8 x 32 for 32 x 32 input.
            p = config.resize_size**2 * 3
            record["feature_dim"], record["pixel_dim"] = d, p
            record["old_method_mib"] = old_method_bytes(n, record["test_queries"], d, p) / 2**20
            records.append(record)
            rows.append(
                [
                    f"{n:,}",
                    record["train_images"],
                    record["test_queries"],
                    f"{record['peak_rss_mib']:.0f}",
                    f"{record['old_method_mib']:.0f}",
                    f"{record['seconds']:.1f}",
                ]
            )
            print(rows[-1], flush=True)
    table = common.markdown_table(
        [
            "training images N",
            "streamed",
            "queries Q",
            "peak RSS (MiB)",
            "old method's arrays alone (MiB)",
            "seconds",
        ],
        rows,
    )
    d, p = records[0]["feature_dim"], records[0]["pixel_dim"]
    text = (
        "# Peak memory of the streaming nearest-neighbour search (Figure 4)\n\n"
        f"`{command}` (one fresh subprocess per N running `experiments.paper.neighbors.main`; "
        "peak RSS is its `ru_maxrss` at the end, the JAX runtime and the mean-image "
        f"statistics pass included). Synthetic 36 x 36 images, untrained cifar_lrn, "
        f"D = {d} ({records[0]['layer']}), P = {p} pixel bytes, k = 6, evaluation batch "
        f"{args.batch_size}. Old method: N (4D + P) + 4 N P + 12 Q N bytes "
        "(training features and images, their float32 pixel copy, the distance matrix and "
        f"its argsort), on top of the same runtime.\n\nMachine: {common.machine()}.\n\n"
        f"{table}\n"
    )
    out = common.results_dir("neighbors_memory", args.out)
    (out / "results.md").write_text(text)
    summary = {"command": command, "machine": common.machine(), "rows": records}
    files.write_json(out / "results.json", summary)
    print(text + f"\nwritten to {out}")
    return summary


if __name__ == "__main__":
    main()
