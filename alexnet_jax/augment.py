"""The paper's preprocessing and data augmentation, run on the device (paper §2, §4.1).

The host hands over uint8 batches of shape (B, S, S, 3): for ImageNet every image was rescaled
so that its shorter side is S = 256 and centre-cropped to S x S (§2). Everything below is pure
jax.numpy with static shapes, so it jits, runs on the accelerator inside the train/eval step,
and works for any batch size without Python loops over the batch.

Training (§4.1), in the paper's order:

1. subtract the mean image of the training set (§2); subtracting before cropping is the same as
   cropping the image and the mean at the same offset, crop(x - mean);
2. take a random size x size patch (224 in the paper) and mirror it left-right with
   probability 1/2;
3. add PCA colour noise, one random RGB shift per image along the principal axes of the
   training set's pixel colours.

Test (§4.1): the centre patch, or the ten patches (four corners, centre, and their mirrors)
whose softmax outputs the caller averages.

The statistics these need (`DataStats`: mean image and RGB eigen-decomposition) are computed
once on the host in one streaming NumPy pass (`compute_data_stats`) and cached as an .npz file.

PCA noise scale. The paper writes the added vector as [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T with
l_i the eigenvalues of the RGB covariance and a_i ~ N(0, 0.1). Read literally in 0..255 pixel
units that shift is about 0.1 * 14000 = 1400 on ImageNet's first axis, many times the pixel
range, and it changes with the pixel scale. Krizhevsky's own data provider (cuda-convnet2,
`convdata.py`, run with `--color-noise 0.1`) multiplies the Gaussian by the per-axis standard
deviations sqrt(l_i) instead, which gives a shift of about 12 pixel units whatever the units.
`pca_color` follows that code: it adds eigvecs @ (alpha * sqrt(eigvals)), alpha ~ N(0, std).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import caffe_files
from alexnet_jax.errors import check_choice, first_line

MEAN_MODES = ("image", "channel", "fixed", "none")
MEAN_IMAGE_MODES = ("image", "channel")  # the modes that subtract (part of) a mean image

# Images are converted to float64 at most this many at a time in `compute_data_stats`, which
# bounds host memory (64 x 256 x 256 x 3 x 8 bytes = 100 MB) whatever the caller's chunk size,
# and keeps every partial sum an integer below 2**53, so the float64 sums are exact.
_STATS_SUBCHUNK = 64


_STATS_NAMES = ("mean_image", "pca_eigvals", "pca_eigvecs")  # the arrays of a DataStats .npz


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: `==` on arrays has no single truth.
class DataStats:
    """Training-set statistics for mean subtraction (§2) and PCA colour noise (§4.1).

    A JAX pytree of three arrays, so it can be passed into jitted functions. All values are
    in 0..255 pixel units (eigenvalues in squared pixel units).

    Attributes:
      mean_image: float32 (S, S, 3), the per-pixel mean over the training images (§2).
      pca_eigvals: float32 (3,), eigenvalues of the 3x3 RGB covariance over all training
        pixels (population covariance), descending, clipped at 0.
      pca_eigvecs: float32 (3, 3), column i is the unit eigenvector p_i belonging to
        pca_eigvals[i]; each column's largest-magnitude entry is positive, so the signs are
        reproducible.
    """

    mean_image: Any
    pca_eigvals: Any
    pca_eigvecs: Any

    def save(self, path: str | os.PathLike) -> None:
        """Writes the statistics to an .npz file at exactly `path` (atomically).

        Args:
          path: destination file; written through a temporary file and renamed, so a
            reader never sees a half-written cache.
        """
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.savez(
                f,
                mean_image=np.asarray(self.mean_image, np.float32),
                pca_eigvals=np.asarray(self.pca_eigvals, np.float32),
                pca_eigvecs=np.asarray(self.pca_eigvecs, np.float32),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DataStats:
        """Reads statistics written by `save`.

        Args:
          path: the .npz file.

        Returns:
          The DataStats, as float32 NumPy arrays.
        """
        path = os.fspath(path)
        try:
            with np.load(path) as data:  # allow_pickle=False: an object array is refused
                stats = {k: data[k].astype(np.float32) for k in _STATS_NAMES}
            mean, vals, vecs = stats.values()
            if mean.ndim != 3 or mean.shape[2] != 3 or vals.shape != (3,) or vecs.shape != (3, 3):
                raise ValueError(f"arrays of shapes {[a.shape for a in stats.values()]}")
        except Exception as e:  # zip, zlib, header and size errors, a missing array
            raise ValueError(
                f"{path} is not a statistics cache written by DataStats.save "
                f"({first_line(e, with_type=False)}); delete it and it is computed again."
            ) from None
        return cls(**stats)


def compute_data_stats(images: Iterable[np.ndarray]) -> DataStats:
    """Computes the mean image and the RGB eigen-decomposition in one streaming pass (§2, §4.1).

    Only running sums are kept: the per-pixel sum image (S, S, 3) and the 3x3 sum of RGB outer
    products over all pixels, both float64. For uint8 input every sum is an integer below
    2**53 even for all of ImageNet (1.5e10 pixels x 255**2 ~ 1e15), so both are exact; the
    covariance is formed once at the end as (sum xx^T - s s^T / N) / N, the population
    covariance over all training pixels (it differs from NumPy's default N - 1 by a factor
    1 + 1/N, i.e. 7e-11 on ImageNet).

    Args:
      images: an iterable of uint8 arrays, each one image (S, S, 3) or a batch (n, S, S, 3),
        in 0..255; all with the same S x S.

    Returns:
      The DataStats (float32 NumPy arrays).

    Raises:
      ValueError: if there are no images, or the shapes are not (.., H, W, 3) or disagree.
    """
    sum_image = None
    sum_outer = np.zeros((3, 3), np.float64)
    num_images = 0
    for chunk in images:
        chunk = np.asarray(chunk)
        if chunk.ndim == 3:
            chunk = chunk[None]
        if chunk.ndim != 4 or chunk.shape[-1] != 3:
            raise ValueError(f"expected images (H, W, 3) or (n, H, W, 3), got {chunk.shape}")
        if sum_image is None:
            sum_image = np.zeros(chunk.shape[1:], np.float64)
        elif chunk.shape[1:] != sum_image.shape:
            raise ValueError(f"image shape {chunk.shape[1:]} differs from {sum_image.shape}")
        for start in range(0, chunk.shape[0], _STATS_SUBCHUNK):
            x = chunk[start : start + _STATS_SUBCHUNK].astype(np.float64)
            sum_image += x.sum(axis=0)
            pixels = x.reshape(-1, 3)
            sum_outer += pixels.T @ pixels
        num_images += chunk.shape[0]
    if sum_image is None or num_images == 0:
        raise ValueError("compute_data_stats got no images")

    num_pixels = num_images * sum_image.shape[0] * sum_image.shape[1]
    sum_rgb = sum_image.sum(axis=(0, 1))
    cov = (sum_outer - np.outer(sum_rgb, sum_rgb) / num_pixels) / num_pixels
    eigvals, eigvecs = np.linalg.eigh((cov + cov.T) / 2)
    # eigh returns ascending order; the paper's p1 is the leading axis.
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    # Rank-deficient data (e.g. grey images stored as RGB) can give eigenvalues of -1e-13;
    # clip so that sqrt in `pca_color` stays real.
    eigvals = np.maximum(eigvals, 0.0)
    # Eigenvectors are defined up to sign; pin it so the cached file is reproducible.
    signs = np.sign(eigvecs[np.argmax(np.abs(eigvecs), axis=0), np.arange(3)])
    eigvecs = eigvecs * signs
    return DataStats(
        mean_image=(sum_image / num_images).astype(np.float32),
        pca_eigvals=eigvals.astype(np.float32),
        pca_eigvecs=eigvecs.astype(np.float32),
    )


def _check_images(images: jax.Array, size: int | None = None) -> None:
    """Raises at trace time unless images is (B, H, W, C) with H, W >= size."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, H, W, C), got {images.shape}")
    if size is not None:
        height, width = images.shape[1:3]
        if size > height or size > width:
            raise ValueError(
                f"crop size {size} is larger than the images ({height}x{width}); "
                f"images must be at least {size}x{size}"
            )


