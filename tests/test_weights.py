"""Importing trained weights (alexnet_jax/weights.py) against independent forward passes.

Nothing can be downloaded here, so the files are made by the tests the way their producers
make them. The bvlc_alexnet.npy file starts from a Caffe-layout reference: (out, in, H, W)
kernels, BGR input, fc6 over pool5's C x H x W flatten. It is then converted as the
caffe-tensorflow converter converts: kernels to (H, W, in, out), fc6's rows to H x W x C, fc
weights to (in, out). The torchvision state dict comes from torchvision's AlexNet definition
with random weights. Both are compared with float64 NumPy forward passes written from each
framework's semantics (NCHW, grouped convolutions, Caffe's LRN, torch's flatten), and the
torchvision one with torch's own forward when torch is installed.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from alexnet_jax import models, weights
from configs import caffe_bvlc_alexnet, torchvision_alexnet

CAFFE_MEAN_BGR = np.array([104.0, 117.0, 123.0])
TV_MEAN = np.array([0.485, 0.456, 0.406])
TV_STD = np.array([0.229, 0.224, 0.225])


# --- NumPy float64 references, NCHW ----------------------------------------------------------


def conv(x, w, b, stride=1, pad=0, groups=1):
    """Caffe / torch convolution: x (N, C, H, W), w (O, C / groups, k, k)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    out = []
    for xg, wg in zip(np.split(x, groups, 1), np.split(w, groups, 0)):
        win = sliding_window_view(xg, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
        # win: (N, C, H', W', k, k) -> (N, H', W', C*k*k)
        n, c, h, wd = win.shape[:4]
        patches = win.transpose(0, 2, 3, 1, 4, 5).reshape(n, h, wd, -1)
        out.append(np.einsum("nhwi,oi->nohw", patches, wg.reshape(wg.shape[0], -1)))
    return np.concatenate(out, 1) + b[None, :, None, None]


def maxpool(x, k=3, s=2):
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return win.max(axis=(-1, -2))


def caffe_lrn(x, n=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's ACROSS_CHANNELS LRN: k + alpha / n * sum of the squares of the n maps around."""
    sq = np.pad(x**2, ((0, 0), (n // 2, n // 2), (0, 0), (0, 0)))
    s = sum(sq[:, i : i + x.shape[1]] for i in range(n))
    return x / (k + alpha / n * s) ** beta


def relu(x):
    return np.maximum(x, 0)


def caffe_forward(bgr, p):
    """bvlc_alexnet's deploy forward pass in Caffe's layouts; `bgr` (N, 3, 227, 227) minus mean."""
    x = maxpool(caffe_lrn(relu(conv(bgr, *p["conv1"], stride=4))))
    x = maxpool(caffe_lrn(relu(conv(x, *p["conv2"], pad=2, groups=2))))
    x = relu(conv(x, *p["conv3"], pad=1))
    x = relu(conv(x, *p["conv4"], pad=1, groups=2))
    x = maxpool(relu(conv(x, *p["conv5"], pad=1, groups=2)))
    x = x.reshape(len(x), -1)  # C x H x W
    for name in ("fc6", "fc7"):
        x = relu(x @ p[name][0].T + p[name][1])
    return x @ p["fc8"][0].T + p["fc8"][1]


def torchvision_forward(x, sd):
    """torchvision.models.alexnet's eval forward; `x` (N, 3, 224, 224) normalized."""

    def w(key):
        return sd[f"{key}.weight"], sd[f"{key}.bias"]

    x = maxpool(relu(conv(x, *w("features.0"), stride=4, pad=2)))
    x = maxpool(relu(conv(x, *w("features.3"), pad=2)))
    x = relu(conv(x, *w("features.6"), pad=1))
    x = relu(conv(x, *w("features.8"), pad=1))
    x = maxpool(relu(conv(x, *w("features.10"), pad=1)))  # 6x6: the adaptive pool is identity
    x = x.reshape(len(x), -1)
    x = relu(x @ sd["classifier.1.weight"].T + sd["classifier.1.bias"])
    x = relu(x @ sd["classifier.4.weight"].T + sd["classifier.4.bias"])
    return x @ sd["classifier.6.weight"].T + sd["classifier.6.bias"]


# --- Files made as their producers make them -------------------------------------------------


def _he(rng, shape, fan_in):
    return rng.normal(0, np.sqrt(2.0 / fan_in), shape)


CAFFE_SHAPES = {
    "conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
    "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3), "fc6": (4096, 9216),
    "fc7": (4096, 4096), "fc8": (1000, 4096),
}  # fmt: skip


def caffe_reference(seed=0):
    """Random bvlc_alexnet weights in Caffe's layouts: {layer: (weights, biases)}."""
    rng = np.random.default_rng(seed)
    return {
        name: (_he(rng, shape, int(np.prod(shape[1:]))), rng.normal(0, 0.1, shape[0]))
        for name, shape in CAFFE_SHAPES.items()
    }


def write_converter_npy(path, ref):
    """bvlc_alexnet.npy as caffe-tensorflow writes it: kernels (H, W, in, out), fc6's rows
    reordered from C x H x W to H x W x C, fc weights (in, out), float32."""
    out = {}
    for name, (w, b) in ref.items():
        if w.ndim == 4:
            w = w.transpose(2, 3, 1, 0)
        elif name == "fc6":
            w = w.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, 4096)
        else:
            w = w.T
        out[name] = [w.astype(np.float32), b.astype(np.float32)]
    np.save(path, out, allow_pickle=True)


TV_SHAPES = {
    "features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
    "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3),
    "classifier.1": (4096, 9216), "classifier.4": (4096, 4096), "classifier.6": (1000, 4096),
}  # fmt: skip


def torchvision_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in TV_SHAPES.items():
        sd[f"{key}.weight"] = _he(rng, shape, int(np.prod(shape[1:]))).astype(np.float32)
        sd[f"{key}.bias"] = rng.normal(0, 0.1, shape[0]).astype(np.float32)
    return sd


def _images(size, n=1, seed=3):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float64)


def _logits(config, params, x_nhwc):
    model = models.create_model(config.model)
    return np.asarray(model.apply({"params": params}, jnp.asarray(x_nhwc, jnp.float32)), np.float64)


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


# --- The tests --------------------------------------------------------------------------------


@pytest.mark.slow  # float64 forward passes of the full network
def test_caffe_npy_round_trip_matches_caffes_forward(tmp_path):
    ref = caffe_reference()
    path = tmp_path / "bvlc_alexnet.npy"
    write_converter_npy(path, ref)
    config = caffe_bvlc_alexnet.get_config()
    params = weights.load_weights(str(path), "caffe_npy", config.model, config.image_size)
    rgb = _images(227)
    x = rgb - np.asarray(config.augment.mean_rgb)  # what augment.eval_views gives the net
    got = _logits(config, params, x)
    bgr = (rgb[..., ::-1] - CAFFE_MEAN_BGR).transpose(0, 3, 1, 2)
    want = caffe_forward(bgr, ref)
    assert rel(got, want) < 1e-5
    # Reordering fc6 a second time (treating the file as C x H x W) scrambles it: caught.
    wrong = dict(params)
    fc6 = np.concatenate(list(params["fc6"]["kernel"]), -1)
    fc6 = fc6.reshape(256, 6, 6, 4096).transpose(1, 2, 0, 3).reshape(9216, 4096)
    wrong["fc6"] = weights._split(
        "fc6", fc6, np.concatenate(list(params["fc6"]["bias"])), config.model
    )
    assert rel(_logits(config, wrong, x), want) > 1e-2


def test_the_caffe_config_is_caffes_network():
    m = caffe_bvlc_alexnet.get_config().model
    assert models.lrn_alpha(m) == pytest.approx(2e-5) and m.lrn_k == 1.0
    assert m.lrn_across_towers and m.dropout_scaling == "inverted"


@pytest.mark.slow  # float64 forward passes of the full network
def test_torchvision_npz_round_trip_matches_its_forward(tmp_path):
    sd = torchvision_state_dict()
    path = tmp_path / "alexnet.npz"
    np.savez(path, **sd)
    config = torchvision_alexnet.get_config()
    params = weights.load_weights(str(path), "torchvision", config.model, config.image_size)
    rgb = _images(224)
    x = (rgb - np.asarray(config.augment.mean_rgb)) / np.asarray(config.augment.std_rgb)
    got = _logits(config, params, x)
    want = torchvision_forward(((rgb / 255 - TV_MEAN) / TV_STD).transpose(0, 3, 1, 2), sd)
    assert rel(got, want) < 1e-5


@pytest.mark.slow  # float64 forward passes of the full network
def test_torchvision_pth_matches_torchs_own_forward(tmp_path):
    torch = pytest.importorskip("torch")
    from tests.helpers import torchvision_alexnet_module

    net = torchvision_alexnet_module()
    torch.manual_seed(0)
    net.eval()
    path = tmp_path / "alexnet-owt.pth"
    torch.save(net.state_dict(), path)
    config = torchvision_alexnet.get_config()
    params = weights.load_weights(str(path), "torchvision", config.model, config.image_size)
    rgb = _images(224)
    x = (rgb - np.asarray(config.augment.mean_rgb)) / np.asarray(config.augment.std_rgb)
    got = _logits(config, params, x)
    inputs = torch.tensor(
        ((rgb / 255 - TV_MEAN) / TV_STD).transpose(0, 3, 1, 2), dtype=torch.float32
    )
    with torch.no_grad():
        want = net(inputs).double().numpy()
    assert rel(got, want) < 1e-5


@pytest.mark.slow
def test_bad_weights_files_get_one_clear_error(tmp_path):
    ref = caffe_reference()
    good = tmp_path / "good.npy"
    write_converter_npy(good, ref)
    config = caffe_bvlc_alexnet.get_config()

    def load(path, fmt="caffe_npy", cfg=config):
        return weights.load_weights(str(path), fmt, cfg.model, cfg.image_size)

    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(weights.WeightsError, match="truncated.npy cannot be read"):
        load(truncated)
    data = np.load(good, allow_pickle=True).item()
    del data["conv3"]
    np.save(tmp_path / "missing.npy", data, allow_pickle=True)
    with pytest.raises(weights.WeightsError, match="no layer 'conv3'"):
        load(tmp_path / "missing.npy")
    data = np.load(good, allow_pickle=True).item()
    data["fc6"][0] = data["fc6"][0].T
    np.save(tmp_path / "shape.npy", data, allow_pickle=True)
    with pytest.raises(
        weights.WeightsError, match=r"fc6: weights has shape \(4096, 9216\).*\(9216, 4096\)"
    ):
        load(tmp_path / "shape.npy")
    with pytest.raises(weights.WeightsError, match="no such file"):
        load(tmp_path / "absent.npy")
    with pytest.raises(weights.WeightsError, match="weights_format"):
        load(good, fmt="onnx")
    # A Caffe file for the torchvision net: named layers, wrong shapes.
    np.savez(tmp_path / "tv.npz", **torchvision_state_dict())
    with pytest.raises(weights.WeightsError, match="features.0.weight has shape"):
        load(tmp_path / "tv.npz", "torchvision", config)
