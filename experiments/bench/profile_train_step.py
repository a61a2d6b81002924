"""Where the time of one AlexNet training step goes, op by op, on the current JAX device.

Runs the paper network's training step (the same step as `python -m experiments.bench.benchmark`:
forward, backward, the paper's SGD update) under `jax.profiler`, sums the time of every XLA
operation over a few steps and prints the largest ones with what they compute (the shape and
kind of each fused operation, read from the compiled HLO).

  python -m experiments.bench.profile_train_step [--batch 128] [--steps 3] [--top 30] [--torch]

`--torch` profiles the identical PyTorch step of the benchmark instead (`torch.profiler`, the
operators' own CPU time, by input shape), for a side-by-side reading of where each framework
spends its time.

Preload tcmalloc as the benchmark does (LD_PRELOAD=.../libtcmalloc_minimal.so.4), or every
step re-faults its buffers. Profiling slows the step by roughly a third: read the shares, not
the absolute times.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import numpy as np

from alexnet_jax import allocator
from configs import alexnet as alexnet_config
from experiments.bench import benchmark


def op_times(trace_dir: str, steps: int) -> collections.Counter:
    """Milliseconds per step of every complete event in the Perfetto trace under `trace_dir`."""
    (path,) = glob.glob(f"{trace_dir}/**/*.json.gz", recursive=True)[-1:]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    times = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            times[e["name"]] += e["dur"] / 1e3 / steps
    return times


def describe(hlo: str, name: str) -> str:
    """'shape <- operation' of the HLO instruction `name`, or '' if it is not one."""
    m = re.search(r"\n\s+(?:ROOT )?%?" + re.escape(name) + r" = (\S+) (\w[\w-]*)\(", hlo)
    if not m:
        return ""
    m_meta = re.search(r"\n\s+(?:ROOT )?%?" + re.escape(name) + r" = .*?op_name=\"([^\"]+)\"", hlo)
    where = m_meta.group(1).split("/")[-2:] if m_meta else []
    return f"{m.group(1)} {m.group(2)} {'/'.join(where)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--torch", action="store_true", help="Profile PyTorch's step instead.")
    args = parser.parse_args()
    config = alexnet_config.get_config()
    rng = np.random.default_rng(0)
    images = (60 * rng.standard_normal((args.batch, args.image_size, args.image_size, 3))).astype(
        np.float32
    )
    labels = rng.integers(0, 1000, args.batch)
    net = benchmark.jax_alexnet(config, images, labels)
    if args.torch:
        return torch_profile(config, net["params"], images, labels, args)
    for _ in range(2):
        net["train"]()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.steps):
                net["train"]()
        times = op_times(trace_dir, args.steps)
    hlo = net["train_hlo"]
    ops = {n: t for n, t in times.items() if describe(hlo, n)}
    total = sum(ops.values())
    print(
        f"AlexNet training step, batch {args.batch}, {args.image_size}x{args.image_size}, "
        f"{jax.devices()[0].platform}, allocator {allocator.allocator_in_use()}: "
        f"{total:.0f} ms/step in XLA operations (profiled)"
    )
    print(f"{'ms/step':>8} {'share':>6}  operation")
    for name, t in sorted(ops.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{t:8.1f} {t / total:6.1%}  {name}: {describe(hlo, name)}")


def torch_profile(config, params, images, labels, args) -> None:
    """The PyTorch twin's training step under torch.profiler: operators by their own CPU time."""
    import torch

    from experiments.bench import torch_reference as ref

    model = ref.torch_alexnet(config.model, args.image_size)
    ref.copy_jax_params(params, model, args.image_size)
    step = benchmark.torch_steps(config, model, images, labels, "float32")["train"]
    for _ in range(2):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:  # fmt: skip
        for _ in range(args.steps):
            step()
    rows = prof.key_averages(group_by_input_shape=True)
    total = sum(r.self_cpu_time_total for r in rows) / 1e3 / args.steps
    print(
        f"PyTorch {torch.__version__} AlexNet training step, batch {args.batch}, "
        f"{args.image_size}x{args.image_size}, {torch.get_num_threads()} threads, allocator "
        f"{allocator.allocator_in_use()}: {total:.0f} ms/step in operators (profiled)"
    )
    print(f"{'ms/step':>8} {'share':>6}  operator [input shapes]")
    for r in sorted(rows, key=lambda r: -r.self_cpu_time_total)[: args.top]:
        t = r.self_cpu_time_total / 1e3 / args.steps
        shapes = [s for s in r.input_shapes if s][:2]
        print(f"{t:8.1f} {t / total:6.1%}  {r.key} {shapes}")


if __name__ == "__main__":
    main()
