"""Tests for alexnet_jax.augment: the preprocessing and augmentation of paper §2 and §4.1."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import augment
from configs import alexnet as alexnet_config
from tests.helpers import random_stats

S, SIZE = 12, 8  # Small stand-ins for 256 -> 224: (12 - 8 + 1)**2 = 25 possible offsets.


def _coordinate_images(batch: int, s: int = S) -> np.ndarray:
    """Images whose pixel (y, x) holds (y, x, 7): a crop's top-left pixel is its offset."""
    y, x = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    image = np.stack([y, x, np.full_like(y, 7)], axis=-1).astype(np.uint8)
    return np.broadcast_to(image, (batch, s, s, 3)).copy()


def _random_images(seed: int, batch: int, s: int = S) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)


def _random_stats(seed: int = 0, s: int = S) -> augment.DataStats:
    return random_stats(seed, s)


def _cfg(**overrides):
    cfg = alexnet_config.get_augment_config()
    cfg.update(overrides)
    return cfg


def test_random_crop_in_bounds_and_reaches_every_offset():
    images = _coordinate_images(2500)
    crops = np.asarray(augment.random_crop(jax.random.key(0), images, SIZE))
    assert crops.shape == (2500, SIZE, SIZE, 3) and crops.dtype == np.uint8
    dy, dx = crops[:, 0, 0, 0].astype(int), crops[:, 0, 0, 1].astype(int)
    assert dy.min() >= 0 and dx.min() >= 0 and dy.max() <= S - SIZE and dx.max() <= S - SIZE
    for b in range(0, 2500, 97):  # Each crop is the contiguous patch at its offset.
        np.testing.assert_array_equal(
            crops[b], images[b, dy[b] : dy[b] + SIZE, dx[b] : dx[b] + SIZE]
        )
    counts = np.bincount(dy * (S - SIZE + 1) + dx, minlength=25)
    assert counts.size == 25 and counts.min() > 50  # All 25 offsets, each ~100 times.


def test_random_crop_full_size_is_identity():
    images = _random_images(1, 3)
    out = augment.random_crop(jax.random.key(0), images, S)
    np.testing.assert_array_equal(out, images)


def test_random_flip_is_exact_mirror_about_half_the_time():
    images = _random_images(2, 400)
    out = np.asarray(augment.random_flip(jax.random.key(1), images))
    mirrored = np.array([np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images)])
    unchanged = np.array([np.array_equal(o, x) for o, x in zip(out, images)])
    assert np.all(mirrored ^ unchanged)  # Every image is exactly one of the two.
    assert 140 < mirrored.sum() < 260  # Binomial(400, 1/2): mean 200, sd 10.


def test_pca_color_noise_statistics():
    stats = _random_stats()
    n = 20000
    images = jnp.asarray(_random_images(3, n, s=2), jnp.float32)
    out = augment.pca_color(jax.random.key(2), images, stats, std=0.1)
    noise = np.asarray(out - images, np.float64)  # (n, 2, 2, 3)
    # The same RGB vector is added to every pixel of an image.
    np.testing.assert_allclose(noise, np.broadcast_to(noise[:, :1, :1], noise.shape), atol=1e-3)
    coeffs = noise[:, 0, 0] @ stats.pca_eigvecs.astype(np.float64)  # Projections onto p_i.
    expected_std = 0.1 * np.sqrt(stats.pca_eigvals.astype(np.float64))  # [6.32, 2.0, 0.632]
    np.testing.assert_allclose(coeffs.std(axis=0), expected_std, rtol=0.03)
    assert np.all(np.abs(coeffs.mean(axis=0)) < 4 * expected_std / np.sqrt(n))
    corr = np.corrcoef(coeffs.T)  # Independent alphas: uncorrelated projections.
    assert np.all(np.abs(corr - np.eye(3)) < 0.05)


