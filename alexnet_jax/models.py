"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) in Flax Linen, and `create_model`.

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

The layer table and the sizes it gives live in `alexnet_jax.architecture`, the paper's CIFAR-10
nets in `alexnet_jax.cifar_nets`. `create_model` checks `config.model` once
(`config_checks.check_model`) and builds either network; the modules trust the fields it passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax import ops
from alexnet_jax.architecture import Layer, alexnet_layers, conv1_pads, model_layers, tower_widths
from alexnet_jax.cifar_nets import CIFAR_NETS, CifarNet
from alexnet_jax.config_checks import MODEL_NAMES, check_image_size, check_model
from alexnet_jax.errors import check_choice
from alexnet_jax.lrn import from_convnet_scale, local_response_norm, within_map_norm

Array = jax.Array

# Caffe's bvlc_alexnet (docs/paper.md, Training): bias 0.1 where the paper uses 1, fc6/fc7
# weights std 0.005.
_CAFFE_BIAS = 0.1
_CAFFE_FC_STD = {"fc6": 0.005, "fc7": 0.005}


def resolve_kernels(kernels: str) -> str:
    """'cpu' or 'xla' for `model.kernels`: 'auto' is 'cpu' on JAX's CPU backend, else 'xla'.

    The CPU-tuned ops (alexnet_jax/ops.py) were written and measured against XLA's CPU
    convolutions; on a GPU or TPU, XLA's own convolutions (cuDNN on NVIDIA) and pooling
    gradient are the natural choice.
    """
    if kernels == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    return kernels


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
        # The fields were checked by `create_model`; the input size is known only now.
        check_image_size(images.shape[1], self.pool_window, self.conv1_padding)
        act = getattr(jax.nn, self.activation)
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


def parameter_names(model_config) -> list[str]:
    """'conv1/kernel', 'conv1/bias', ... of the network `model_config` names (not built)."""
    check_choice("model.name", model_config.name, MODEL_NAMES)
    if model_config.name == "alexnet":
        layers = [layer.name for layer in model_layers(model_config) if not layer.removed]
    else:
        layers = [layer.name for layer in CIFAR_NETS[model_config.name]]
    return [f"{layer}/{leaf}" for layer in layers for leaf in ("kernel", "bias")]


def per_term_alpha(alpha: float, size: int, kind: str, convention: str) -> float:
    """The alpha multiplying the plain sum of squares, for `alpha` read in `convention`.

    Args:
      alpha: a configured alpha (`model.lrn_alpha` or `model.within_map_alpha`).
      size: the window's `size`.
      kind: 'cross_map' (size maps) or 'within_map' (a size x size window).
      convention: `model.lrn_alpha_convention`, checked by `config_checks.check_model`:
        'per_term' (returned as it is: the paper's §3.3 formula) or 'divided_by_n'
        (cuda-convnet's, Caffe's and PyTorch's `scale`/`alpha`, divided by the window's size
        terms across maps or size^2 within a map: released layer.py's NormLayerParser).

    Returns:
      The per-term alpha the normalization layers take.
    """
    if convention == "per_term":
        return float(alpha)
    return from_convnet_scale(alpha, size, "cmrnorm" if kind == "cross_map" else "rnorm")


def lrn_alpha(model_config) -> float:
    """The per-term alpha of `model_config`'s LRN (`per_term_alpha` of lrn_alpha)."""
    m = model_config
    return per_term_alpha(m.lrn_alpha, m.lrn_size, m.lrn_kind, m.lrn_alpha_convention)


def trace(config) -> tuple[nn.Module, dict, dict[str, tuple[int, ...]]]:
    """The network of `config.model` traced on one `config.image_size` image by `jax.eval_shape`
    (nothing is computed), so that shapes come from the real model, not a second description.

    Returns:
      (the module, {layer: its parameters' shapes}, {key the network sows: one example's
      shape}), both dicts in the order the network creates them (a traced dict comes back with
      its keys sorted).
    """
    model = create_model(config.model)
    x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    order = {}

    def run(x):
        params = model.init(jax.random.key(0), x)["params"]
        _, state = model.apply({"params": params}, x, train=False, mutable=["intermediates"])
        order["sown"], order["params"] = list(state["intermediates"]), list(params)
        return params, state["intermediates"]

    params, sown = jax.eval_shape(run, x)
    return (
        model,
        {name: params[name] for name in order["params"]},
        {key: tuple(sown[key][0].shape[1:]) for key in order["sown"]},
    )


def create_model(
    model_config, *, tower_axis: str | None = None, data_axis: str | None = None
) -> nn.Module:
    """Builds the network that `config.model` describes, once `config_checks.check_model`
    accepts it (a ValueError naming the first problem otherwise).

    Args:
      model_config: `config.model` (see configs/alexnet.py for every field).
      tower_axis: mesh axis the towers are split over under `jax.shard_map` (AlexNet only).
      data_axis: mesh axis the batch is split over under `jax.shard_map`, if any.

    Returns:
      An `AlexNet` or `CifarNet` module.
    """
    m = model_config
    check_model(m)
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
    if m.name != "alexnet":
        return CifarNet(layers=CIFAR_NETS[m.name], **common)
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
        init_std=tuple((name, float(std)) for name, std in m.init_std),
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
