"""alexnet_jax/features.py: extracted features against the network's own intermediates and
torch's own forward, the files they are written to, and the command's errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import (
    augment,
    feature_files,
    feature_layers,
    features,
    input_pipeline,
    models,
    optim,
    parallel,
    train,
)
from configs import default as default_config
from configs import torchvision_alexnet
from tests.helpers import rel_err

ROOT = Path(__file__).resolve().parents[1]


def _digits(tmp_path, **overrides):
    """configs/default.py (cifar_lrn on digits) at a small batch."""
    config = default_config.get_config()
    config.batch_size = 8
    config.progress_bar = False
    config.cache_dir = str(tmp_path / "cache")
    config.update_from_flattened_dict(overrides)
    return config


@pytest.fixture(scope="module")
def digits_params(tmp_path_factory):
    """(params, a source record) of configs/default.py's network, random."""
    return _random_params(_digits(tmp_path_factory.mktemp("p"))), {"random": "numpy"}


def _random_params(config, seed=0):
    """Parameters of config.model drawn here in NumPy (N(0, 0.01) kernels, N(0, 0.1) biases),
    cheaper than the model's own initialisation."""
    model = models.create_model(config.model)
    x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x)["params"], x)
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.normal(0, 0.01 if len(s.shape) > 2 else 0.1, s.shape).astype(np.float32),
        shapes,
    )


def _alexnet(**overrides):
    """The paper's AlexNet at 224 on three synthetic 232 x 232 images, a fixed mean."""
    from configs import alexnet

    config = alexnet.get_config()
    config.update_from_flattened_dict(
        {"dataset": "synthetic", "train_split": "train", "eval_split": "test",
         "synthetic_examples": 3, "synthetic_classes": 5, "model.num_classes": 5,
         "resize_size": 232, "batch_size": 2, "augment.mean": "fixed", "progress_bar": False,
         **overrides}
    )  # fmt: skip
    return config


def _independent(config, params, split, keys, n, ten):
    """{key: (n, D)} from model.apply(mutable=['intermediates']) on eval_views of the first n
    images of `split`, computed here without alexnet_jax.features; ten: the views' mean."""
    source = input_pipeline.create_source(config, split)
    images = jnp.asarray(np.stack([source[i]["image"] for i in range(n)]))
    stats = input_pipeline.eval_data_stats(config)
    views = augment.eval_views(images, stats, config.augment, config.image_size, ten_crop=ten)
    x = views.reshape(-1, *views.shape[-3:])
    model = models.create_model(config.model)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"])[1])
    state = apply(params, x)
    out = {}
    for key in keys:
        h = np.asarray(state["intermediates"][key][0]).reshape(len(x), -1)
        out[key] = h.reshape(n, 10, -1).mean(axis=1) if ten else h
    return out


def _all(batches):
    batches = list(batches)
    layers = batches[0]["features"]
    return (
        {k: np.concatenate([b["features"][k] for b in batches]) for k in layers},
        np.concatenate([b["labels"] for b in batches]),
        np.concatenate([b["index"] for b in batches]),
    )


@pytest.fixture(scope="module")
def alexnet_params():
    return _random_params(_alexnet())


@pytest.mark.slow
@pytest.mark.parametrize("patches", ["centre", "ten"])
def test_alexnet_features_are_the_networks_intermediates(patches, alexnet_params):
    config, params = _alexnet(), alexnet_params
    # User names and the sown values they must be (the vocabulary of the module docstring).
    expected = {"fc6": "fc6_act", "fc6_pre": "fc6_pre", "fc7": "fc7_act", "fc7_out": "fc7_out",
                "conv2_pre": "conv2_pre", "pool5": "pool5_out", "fc8": "logits"}  # fmt: skip
    # Centre: 3 images in batches of 2, the second padded; ten patches: 2 images, 20 views.
    n = 3 if patches == "centre" else 2
    got, labels, index = _all(
        features.extract(config, params, "test", list(expected), patches=patches, max_examples=n)
    )
    want = _independent(config, params, "test", set(expected.values()), n, patches == "ten")
    np.testing.assert_array_equal(index, np.arange(n))
    source = input_pipeline.create_source(config, "test")
    np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(n)])
    for name, key in expected.items():
        assert got[name].dtype == np.float32 and got[name].shape == want[key].shape, name
        assert rel_err(got[name], want[key]) < 1e-6, name
    # What the names mean: fc6 is after the ReLU, fc6_pre before it, fc7_out carries the
    # paper's test-time dropout scaling x 0.5 of fc7 after its ReLU.
    assert got["fc6"].min() >= 0 and got["fc6_pre"].min() < 0
    if patches == "centre":
        np.testing.assert_array_equal(got["fc6"], np.maximum(got["fc6_pre"], 0))
    assert rel_err(got["fc7_out"], 0.5 * got["fc7"]) < 1e-6