def test_ten_crops_match_numpy_slicing():
    s, size = 10, 6
    images = _random_images(4, 3, s=s)
    out = np.asarray(augment.ten_crops(images, size))
    assert out.shape == (3, 10, size, size, 3)
    d = s - size
    expected = [
        images[:, :size, :size],  # top-left
        images[:, :size, d:],  # top-right
        images[:, d:, :size],  # bottom-left
        images[:, d:, d:],  # bottom-right
        images[:, 2 : 2 + size, 2 : 2 + size],  # centre
    ]
    expected += [p[:, :, ::-1] for p in expected]
    for i, patch in enumerate(expected):
        np.testing.assert_array_equal(out[:, i], patch, err_msg=f"patch {i}")
    np.testing.assert_array_equal(augment.center_crop(images, size), expected[4])
    # 256 -> 227 style odd margin: the offset rounds down.
    np.testing.assert_array_equal(augment.center_crop(images, 7), images[:, 1:8, 1:8])


def test_subtract_mean_modes():
    stats = _random_stats()
    images = _random_images(5, 4)
    x = images.astype(np.float32)
    out = augment.subtract_mean(images, stats, "image")
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, x - stats.mean_image, rtol=0, atol=1e-5)
    channel_mean = stats.mean_image.mean(axis=(0, 1))
    np.testing.assert_allclose(
        augment.subtract_mean(images, stats, "channel"), x - channel_mean, atol=1e-4
    )
    np.testing.assert_array_equal(augment.subtract_mean(images, None, "none"), x)
    with pytest.raises(ValueError, match="unknown mean mode"):
        augment.subtract_mean(images, stats, "pixel")
    with pytest.raises(ValueError, match="mean image has shape"):
        augment.subtract_mean(_random_images(5, 1, s=S + 2), stats, "image")


def test_compute_data_stats_matches_numpy_and_round_trips(tmp_path):
    rng = np.random.default_rng(6)
    # Correlated channels, so the three eigenvalues are distinct and the vectors well defined.
    base = rng.integers(0, 150, (11, 6, 6, 1))
    images = np.clip(base + rng.integers(0, 100, (11, 6, 6, 3)) * [1, 0.5, 0.2], 0, 255)
    images = images.astype(np.uint8)
    chunks = [images[:3], images[3], images[4], images[5:11]]  # Batches and single images.
    stats = augment.compute_data_stats(iter(chunks))

    np.testing.assert_allclose(stats.mean_image, images.astype(np.float64).mean(0), rtol=1e-6)
    pixels = images.reshape(-1, 3).astype(np.float64)
    cov = np.cov(pixels.T, bias=True)  # Population covariance over all pixels.
    eigvals, eigvecs = np.linalg.eigh(cov)
    np.testing.assert_allclose(stats.pca_eigvals, eigvals[::-1], rtol=1e-5)
    # Same axes up to sign, columns orthonormal, and they rebuild the covariance.
    np.testing.assert_allclose(np.abs(eigvecs[:, ::-1].T @ stats.pca_eigvecs), np.eye(3), atol=1e-5)
    v = stats.pca_eigvecs.astype(np.float64)
    np.testing.assert_allclose(v @ np.diag(stats.pca_eigvals) @ v.T, cov, rtol=1e-5, atol=1e-3)
    assert stats.mean_image.dtype == stats.pca_eigvals.dtype == stats.pca_eigvecs.dtype
    assert stats.pca_eigvecs.dtype == np.float32
    # Sign convention: each column's largest-magnitude entry is positive.
    assert np.all(v[np.abs(v).argmax(axis=0), np.arange(3)] > 0)

    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = augment.DataStats.load(path)
    for name in ("mean_image", "pca_eigvals", "pca_eigvecs"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(stats, name))
        assert getattr(loaded, name).dtype == np.float32

    with pytest.raises(ValueError, match="no images"):
        augment.compute_data_stats([])


def test_data_stats_is_a_pytree():
    stats = _random_stats()
    assert len(jax.tree_util.tree_leaves(stats)) == 3
    total = jax.jit(lambda s: s.mean_image.sum() + s.pca_eigvals.sum())(stats)
    np.testing.assert_allclose(total, stats.mean_image.sum() + 4440.0, rtol=1e-5)


