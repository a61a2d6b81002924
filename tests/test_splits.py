"""The roles of the splits: a validation split held out of train, the test split read once.

Every shipped config is loaded, and none may let the test split choose anything: the plateau
schedule (§5) reads the evaluations during training, so they must run on a validation split.
"""

import importlib.util
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from alexnet_jax import config_checks, input_pipeline, splits, train
from configs import alexnet as alexnet_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (ROOT / "configs").rglob("*.py") if p.name != "__init__.py")


def _load(path: Path) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _digits(**overrides) -> ml_collections.ConfigDict:
    config = alexnet_config.get_config()
    config.dataset = "digits"
    config.resize_size = 8
    config.update_from_flattened_dict(overrides)
    return config


def test_every_config_file_is_found():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIG_FILES}
    assert {"alexnet.py", "default.py", "cifar10_fig1.py", "cifar10_lrn.py"} <= names
    assert "ablations/no_lrn.py" in names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_shipped_config_chooses_on_the_test_split(path):
    config = _load(path)
    eval_base = splits.parse_split(config.eval_split)[0]
    if config.optimizer.schedule == "plateau":
        assert eval_base != "test", f"{path.name}: the plateau schedule reads the test split"
        assert config.eval_split != config.test_split
    # A test split, where there is one, is neither trained on nor evaluated during training.
    if config.test_split:
        assert config.test_split not in (config.train_split, config.eval_split)
        assert splits.parse_split(config.test_split)[0] not in (
            splits.parse_split(config.train_split)[0],
            eval_base,
        )
    assert config_checks.split_problems(config) == []


@pytest.mark.parametrize("name", ["default.py", "cifar10_fig1.py", "cifar10_lrn.py"])
def test_small_data_configs_hold_validation_out_of_train_and_test_once(name):
    config = _load(ROOT / "configs" / name)
    assert splits.parse_split(config.train_split)[0] == "train"
    assert splits.parse_split(config.eval_split)[0] == "train"
    assert config.test_split == "test"


def test_default_config_splits_are_disjoint_and_cover_train():
    config = _load(ROOT / "configs" / "default.py")
    train_s = input_pipeline.create_source(config, config.train_split)
    eval_s = input_pipeline.create_source(config, config.eval_split)
    test_s = input_pipeline.create_source(config, config.test_split)
    assert (len(train_s), len(eval_s), len(test_s)) == (1150, 287, 360)  # round(0.8 * 1437)
    assert splits.shared_examples(train_s, eval_s) == 0
    assert splits.shared_examples(train_s, test_s) == 0
    whole = input_pipeline.create_source(config, "train")
    # The two slices are the whole training split, in order.
    np.testing.assert_array_equal(train_s[1149]["image"], whole[1149]["image"])
    np.testing.assert_array_equal(eval_s[0]["image"], whole[1150]["image"])


def test_plateau_on_the_test_split_is_refused():
    config = _digits(eval_split="test")
    assert config.optimizer.schedule == "plateau"
    with pytest.raises(ValueError, match="test split would choose the schedule"):
        train.check_config(config, num_devices=1)
    config.optimizer.schedule = "constant"  # Reporting only: allowed.
    assert config_checks.split_problems(config) == []
    config = _digits(eval_split="train[80%:]", test_split="train[80%:]")
    with pytest.raises(ValueError, match="test split would choose"):
        train.check_config(config, num_devices=1)


def test_overlapping_splits_are_refused_before_training(tmp_path):
    config = _digits(train_split="train", eval_split="train[80%:]", test_split="test")
    config.model.name, config.model.towers, config.model.num_classes = "cifar_fig1", 1, 10
    config.model.dropout_rate = 0.0
    config.image_size, config.resize_size = 32, 32
    with pytest.raises(ValueError, match="eval_split='train\\[80%:\\]' shares 287 examples"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "split, n, expected",
    [
        ("train", 10, range(0, 10)),
        ("train[:80%]", 1437, range(0, 1150)),  # round(1149.6): TFDS's 'closest' rule
        ("train[80%:]", 1437, range(1150, 1437)),
        ("train[:40000]", 50000, range(0, 40000)),
        ("train[40000:]", 50000, range(40000, 50000)),
        ("train[-10%:]", 50, range(45, 50)),
        ("train[2:-2]", 10, range(2, 8)),
        ("train[:200]", 10, range(0, 10)),
    ],
)
def test_slice_ranges(split, n, expected):
    assert splits.slice_range(split, n) == expected


def test_complementary_percent_slices_partition_every_length():
    for n in range(1, 300):
        for p in (1, 10, 20, 33, 50, 80, 99):
            a = splits.slice_range(f"train[:{p}%]", n)
            b = splits.slice_range(f"train[{p}%:]", n)
            assert a.start == 0 and a.stop == b.start and b.stop == n


def test_bad_slices_and_the_missing_digits_validation_split_are_refused():
    config = _digits()
    with pytest.raises(ValueError, match="not a split name or one slice"):
        input_pipeline.create_source(config, "train[:80%")
    with pytest.raises(ValueError, match="is empty"):
        input_pipeline.create_source(config, "train[100%:]")
    with pytest.raises(ValueError, match="hold a validation split out"):
        input_pipeline.create_source(config, "validation")


def test_a_sliced_source_reads_the_base_examples():
    config = _digits()
    whole = input_pipeline.create_source(config, "test")
    part = input_pipeline.create_source(config, "test[10:20]")
    assert len(part) == 10 and part.split == "test[10:20]" and part.num_classes == 10
    for i in range(10):
        assert part[i]["label"] == whole[10 + i]["label"]
        np.testing.assert_array_equal(part[i]["image"], whole[10 + i]["image"])
    with pytest.raises(IndexError):
        part[10]
    assert splits.shared_examples(part, whole) == 10
    assert splits.shared_examples(part, input_pipeline.create_source(config, "test[15:]")) == 5
    assert splits.shared_examples(part, input_pipeline.create_source(config, "train")) == 0
    # The statistics of a slice are cached apart from those of the whole split.
    assert input_pipeline.stats_cache_path(config, part) != input_pipeline.stats_cache_path(
        config, whole
    )


def test_the_experiment_scripts_configs_do_not_choose_on_the_test_split():
    from experiments.paper import relu_vs_tanh
    from experiments.sweep import plan as sweep_plan

    derived = [
        relu_vs_tanh.make_config("digits", "relu", 0.01, seed=0, epochs=1),
        sweep_plan.base_config("cifar", None, "", {}),
        sweep_plan.base_config("alexnet", "digits", "", {"model.name": "cifar_lrn"}),
    ]
    for config in derived:
        assert config_checks.split_problems(config) == []
        assert splits.parse_split(config.eval_split)[0] != "test"
        assert config.test_split in ("", "test")