def test_layer_names_follow_the_traced_network(tmp_path):
    # The paper's AlexNet: the user names, then every sown key, in the network's order, each
    # described by its kind's rule (none left to the fallback).
    layers = feature_layers.available_layers(_alexnet())
    sown = list(feature_layers.sown_shapes(_alexnet()))
    assert list(layers)[-len(sown) :] == sown and "the value the network sows" not in str(layers)
    assert list(layers)[: -len(sown)] == [
        "conv1", "lrn1", "pool1", "conv2", "lrn2", "pool2", "conv3", "conv4", "conv5", "pool5",
        "fc6", "fc7", "fc8",
    ]  # fmt: skip
    assert layers["fc6"] == "fc6 after relu, before dropout (DeCAF6: Caffe's fc6 blob after relu6)"
    assert layers["fc7_out"] == "fc7 after relu and dropout's test-time scaling x 0.5 (§4.2)"
    assert layers["conv1_pre"] == "conv1 before the relu (weights times inputs plus bias)"
    assert layers["lrn1"] == "conv1 after relu and LRN, before max pooling"
    assert layers["pool5"] == "conv5's max pooling output (3x3, stride 2)"
    assert layers["fc8"] == layers["logits"] == "fc8's output, the logits before the softmax"
    # The order is the network's: an LRN moved before the ReLU comes before conv1's name; a
    # removed layer leaves its pooling, on its input.
    moved = feature_layers.available_layers(
        _alexnet(**{"model.lrn_before_relu": ("conv1",), "model.remove_conv": ("conv5",)})
    )
    assert list(moved)[:3] == ["lrn1", "conv1", "pool1"] and "conv5" not in moved
    assert moved["conv1"] == "conv1 after LRN and relu, before max pooling"
    assert moved["pool5"].endswith("of conv5's input (conv5 removed: model.remove_conv)")
    # A CIFAR net's LRN is not sown, its layer file places it: before or after the pooling.
    fig1 = feature_layers.available_layers(_digits(tmp_path, **{"model.name": "cifar_fig1"}))
    assert fig1["pool1"] == "conv1's max pooling output (3x3, stride 2), then LRN"
    lrn = feature_layers.available_layers(_digits(tmp_path))
    assert lrn["conv1"] == "conv1 after relu, before LRN and max pooling"


def test_random_init_is_a_training_runs_step_zero(tmp_path, monkeypatch, digits_params):
    config = _digits(tmp_path)
    params, _ = digits_params
    # What each asks parallel.init_params for (the initialisation itself is one function).
    asked = []

    def init_params(model_config, shape, rng):
        asked.append((model_config, shape, np.asarray(jax.random.key_data(rng))))
        return params

    monkeypatch.setattr(parallel, "init_params", init_params)
    got, record = features.load_params(config, random_init=True)
    assert record == {"random_init": True, "seed": config.seed, "init": "lecun"}
    assert all(a is b for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)))
    mesh = parallel.make_mesh(config.mesh, config.model, jax.devices()[:1])
    with jax.set_mesh(mesh):
        train.create_train_state(
            config, mesh, optim.create_optimizer(config.optimizer), jax.random.key(config.seed)
        )
    (ours, shape, key), (theirs, train_shape, train_key) = asked
    assert ours == theirs and shape == train_shape == (32, 32, 3)
    np.testing.assert_array_equal(key, train_key)
    assert not np.array_equal(key, jax.random.key_data(jax.random.key(config.seed)))