def test_train_views_is_flip_of_crop_of_mean_subtracted_image():
    stats = _random_stats()
    images = _random_images(7, 32)
    cfg = _cfg(pca_color=False)
    out = np.asarray(augment.train_views(jax.random.key(3), images, stats, cfg, SIZE))
    centred = images.astype(np.float32) - stats.mean_image
    candidates = [
        (dy, dx, flip) for dy, dx, flip in itertools.product(range(5), range(5), (False, True))
    ]
    seen = set()
    for b in range(32):
        matches = []
        for dy, dx, flip in candidates:
            patch = centred[b, dy : dy + SIZE, dx : dx + SIZE]
            if np.allclose(out[b], patch[:, ::-1] if flip else patch, atol=1e-4):
                matches.append((dy, dx, flip))
        assert len(matches) == 1, f"image {b}: {matches}"
        seen.add(matches[0])
    assert len(seen) > 10  # Offsets and flips vary over the batch.

    # PCA noise on top of the same key: same crops and flips, plus one colour per image.
    with_pca = np.asarray(
        augment.train_views(jax.random.key(3), images, stats, _cfg(), SIZE), np.float64
    )
    shift = with_pca - out
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1, :1], shift.shape), atol=1e-3)
    assert np.all(np.abs(shift[:, 0, 0]).sum(axis=-1) > 0)


def test_train_views_all_off_is_centre_crop():
    images = _random_images(8, 5)
    cfg = _cfg(mean="none", random_crop=False, flip=False, pca_color=False)
    out = augment.train_views(jax.random.key(4), images, None, cfg, SIZE)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, images[:, 2:10, 2:10].astype(np.float32))


def test_eval_views():
    stats = _random_stats()
    images = _random_images(9, 3)
    cfg = alexnet_config.get_augment_config()
    centred = augment.subtract_mean(images, stats, "image")
    ten = augment.eval_views(images, stats, cfg, SIZE, ten_crop=True)
    assert ten.shape == (3, 10, SIZE, SIZE, 3) and ten.dtype == jnp.float32
    np.testing.assert_array_equal(ten, augment.ten_crops(centred, SIZE))
    one = augment.eval_views(images, stats, cfg, SIZE, ten_crop=False)
    np.testing.assert_array_equal(one, augment.center_crop(centred, SIZE))


def test_same_key_same_output_different_keys_differ():
    stats = _random_stats()
    images = _random_images(10, 16)
    cfg = alexnet_config.get_augment_config()
    a = augment.train_views(jax.random.key(5), images, stats, cfg, SIZE)
    b = augment.train_views(jax.random.key(5), images, stats, cfg, SIZE)
    c = augment.train_views(jax.random.key(6), images, stats, cfg, SIZE)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Legacy uint32 keys work too.
    augment.train_views(jax.random.PRNGKey(5), images, stats, cfg, SIZE)


@pytest.mark.parametrize("batch", [1, 3])
def test_jit_matches_eager(batch):
    stats = _random_stats()
    images = _random_images(11, batch)
    cfg = alexnet_config.get_augment_config()
    key = jax.random.key(7)
    train = jax.jit(functools.partial(augment.train_views, cfg=cfg, size=SIZE))
    np.testing.assert_allclose(
        train(key, images, stats),
        augment.train_views(key, images, stats, cfg, SIZE),
        rtol=1e-6,
        atol=1e-4,
    )
    for ten_crop in (False, True):
        evaluate = jax.jit(
            functools.partial(augment.eval_views, cfg=cfg, size=SIZE, ten_crop=ten_crop)
        )
        np.testing.assert_array_equal(
            evaluate(images, stats), augment.eval_views(images, stats, cfg, SIZE, ten_crop)
        )
    for fn in (augment.random_crop, augment.random_flip):
        args = (key, images, SIZE) if fn is augment.random_crop else (key, images)
        jitted = jax.jit(fn, static_argnums=(2,)) if len(args) == 3 else jax.jit(fn)
        np.testing.assert_array_equal(jitted(*args), fn(*args))


