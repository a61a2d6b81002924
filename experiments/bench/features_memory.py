"""Peak memory of `python -m alexnet_jax.features` against the number of images.

On synthetic data (random 36 x 36 images, 10 classes) and the untrained cifar_lrn of
configs/default.py (`--random_init`), runs the features command in a fresh subprocess for each
dataset size N, at a fixed batch, extracting pool1 (16,384-d), local4 (2,048-d) and fc10, and
records the subprocess's peak resident set size (`ru_maxrss` of its own `os.wait4` rusage; the
JAX runtime and the mean-image statistics pass over the N training images included). Next to
it: the bytes of features written, which is what holding them in memory would take. The last
size is run a second time with `--format=npz`, which assembles one .npz from the shards.

  python -m experiments.bench.features_memory                    # N = 1k, 4k, 16k, then 16k as .npz
  python -m experiments.bench.features_memory --sizes=500,1000 --out=/tmp/m
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alexnet_jax import machine
from experiments import common, files

ROOT = Path(__file__).resolve().parents[2]
LAYERS = "pool1,local4,fc10"


def command(n: int, work: Path, out: Path, batch_size: int, file_format: str) -> list[str]:
    """The features command line for a synthetic dataset of n training and n test images."""
    return [
        sys.executable, "-m", "alexnet_jax.features", "--config=configs/default.py",
        "--config.dataset=synthetic", "--config.train_split=train",
        "--config.eval_split=test", "--config.test_split=test",
        f"--config.synthetic_examples={n}", f"--config.cache_dir={work / 'cache'}",
        "--random_init", f"--layers={LAYERS}", "--split=test", f"--batch_size={batch_size}",
        f"--format={file_format}", f"--out={out}", "--noprogress",
    ]  # fmt: skip


def measure(cmd: list[str], log: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one command run to its end, its output into `log`."""
    started = time.perf_counter()
    with open(log, "w") as f:
        child = subprocess.Popen(
            cmd, cwd=ROOT, env=common.subprocess_env(), stdout=f, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{log.read_text()}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000", help="dataset sizes N")
    parser.add_argument("--batch_size", type=int, default=128, help="extraction batch")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = [(n, "auto") for n in sizes] + [(sizes[-1], "npz")]
    invocation = " ".join(["python -m experiments.bench.features_memory", *argv])
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n, file_format in runs:
            out = work / f"features_{n}_{file_format}"
            cmd = command(n, work, out, args.batch_size, file_format)
            peak, seconds = measure(cmd, work / f"log_{n}_{file_format}.txt")
            record = json.loads((out / "features.json").read_text())
            file_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            records.append(
                {
                    "images": n,
                    "format": record["format"],
                    "examples": record["examples"],
                    "dims": {layer["name"]: layer["dim"] for layer in record["layers"]},
                    "feature_bytes": record["bytes"],
                    "files_bytes": file_bytes,
                    "peak_rss_mib": peak,
                    "seconds": seconds,
                    "command": " ".join(["python", *cmd[1:]]).replace(tmp, "$TMP"),
                }
            )
            rows.append(
                [
                    f"{n:,}", record["format"], f"{record['bytes'] / 2**20:,.0f}",
                    f"{peak:.0f}", f"{seconds:.1f}",
                ]
            )  # fmt: skip
            print(rows[-1], flush=True)
            for f in out.rglob("*.npy"):  # keep the disk use to one size at a time
                f.unlink()
            (out / "features.npz").unlink(missing_ok=True)
    table = common.markdown_table(
        ["images N", "written as", "features written (MiB)", "peak RSS (MiB)", "seconds"], rows
    )
    dims = ", ".join(f"{k} {v:,}" for k, v in records[0]["dims"].items())
    cpu = machine.cpu_name()
    text = (
        "# Peak memory of the features extraction (alexnet_jax.features)\n\n"
        f"`{invocation}`: one fresh subprocess per row running `python -m "
        "alexnet_jax.features` on synthetic 36 x 36 images with the untrained cifar_lrn of "
        f"configs/default.py (`--random_init`), layers {LAYERS} (D = {dims}), the split 'test' "
        f"of N images, batch {args.batch_size}; the mean image comes from a pass over the N "
        "'train' images. Peak RSS is the child's `ru_maxrss` (from `os.wait4`): the Python and "
        "JAX runtime, the compiled network and the statistics pass included. 'features "
        "written' is N x (sum of D) x 4 bytes, what holding them in memory would take. The "
        "last row writes one features.npz, assembled from the shards by copying bytes.\n\n"
        f"Command of the first row: `{records[0]['command']}`\n\n"
        f"Machine: {common.machine()}; CPU {cpu}.\n\n{table}\n"
    )
    out = common.results_dir("features_memory", args.out)
    (out / "results.md").write_text(text)
    summary = {"command": invocation, "machine": common.machine(), "cpu": cpu, "rows": records}
    files.write_json(out / "results.json", summary)
    print(text + f"\nwritten to {out}")
    return summary


if __name__ == "__main__":
    main()
