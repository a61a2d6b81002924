"""How long `python -m experiments.sweep status DIR` takes on a 50-run sweep folder, and whether
it imports JAX (it must not: it is polled while jobs run).

  python -m experiments.bench.sweep_status_benchmark   # the times of 5 calls and the median

The folder is written as the sweep runner writes one (manifest with 50 runs, each with a status
file and a metrics.jsonl of 200 training events), in a temporary directory.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.sweep import folder as sweep_folder

ROOT = Path(__file__).resolve().parents[2]


def make_folder(root: Path, runs: int = 50, events: int = 200) -> None:
    plan = {
        sweep_folder.run_id(f"variant{i // 2}", i % 2): {
            "variant": f"variant{i // 2}", "seed": i % 2, "config": {}
        }  # fmt: skip
        for i in range(runs)
    }
    manifest = {"format": sweep_folder.FORMAT, "base": "cifar", "base_variant": "variant0",
                "variants": {}, "seeds": 2, "budget": {}, "runs": plan,
                "submissions": []}  # fmt: skip
    sweep_folder.write_manifest(root, manifest)
    states = ("queued", "running", "requeued", "finished", "failed")
    for i, rid in enumerate(plan):
        folder = sweep_folder.run_folder(root, rid)
        folder.mkdir(parents=True)
        lines = [json.dumps({"step": 10 * s, "epoch": s / 35, "train_loss": 1.0 / (s + 1)})
                 for s in range(1, events + 1)]  # fmt: skip
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        fields = {"state": states[i % 5], "job_id": f"1234_{i}", "reason": "error: example"}
        if fields["state"] == "finished":
            fields["metrics"] = {"test_top1_error": 0.1}
        sweep_folder.update_status(root, rid, **fields)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root)
        code = (
            "import sys, io, contextlib; from experiments.sweep import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()): cli.main(['status', sys.argv[1]])\n"
            "print('jax imported:', 'jax' in sys.modules)"
        )
        times, said = [], ""
        for _ in range(5):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", code, str(root)], cwd=ROOT,
                                  capture_output=True, text=True, check=True)  # fmt: skip
            times.append(time.perf_counter() - start)
            said = done.stdout.strip()
        print(f"status of a 50-run sweep folder, whole command (interpreter start included): "
              f"{', '.join(f'{t:.3f}' for t in times)} s; median {statistics.median(times):.3f} s; "
              f"{said}")  # fmt: skip


if __name__ == "__main__":
    main()