def test_images_smaller_than_crop_raise_at_trace_time():
    images = _random_images(12, 2, s=6)
    with pytest.raises(ValueError, match=r"crop size 8 is larger than the images \(6x6\)"):
        augment.random_crop(jax.random.key(0), images, SIZE)
    for fn in (augment.center_crop, augment.ten_crops):
        with pytest.raises(ValueError, match="crop size 8"):
            jax.jit(fn, static_argnums=(1,))(images, SIZE)
    cfg = _cfg(mean="none")
    with pytest.raises(ValueError, match="crop size 8"):
        jax.jit(lambda k, x: augment.train_views(k, x, None, cfg, SIZE))(jax.random.key(0), images)


def test_augment_config_is_the_paper():
    cfg = alexnet_config.get_augment_config()
    assert cfg.mean == "image"
    assert cfg.random_crop and cfg.flip and cfg.pca_color
    assert cfg.pca_std == 0.1


# ----------------------------------------------------------------------------------------------
# augment.mean_file: a mean image brought from elsewhere (Caffe's imagenet_mean.binaryproto,
# pycaffe's ilsvrc_2012_mean.npy) instead of the training split's.


def _caffe_blob_class():
    """Caffe's BlobProto/BlobShape (caffe.proto) built with the protobuf library itself, so
    the test file is written by an encoder independent of caffe_files.read_binaryproto."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="caffe_blob_test.proto", package="caffe_t")
    shape = proto.message_type.add(name="BlobShape")
    shape.field.add(name="dim", number=1, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    shape.field[0].options.packed = True
    blob = proto.message_type.add(name="BlobProto")
    blob.field.add(name="shape", number=7, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                   type_name=".caffe_t.BlobShape")  # fmt: skip
    blob.field.add(name="data", number=5, type=F.TYPE_FLOAT, label=F.LABEL_REPEATED)
    blob.field[-1].options.packed = True
    for name, number in (("num", 1), ("channels", 2), ("height", 3), ("width", 4)):
        blob.field.add(name=name, number=number, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe_t.BlobProto"))


def _bgr_mean(s: int = S, seed: int = 3) -> np.ndarray:
    """A (3, s, s) B, G, R mean with a different range per channel, so an order mix-up shows."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(lo, lo + 20, (s, s)) for lo in (100, 110, 120)]).astype(np.float32)


@pytest.mark.parametrize("legacy_dims", [True, False])
def test_binaryproto_and_npy_mean_files_give_the_same_rgb_image(tmp_path, legacy_dims):
    bgr = _bgr_mean()
    blob = _caffe_blob_class()()
    if legacy_dims:  # num/channels/height/width, as Caffe's compute_image_mean writes it
        blob.num, blob.channels, blob.height, blob.width = 1, 3, S, S
    else:
        blob.shape.dim.extend([1, 3, S, S])
    blob.data.extend(bgr.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    np.save(tmp_path / "mean.npy", bgr)
    np.save(tmp_path / "mean_hwc.npy", bgr[::-1].transpose(1, 2, 0))
    want = np.stack([bgr[2], bgr[1], bgr[0]], axis=-1)  # (S, S, R G B)
    for name, layout in (("mean.binaryproto", "caffe"), ("mean.npy", "caffe"),
                         ("mean_hwc.npy", "hwc_rgb")):  # fmt: skip
        got = augment.load_mean_file(str(tmp_path / name), layout, S)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)


def test_mean_file_is_what_evaluation_subtracts(tmp_path, monkeypatch):
    from alexnet_jax import input_pipeline

    bgr = _bgr_mean()
    np.save(tmp_path / "mean.npy", bgr)
    config = alexnet_config.get_config()
    config.resize_size, config.image_size = S, SIZE
    config.augment.mean_file = str(tmp_path / "mean.npy")

    def no_training_data(*args, **kwargs):
        raise AssertionError("the training split was read")

    monkeypatch.setattr(input_pipeline, "load_data_stats", no_training_data)
    stats = input_pipeline.eval_data_stats(config)
    images = _random_images(0, 2)
    got = np.asarray(augment.eval_views(images, stats, config.augment, SIZE, ten_crop=False))
    o = (S - SIZE) // 2
    rgb = bgr[::-1].transpose(1, 2, 0)
    want = (images.astype(np.float64) - rgb)[:, o : o + SIZE, o : o + SIZE]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    config.augment.mean = "channel"
    got = np.asarray(augment.eval_views(images, input_pipeline.eval_data_stats(config),
                                        config.augment, SIZE, ten_crop=False))  # fmt: skip
    want = (images.astype(np.float64) - rgb.mean(axis=(0, 1)))[:, o : o + SIZE, o : o + SIZE]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