def _rgb(values: Any, field: str) -> tuple[float, float, float]:
    """Three floats (R, G, B), or a ValueError naming `field`."""
    values = tuple(values)
    if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(
            f"{field} must be three numbers (R, G, B) in 0..255 units, got {values!r}."
        )
    return tuple(float(v) for v in values)


def divide_std(x: jax.Array, std: Any) -> jax.Array:
    """x divided by the per-channel RGB `std` (`augment.std_rgb`); (1, 1, 1) returns x itself."""
    std = _rgb(std, "augment.std_rgb")
    if not all(v > 0 for v in std):
        raise ValueError(f"augment.std_rgb must be positive, got {std}.")
    if std == (1.0, 1.0, 1.0):
        return x
    return x / jnp.asarray(std, jnp.float32)


MEAN_FILE_LAYOUTS = ("caffe", "hwc_rgb")


def load_mean_file(path: str, layout: str, size: int) -> np.ndarray:
    """The mean image of `augment.mean_file`, as float32 (size, size, 3) RGB in 0..255.

    Args:
      path: a `.npy` array, or a Caffe `.binaryproto` blob (always Caffe's layout).
      layout: 'caffe': channels first in B, G, R order, (3, H, W) or (1, 3, H, W), as Caffe's
        imagenet_mean.binaryproto and pycaffe's ilsvrc_2012_mean.npy hold it; 'hwc_rgb':
        (H, W, 3) in R, G, B order, as this project's `DataStats.mean_image`.
      size: the side the images have when the mean is subtracted (`config.resize_size`).

    Raises:
      ValueError: a missing or unreadable file, another shape, or values that are not pixel
        units; the message names the file and the fix.
    """
    if layout not in MEAN_FILE_LAYOUTS:
        raise ValueError(
            f"augment.mean_file_layout={layout!r}: expected one of {MEAN_FILE_LAYOUTS}."
        )
    if not os.path.isfile(path):
        raise ValueError(f"augment.mean_file={path!r} does not exist; give the mean file's path.")
    if path.endswith(".binaryproto"):
        if layout != "caffe":
            raise ValueError(
                f"{path}: a .binaryproto blob is in Caffe's layout; set "
                "augment.mean_file_layout='caffe'."
            )
        mean = caffe_files.read_binaryproto(path)
    else:
        try:
            mean = np.load(path, allow_pickle=False)  # an object array is refused, not run
        except Exception as e:  # header and size errors, MemoryError for a huge shape
            raise ValueError(
                f"augment.mean_file={path!r} is not a .npy array or a .binaryproto blob "
                f"({first_line(e, with_type=False)})."
            ) from None
    mean = np.asarray(mean, np.float32)
    if layout == "caffe":
        if mean.ndim == 4 and mean.shape[0] == 1:
            mean = mean[0]
        if mean.ndim != 3 or mean.shape[0] != 3:
            raise ValueError(
                f"{path} holds shape {mean.shape}; augment.mean_file_layout='caffe' expects "
                "(3, H, W) or (1, 3, H, W) in B, G, R order (for an (H, W, 3) RGB array set "
                "mean_file_layout='hwc_rgb')."
            )
        mean = mean[::-1].transpose(1, 2, 0)  # BGR channels first -> H, W, RGB
    elif mean.ndim != 3 or mean.shape[2] != 3:
        raise ValueError(
            f"{path} holds shape {mean.shape}; augment.mean_file_layout='hwc_rgb' expects "
            "(H, W, 3) in R, G, B order (for Caffe's (3, H, W) BGR set mean_file_layout='caffe')."
        )
    if mean.shape[:2] != (size, size):
        raise ValueError(
            f"{path} is a {mean.shape[0]}x{mean.shape[1]} mean image, the images are "
            f"{size}x{size} when it is subtracted (resize_size); set --config.resize_size="
            f"{mean.shape[0]} or use a mean file of that size."
        )
    if not np.all(np.isfinite(mean)) or mean.min() < 0 or mean.max() > 255:
        raise ValueError(
            f"{path} has values from {mean.min():g} to {mean.max():g}; a mean image in pixel "
            "units lies in 0..255."
        )
    if mean.max() <= 1.0:
        raise ValueError(
            f"{path} has values in 0..1; images here are in 0..255: save the mean times 255."
        )
    return np.ascontiguousarray(mean)


