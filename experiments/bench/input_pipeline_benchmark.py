"""Throughput of the input pipeline: host images/s by worker count, next to the device costs.

The host side (alexnet_jax/input_pipeline.py) must decode, resize and batch images as fast as
the accelerator trains on them. This script writes a folder of real-photo 256x256 JPEGs (random
crops of the two photographs bundled with scikit-learn, quality 90, about the size of a
prepared ImageNet image) and a second folder of 640x427 JPEGs (larger than the average
full-size ImageNet image), then measures in one process:

  1. host images/s of one thread decoding with `source[i]` (per-core speed: divide the
     accelerator's appetite by it to size num_workers), then of `create_train_iterator` on the
     256x256 folder for num_workers = 0, 1, 2 (after the first batch, so worker start-up is
     excluded), and on the 640x427 folder with the most workers: the gap is what the one-time
     copy of `python -m alexnet_jax.prepare` saves;
  2. the device augmentation of §2/§4.1 (`augment.train_views`: mean image, random crop, flip,
     PCA colour), jitted, per batch of 128 uint8 256x256 images;
  3. the project's training step for the config (`train.single_device_step`: augmentation,
     forward, backward, the SGD of §5), jitted, at a small batch, scaled per image.

Only ratios within one run mean anything (this machine's speed drifts by 30%). Run from the
repository root:

  python -m experiments.bench.input_pipeline_benchmark --config=configs/alexnet.py
"""

from __future__ import annotations

import copy
import os
import platform
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image

from alexnet_jax import input_pipeline, machine
from experiments.bench.timing import interleaved_medians

PHOTO_SIZE = (640, 427)  # (width, height) of the bundled photos.


def write_jpeg_folder(
    root: str, num_images: int, size: tuple[int, int] | None, num_classes: int = 4, seed: int = 0
) -> None:
    """Writes `num_images` JPEGs (quality 90) of real photographs as a `folder:` dataset.

    Args:
      root: destination; one sub-folder per class.
      num_images: how many files.
      size: (width, height) of every file; None gives 256x256 random crops (scale 0.6-1 of
        the photo's height), a stand-in for a prepared ImageNet image.
      num_classes: class sub-folders, assigned round-robin.
      seed: crops and flips.
    """
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
    for i in range(num_images):
        photo = photos[i % len(photos)]
        if size is None:
            side = int(rng.uniform(0.6, 1.0) * photo.height)
            x, y = rng.integers(0, photo.width - side + 1), rng.integers(0, photo.height - side + 1)
            image = photo.resize((256, 256), Image.Resampling.BILINEAR, (x, y, x + side, y + side))
        else:
            image = photo.resize(size, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(os.path.join(root, f"class{i % num_classes}", f"{i:06d}.jpg"), quality=90)


def host_images_per_second(config: Any, seconds: float) -> tuple[float, float]:
    """(images/s after the first batch, seconds to the first batch) of the training stream.

    Batches are drawn for at least `seconds` after the first one, so that the workers' prefetch
    buffers, full when timing starts, are a small part of what is timed.
    """
    source = input_pipeline.create_source(config, config.train_split)
    start = time.perf_counter()
    with input_pipeline.create_train_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        next(it)
        first = time.perf_counter() - start
        start, num_batches = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            next(it)
            num_batches += 1
        elapsed = time.perf_counter() - start
    return num_batches * config.batch_size / elapsed, first


def one_core_images_per_second(config: Any, seconds: float) -> float:
    """Images/s of `source[i]` (read, decode, resize) in one thread, without Grain."""
    source = input_pipeline.create_source(config, config.train_split)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        source[n % len(source)]
        n += 1
    return n / (time.perf_counter() - start)


def _uint8_batch(config: Any, batch: int) -> tuple[Any, Any]:
    """A (batch, S, S, 3) uint8 batch and data statistics like a dataset's, on the device."""
    import jax.numpy as jnp

    from alexnet_jax import augment

    s = config.resize_size
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), np.uint8))
    stats = augment.DataStats(
        mean_image=jnp.full((s, s, 3), 120.0, jnp.float32),
        pca_eigvals=jnp.array([4000.0, 400.0, 40.0], jnp.float32),
        pca_eigvecs=jnp.eye(3, dtype=jnp.float32),
    )
    return images, stats


def augment_seconds(config: Any, batch: int, repeats: int) -> float:
    """Median seconds of jitted `augment.train_views` on a (batch, S, S, 3) uint8 batch."""
    import jax

    from alexnet_jax import augment

    images, stats = _uint8_batch(config, batch)
    views = jax.jit(
        lambda key, x, st: augment.train_views(key, x, st, config.augment, config.image_size)
    )
    key = jax.random.key(0)
    fn = lambda: views(key, images, stats)  # noqa: E731
    return interleaved_medians({"augment": fn}, 1, repeats)["augment"]