def test_training_statistics_keep_their_pca_and_take_the_files_mean(tmp_path):
    from alexnet_jax import input_pipeline

    config = alexnet_config.get_config()
    config.update(dict(dataset="digits", resize_size=S, batch_size=64, num_workers=0,
                       cache_dir=str(tmp_path / "cache")))  # fmt: skip
    computed = input_pipeline.load_data_stats(config, input_pipeline.create_source(config, "train"))
    bgr = _bgr_mean()
    np.save(tmp_path / "mean.npy", bgr)
    config.augment.mean_file = str(tmp_path / "mean.npy")
    both = input_pipeline.load_data_stats(config, input_pipeline.create_source(config, "train"))
    np.testing.assert_array_equal(both.mean_image, bgr[::-1].transpose(1, 2, 0))
    np.testing.assert_array_equal(both.pca_eigvals, computed.pca_eigvals)
    np.testing.assert_array_equal(both.pca_eigvecs, computed.pca_eigvecs)


def test_bad_mean_files_get_one_clear_message(tmp_path):
    bgr = _bgr_mean()
    np.save(tmp_path / "chw.npy", bgr)
    np.save(tmp_path / "small.npy", bgr[:, :4, :4])
    np.save(tmp_path / "unit.npy", bgr / 255.0)
    (tmp_path / "cut.binaryproto").write_bytes(b"\x2a\xff\xff\x03\x00\x00")  # data, cut short
    (tmp_path / "text.npy").write_text("not an array")
    cases = [
        ("missing.npy", "caffe", "does not exist"),
        ("chw.npy", "hwc_rgb", r"expects \(H, W, 3\).*mean_file_layout='caffe'"),
        ("small.npy", "caffe", r"4x4 mean image.*12x12.*resize_size=4"),
        ("unit.npy", "caffe", "values in 0..1.*times 255"),
        ("cut.binaryproto", "caffe", "not a Caffe BlobProto file"),
        ("cut.binaryproto", "hwc_rgb", "set augment.mean_file_layout='caffe'"),
        ("text.npy", "caffe", "not a .npy array"),
        ("chw.npy", "chw", "mean_file_layout='chw': expected one of"),
    ]
    for name, layout, match in cases:
        with pytest.raises(ValueError, match=match):
            augment.load_mean_file(str(tmp_path / name), layout, S)
    cfg = alexnet_config.get_augment_config()
    cfg.mean, cfg.mean_file = "fixed", str(tmp_path / "chw.npy")
    with pytest.raises(ValueError, match="mean_file=.*only with augment.mean='image' or 'channel'"):
        augment.check_augment_config(cfg)


def test_a_bad_mean_file_is_refused_with_the_config_before_anything_runs(tmp_path):
    from alexnet_jax import train
    from configs import default

    config = default.get_config()
    config.augment.mean_file = str(tmp_path / "nothere.npy")
    config.augment.mean = "fixed"  # a mean file that would be ignored
    with pytest.raises(ValueError, match="mean_file=.*only with augment.mean='image'"):
        train.check_config(config, num_devices=1)
    config.augment.mean = "image"
    with pytest.raises(ValueError, match="(?s)Invalid config.*nothere.npy' does not exist"):
        train.check_config(config, num_devices=1)
    np.save(tmp_path / "ok.npy", np.full((3, config.resize_size, config.resize_size), 100.0))
    config.augment.mean_file = str(tmp_path / "ok.npy")
    train.check_config(config, num_devices=1)