def _require_stats(stats: DataStats | None, what: str) -> DataStats:
    if stats is None:
        raise ValueError(f"{what} needs DataStats, got None")
    return stats


def subtract_mean(
    images_u8: jax.Array, stats: DataStats | None, mode: str, fixed: Any = (0.0, 0.0, 0.0)
) -> jax.Array:
    """Centres the raw pixel values (§2: "subtract the mean activity over the training set").

    Args:
      images_u8: (B, H, W, C) images, uint8 or float, in 0..255.
      stats: the training-set statistics (may be None for mode 'none').
      mode: 'image' subtracts the per-pixel mean image (the paper); 'channel' subtracts one
        mean per RGB channel (the mean image averaged over H and W); 'fixed' subtracts the
        given per-channel RGB values (`fixed`; no statistics needed); 'none' only casts.
      fixed: the RGB values 'fixed' subtracts, in 0..255 units.

    Returns:
      float32 images of the same shape.

    Raises:
      ValueError: for an unknown mode, or a mean image whose shape differs from the images'.
    """
    _check_images(images_u8)
    x = images_u8.astype(jnp.float32)
    if mode == "none":
        return x
    if mode not in MEAN_MODES:
        raise ValueError(f"unknown mean mode {mode!r}; expected one of {MEAN_MODES}")
    if mode == "fixed":
        return x - jnp.asarray(_rgb(fixed, "augment.mean_rgb"), jnp.float32)
    mean_image = jnp.asarray(_require_stats(stats, f"mean mode {mode!r}").mean_image, jnp.float32)
    if mode == "channel":
        return x - mean_image.mean(axis=(0, 1))
    if mean_image.shape != x.shape[1:]:
        raise ValueError(
            f"mean image has shape {mean_image.shape} but the images are {x.shape[1:]}; "
            "compute the statistics at the size the host delivers"
        )
    return x - mean_image