@pytest.mark.slow
def test_cifar_features_are_the_networks_intermediates(tmp_path, digits_params):
    config = _digits(tmp_path)
    params, _ = digits_params
    expected = {"conv1": "conv1_act", "local3_pre": "local3_pre", "pool2": "pool2_out",
                "fc10": "logits"}  # fmt: skip
    for ten in (False, True):
        got, _, _ = _all(
            features.extract(config, params, "test", list(expected), max_examples=11,
                             patches="ten" if ten else "centre")
        )  # fmt: skip
        want = _independent(config, params, "test", set(expected.values()), 11, ten)
        for name, key in expected.items():
            assert got[name].shape == want[key].shape and rel_err(got[name], want[key]) < 1e-6


def test_torchvision_weights_reproduce_torchs_activations(tmp_path):
    torch = pytest.importorskip("torch")
    from torch import nn

    from tests.helpers import torchvision_alexnet_module

    torch.manual_seed(0)
    net = torchvision_alexnet_module()
    for module in net.modules():  # biases large enough that a wrong one shows
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.normal_(module.bias, 0.0, 0.1)
    net.eval()
    path = tmp_path / "alexnet-owt.pth"
    torch.save(net.state_dict(), path)

    config = torchvision_alexnet.get_config()
    config.batch_size = 2
    params, record = features.load_params(config, weights=str(path))  # format from .pth
    assert record["format"] == "torchvision" and len(record["sha256"]) == 64
    layers = feature_layers.resolve_layers(config, ["pool5", "fc6", "fc7", "fc8"])
    compute = features.feature_function(config, params, layers, None)  # fixed mean: no stats
    rgb = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    got = compute(rgb)

    # torchvision's preprocessing of the centre 224 patch: (x / 255 - mean) / std, NCHW.
    crop = rgb[:, 16:240, 16:240].astype(np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = torch.tensor(((crop - mean) / std).transpose(0, 3, 1, 2), dtype=torch.float32)
    with torch.no_grad():
        pool5 = net.features(x)
        flat = torch.flatten(net.avgpool(pool5), 1)
        want = {
            "pool5": pool5.permute(0, 2, 3, 1).reshape(2, -1).numpy(),  # NCHW -> NHWC rows
            "fc6": net.classifier[:3](flat).numpy(),
            "fc7": net.classifier[:6](flat).numpy(),
            "fc8": net.classifier(flat).numpy(),
        }
    for name, value in want.items():
        assert got[name].shape == value.shape and rel_err(got[name], value) < 1e-4, name


def test_written_files_round_trip_and_name_their_examples(tmp_path, digits_params):
    config = _digits(tmp_path)
    params, record = digits_params
    layers = ["conv2", "fc10", "pool1"]
    split = "train[80%:]"  # train examples 1150.. (80% of 1,437, rounded)
    got, labels, index = _all(features.extract(config, params, split, layers, max_examples=20))
    out = tmp_path / "shards"
    written = features.write_features(
        config, params, record, str(out), split=split, layers=layers, max_examples=20,
        shard_rows=7, file_format="shards",
    )  # fmt: skip
    assert written == json.loads((out / "features.json").read_text())
    assert written["examples"] == 20 and written["format"] == "shards"
    assert written["source"] == record and written["split"] == split
    conv2 = next(x for x in written["layers"] if x["name"] == "conv2")
    assert conv2["key"] == "conv2_act" and conv2["shape"] == [16, 16, 64]
    assert conv2["dim"] == 16 * 16 * 64 and "after relu" in conv2["description"]
    assert [s["rows"] for s in conv2["shards"]] == [7, 7, 6]
    assert sorted(os.listdir(out / "conv2")) == [f"part-0000{i}.npy" for i in range(3)]
    source = input_pipeline.create_source(config, split)
    np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(20)])
    names = (out / "examples.txt").read_text().splitlines()
    assert names == [f"train#{1150 + i}" for i in range(20)]
    npz = tmp_path / "npz"
    as_npz = features.write_features(
        config, params, record, str(npz), split=split, layers=layers, max_examples=20
    )  # auto: 20 x (16384 + 10 + 16384) floats is below 64 MiB
    assert as_npz["format"] == "npz" and sorted(os.listdir(npz)) == [
        "examples.txt", "features.json", "features.npz"
    ]  # fmt: skip
    for layer in layers:
        for folder in (out, npz):
            x, y, rec = feature_files.load_features(str(folder), layer)
            assert x.dtype == np.float32 and y.dtype == np.int64
            np.testing.assert_array_equal(x, got[layer])
            np.testing.assert_array_equal(y, labels)
    with np.load(npz / "features.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted([*layers, "labels"])
    # An existing folder is not overwritten unless asked.
    with pytest.raises(features.FeaturesError, match="--overwrite"):
        features.write_features(config, params, record, str(npz), split=split, layers=layers)
    # A damaged shard: one line naming the file.
    shard = out / "conv2" / "part-00001.npy"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(feature_files.FeaturesError) as e:
        feature_files.load_features(str(out), "conv2")
    assert "part-00001.npy" in str(e.value) and "\n" not in str(e.value)
    (out / "labels.npy").unlink()
    with pytest.raises(feature_files.FeaturesError, match="labels.npy is missing"):
        feature_files.load_features(str(out), "fc10")


def test_a_folder_dataset_names_its_files_and_skips_a_broken_one(tmp_path, digits_params):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    files = []
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
                if split == "val":
                    files.append(f"val/{label}/{i}.png")
    (root / "val" / "dog" / "1.png").write_bytes(b"not a png")  # skipped, counted
    config = _digits(tmp_path, dataset=f"folder:{root}", eval_split="val")
    params, record = digits_params  # a 10-class net: labels 0 and 1 are two of its classes
    out = tmp_path / "out"
    written = features.write_features(
        config, params, record, str(out), split="val", layers=["fc10"]
    )
    kept = [f for f in files if f != "val/dog/1.png"]
    assert (out / "examples.txt").read_text().splitlines() == kept
    assert written["examples"] == 5 and written["skipped"]["undecodable"] == 1
    _, labels, _ = feature_files.load_features(str(out), "fc10")
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1])


