"""The AlexNet layer table and its size rules (Krizhevsky, Sutskever, Hinton, NIPS 2012, §3.5).

The table of §3.5 (Figure 2) as data: each layer's kernels over all towers, kernel size, stride,
padding, which towers' maps it reads (§3.2), and where the paper normalizes (§3.3), pools (§3.4)
and drops out (§4.2); the switches that change the layer list (`model.remove_conv`, §7;
`model.extra_conv`, Table 2); the kernels each tower holds (`tower_widths`); and the spatial
sizes a square input gives.

Sizes follow docs/paper.md: 224x224 inputs use cuda-convnet2's rounding (output sizes rounded up,
so conv1 sees 3 zero pixels past the bottom and right edges and gives 55x55); 227x227 inputs
(Caffe) need no padding. Both give 55-27-27-13-13-13-13-6 and 9216 inputs to fc6.

The functions here compute: they assume a `config.model` that `config_checks.check_model`
accepted, where every refusal of a bad field lives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

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
        `one_tower_kernels` chooses. More must divide every layer's kernels
        (`config_checks.check_model` refuses the others).
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
        else:
            widths[layer.name] = total // towers
    if extra_conv:
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
