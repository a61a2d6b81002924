"""Golden values of three training steps of configs/default.py (the offline default) on a fixed
batch: the first 32 digits of the training split, the statistics of those 32 images, the
config's seed. A change to the network, the initialisation, the augmentation, the loss, the
optimizer or the step that moves these numbers by more than RTOL fails here (a momentum of 0.8
instead of 0.9 does; effects below RTOL, such as weight decay 4e-4 instead of 5e-4 over three
steps, are test_switches.py's to catch, against NumPy).

When a change is meant to move them, rerun with GOLDEN_PRINT=1
(`GOLDEN_PRINT=1 python -m pytest -q tests/test_golden.py -s`), check that the new values are
what the change should give, paste them into GOLDEN and say why in the commit message.
"""

import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import augment, optim, parallel, sources, train
from configs import default

# Measured on the 2-core CPU of this project's machine, JAX 0.10.2, one device, 2026-12-01.
GOLDEN = {
    "step_0": {"train_loss": 2.310248851776123, "grad_norm": 3.059684991836548,
               "param_norm": 14.194522857666016},
    "step_1": {"train_loss": 2.2415881156921387, "grad_norm": 2.7816522121429443,
               "param_norm": 14.194685935974121},
    "step_2": {"train_loss": 2.1410207748413086, "grad_norm": 2.467787504196167,
               "param_norm": 14.195416450500488},
    "update_norm": 0.14278826283544194,
}  # fmt: skip
RTOL = 2e-5  # float32 on other CPUs and XLA builds: the last bits of sums may differ


def _two_steps() -> dict:
    config = default.get_config()
    config.mesh.data = 1
    source = sources.create_source(config, "train")
    examples = [source[i] for i in range(config.batch_size)]
    images = np.stack([e["image"] for e in examples])
    labels = np.array([e["label"] for e in examples], np.int32)
    stats = augment.compute_data_stats(list(images))
    mesh = parallel.make_mesh(config.mesh, config.model, jax.devices()[:1])
    tx = optim.create_optimizer(config.optimizer)
    out = {}
    with jax.set_mesh(mesh):
        state = train.create_train_state(config, mesh, tx, jax.random.key(config.seed))
        step = train.make_train_step(config, mesh, tx)
        put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))  # noqa: E731
        x, y = put(images), put(labels)
        stats = jax.device_put(stats, NamedSharding(mesh, P()))
        initial = jax.tree.map(np.asarray, state.params)
        for i in range(3):
            state, metrics = step(state, x, y, stats)
            out[f"step_{i}"] = {k: float(metrics[k]) for k in ("train_loss", "grad_norm",
                                                              "param_norm")}  # fmt: skip
        # How far three updates moved the parameters: every optimizer field shows here.
        moved = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, state.params, initial)
        out["update_norm"] = float(np.sqrt(sum(np.sum(d * d) for d in jax.tree.leaves(moved))))
    return out


def test_one_step_of_the_offline_default_matches_its_golden_values():
    got = _two_steps()
    if os.environ.get("GOLDEN_PRINT"):
        print("GOLDEN =", got)
    flat = lambda d: {  # noqa: E731
        f"{k}.{kk}" if isinstance(v, dict) else k: vv
        for k, v in d.items()
        for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])
    }
    got, golden = flat(got), flat(GOLDEN)
    assert got.keys() == golden.keys()
    for key, expected in golden.items():
        assert got[key] == pytest.approx(expected, rel=RTOL), (
            f"{key}: got {got[key]!r}, golden {expected!r}. If the change was meant to move "
            "it, see this module's docstring."
        )