def test_a_failed_run_leaves_nothing(tmp_path, monkeypatch, digits_params):
    config = _digits(tmp_path)
    params, record = digits_params
    (tmp_path / "dest").mkdir()
    real = features.kept_batches

    def failing(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise OSError("disk gone")
            yield batch

    monkeypatch.setattr(features, "kept_batches", failing)
    with pytest.raises(OSError, match="disk gone"):
        features.write_features(
            config, params, record, str(tmp_path / "dest" / "out"), split="test",
            layers=["fc10"], file_format="shards",
        )  # fmt: skip
    assert os.listdir(tmp_path / "dest") == []  # neither out nor its temporary sibling


@pytest.mark.slow
def test_command_errors_are_one_line(tmp_path, capsys):
    # The command line itself, once: an unknown layer, reported before any parameter is read.
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.features", "--config=configs/default.py",
         "--random_init", "--layers=fc6,local4", f"--out={tmp_path / 'a'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "unknown layer(s) 'fc6' for cifar_lrn; available: conv1, pool1, conv2" in done.stderr
    # The same function behind it, in this process.
    bad = tmp_path / "bad.npz"  # .npz: read without torch, so CI without torch checks it too
    bad.write_bytes(b"not a state dict")
    cases = {
        "no such directory": (_digits(tmp_path), dict(workdir=str(tmp_path / "none"))),
        "bad.npz cannot be read as an .npz of a torchvision state dict": (
            torchvision_alexnet.get_config(),
            dict(weights=str(bad)),
        ),
        "give exactly one source": (_digits(tmp_path), dict(random_init=True, weights="x.pth")),
        "no checkpoint at": (_digits(tmp_path), dict(workdir=str(tmp_path), step=3)),
    }
    (tmp_path / "config.json").write_text(_digits(tmp_path).to_json_best_effort())
    for i, (message, (config, options)) in enumerate(cases.items()):
        out = tmp_path / f"out{i}"
        layers = ["fc6"] if config.model.name == "alexnet" else ["fc10"]
        with pytest.raises(SystemExit) as e:
            features.run_command(config, out=str(out), layers=layers, **options)
        text = str(e.value)
        assert text.startswith("error: ") and message in text and "\n" not in text, text
        assert not out.exists()
