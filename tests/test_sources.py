"""The sources on their own: dataset names, image conversion and resizing, indexing, overlaps.

The datasets end to end (folders with bad files, TFDS ArrayRecord, prepared copies) are in
test_input_pipeline.py; split slicing in test_splits.py.
"""

import io

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import datasets, images, sources, splits
from configs import default


@pytest.mark.parametrize(
    "dataset, parsed",
    [
        ("digits", ("digits", "")),
        ("synthetic", ("synthetic", "")),
        ("tfds:imagenet2012", ("tfds", "imagenet2012")),
        ("folder:/data/a:b", ("folder", "/data/a:b")),
        ("prepared:/x", ("prepared", "/x")),
    ],
)
def test_parse_dataset(dataset, parsed):
    assert datasets.parse_dataset(dataset) == parsed


@pytest.mark.parametrize("dataset", ["imagenet", "tfds:", "digits:x", "folder", "digits:"])
def test_unknown_dataset_names_are_refused_with_the_forms(dataset):
    with pytest.raises(ValueError, match="'tfds:<name>'.*'digits' or 'synthetic'"):
        datasets.parse_dataset(dataset)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey16 = Image.fromarray(np.full((4, 4), 32768, np.uint16))  # mode I;16: half scale
    rgb = np.asarray(images.to_rgb(grey16))
    assert rgb.shape == (4, 4, 3) and (rgb == round(32768 / 257)).all()


def test_transparent_pixels_become_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # one opaque pixel, the others fully transparent
    rgb = np.asarray(images.to_rgb(Image.fromarray(rgba, "RGBA")))
    assert rgb[0, 0].tolist() == [10, 20, 30] and (rgb[1, 1] == 255).all()


def test_resize_square_keeps_the_central_square_of_a_wide_image():
    # 8 wide, 4 high: columns 0-1 and 6-7 are outside the central 4x4 square.
    x = np.zeros((4, 8, 3), np.uint8)
    x[:, :2], x[:, 6:] = 255, 255
    out = images.resize_square(Image.fromarray(x), 4)
    assert out.shape == (4, 4, 3) and (out == 0).all()
    small = images.resize_square(Image.fromarray(np.full((2, 3, 3), 7, np.uint8)), 4)
    assert small.shape == (4, 4, 3) and (small == 7).all()  # upscaled by the same rule


def test_decode_names_truncated_and_undecodable_files():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    good = buf.getvalue()
    assert images.decode_square(good, 32, "ok.jpg").shape == (32, 32, 3)
    with pytest.raises(images.BadExample) as info:
        images.decode_square(good[: len(good) // 2], 32, "half.jpg")
    assert info.value.reason == "truncated" and "half.jpg" in str(info.value)
    with pytest.raises(images.BadExample) as info:
        images.decode_square(b"not an image", 32, "text.jpg")
    assert info.value.reason == "undecodable"


def test_indexing_is_bounded_and_examples_have_the_contract():
    config = default.get_config()
    source = datasets.create_source(config, "test")
    assert len(source) == 360 and source.num_classes == 10
    example = source[359]
    assert example["image"].shape == (36, 36, 3) and example["image"].dtype == np.uint8
    assert 0 <= example["label"] < 10
    with pytest.raises(IndexError, match="out of range"):
        source[360]


def test_shared_examples_counts_overlapping_slices_of_one_split():
    config = default.get_config()
    train = datasets.create_source(config, "train")  # 1,437
    head = datasets.create_source(config, "train[:80%]")
    tail = datasets.create_source(config, "train[70%:]")
    test = datasets.create_source(config, "test")
    assert splits.shared_examples(head, tail) == round(0.8 * 1437) - round(0.7 * 1437)
    assert splits.shared_examples(train, head) == len(head)
    assert splits.shared_examples(head, test) == 0


def test_digits_are_scikit_learns_with_its_stratified_split():
    """The arrays `sklearn.datasets.load_digits()` gives, and the split the written-down mask
    holds is train_test_split's (stratified by class, seed 0) on the installed scikit-learn."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels, labels = sources.digits_arrays()
    np.testing.assert_array_equal(pixels, digits.images)
    np.testing.assert_array_equal(labels, digits.target)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=sources.DIGITS_TEST_SIZE, stratify=labels,
        random_state=sources.DIGITS_SPLIT_SEED,
    )  # fmt: skip
    for split, indices in (("train", train), ("test", test)):
        source = sources.DigitsSource(split, 8)
        assert len(source) == len(indices)
        want = np.rint(digits.images[np.sort(indices)] * (255.0 / 16.0)).astype(np.uint8)
        np.testing.assert_array_equal(
            np.stack([source[i]["image"][..., 0] for i in range(len(source))]), want
        )
        assert [source[i]["label"] for i in range(len(source))] == list(
            digits.target[np.sort(indices)]
        )


@pytest.mark.parametrize(
    "content", [b"\x1f\x8b garbled", b"1,2,3\n4,5\n", b"", "truncated"], ids=str
)
def test_a_damaged_digits_file_is_one_line(tmp_path, monkeypatch, content):
    """The file scikit-learn ships, garbled, cut short or empty: one ValueError naming it and
    the fix, never numpy's own error."""
    import gzip
    import types

    data = tmp_path / "sklearn" / "datasets" / "data"
    data.mkdir(parents=True)
    if content == "truncated":
        whole = gzip.compress(b"0," * 64 + b"1\n" * 1797)
        (data / "digits.csv.gz").write_bytes(whole[: len(whole) // 2])
    else:
        (data / "digits.csv.gz").write_bytes(
            gzip.compress(content) if content[:1] != b"\x1f" else content
        )
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path / "sklearn")])
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ValueError, match=r"digits.*(cannot be read|holds).*requirements\.txt"):
        sources.digits_arrays()
