"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) and the paper's CIFAR-10 nets, in Flax Linen.

AlexNet (§3.5, Figure 2) is written once, as the computation of the towers a device holds:

* every layer is split into `towers` towers ("GPUs", §3.2); each parameter carries a leading
  tower axis, `kernel[t]` being tower t's half of the layer, so that under `jax.shard_map` a
  device holds exactly its towers' parameters;
* activations are kept as the channel-concatenation of the local towers' maps;
* where the paper's GPUs communicated (the inputs of conv3, fc6, fc7 and fc8, and the logits)
  the module calls `_all_towers`, which concatenates the local towers and, when `tower_axis`
  names a mesh axis, all-gathers the other devices' towers. Everywhere else a tower sees only
  its own maps.

With `tower_axis=None` the same code runs both towers side by side on one device;
`alexnet_jax.parallel` runs it under `jax.shard_map` with one tower per device.

Sizes follow docs/paper.md: 224x224 inputs use cuda-convnet2's rounding (output sizes rounded up, so
conv1 sees 3 zero pixels past the bottom and right edges and gives 55x55); 227x227 inputs (Caffe)
need no padding. Both give 55-27-27-13-13-13-13-6 and 9216 inputs to fc6.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax import ops
from alexnet_jax.lrn import from_convnet_scale, local_response_norm, within_map_norm

Array = jax.Array

