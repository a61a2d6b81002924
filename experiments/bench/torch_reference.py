"""The paper's AlexNet in PyTorch, the same network as `alexnet_jax.models.AlexNet`.

One module that the benchmarks (`experiments/bench/benchmark.py`,
`experiments/bench/lrn_benchmark.py`) and the tests (`tests/test_benchmark.py`,
`tests/test_lrn.py`) share: `torch_alexnet` builds the layers from `architecture.ALEXNET_LAYERS`,
`copy_jax_params` puts our parameters in, and `torch_logits` runs it, so an identity check can
compare the two frameworks' logits.

PyTorch is optional (`pip install -r requirements-bench.txt`): it is imported inside functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def torch_lrn_module(model_config: Any) -> torch.nn.Module:
    """`torch.nn.LocalResponseNorm` with our LRN's constants (its alpha is ours times n)."""
    from torch import nn

    from alexnet_jax import lrn, models

    m = model_config
    alpha = lrn.to_torch_alpha(models.lrn_alpha(m), m.lrn_size)
    return nn.LocalResponseNorm(m.lrn_size, alpha=alpha, beta=m.lrn_beta, k=m.lrn_k)


def torch_lrn_per_tower(norm: torch.nn.Module, x: torch.Tensor, towers: int) -> torch.Tensor:
    """LRN within each tower of NCHW maps: (B, C, H, W) viewed as (B*towers, C/towers, H, W)."""
    b, c, h, w = x.shape
    return norm(x.view(b * towers, c // towers, h, w)).view(b, c, h, w)


def torch_alexnet(model_config: Any, image_size: int) -> torch.nn.Module:
    """Our AlexNet in PyTorch, NCHW, built from our layer table (`architecture.ALEXNET_LAYERS`).

    With the paper's config: conv1 3->96 k11 s4; conv2 96->256 k5 p2 groups=2; conv3 256->384
    k3 p1; conv4 384->384 k3 p1 groups=2; conv5 384->256 k3 p1 groups=2; fc6 9216->4096; fc7
    4096->4096; fc8 4096->1000; ReLU after each but fc8, LRN per tower after conv1 and conv2,
    3/2 max pooling after conv1, conv2 and conv5, dropout on the outputs of fc6 and fc7 (like
    ours; torchvision's AlexNet drops the inputs of fc6 and fc7 instead). Weights are PyTorch's
    defaults; `copy_jax_params` puts ours in.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from alexnet_jax import architecture

    m = model_config
    if m.name != "alexnet" or m.activation != "relu":
        raise ValueError("torch_alexnet builds the paper's AlexNet (name 'alexnet', ReLU) only.")
    if (
        m.lrn_before_relu or m.within_map_after or m.lrn_across_towers
        or m.dropout_on != "outputs" or m.conv1_padding != -1
    ):  # fmt: skip
        raise ValueError(
            "torch_alexnet builds the paper's structure: LRN per tower after the ReLU, dropout on "
            "fc6/fc7 outputs, cuda-convnet2's conv1 rounding; set lrn_before_relu=(), "
            "within_map_after=(), lrn_across_towers=False, dropout_on='outputs', "
            "conv1_padding=-1."
        )
    towers = m.towers
    widths = architecture.tower_widths(towers, m.num_classes, m.one_tower_kernels)
    pool5 = architecture.spatial_sizes(image_size, m.pool_window)["pool5"]
    pad = architecture.conv1_padding(image_size)

    class TorchAlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleDict()
            features = 3
            for layer in architecture.ALEXNET_LAYERS:
                out = widths[layer.name] * towers
                if layer.is_conv:
                    groups = towers if layer.sees == "own" else 1
                    self.layers[layer.name] = nn.Conv2d(
                        features, out, layer.kernel, layer.stride, layer.padding, groups=groups
                    )
                else:
                    if features == widths["conv5"] * towers:  # fc6 reads the flattened pool5.
                        features *= pool5 * pool5
                    self.layers[layer.name] = nn.Linear(features, out)
                features = out
            self.lrn = torch_lrn_module(m)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if pad:  # cuda-convnet's rounding for 224 inputs, as in architecture.conv1_padding.
                x = F.pad(x, (0, pad, 0, pad))
            for layer in architecture.ALEXNET_LAYERS:
                x = self.layers[layer.name](x if layer.is_conv else torch.flatten(x, 1))
                if layer.name == "fc8":
                    return x[:, : m.num_classes]
                x = F.relu(x, inplace=True)
                if layer.lrn and m.lrn:
                    x = torch_lrn_per_tower(self.lrn, x, towers)
                if layer.dropout:
                    x = F.dropout(x, m.dropout_rate, self.training)
                    if m.dropout_scaling == "test_time":  # x * mask in training, x * keep at test
                        x = x * (1.0 - m.dropout_rate)
                if layer.pool:
                    x = F.max_pool2d(x, m.pool_window, 2)
            return x

    return TorchAlexNet()


def copy_jax_params(params: Any, torch_model: torch.nn.Module, image_size: int) -> None:
    """Copies our AlexNet parameters into `torch_alexnet`'s model, so both compute the same.

    Conv kernels (towers, kh, kw, cin, cout per tower) become (towers * cout, cin, kh, kw), tower
    t in output channels [t*cout, (t+1)*cout) (with groups=towers for the own-tower layers that is
    exactly PyTorch's grouping); fc kernels (towers, in, out per tower) become (towers * out, in),
    fc6's inputs permuted from our NHWC flattening (h, w, c) to PyTorch's (c, h, w).
    """
    import torch

    from alexnet_jax import architecture

    first_fc = True
    for layer in architecture.ALEXNET_LAYERS:
        kernel = np.asarray(params[layer.name]["kernel"], np.float32)
        bias = np.asarray(params[layer.name]["bias"], np.float32).reshape(-1)
        if layer.is_conv:
            w = np.moveaxis(kernel, 0, 3).reshape(*kernel.shape[1:4], -1).transpose(3, 2, 0, 1)
        else:
            w = np.moveaxis(kernel, 0, 1).reshape(kernel.shape[1], -1)  # (in, out), as ours.
            if first_fc:
                side = architecture.spatial_sizes(image_size)["pool5"]
                w = w.reshape(side, side, -1, w.shape[-1]).transpose(2, 0, 1, 3)
                w = w.reshape(-1, w.shape[-1])
                first_fc = False
            w = w.T
        module = torch_model.layers[layer.name]
        with torch.no_grad():
            module.weight.copy_(torch.tensor(w))  # torch.tensor copies: ours are read-only.
            module.bias.copy_(torch.tensor(bias))


def torch_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA is asynchronous; the CPU is not)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_logits(torch_model: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
    """float32 inference logits of the PyTorch model on NHWC images."""
    import torch

    device = next(torch_model.parameters()).device
    torch_model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        return torch_model(x.to(device)).float().cpu().numpy()
