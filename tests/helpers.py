"""Small shared pieces of the tests."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import alexnet as alexnet_config
from configs import default as default_config


def model_config(**overrides):
    """The paper's `config.model` with some fields changed."""
    m = alexnet_config.get_model_config()
    m.update(overrides)
    return m


def trained_run_config(seed: int = 0):
    """configs/default.py for 20 steps, evaluated and checkpointed at step 20: the config of
    conftest's session-wide `trained_run` (seed 0)."""
    config = default_config.get_config()
    config.update_from_flattened_dict(
        {"num_train_steps": 20, "eval_every_steps": 20, "checkpoint_every_steps": 20,
         "log_every_steps": 10, "progress_bar": False, "seed": seed}
    )  # fmt: skip
    return config


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


def torchvision_alexnet_module():
    """torchvision's AlexNet (`features`, `avgpool`, `classifier`), random weights: torchvision's
    own when it is installed, else its definition (torchvision/models/alexnet.py) by hand.
    Needs torch."""
    import torch
    from torch import nn

    try:
        import torchvision

        return torchvision.models.alexnet()
    except ImportError:
        pass

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(True),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(True),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(3, 2),
            )  # fmt: skip
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(True),
                nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(True), nn.Linear(4096, 1000),
            )  # fmt: skip

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return AlexNet()