MODEL_NAMES = ("alexnet", "cifar_fig1", "cifar_lrn")
INITS = ("paper", "caffe", "lecun")
COMPUTE_DTYPES = ("float32", "bfloat16")
# Response normalizations of cuda-convnet: 'cross_map' (its cmrnorm, the paper's LRN of §3.3,
# across channels) and 'within_map' (its rnorm: each map over a size x size spatial window).
LRN_KINDS = ("cross_map", "within_map")
# How lrn_alpha and within_map_alpha are read: 'per_term' multiplies the plain sum of squares (the
# paper's §3.3 formula); 'divided_by_n' is cuda-convnet's (and Caffe's, PyTorch's) `scale`, which
# is divided by the number of terms in the window first: size across maps, size^2 within a map.
ALPHA_CONVENTIONS = ("per_term", "divided_by_n")
DROPOUT_SCALINGS = ("test_time", "inverted")
DROPOUT_PLACES = ("outputs", "inputs")
# The layers the paper normalizes (§3.3), the only ones the normalization switches may name.
NORMALIZED_LAYERS = ("conv1", "conv2")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One AlexNet layer as in the table of §3.5 (docs/paper.md)."""

    name: str
    features: int  # kernels over all towers, the paper's count; 0 for fc8 (= num_classes)
    kernel: int = 0  # spatial size; 0 for fully connected layers
    stride: int = 1
    padding: int = 0
    sees: str = "both"  # 'both': the maps of every tower (conv1: the image); 'own': its tower's
    bias: float = 0.0  # paper initialisation (§5): 1 in conv2, conv4, conv5, fc6, fc7
    lrn: bool = False  # LRN after the activation (§3.3)
    pool: bool = False  # max pooling after (LRN and) the activation (§3.4)
    dropout: bool = False  # dropout on the layer's outputs (§4.2)
    removed: bool = False  # model.remove_conv: not computed; its pooling still is (§7)

    @property
    def is_conv(self) -> bool:
        return self.kernel > 0


ALEXNET_LAYERS: tuple[Layer, ...] = (
    Layer("conv1", 96, 11, 4, 0, "both", 0.0, lrn=True, pool=True),
    Layer("conv2", 256, 5, 1, 2, "own", 1.0, lrn=True, pool=True),
    Layer("conv3", 384, 3, 1, 1, "both", 0.0),
    Layer("conv4", 384, 3, 1, 1, "own", 1.0),
    Layer("conv5", 256, 3, 1, 1, "own", 1.0, pool=True),
    Layer("fc6", 4096, sees="both", bias=1.0, dropout=True),
    Layer("fc7", 4096, sees="both", bias=1.0, dropout=True),
    Layer("fc8", 0, sees="both", bias=0.0),
)

# §7: "removing any of the middle layers results in a loss of about 2% for the top-1".
MIDDLE_CONV_LAYERS = ("conv2", "conv3", "conv4", "conv5")
EXTRA_CONV_SEES = ("own", "both")


def extra_conv_layer(kernels: int, sees: str = "own") -> Layer:
    """Table 2's "extra sixth convolutional layer over the last pooling layer" (1 CNN*): the
    paper gives no size; here 3x3, stride 1, pad 1 (pool5's 6x6 maps stay 6x6, so fc6's
    fan-in does not change), `kernels` over all towers, no LRN, no pooling, bias 0 (§5's rule
    puts 1 only in conv2, conv4, conv5, fc6 and fc7). docs/model.md gives the reasons."""
    return Layer("conv6", kernels, 3, 1, 1, sees, 0.0)


def alexnet_layers(
    remove_conv: Sequence[str] = (), extra_conv: int = 0, extra_conv_sees: str = "own"
) -> tuple[Layer, ...]:
    """The layers of an AlexNet with `model.remove_conv` / `model.extra_conv`: the removed ones
    marked `removed` (their pooling stays), conv6 after conv5 when `extra_conv` > 0."""
    out = []
    for layer in ALEXNET_LAYERS:
        out.append(dataclasses.replace(layer, removed=True) if layer.name in remove_conv else layer)
        if layer.name == "conv5" and extra_conv:
            out.append(extra_conv_layer(extra_conv, extra_conv_sees))
    return tuple(out)


def model_layers(model_config) -> tuple[Layer, ...]:
    """`alexnet_layers` of an AlexNet `config.model` (fields added since read as absent)."""
    m = model_config
    return alexnet_layers(
        tuple(m.get("remove_conv", ())), m.get("extra_conv", 0), m.get("extra_conv_sees", "own")
    )


# Caffe's bvlc_alexnet (docs/paper.md, Training): bias 0.1 where the paper uses 1, fc6/fc7
# weights std 0.005.
_CAFFE_BIAS = 0.1
_CAFFE_FC_STD = {"fc6": 0.005, "fc7": 0.005}


ONE_TOWER_KERNELS = ("half", "full", "owt")
# The one-tower "OWT" AlexNet of Krizhevsky's "One weird trick" (2014), torchvision's alexnet.
OWT_WIDTHS = {
    "conv1": 64, "conv2": 192, "conv3": 384, "conv4": 256, "conv5": 256, "fc6": 4096,
    "fc7": 4096,
}  # fmt: skip


def tower_widths(
    towers: int, num_classes: int, one_tower_kernels: str = "half", extra_conv: int = 0
) -> dict[str, int]:
    """Kernels per tower of every AlexNet layer.

    Args:
      towers: number of towers. 2 is the paper's net. 1 is a one-tower net whose widths
        `one_tower_kernels` chooses.
      num_classes: outputs of fc8. When it is not divisible by `towers`, each tower gets
        ceil(num_classes / towers) outputs and the extra logits are dropped.
      one_tower_kernels: for towers=1 only: 'half' is the paper's one-GPU comparison net (§3.2
        footnote 2: half the kernels of conv1-conv4, conv5 and the fc layers unchanged);
        'full' is the ungrouped net with the two-tower widths (62,378,344 parameters);
        'owt' is torchvision's one-tower net (64-192-384-256-256 kernels, 61,100,840 parameters).
      extra_conv: kernels of the sixth conv layer (`extra_conv_layer`) over all towers, 0 for
        none; split over the towers like conv5 (one tower: all of them).

    Returns:
      Layer name -> kernels (output features) per tower.
    """
    if towers < 1:
        raise ValueError(f"model.towers must be >= 1, got {towers}.")
    if one_tower_kernels not in ONE_TOWER_KERNELS:
        raise ValueError(
            f"model.one_tower_kernels must be one of {ONE_TOWER_KERNELS}, got "
            f"{one_tower_kernels!r}."
        )
    widths = {}
    for layer in ALEXNET_LAYERS:
        total = layer.features or num_classes
        if layer.name == "fc8":
            widths[layer.name] = -(-num_classes // towers)
        elif towers == 1 and one_tower_kernels == "owt":
            widths[layer.name] = OWT_WIDTHS[layer.name]
        elif towers == 1:
            halve = one_tower_kernels == "half" and layer.name in (
                "conv1",
                "conv2",
                "conv3",
                "conv4",
            )
            widths[layer.name] = total // 2 if halve else total
        elif total % towers:
            raise ValueError(
                f"model.towers={towers} does not divide the {total} kernels of {layer.name}; "
                "use a number of towers that divides 96, 256, 384 and 4096 (1, 2, 4, 8, 16, 32)."
            )
        else:
            widths[layer.name] = total // towers
    if extra_conv:
        if isinstance(extra_conv, bool) or not isinstance(extra_conv, int) or extra_conv < 0:
            raise ValueError(
                f"model.extra_conv must be 0 (none) or the kernels of the sixth conv layer, "
                f"e.g. 256, got {extra_conv!r}."
            )
        if extra_conv % towers:
            raise ValueError(
                f"model.extra_conv={extra_conv} kernels cannot be split over model.towers="
                f"{towers}; use a multiple of {towers}."
            )
        widths["conv6"] = extra_conv // towers
    return widths


def conv1_padding(image_size: int) -> int:
    """Zero rows/columns past the bottom-right edge that give conv1 cuda-convnet2's rounded-up size.

    cuda-convnet2 computes a conv layer's output size as ceil((in - kernel) / stride) + 1 and reads
    zeros past the edge; for 224 inputs that is 55 outputs (VALID would give 54) and 3 pixels of
    padding, for 227 inputs (Caffe) 55 outputs and no padding.
    """
    out = -(-(image_size - 11) // 4) + 1
    return (out - 1) * 4 + 11 - image_size


def conv1_pads(image_size: int, padding: int = -1) -> tuple[int, int]:
    """(before, after) zero rows/columns of conv1's input: `padding` = -1 is cuda-convnet2's
    rounding (none before, `conv1_padding(image_size)` after), N >= 0 is N on every side
    (torchvision's AlexNet: 2)."""
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < -1:
        raise ValueError(
            f"model.conv1_padding must be -1 (cuda-convnet2's rounding, the paper's 55x55 from "
            f"224) or a number of zeros >= 0 on every side (torchvision: 2), got {padding!r}."
        )
    if padding == -1:
        return 0, conv1_padding(image_size)
    return padding, padding


def spatial_sizes(image_size: int, pool_window: int = 3, padding: int = -1) -> dict[str, int]:
    """Height (= width) of each AlexNet stage's output for a square input; `padding` as in
    `conv1_pads` (the default is the paper's rounding)."""
    if image_size < 11:
        raise ValueError(f"image_size={image_size} is smaller than conv1's 11x11 kernel.")
    before, after = conv1_pads(image_size, padding)
    sizes = {"conv1": (image_size + before + after - 11) // 4 + 1}

    def pool(n: int) -> int:
        return (n - pool_window) // 2 + 1

    sizes["pool1"] = pool(sizes["conv1"])
    sizes["conv2"] = sizes["pool1"]
    sizes["pool2"] = pool(sizes["conv2"])
    sizes["conv3"] = sizes["conv4"] = sizes["conv5"] = sizes["pool2"]
    sizes["pool5"] = pool(sizes["conv5"])
    return sizes


def check_image_size(image_size: int, pool_window: int = 3, padding: int = -1) -> None:
    """Raises ValueError unless `image_size` reaches the 6x6 maps fc6 reads (§3.5)."""
    if pool_window not in (2, 3):
        raise ValueError(
            f"model.pool_window must be 3 (overlapping, the paper) or 2 (non-overlapping), "
            f"got {pool_window}."
        )
    conv1_pads(image_size, padding)
    ok = [s for s in range(63, 400) if spatial_sizes(s, pool_window, padding)["pool5"] == 6]
    if image_size < 11 or spatial_sizes(image_size, pool_window, padding)["pool5"] != 6:
        raise ValueError(
            f"image_size={image_size} does not give the 6x6 maps fc6 expects; with "
            f"pool_window={pool_window} and conv1_padding={padding} AlexNet takes image sizes "
            f"{ok[0]}-{ok[-1]} (the paper: 224, Caffe: 227)."
        )


def _activation(name: str) -> Callable[[Array], Array]:
    fn = getattr(jax.nn, name, None)
    if not callable(fn) or name.startswith("_"):
        raise ValueError(
            f"model.activation={name!r} is not a jax.nn activation; use 'relu' (the paper), "
            "'tanh' (Figure 1) or another jax.nn function name such as 'gelu'."
        )
    return fn


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"model.init must be one of {INITS}, got {init!r}.")


KERNELS = ("auto", "cpu", "xla")


def resolve_kernels(kernels: str) -> str:
    """'cpu' or 'xla' for `model.kernels`: 'auto' is 'cpu' on JAX's CPU backend, else 'xla'.

    The CPU-tuned ops (alexnet_jax/ops.py) were written and measured against XLA's CPU
    convolutions; on a GPU or TPU, XLA's own convolutions (cuDNN on NVIDIA) and pooling
    gradient are the natural choice.
    """
    if kernels not in KERNELS:
        raise ValueError(
            f"model.kernels={kernels!r} is not one of {KERNELS}: 'auto' chooses by backend, "
            "'cpu' the CPU-tuned ops, 'xla' XLA's own convolutions and pooling."
        )
    if kernels == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    return kernels


def _check_compute_dtype(dtype: str) -> None:
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"model.compute_dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}; 'float32' is "
            "the paper's arithmetic, 'bfloat16' multiplies in bfloat16 with float32 sums."
        )