def random_crop(rng: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """Takes an independent, uniformly placed size x size patch of every image (§4.1).

    Every offset in [0, H - size] x [0, W - size] has the same probability, so (for the
    paper's 256 -> 224) each image yields one of 33 x 33 patches.

    Args:
      rng: a JAX PRNG key.
      images: (B, H, W, C) array.
      size: the patch side (static).

    Returns:
      (B, size, size, C) array of the images' dtype.
    """
    _check_images(images, size)
    batch, height, width, channels = images.shape
    # randint's maxval is exclusive: offsets 0..H-size inclusive.
    offsets = jax.random.randint(
        rng, (batch, 2), minval=0, maxval=jnp.array([height - size + 1, width - size + 1])
    )

    def crop_one(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (size, size, channels))

    return jax.vmap(crop_one)(images, offsets)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2, independently (§4.1).

    Args:
      rng: a JAX PRNG key.
      images: (B, H, W, C) array.

    Returns:
      Array like `images`; image b is images[b, :, ::-1] or images[b], exactly.
    """
    _check_images(images)
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def pca_color(
    rng: jax.Array, images: jax.Array, stats: DataStats | None, std: float = 0.1
) -> jax.Array:
    """Adds PCA colour noise: one RGB shift per image along the principal axes (§4.1).

    Image b gets eigvecs @ (alpha_b * sqrt(eigvals)) added to every pixel, with three
    alpha_b ~ N(0, std) "drawn once per image each time it is used". The sqrt follows
    Krizhevsky's code rather than the paper's formula (see the module docstring): the shift
    along p_i has standard deviation std * sqrt(l_i), about 12 pixel units along ImageNet's
    first axis.

    Args:
      rng: a JAX PRNG key.
      images: (B, H, W, 3) images in pixel units (usually already mean-subtracted).
      stats: the training-set statistics (pca_eigvals, pca_eigvecs).
      std: standard deviation of alpha (the paper's 0.1).

    Returns:
      float32 array like `images`.
    """
    _check_images(images)
    stats = _require_stats(stats, "pca_color")
    eigvals = jnp.asarray(stats.pca_eigvals, jnp.float32)
    eigvecs = jnp.asarray(stats.pca_eigvecs, jnp.float32)
    alpha = std * jax.random.normal(rng, (images.shape[0], 3), jnp.float32)
    # Row b: sum_i alpha_bi * sqrt(l_i) * p_i, i.e. eigvecs @ (alpha_b * sqrt(l)).
    shift = (alpha * jnp.sqrt(jnp.maximum(eigvals, 0.0))) @ eigvecs.T
    return images.astype(jnp.float32) + shift[:, None, None, :]


def center_crop(images: jax.Array, size: int) -> jax.Array:
    """Takes the central size x size patch (§4.1, single-patch testing).

    When H - size is odd the extra row/column is left at the bottom/right (offset rounds down,
    e.g. 256 -> 227 starts at 14).

    Args:
      images: (B, H, W, C) array.
      size: the patch side (static).

    Returns:
      (B, size, size, C) array.
    """
    _check_images(images, size)
    top = (images.shape[1] - size) // 2
    left = (images.shape[2] - size) // 2
    return images[:, top : top + size, left : left + size]


def ten_crops(images: jax.Array, size: int) -> jax.Array:
    """The ten test patches of §4.1: four corners, centre, then the same five mirrored.

    Order along axis 1: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right, 4 centre,
    5..9 the patches 0..4 each mirrored left-right (patch[:, ::-1]).

    Args:
      images: (B, H, W, C) array.
      size: the patch side (static).

    Returns:
      (B, 10, size, size, C) array.
    """
    _check_images(images, size)
    bottom, right = images.shape[1] - size, images.shape[2] - size
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right)]
    patches = [images[:, y : y + size, x : x + size] for y, x in corners]
    patches.append(center_crop(images, size))
    patches += [p[:, :, ::-1] for p in patches]
    return jnp.stack(patches, axis=1)


# The augmentations that can stop at an epoch (`config.augment.<name>_end_epoch`): the released
# 2012 code switched its colour noise off at epoch 67 of run #145.
END_EPOCH_FIELDS = ("random_crop", "flip", "pca_color")


def check_augment_config(cfg: Any) -> None:
    """Raises one ValueError for the first setting of `config.augment` that cannot be used or
    would be ignored (mean_rgb without mean='fixed', a non-positive std, a bad end epoch)."""
    check_choice("augment.mean", cfg.mean, MEAN_MODES)
    mean_rgb = _rgb(cfg.mean_rgb, "augment.mean_rgb")
    if cfg.mean != "fixed" and mean_rgb != (0.0, 0.0, 0.0):
        raise ValueError(
            f"augment.mean_rgb={mean_rgb} is subtracted only with augment.mean='fixed' (got "
            f"{cfg.mean!r}); set augment.mean='fixed' or leave mean_rgb at (0, 0, 0)."
        )
    if cfg.mean_file and cfg.mean not in MEAN_IMAGE_MODES:
        raise ValueError(
            f"augment.mean_file={cfg.mean_file!r} is used only with augment.mean='image' or "
            f"'channel' (got {cfg.mean!r}); set one of those or leave mean_file empty."
        )
    check_choice("augment.mean_file_layout", cfg.mean_file_layout, MEAN_FILE_LAYOUTS)
    divide_std(jnp.zeros((1, 1, 1, 3)), cfg.std_rgb)
    end_steps(cfg, 1)


def end_steps(cfg: Any, steps_per_epoch: int | None) -> dict[str, int]:
    """{augmentation: first step without it} for the augmentations `cfg` stops at an epoch.

    `<name>_end_epoch` = -1 keeps the augmentation for the whole run; E >= 0 ends it at step
    round(E * steps_per_epoch), the first step of epoch E.

    Raises:
      ValueError: for an end epoch that is not -1 or >= 0, one set on an augmentation that is
        off, or one set without `steps_per_epoch`.
    """
    out = {}
    for name in END_EPOCH_FIELDS:
        end = cfg[f"{name}_end_epoch"]
        if isinstance(end, bool) or not isinstance(end, (int, float)) or (end < 0 and end != -1):
            raise ValueError(
                f"augment.{name}_end_epoch must be -1 (the whole run) or an epoch >= 0, "
                f"got {end!r}."
            )
        if end == -1:
            continue
        if not cfg[name]:
            raise ValueError(
                f"augment.{name}_end_epoch={end} ends an augmentation that is off "
                f"(augment.{name}=False); set augment.{name}=True or the end epoch to -1."
            )
        if steps_per_epoch is None or steps_per_epoch < 1:
            raise ValueError(
                f"augment.{name}_end_epoch={end} needs the run's steps per epoch; pass "
                "steps_per_epoch to the training step."
            )
        out[name] = round(end * steps_per_epoch)
    return out


def train_views(
    rng: jax.Array,
    images_u8: jax.Array,
    stats: DataStats | None,
    cfg: Any,
    size: int,
    *,
    step: jax.Array | int = 0,
    steps_per_epoch: int | None = None,
) -> jax.Array:
    """The training-time pipeline of §2 and §4.1: mean, crop, flip, colour noise.

    Each step is switched by `cfg` so that the paper's ablations are one config change. The
    key is split into the same three per-purpose keys whatever is switched on, so two runs
    that differ in one switch still draw the same crops and flips. An augmentation with an end
    epoch (`end_steps`) is applied while `step` is before it: after it the crop is the centre
    patch, no image is flipped, no colour noise is added.

    Args:
      rng: one JAX PRNG key for this step (e.g. fold_in(base_key, step)).
      images_u8: (B, S, S, 3) uint8 images, S >= size.
      stats: the training-set statistics (may be None if cfg uses neither mean nor PCA).
      cfg: `config.augment` (configs/alexnet.py) or any object with the same attributes; a
        Python value, so close over it (or mark it static) under jit.
      size: the patch side, 224 or 227 (static).
      step: the training step (may be traced); only read by end epochs.
      steps_per_epoch: converts the end epochs to steps; needed only when one is set.

    Returns:
      (B, size, size, 3) float32.
    """
    crop_key, flip_key, color_key = jax.random.split(rng, 3)
    ends = end_steps(cfg, steps_per_epoch)

    def until_end(name, augmented, plain):
        if name not in ends:
            return augmented
        return jnp.where(jnp.asarray(step) < ends[name], augmented, plain)

    # Mean before crop == crop(x - mean) with the same offset for image and mean (§2).
    x = subtract_mean(images_u8, stats, cfg.mean, cfg.mean_rgb)
    if cfg.random_crop:
        x = until_end("random_crop", random_crop(crop_key, x, size), center_crop(x, size))
    else:
        x = center_crop(x, size)
    if cfg.flip:
        x = until_end("flip", random_flip(flip_key, x), x)
    if cfg.pca_color:
        x = until_end("pca_color", pca_color(color_key, x, stats, cfg.pca_std), x)
    return divide_std(x, cfg.std_rgb)


def eval_views(
    images_u8: jax.Array, stats: DataStats | None, cfg: Any, size: int, ten_crop: bool
) -> jax.Array:
    """The test-time views of §4.1: mean-subtracted centre patch or ten patches; no randomness.

    Args:
      images_u8: (B, S, S, 3) uint8 images, S >= size.
      stats: the training-set statistics (may be None if cfg.mean is 'none').
      cfg: the augment config; only cfg.mean, cfg.mean_rgb and cfg.std_rgb are used.
      size: the patch side (static).
      ten_crop: True for the ten patches whose softmax the caller averages, False for the
        centre patch only.

    Returns:
      float32 (B, 10, size, size, 3) if ten_crop else (B, size, size, 3).
    """
    x = divide_std(subtract_mean(images_u8, stats, cfg.mean, cfg.mean_rgb), cfg.std_rgb)
    return ten_crops(x, size) if ten_crop else center_crop(x, size)
