"""Small shared pieces of the tests."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import alexnet as alexnet_config


def model_config(**overrides):
    """The paper's `config.model` with some fields changed."""
    m = alexnet_config.get_model_config()
    m.update(overrides)
    return m


def random_stats(seed: int = 0, s: int = 16):
    """Training-set statistics with a random mean image and a random orthonormal RGB basis."""
    from alexnet_jax import augment

    rng = np.random.default_rng(seed)
    eigvecs, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # A random orthonormal basis.
    return augment.DataStats(
        mean_image=rng.uniform(0, 255, (s, s, 3)).astype(np.float32),
        pca_eigvals=np.array([4000.0, 400.0, 40.0], np.float32),
        pca_eigvecs=eigvecs.astype(np.float32),
    )


def mean_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The batch mean of the library's per-example cross-entropy (`metrics.cross_entropy`)."""
    from alexnet_jax import metrics

    return jnp.mean(metrics.cross_entropy(logits, labels))


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def digit_images(batch: int, size: int = 32) -> tuple[jax.Array, jax.Array]:
    """The first `batch` of scikit-learn's bundled 8x8 digits, upscaled to size x size x 3 on the
    0-255 scale with the mean subtracted, and their labels: real images, nothing downloaded."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images[:batch] * (255.0 / 16.0)
    x = np.kron(x, np.ones((size // 8, size // 8)))[..., None].repeat(3, axis=-1)
    return jnp.asarray(x - x.mean(), jnp.float32), jnp.asarray(digits.target[:batch])