class AlexNet(nn.Module):
    """The paper's network (§3.5), split into towers (§3.2). See the module docstring.

    Attributes:
      num_classes: outputs (1000 for ImageNet).
      towers: 2 (the paper) or 1 (the one-GPU comparison net; see `tower_widths`).
      one_tower_kernels: 'half' (paper, §3.2 footnote 2) or 'full' (ungrouped) when towers=1.
      activation: name of a `jax.nn` function applied after every conv and fc6/fc7 (§3.1).
      lrn: local response normalization after conv1 and conv2 (§3.3), within each tower.
      lrn_kind: 'cross_map' (the paper's, across the channels of a tower) or 'within_map'
        (cuda-convnet's rnorm: each map over an lrn_size x lrn_size spatial window).
      lrn_size, lrn_alpha, lrn_beta, lrn_k: its constants n, alpha, beta, k (paper: 5, 1e-4,
        0.75, 2; alpha multiplies the plain sum of squares, see `alexnet_jax.lrn`; `create_model`
        converts other conventions with `per_term_alpha`).
      lrn_before_relu: the layers (of conv1, conv2) whose normalizations run on the
        pre-activation outputs, the activation coming after them: the released 2012 code's
        conv1 (layers-145.cfg: rnorm1 reads conv1, which has no neuron; pool1 applies the ReLU).
      within_map_after: the layers (of conv1, conv2) whose cross-map LRN is followed by a
        within-map normalization (cuda-convnet's rnorm; the released code's cnorm2 after conv2),
        with the constants within_map_size, within_map_alpha (per term), within_map_beta,
        within_map_k. `lrn=False` removes it too, as the released no-normalization run #148 did.
      lrn_across_towers: the cross-map window runs over every tower's maps (Caffe's
        bvlc_alexnet, whose groups share one LRN layer) instead of each tower's own (§3.2).
      dropout_on: 'outputs' of fc6 and fc7 (§4.2) or their 'inputs' (pool5's and fc6's
        outputs, torchvision's placement; one tower only).
      conv1_padding: -1 (cuda-convnet2's rounding) or zeros on every side (`conv1_pads`).
      init_std: (layer, std) pairs replacing the weight std of `weight_init` for those layers
        (the released code's initW: 0.03 for conv3-conv5).
      pool_window: 3 (overlapping pooling, §3.4) or 2; the stride is 2 either way.
      remove_conv: middle conv layers (of conv2-conv5) left out (§7). The next layer reads the
        removed layer's input with its own kernel count (its fan-in follows) and its own tower
        connectivity; the removed layer's LRN goes with it, its pooling stays where it was.
      extra_conv: kernels of Table 2's sixth conv layer over pool5 (`extra_conv_layer`), 0 for
        none; extra_conv_sees: 'own' (each tower its own maps, like conv4 and conv5) or 'both'.
      dropout_rate: dropout on the outputs of fc6 and fc7 in training (§4.2).
      dropout_scaling: 'test_time' (§4.2: outputs multiplied by 1 - rate at test time) or
        'inverted' (kept units divided by 1 - rate in training); see `_dropout`.
      weight_init: `config.model.init`: 'paper' (N(0, 0.01) weights, bias 1 in conv2/4/5 and
        fc6/7, §5), 'caffe' (bias 0.1 there, fc6/fc7 std 0.005) or 'lecun' (LeCun-normal
        weights, zero biases).
      grouped_conv: how a device computes the own-tower convolutions (conv2, conv4, conv5) of
        the several towers it holds: one grouped convolution (`feature_group_count`) or one
        ordinary convolution per tower. Same numbers; only speed differs.
      kernels: which implementation of the convolutions and pooling runs (`resolve_kernels`):
        'cpu' (conv1 as space-to-depth + one matmul, `ops.conv2d` with its kernel gradient as a
        matmul, `ops.max_pool` with its closed-form gradient), 'xla' (`lax.conv_general_dilated`
        and `lax.reduce_window` with XLA's own gradients, what cuDNN backs on a GPU) or 'auto'
        ('cpu' when JAX's default backend is the CPU, else 'xla'). Same numbers to float
        rounding (tests/test_models.py); only speed differs.
      compute_dtype: 'float32' (default, the paper's arithmetic) or 'bfloat16': the inputs of
        every convolution and matmul are rounded to bfloat16 and multiplied with float32
        accumulation; parameters, activations between layers, LRN, the loss and the optimizer
        stay float32. Faster where the hardware has bfloat16 units (avx512_bf16, GPUs).
      tower_axis: mesh axis the towers are split over under `jax.shard_map`, None on one device.
      data_axis: mesh axis the batch is split over under `jax.shard_map`, if any. Dropout masks
        are drawn for the global batch and sliced, so they do not depend on the mesh.
    """

    num_classes: int = 1000
    towers: int = 2
    one_tower_kernels: str = "half"
    activation: str = "relu"
    lrn: bool = True
    lrn_kind: str = "cross_map"
    lrn_size: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    lrn_before_relu: tuple[str, ...] = ()
    lrn_across_towers: bool = False
    within_map_after: tuple[str, ...] = ()
    within_map_size: int = 5
    within_map_alpha: float = 4e-5
    within_map_beta: float = 0.75
    within_map_k: float = 1.0
    init_std: tuple[tuple[str, float], ...] = ()
    pool_window: int = 3
    remove_conv: tuple[str, ...] = ()
    extra_conv: int = 0
    extra_conv_sees: str = "own"
    dropout_rate: float = 0.5
    dropout_scaling: str = "test_time"
    dropout_on: str = "outputs"
    conv1_padding: int = -1
    weight_init: str = "paper"
    grouped_conv: bool = False
    kernels: str = "auto"
    compute_dtype: str = "float32"
    tower_axis: str | None = None
    data_axis: str | None = None

    def _local_towers(self) -> tuple[int, Array | int]:
        """(towers held by this device, index of its first tower)."""
        if self.tower_axis is None:
            return self.towers, 0
        devices = jax.lax.axis_size(self.tower_axis)
        if self.towers % devices:
            raise ValueError(
                f"{self.towers} towers cannot be split over a '{self.tower_axis}' mesh axis "
                f"of {devices} devices."
            )
        local = self.towers // devices
        return local, jax.lax.axis_index(self.tower_axis) * local

    def _all_towers(self, x: Array) -> Array:
        """The maps of every tower, channel-concatenated: where the paper's GPUs talked (§3.2)."""
        if self.tower_axis is None:
            return x
        return jax.lax.all_gather(x, self.tower_axis, axis=x.ndim - 1, tiled=True)

    def _dropout(self, x: Array, local: int, tower0: Array | int, train: bool) -> Array:
        """Dropout whose mask is drawn for the global batch and all towers, then sliced.

        'test_time' scaling (§4.2, the 2012 code's `hs` layer): kept units pass unchanged in
        training and every output is multiplied by 1 - rate at test time; 'inverted': kept
        units are divided by 1 - rate in training and nothing is scaled at test time. The two
        have the same expected outputs but not the same training: the layer after sees inputs
        1 / (1 - rate) times larger under 'inverted', against the same initialisation, rate and
        weight decay.
        """
        _check_dropout_scaling(self.dropout_scaling)
        if self.dropout_rate == 0.0:
            return x
        if not train:
            return x * (1.0 - self.dropout_rate) if self.dropout_scaling == "test_time" else x
        batch, units = x.shape
        rows, row0 = batch, 0
        if self.data_axis is not None:
            rows = batch * jax.lax.axis_size(self.data_axis)
            row0 = jax.lax.axis_index(self.data_axis) * batch
        per_tower = units // local
        keep = jax.random.bernoulli(
            self.make_rng("dropout"), 1.0 - self.dropout_rate, (rows, per_tower * self.towers)
        )
        keep = jax.lax.dynamic_slice(keep, (row0, tower0 * per_tower), (batch, units))
        kept = x if self.dropout_scaling == "test_time" else x / (1.0 - self.dropout_rate)
        return jnp.where(keep, kept, 0.0)

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> Array:
        """Logits for a batch of images.

        Args:
          images: (batch, H, W, 3), mean-subtracted, H = W in the range `check_image_size`
            accepts (224 or 227 for the paper). Under `jax.shard_map`, this device's batch shard.
          train: enables dropout (needs a 'dropout' RNG).

        Returns:
          (batch, num_classes) logits. Under `jax.shard_map` over `tower_axis`, the fc8 outputs
          of this device's towers, (batch, local towers x ceil(num_classes / towers)), which
          `parallel.sharded_apply` assembles: the logits are the last crossing point.
        """
        _check_init(self.weight_init)
        _check_compute_dtype(self.compute_dtype)
        check_image_size(images.shape[1], self.pool_window, self.conv1_padding)
        act = _activation(self.activation)
        widths = tower_widths(
            self.towers, self.num_classes, self.one_tower_kernels, self.extra_conv
        )
        local, tower0 = self._local_towers()
        kernels = resolve_kernels(self.kernels)
        init_std = dict(self.init_std)

        before, after = conv1_pads(images.shape[1], self.conv1_padding)
        pads = ((0, 0), (before, after), (before, after), (0, 0))
        x = jnp.pad(images, pads) if before or after else images
        for layer in alexnet_layers(self.remove_conv, self.extra_conv, self.extra_conv_sees):
            if layer.removed:  # §7: the next layer reads this one's input; its pooling stays
                if layer.pool:
                    x = _max_pool(x, self.pool_window, kernels)
                    self.sow("intermediates", f"pool{layer.name[-1]}_out", x)
                continue
            width = widths[layer.name]
            if layer.sees == "both" and layer.name != "conv1":
                x = self._all_towers(x)
            if not layer.is_conv:
                x = x.reshape(x.shape[0], -1)
                if layer.dropout and self.dropout_on == "inputs":  # torchvision's placement
                    x = self._dropout(x, local, tower0, train)
                    self.sow("intermediates", f"{layer.name}_in", x)
            x = _TowerLayer(
                layer,
                width,
                local,
                self.weight_init,
                self.grouped_conv,
                kernels,
                self.compute_dtype,
                init_std.get(layer.name),
                name=layer.name,
            )(x)
            if layer.name == "fc8":
                break
            # Features (alexnet_jax.features): the layer's output before and after its
            # activation, before any normalization, pooling or dropout that follows.
            self.sow("intermediates", f"{layer.name}_pre", x)
            # The table says where the paper normalizes; the module fields switch it (§3.3).
            normalize = layer.lrn and self.lrn
            before = normalize and layer.name in self.lrn_before_relu
            if before:
                x = self._normalizations(x, layer.name, local, tower0)
            x = act(x)
            self.sow("intermediates", f"{layer.name}_act", x)
            if normalize and not before:
                x = self._normalizations(x, layer.name, local, tower0)
            if layer.dropout and self.dropout_on == "outputs":
                x = self._dropout(x, local, tower0, train)
            self.sow("intermediates", f"{layer.name}_out", x)
            if layer.pool:
                x = _max_pool(x, self.pool_window, kernels)
                self.sow("intermediates", f"pool{layer.name[-1]}_out", x)
        if self.tower_axis is not None:
            # This device's towers' share of fc8; `parallel.sharded_apply` assembles the logits.
            return x
        logits = x[:, : self.num_classes]
        self.sow("intermediates", "logits", logits)
        return logits

    def _normalizations(self, x: Array, name: str, local: int, tower0: Array | int) -> Array:
        """The LRN of layer `name` (§3.3) and, if `within_map_after` names it, the within-map
        normalization after it; each is sown for the summary's table."""
        constants = dict(size=self.lrn_size, alpha=self.lrn_alpha, beta=self.lrn_beta, k=self.lrn_k)
        if self.lrn_across_towers and self.lrn_kind == "cross_map":
            # Caffe's LRN: one window over every tower's maps (its groups share the layer).
            per = x.shape[-1] // local
            everything = local_response_norm(self._all_towers(x), **constants)
            if self.tower_axis is None:
                x = everything
            else:
                x = jax.lax.dynamic_slice_in_dim(everything, tower0 * per, local * per, axis=-1)
        else:
            x = tower_norm(x, local, self.lrn_kind, **constants)
        self.sow("intermediates", f"lrn{name[-1]}_out", x)
        if name in self.within_map_after:
            x = within_map_norm(
                x, size=self.within_map_size, alpha=self.within_map_alpha,
                beta=self.within_map_beta, k=self.within_map_k,
            )  # fmt: skip
            self.sow("intermediates", f"wnorm{name[-1]}_out", x)
        return x