def train_step_seconds(config: Any, batch: int, repeats: int) -> float:
    """Median seconds of the project's training step (`train.single_device_step`, augmentation
    on the device included) of `config` on a batch of `batch` uint8 images."""
    import jax

    from alexnet_jax import train

    config = config.copy_and_resolve_references()
    config.batch_size = batch
    mesh, state, step = train.single_device_step(config, augment_on_device=True)
    images, stats = _uint8_batch(config, batch)
    labels = jax.numpy.arange(batch) % config.model.num_classes
    holder = [state]

    def run_step():
        holder[0], out = step(holder[0], images, labels, stats)
        return out

    with jax.set_mesh(mesh):
        return interleaved_medians({"train": run_step}, 1, repeats)["train"]


def run(
    config: Any,
    *,
    workers: tuple[int, ...] = (0, 1, 2),
    num_images: int = 1024,
    seconds: float = 4.0,
    host_batch: int = 64,
    augment_batch: int = 128,
    model_batch: int = 8,
    repeats: int = 5,
) -> dict[str, float]:
    """Measures and prints the report (markdown); returns the numbers.

    Args:
      config: the experiment config: its resize_size, image_size, augment and model are used;
        its dataset is replaced by the benchmark's folders.
      workers: num_workers values to measure.
      num_images: JPEGs written per folder.
      seconds: how long each host setting is timed (after one untimed batch).
      host_batch: host batch size.
      augment_batch: device augmentation batch (the paper's 128).
      model_batch: training-step batch (small, so that it runs on a CPU).
      repeats: timed repetitions of each jitted function (median reported).

    Returns:
      Dict of the measured numbers.
    """
    results: dict[str, float] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small, large = os.path.join(tmp, "jpeg256"), os.path.join(tmp, "jpeg640")
        write_jpeg_folder(small, num_images, None)
        write_jpeg_folder(large, num_images, PHOTO_SIZE)
        kib = np.mean(
            [os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(small) for f in fs]
        )
        host = copy.deepcopy(config)
        host.batch_size, host.folder_val_fraction = host_batch, 0.0
        host.train_split, host.seed = "train", 0
        for name, folder in (("256x256", small), ("640x427", large)):
            host.dataset = f"folder:{folder}"
            rate = one_core_images_per_second(host, seconds / 2)
            results[f"one_core_{name}"] = rate
            rows.append((f"{name} JPEG, one thread, `source[i]` alone", rate, 0.0))
        for w in workers:
            host.num_workers, host.dataset = w, f"folder:{small}"
            rate, first = host_images_per_second(host, seconds)
            results[f"host_256_w{w}"] = rate
            rows.append((f"256x256 JPEG ({kib / 1024:.0f} KiB), num_workers={w}", rate, first))
        host.num_workers, host.dataset = max(workers), f"folder:{large}"
        rate, first = host_images_per_second(host, seconds)
        results[f"host_640_w{max(workers)}"] = rate
        rows.append((f"640x427 JPEG, num_workers={max(workers)}", rate, first))

    aug = augment_seconds(config, augment_batch, repeats)
    step = train_step_seconds(config, model_batch, repeats)
    results.update(augment_ms_per_batch=aug * 1e3, train_step_ms=step * 1e3)
    aug_per_image, step_per_image = aug / augment_batch, step / model_batch

    import jax

    cpu = machine.cpu_name() or platform.processor() or platform.machine()
    print(
        f"\nInput pipeline throughput ({cpu}, "
        f"{os.cpu_count()} CPU cores, JAX {jax.__version__} on {jax.devices()[0].platform}, "
        f"S={config.resize_size}, crop {config.image_size}, {time.strftime('%Y-%m-%d')})\n"
    )
    print("| host: decode + resize + batch (Grain) | images/s | first batch (s) |")
    print("|---|---|---|")
    for name, rate, first in rows:
        print(f"| {name} | {rate:,.0f} | {f'{first:.1f}' if first else ''} |")
    print("\n| device (jitted) | ms | ms per image | share of a training step per image |")
    print("|---|---|---|---|")
    print(
        f"| augment.train_views, batch {augment_batch} (mean, crop, flip, PCA colour) | "
        f"{aug * 1e3:.1f} | {aug_per_image * 1e3:.2f} | {aug_per_image / step_per_image:.1%} |"
    )
    print(
        f"| training step (train.make_train_step) of model.name={config.model.name!r}, "
        f"batch {model_batch} | "
        f"{step * 1e3:.0f} | {step_per_image * 1e3:.1f} | 100% |"
    )
    best = max(v for k, v in results.items() if k.startswith("host_256"))
    print(
        f"\nThe host delivers up to {best:,.0f} images/s; this machine's training step consumes "
        f"{1 / step_per_image:,.1f} images/s."
    )
    return results


def main() -> None:
    from absl import app
    from ml_collections import config_flags

    config_flag = config_flags.DEFINE_config_file("config", "configs/alexnet.py", "Config file.")

    def _main(argv: list[str]) -> None:
        del argv
        run(config_flag.value)

    app.run(_main)


if __name__ == "__main__":
    main()
