"""The CIFAR-10 nets of the paper (§3.1 Figure 1, §3.3), as cuda-convnet's layer files.

`CIFAR_FIG1` is layers-18pct.cfg, the four-layer net of Figure 1 (ReLU against tanh);
`CIFAR_LRN` is layers-conv-local-11pct.cfg, the net of the §3.3 LRN experiment. Both are one-tower
nets without dropout for 32x32 inputs; `models.create_model` builds them from `config.model`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax

from alexnet_jax.lrn import local_response_norm, within_map_norm

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CifarLayer:
    """One layer of a cuda-convnet CIFAR-10 layer file."""

    name: str
    kind: str  # 'conv', 'local' (locally connected: unshared weights) or 'fc'
    features: int
    init_std: float  # the layer file's initW
    lrn: bool = False
    pool: str = ""  # '' none, 'max' or 'avg' (window 3, stride 2, output size rounded up)
    lrn_before_pool: bool = True


# cuda-convnet's layers-18pct.cfg: three conv layers and fc10, the four-layer net of Figure 1.
CIFAR_FIG1: tuple[CifarLayer, ...] = (
    CifarLayer("conv1", "conv", 32, 1e-4, lrn=True, pool="max", lrn_before_pool=False),
    CifarLayer("conv2", "conv", 32, 1e-2, lrn=True, pool="avg", lrn_before_pool=False),
    CifarLayer("conv3", "conv", 64, 1e-2, pool="avg"),
    CifarLayer("fc10", "fc", 0, 1e-2),
)
# cuda-convnet's layers-conv-local-11pct.cfg: conv-LRN-pool twice, two locally connected layers,
# fc10 (the net of the §3.3 LRN experiment, 13% -> 11% test error with LRN).
CIFAR_LRN: tuple[CifarLayer, ...] = (
    CifarLayer("conv1", "conv", 64, 1e-4, lrn=True, pool="max"),
    CifarLayer("conv2", "conv", 64, 1e-2, lrn=True, pool="max"),
    CifarLayer("local3", "local", 32, 4e-2),
    CifarLayer("local4", "local", 32, 4e-2),
    CifarLayer("fc10", "fc", 0, 1e-2),
)
CIFAR_NETS = {"cifar_fig1": CIFAR_FIG1, "cifar_lrn": CIFAR_LRN}


def _ceil_pool(x: Array, kind: str) -> Array:
    """3x3 stride-2 pooling with cuda-convnet's rounded-up output size (32 -> 16 -> 8 -> 4)."""
    pads = [(0, max(0, (-(-(n - 3) // 2)) * 2 + 3 - n)) for n in x.shape[1:3]]
    if kind == "max":
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)
    return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=pads, count_include_pad=False)


class CifarNet(nn.Module):
    """A cuda-convnet CIFAR-10 net of the paper (§3.1 Figure 1, §3.3), for 32x32 inputs.

    Conv layers are 5x5 stride 1 pad 2, locally connected layers 3x3 stride 1 pad 1, as in the
    layer files; there is no dropout. Weights are N(0, initW) of the layer file ('paper') or
    LeCun-normal ('lecun'); biases are 0.

    Attributes:
      layers: the layer list (`CIFAR_FIG1` or `CIFAR_LRN`).
      num_classes, activation, lrn, lrn_kind, lrn_size, lrn_alpha, lrn_beta, lrn_k,
        weight_init: as in AlexNet; `lrn` switches the normalization of the layer file's
        normalized layers (cuda-convnet's rnorm in layers-18pct: lrn_kind='within_map').
    """

    layers: Sequence[CifarLayer] = CIFAR_FIG1
    num_classes: int = 10
    activation: str = "relu"
    lrn: bool = True
    lrn_kind: str = "cross_map"
    lrn_size: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    weight_init: str = "paper"

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> Array:
        del train  # no dropout in these nets
        act = getattr(jax.nn, self.activation)  # a name `config_checks.check_model` accepted
        bias_init = nn.initializers.zeros
        x = images
        for spec in self.layers:
            # 'lecun' is Flax's lecun_normal. For a locally connected kernel, shaped (out_h,
            # out_w, k*k*in, features), Flax counts the positions into the fan-in: std
            # 1/sqrt(out_h*out_w*k*k*in), not a unit's 1/sqrt(k*k*in). The offline default was
            # tuned with it; the per-unit std (6x larger in cifar_lrn) left 2 of 3 seeds at
            # chance after 3 epochs at lr 0.01 and 0.003.
            kernel_init = (
                nn.initializers.normal(spec.init_std)
                if self.weight_init == "paper"
                else nn.initializers.lecun_normal()
            )
            if spec.kind == "fc":
                x = x.reshape(x.shape[0], -1)
                x = nn.Dense(self.num_classes, kernel_init=kernel_init, name=spec.name)(x)
                break
            # Conv layers are 5x5 pad 2, locally connected ones 3x3 pad 1 (the layer files).
            conv = spec.kind == "conv"
            layer = (nn.Conv if conv else nn.ConvLocal)(
                spec.features,
                (5, 5) if conv else (3, 3),
                padding=2 if conv else 1,
                kernel_init=kernel_init,
                bias_init=bias_init,
                name=spec.name,
            )
            x = layer(x)
            self.sow("intermediates", f"{spec.name}_pre", x)
            x = act(x)
            self.sow("intermediates", f"{spec.name}_act", x)
            if spec.lrn and self.lrn and spec.lrn_before_pool:
                x = self._lrn(x)
            self.sow("intermediates", f"{spec.name}_out", x)
            if spec.pool:
                x = _ceil_pool(x, spec.pool)
                if spec.lrn and self.lrn and not spec.lrn_before_pool:
                    x = self._lrn(x)
                self.sow("intermediates", f"pool{spec.name[-1]}_out", x)
        self.sow("intermediates", "logits", x)
        return x

    def _lrn(self, x: Array) -> Array:
        constants = dict(size=self.lrn_size, alpha=self.lrn_alpha, beta=self.lrn_beta, k=self.lrn_k)
        if self.lrn_kind == "within_map":
            return within_map_norm(x, **constants)
        return local_response_norm(x, **constants)