def tower_norm(
    x: Array, towers: int, kind: str, *, size: int, alpha: float, beta: float, k: float
) -> Array:
    """The response normalization of §3.3 on the channel-concatenated maps of `towers` towers.

    'cross_map': LRN across the maps of each tower separately (each GPU normalized its own
    maps); 'within_map': cuda-convnet's rnorm, which never mixes maps.
    """
    constants = dict(size=size, alpha=alpha, beta=beta, k=k)
    if kind == "within_map":
        return within_map_norm(x, **constants)
    towers_x = x.reshape(*x.shape[:-1], towers, x.shape[-1] // towers)
    return local_response_norm(towers_x, **constants).reshape(x.shape)


class _TowerLayer(nn.Module):
    """One AlexNet layer for the towers a device holds; input and output channel-concatenated."""

    layer: Layer
    width: int  # kernels per tower
    local: int  # towers held by this device
    weight_init: str
    grouped_conv: bool
    kernels: str  # 'cpu' or 'xla' (resolved)
    compute_dtype: str
    init_std: float | None = None  # replaces the weight std of `weight_init` (model.init_std)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        layer, local = self.layer, self.local
        own = layer.sees == "own"
        fan_in = x.shape[-1] // local if own else x.shape[-1]
        if layer.is_conv:
            shape = (local, layer.kernel, layer.kernel, fan_in, self.width)
        else:
            shape = (local, fan_in, self.width)
        kernel_init, bias_value = _initializers(self.weight_init, layer, math.prod(shape[1:-1]))
        if self.init_std is not None:
            kernel_init = nn.initializers.normal(self.init_std)
        kernel = self.param("kernel", kernel_init, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.constant(bias_value), (local, self.width))
        bias = bias.reshape(-1)  # (local * width,), tower-major like the outputs
        if self.compute_dtype != "float32":
            # Products in bfloat16, sums in float32 (preferred_element_type below).
            x, kernel = x.astype(self.compute_dtype), kernel.astype(self.compute_dtype)
        if not layer.is_conv:
            # Every tower reads the same input: one matmul against the towers' kernels side by side.
            stacked = jnp.moveaxis(kernel, 0, 1).reshape(fan_in, -1)
            return jnp.matmul(x, stacked, preferred_element_type=ops.accumulation_dtype(x)) + bias
        conv = _conv(layer, self.kernels)
        if not own:
            # conv1 and conv3 read every tower's maps: one convolution with the kernels stacked.
            stacked = jnp.moveaxis(kernel, 0, 3).reshape(*kernel.shape[1:4], -1)
            if layer.stride > 1 and layer.padding == 0 and self.kernels == "cpu":
                return ops.strided_conv(x, stacked, layer.stride) + bias
            return conv(x, stacked) + bias
        if local == 1:
            return conv(x, kernel[0]) + bias
        if self.grouped_conv:
            grouped = jnp.moveaxis(kernel, 0, 3).reshape(*kernel.shape[1:4], -1)
            return conv(x, grouped, feature_group_count=local) + bias
        parts = jnp.split(x, local, axis=-1)
        return jnp.concatenate([conv(p, k) for p, k in zip(parts, kernel)], axis=-1) + bias


def _initializers(init: str, layer: Layer, receptive_field: int) -> tuple[Callable, float]:
    """(kernel initializer, bias value) of one layer (§5; docs/paper.md for Caffe's variant)."""
    if init == "lecun":
        return nn.initializers.normal(1.0 / math.sqrt(receptive_field)), 0.0
    if init == "caffe":
        return nn.initializers.normal(_CAFFE_FC_STD.get(layer.name, 0.01)), (
            _CAFFE_BIAS if layer.bias else 0.0
        )
    return nn.initializers.normal(0.01), layer.bias


def _conv(layer: Layer, kernels: str) -> Callable[..., Array]:
    def conv(x: Array, kernel: Array, feature_group_count: int = 1) -> Array:
        if kernels == "cpu" and layer.stride == 1 and feature_group_count == 1:
            return ops.conv2d(x, kernel, layer.padding)
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(layer.stride, layer.stride),
            padding=[(layer.padding, layer.padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=feature_group_count,
            preferred_element_type=ops.accumulation_dtype(x),
        )

    return conv


def _max_pool(x: Array, window: int, kernels: str) -> Array:
    """Max pooling of stride 2: `ops.max_pool` ('cpu') or XLA's `reduce_window` ('xla')."""
    if kernels == "cpu":
        return ops.max_pool(x, window, 2)
    return nn.max_pool(x, (window, window), strides=(2, 2), padding="VALID")


# --- The CIFAR-10 nets of §3.1 (Figure 1) and §3.3 ---------------------------------------------


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
        _check_cifar_init(self.weight_init)
        act = _activation(self.activation)
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


def _check_cifar_init(init: str) -> None:
    if init not in ("paper", "lecun"):
        raise ValueError(f"model.init for the CIFAR nets is 'paper' or 'lecun', got {init!r}.")


# AlexNet's fields that the CIFAR nets do not have, with the value that means "not used": any
# other value is refused rather than silently ignored.
ALEXNET_ONLY = {
    "lrn_before_relu": (),
    "within_map_after": (),
    "within_map_size": 5,
    "within_map_alpha": 4e-5,
    "within_map_beta": 0.75,
    "within_map_k": 1.0,
    "init_std": (),
    "dropout_scaling": "test_time",
    "dropout_on": "outputs",
    "conv1_padding": -1,
    "lrn_across_towers": False,
    "one_tower_kernels": "half",
    "pool_window": 3,
    "grouped_conv": False,
    "kernels": "auto",
    "compute_dtype": "float32",
    "remove_conv": (),
    "extra_conv": 0,
    "extra_conv_sees": "own",
}


def _check_dropout_scaling(scaling: str) -> None:
    if scaling not in DROPOUT_SCALINGS:
        raise ValueError(
            f"model.dropout_scaling must be one of {DROPOUT_SCALINGS}, got {scaling!r}: "
            "'test_time' is the paper's (§4.2), 'inverted' the usual modern form."
        )


def _check_lrn_kind(kind: str) -> None:
    if kind not in LRN_KINDS:
        raise ValueError(
            f"model.lrn_kind must be one of {LRN_KINDS}, got {kind!r}: 'cross_map' is the "
            "paper's LRN (§3.3), 'within_map' cuda-convnet's rnorm (spatial, each map alone)."
        )


def parameter_names(model_config) -> list[str]:
    """'conv1/kernel', 'conv1/bias', ... of the network `model_config` names (not built)."""
    if model_config.name == "alexnet":
        layers = [layer.name for layer in model_layers(model_config) if not layer.removed]
    elif model_config.name in CIFAR_NETS:
        layers = [layer.name for layer in CIFAR_NETS[model_config.name]]
    else:
        raise ValueError(f"model.name must be one of {MODEL_NAMES}, got {model_config.name!r}.")
    return [f"{layer}/{leaf}" for layer in layers for leaf in ("kernel", "bias")]


def per_term_alpha(alpha: float, size: int, kind: str, convention: str) -> float:
    """The alpha multiplying the plain sum of squares, for `alpha` read in `convention`.

    Args:
      alpha: a configured alpha (`model.lrn_alpha` or `model.within_map_alpha`).
      size: the window's `size`.
      kind: 'cross_map' (size maps) or 'within_map' (a size x size window).
      convention: 'per_term' (returned as it is: the paper's §3.3 formula) or 'divided_by_n'
        (cuda-convnet's, Caffe's and PyTorch's `scale`/`alpha`, divided by the window's size
        terms across maps or size^2 within a map: released layer.py's NormLayerParser).

    Returns:
      The per-term alpha the normalization layers take.
    """
    if convention not in ALPHA_CONVENTIONS:
        raise ValueError(
            f"model.lrn_alpha_convention must be one of {ALPHA_CONVENTIONS}, got "
            f"{convention!r}: 'per_term' is the paper's alpha (§3.3), 'divided_by_n' "
            "cuda-convnet's / Caffe's / PyTorch's, divided by the window's size first."
        )
    if convention == "per_term":
        return float(alpha)
    return from_convnet_scale(alpha, size, "cmrnorm" if kind == "cross_map" else "rnorm")


def lrn_alpha(model_config) -> float:
    """The per-term alpha of `model_config`'s LRN (`per_term_alpha` of lrn_alpha)."""
    m = model_config
    return per_term_alpha(m.lrn_alpha, m.lrn_size, m.lrn_kind, m.lrn_alpha_convention)


def _check_layer_names(field: str, names, allowed: Sequence[str]) -> None:
    """Raises unless `names` is a tuple/list of distinct names from `allowed`."""
    if isinstance(names, str) or not isinstance(names, (tuple, list)):
        raise ValueError(
            f"model.{field} must be a tuple of layer names from {tuple(allowed)}, got "
            f"{names!r}; e.g. ('conv1',)."
        )
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(
            f"model.{field} names {bad}, not among {tuple(allowed)}: the layers the paper "
            "normalizes (§3.3)."
            if allowed == NORMALIZED_LAYERS
            else f"model.{field} names {bad}, not layers of AlexNet {tuple(allowed)}."
        )


def _check_architecture(m) -> None:
    """model.remove_conv and model.extra_conv(_sees), and the switches that name a layer
    they remove."""
    remove = m.remove_conv
    if isinstance(remove, str) or not isinstance(remove, (tuple, list)):
        raise ValueError(
            f"model.remove_conv must be a tuple of layers among {MIDDLE_CONV_LAYERS}, got "
            f"{remove!r}; e.g. ('conv3',)."
        )
    for name in remove:
        if name in MIDDLE_CONV_LAYERS:
            continue
        if name in ("conv1", "fc6", "fc7", "fc8", "conv6"):
            raise ValueError(
                f"model.remove_conv names {name!r}, which is not a middle conv layer: §7 removes "
                f"one of {MIDDLE_CONV_LAYERS} (conv1 reads the image, the fully connected layers "
                "are not convolutional); choose among those."
            )
        raise ValueError(
            f"model.remove_conv names {name!r}, not a layer of AlexNet; choose among "
            f"{MIDDLE_CONV_LAYERS}."
        )
    if len(set(remove)) != len(remove):
        raise ValueError(f"model.remove_conv names a layer twice: {tuple(remove)}.")
    extra = m.extra_conv
    if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
        raise ValueError(
            f"model.extra_conv must be 0 (none) or the kernels of the sixth conv layer over pool5 "
            f"(Table 2's 1 CNN*; e.g. 256), got {extra!r}."
        )
    if m.extra_conv_sees not in EXTRA_CONV_SEES:
        raise ValueError(
            f"model.extra_conv_sees must be one of {EXTRA_CONV_SEES}, got {m.extra_conv_sees!r}: "
            "'own' (each tower its own maps, like conv4 and conv5) or 'both' (like conv3)."
        )
    if m.extra_conv_sees != "own" and not extra:
        raise ValueError(
            f"model.extra_conv_sees={m.extra_conv_sees!r} sets the sixth conv layer's input, but "
            "model.extra_conv=0 (no sixth layer): set model.extra_conv (e.g. 256) or leave "
            "extra_conv_sees='own'."
        )
    for field in ("lrn_before_relu", "within_map_after"):
        gone = [n for n in m[field] if n in remove]
        if gone:
            raise ValueError(
                f"model.{field} names {gone}, which model.remove_conv removes; drop "
                f"{gone} from model.{field}."
            )


def _check_init_std(init_std, layers: Sequence[str] | None = None) -> dict[str, float]:
    """model.init_std as {layer: std}, or a ValueError naming what is wrong; `layers`: the
    network's layers (default: the paper's eight)."""
    layers = tuple(layers or (layer.name for layer in ALEXNET_LAYERS))
    example = "(('conv3', 0.03), ('conv4', 0.03))"
    if isinstance(init_std, str) or not isinstance(init_std, (tuple, list)):
        raise ValueError(f"model.init_std must be (layer, std) pairs, e.g. {example}.")
    out = {}
    for pair in init_std:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(
                f"model.init_std entry {pair!r} is not a (layer, std) pair: {example}."
            )
        name, std = pair
        if name not in layers:
            raise ValueError(f"model.init_std names {name!r}, not a layer of AlexNet {layers}.")
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
            raise ValueError(f"model.init_std for {name} must be a positive std, got {std!r}.")
        if name in out:
            raise ValueError(f"model.init_std names {name!r} twice.")
        out[name] = float(std)
    return out


def create_model(
    model_config, *, tower_axis: str | None = None, data_axis: str | None = None
) -> nn.Module:
    """Builds the network that `config.model` describes.

    Args:
      model_config: `config.model` (see configs/alexnet.py for every field).
      tower_axis: mesh axis the towers are split over under `jax.shard_map` (AlexNet only).
      data_axis: mesh axis the batch is split over under `jax.shard_map`, if any.

    Returns:
      An `AlexNet` or `CifarNet` module.
    """
    m = model_config
    name = m.name
    _activation(m.activation)
    _check_init(m.init)
    _check_lrn_kind(m.lrn_kind)
    common = dict(
        num_classes=m.num_classes,
        activation=m.activation,
        lrn=m.lrn,
        lrn_kind=m.lrn_kind,
        lrn_size=m.lrn_size,
        lrn_alpha=lrn_alpha(m),
        lrn_beta=m.lrn_beta,
        lrn_k=m.lrn_k,
        weight_init=m.init,
    )
    if name == "alexnet":
        resolve_kernels(m.kernels)
        tower_widths(m.towers, m.num_classes, m.one_tower_kernels)
        if m.towers != 1 and m.one_tower_kernels != "half":
            raise ValueError(
                f"model.one_tower_kernels={m.one_tower_kernels!r} chooses the widths of the "
                f"one-tower net; with model.towers={m.towers} it would be ignored. Set "
                "model.towers=1 for the ungrouped net, or leave one_tower_kernels='half'."
            )
        _check_layer_names("lrn_before_relu", m.lrn_before_relu, NORMALIZED_LAYERS)
        _check_layer_names("within_map_after", m.within_map_after, NORMALIZED_LAYERS)
        _check_architecture(m)
        tower_widths(m.towers, m.num_classes, m.one_tower_kernels, m.extra_conv)
        if m.extra_conv_sees == "both" and m.towers == 1:
            raise ValueError(
                "model.extra_conv_sees='both' reads every tower's maps, but model.towers=1: one "
                "tower's maps are all of them, so 'both' would change nothing; leave 'own'."
            )
        present = [layer.name for layer in model_layers(m) if not layer.removed]
        init_std = _check_init_std(m.init_std, present)
        _check_dropout_scaling(m.dropout_scaling)
        size = m.within_map_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(
                f"model.within_map_size must be a positive integer, got {m.within_map_size!r}."
            )
        if m.dropout_on not in DROPOUT_PLACES:
            raise ValueError(
                f"model.dropout_on must be one of {DROPOUT_PLACES}, got {m.dropout_on!r}: "
                "'outputs' of fc6 and fc7 (§4.2) or their 'inputs' (torchvision)."
            )
        if m.dropout_on == "inputs" and m.towers != 1:
            raise ValueError(
                f"model.dropout_on='inputs' (torchvision's placement) needs model.towers=1, got "
                f"{m.towers}; the two-tower net drops the outputs of fc6 and fc7 (§4.2)."
            )
        conv1_pads(224, m.conv1_padding)
        if not isinstance(m.lrn_across_towers, bool):
            raise ValueError(
                f"model.lrn_across_towers must be True or False, got {m.lrn_across_towers!r}."
            )
        return AlexNet(
            lrn_across_towers=m.lrn_across_towers,
            dropout_on=m.dropout_on,
            conv1_padding=m.conv1_padding,
            lrn_before_relu=tuple(m.lrn_before_relu),
            within_map_after=tuple(m.within_map_after),
            within_map_size=m.within_map_size,
            within_map_alpha=per_term_alpha(
                m.within_map_alpha, m.within_map_size, "within_map", m.lrn_alpha_convention
            ),
            within_map_beta=m.within_map_beta,
            within_map_k=m.within_map_k,
            init_std=tuple(init_std.items()),
            towers=m.towers,
            one_tower_kernels=m.one_tower_kernels,
            pool_window=m.pool_window,
            remove_conv=tuple(m.remove_conv),
            extra_conv=m.extra_conv,
            extra_conv_sees=m.extra_conv_sees,
            dropout_rate=m.dropout_rate,
            dropout_scaling=m.dropout_scaling,
            grouped_conv=m.grouped_conv,
            kernels=m.kernels,
            compute_dtype=m.compute_dtype,
            tower_axis=tower_axis,
            data_axis=data_axis,
            **common,
        )
    if name in CIFAR_NETS:
        _check_cifar_init(m.init)
        for field, unused in ALEXNET_ONLY.items():
            if (tuple(m[field]) if isinstance(m[field], list) else m[field]) != unused:
                raise ValueError(
                    f"model.{field}={m[field]!r} is an AlexNet switch; the {name!r} net (a "
                    f"cuda-convnet layer file) does not have it. Set model.{field}={unused!r}."
                )
        if m.towers != 1 or m.dropout_rate:
            raise ValueError(
                f"model.name={name!r} is a one-tower net without dropout (cuda-convnet's layer "
                f"file); set model.towers=1 and model.dropout_rate=0.0 (got {m.towers}, "
                f"{m.dropout_rate})."
            )
        return CifarNet(layers=CIFAR_NETS[name], **common)
    raise ValueError(f"model.name must be one of {MODEL_NAMES}, got {name!r}.")
