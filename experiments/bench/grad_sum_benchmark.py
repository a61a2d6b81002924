"""What `mesh.grad_sum='ordered'` costs against `'psum'`: the project's training step
(`train.make_train_step`) timed with both, interleaved in one process, on simulated devices.

  python -m experiments.bench.grad_sum_benchmark [--devices 4] [--repeats 5]

Two networks: the offline default (configs/default.py, batch 32 of 32x32, mesh (devices, 1)) and
the paper's AlexNet (configs/alexnet.py, batch 4 per replica at 224x224, mesh (devices, 1)).
With 2 replicas both modes are psum (a sum of two does not depend on the order), so the
meshes have `devices` replicas.
Prints the median seconds per step and the ratio ordered / psum, and writes
experiments/results/benchmark/grad_sum_cpu.{txt,json}. On simulated CPU devices the
collectives are memory copies on the same cores; on GPUs they are NCCL's, so this says what
the extra reshapes cost here, not what a network of GPUs will show.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--out", default=None, help="default: experiments/results/benchmark")
    args = parser.parse_args(argv)
    if "jax" in sys.modules:
        raise SystemExit("run as a script: the simulated devices are set before jax is imported")
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from alexnet_jax import augment, optim, parallel, train
    from configs import alexnet, default
    from experiments import common, files
    from experiments.bench.timing import interleaved_medians

    nets = {}
    config = default.get_config()
    config.mesh.tower = 1
    nets["default (cifar_lrn, batch 32, 32x32)"] = config
    config = alexnet.get_config()
    config.batch_size = 4 * args.devices
    config.mesh.tower = 1
    nets[f"alexnet (batch {config.batch_size}, 224x224)"] = config

    rows = []
    for name, config in nets.items():
        steps = {}
        for mode in parallel.GRAD_SUMS:
            config.mesh.grad_sum = mode
            mesh = parallel.make_mesh(config.mesh, config.model)
            tx = optim.create_optimizer(config.optimizer)
            s = config.resize_size
            rng = np.random.default_rng(0)
            with jax.set_mesh(mesh):
                batch = config.batch_size
                images = jax.device_put(
                    rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8),
                    NamedSharding(mesh, P("data")),
                )
                labels = jax.device_put(
                    np.arange(batch) % config.model.num_classes, NamedSharding(mesh, P("data"))
                )
                stats = augment.DataStats(
                    mean_image=jnp.full((s, s, 3), 120.0, jnp.float32),
                    pca_eigvals=jnp.array([4000.0, 400.0, 40.0], jnp.float32),
                    pca_eigvecs=jnp.eye(3, dtype=jnp.float32),
                )
                step = train.make_train_step(config, mesh, tx)
                state = [train.create_train_state(config, mesh, tx, jax.random.key(0))]

                def run(step=step, state=state, images=images, labels=labels, stats=stats,
                        mesh=mesh):  # fmt: skip
                    with jax.set_mesh(mesh):
                        state[0], out = step(state[0], images, labels, stats)
                    return out

                steps[mode] = (run, dict(mesh.shape))
        times = {mode: [] for mode in steps}
        for _ in range(args.rounds):
            fns = {mode: run for mode, (run, _) in steps.items()}
            for mode, seconds in interleaved_medians(fns, 1, args.repeats).items():
                times[mode].append(seconds)
        med = {mode: float(np.median(t)) for mode, t in times.items()}
        rows.append(
            {
                "net": name,
                "mesh": steps["ordered"][1],
                "ordered_s": med["ordered"],
                "psum_s": med["psum"],
                "ratio": med["ordered"] / med["psum"],
            }
        )
        print(f"{name}: ordered {med['ordered']:.4f} s, psum {med['psum']:.4f} s, "
              f"ratio {med['ordered'] / med['psum']:.3f}", flush=True)  # fmt: skip

    command = "python -m experiments.bench.grad_sum_benchmark" + " ".join(
        [""] + (argv or sys.argv[1:])
    )
    result = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": common.machine(),
        "devices": args.devices,
        "rows": rows,
    }
    table = common.markdown_table(
        ["net", "mesh", "ordered s/step", "psum s/step", "ordered / psum"],
        [
            [
                r["net"],
                str(r["mesh"]),
                f"{r['ordered_s']:.4f}",
                f"{r['psum_s']:.4f}",
                f"{r['ratio']:.3f}",
            ]
            for r in rows
        ],  # fmt: skip
    )
    text = (
        f"# {command}  ({result['machine']}, {args.devices} simulated CPU "
        f"devices; medians of {args.rounds} interleaved rounds of {args.repeats} steps)\n{table}\n"
    )
    out = common.results_dir("benchmark", args.out)
    files.write_report(out, "grad_sum_cpu", text, result)
    return result


if __name__ == "__main__":
    main()
