"""`python -m alexnet_jax.summary`: the per-layer table and its totals."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet_jax import summary
from configs import alexnet as alexnet_config

ROOT = Path(__file__).resolve().parents[1]


def _config(**model):
    config = alexnet_config.get_config()
    config.model.update(model)
    return config


@pytest.mark.slow
def test_summary_command_prints_the_paper_count():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.summary", "--config=configs/alexnet.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "60,965,224 parameters" in out
    assert "724,406,816" in out  # multiply-adds per image (docs/paper.md: about 724M)
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for layer, shape in [
        ("conv1", "55x55x96"),
        ("pool1", "27x27x96"),
        ("conv2", "27x27x256"),
        ("pool2", "13x13x256"),
        ("conv3", "13x13x384"),
        ("conv4", "13x13x384"),
        ("conv5", "13x13x256"),
        ("pool5", "6x6x256"),
    ]:
        assert shape in rows[layer], rows[layer]
    assert "9216 -> 2048" in rows["fc6"]
    assert "cuda-convnet2" in out  # 224 input: the rounding rule is named


@pytest.mark.parametrize("size", [224, 227])
def test_table_shapes_for_both_input_sizes(size):
    config = _config()
    config.image_size = size
    rows = {r.layer: r for r in summary.layer_table(config)}
    spatial = [
        rows[k].output[0]
        for k in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
    ]
    assert spatial == [55, 27, 27, 13, 13, 13, 13, 6]
    assert rows["fc6"].kernel == "9216 -> 2048"
    # conv2 sees only its own tower: 5x5x48 per tower; conv3 sees both: 3x3x256.
    assert rows["conv2"].kernel == "5x5x48 -> 128" and rows["conv2"].towers == "2 x own"
    assert rows["conv3"].kernel == "3x3x256 -> 192" and rows["conv3"].towers == "2 x both"


@pytest.mark.parametrize(
    "model, params, macs",
    [
        ({}, 60_965_224, 724_406_816),
        # One-GPU net (§3.2 fn. 2): conv1 55^2*363*48 = 52,707,600; conv2 27^2*1200*128 =
        # 111,974,400; conv3 13^2*1152*192 = 37,380,096; conv4 13^2*1728*192 = 56,070,144;
        # conv5 13^2*1728*256 = 74,760,192; fc 37,748,736 + 16,777,216 + 4,096,000.
        ({"towers": 1}, 59_798_312, 391_514_384),
        # Ungrouped: conv2 and conv4/conv5 read all maps, 36% more multiply-adds (docs/paper.md).
        ({"towers": 1, "one_tower_kernels": "full"}, 62_378_344, 1_135_256_096),
    ],
)
def test_totals_of_each_variant(model, params, macs):
    table = summary.format_table(summary.layer_table(_config(**model)))
    assert f"{params:,} parameters" in table
    assert f"{macs:,}" in table


# Hand counts, kernel shapes x towers + biases, of the paper's two-tower layers:
_CONV1 = 2 * (11 * 11 * 3 * 48 + 48)  # 34,944
_CONV2 = 2 * (5 * 5 * 48 * 128 + 128)  # 307,456
_CONV3 = 2 * (3 * 3 * 256 * 192 + 192)  # 885,120
_CONV4 = 2 * (3 * 3 * 192 * 192 + 192)  # 663,936
_CONV5 = 2 * (3 * 3 * 192 * 128 + 128)  # 442,624
_FC6 = 2 * (6 * 6 * 256 * 2048 + 2048)  # 37,752,832
_FC7 = 2 * (4096 * 2048 + 2048)  # 16,781,312
_FC8 = 2 * (4096 * 500 + 500)  # 4,097,000
_PAPER = _CONV1 + _CONV2 + _CONV3 + _CONV4 + _CONV5 + _FC6 + _FC7 + _FC8


@pytest.mark.parametrize(
    "model, params, removed_row",
    [
        ({}, _PAPER, None),
        # conv2 gone: conv3 (both towers) reads pool2 of conv1's 96 maps.
        ({"remove_conv": ("conv2",)}, _PAPER - _CONV2 - _CONV3 + 2 * (3 * 3 * 96 * 192 + 192),
         "conv2"),
        # conv3 gone: conv4 (own tower) reads its tower's 128 maps of pool2.
        ({"remove_conv": ("conv3",)}, _PAPER - _CONV3 - _CONV4 + 2 * (3 * 3 * 128 * 192 + 192),
         "conv3"),
        # conv4 gone: conv5 (own tower) reads conv3's 192 per tower, as it read conv4's.
        ({"remove_conv": ("conv4",)}, _PAPER - _CONV4, "conv4"),
        # conv5 gone: pool5 pools conv4's 384 maps, fc6 reads 6 x 6 x 384.
        ({"remove_conv": ("conv5",)}, _PAPER - _CONV5 - _FC6 + 2 * (6 * 6 * 384 * 2048 + 2048),
         "conv5"),
        # Table 2's sixth layer, 256 kernels (128 per tower) over pool5, own tower or both.
        ({"extra_conv": 256}, _PAPER + 2 * (3 * 3 * 128 * 128 + 128), None),
        ({"extra_conv": 256, "extra_conv_sees": "both"}, _PAPER + 2 * (3 * 3 * 256 * 128 + 128),
         None),
    ],
)  # fmt: skip
def test_parameter_counts_of_the_architecture_switches(model, params, removed_row):
    rows = summary.layer_table(_config(**model))
    assert sum(r.params for r in rows) == params
    by = {r.layer: r for r in rows}
    if removed_row:  # shown as removed, its pooling kept where the paper has one
        assert by[removed_row].towers == "removed" and by[removed_row].params == 0
    spatial = [by[k].output[0] for k in ("pool1", "pool2", "pool5")]
    assert spatial == [27, 13, 6]
    if "extra_conv" in model:
        assert by["conv6"].output == (6, 6, 256) and by["fc6"].kernel == "9216 -> 2048"


def test_grouping_saves_36_percent_of_the_multiply_adds():
    grouped = sum(r.macs for r in summary.layer_table(_config()))
    full = sum(r.macs for r in summary.layer_table(_config(towers=1, one_tower_kernels="full")))
    assert round(1 - grouped / full, 2) == 0.36


def test_the_2012_code_table_shows_its_normalizations_and_the_paper_count():
    from configs import alexnet_2012_code

    rows = summary.layer_table(alexnet_2012_code.get_config())
    names = [r.layer for r in rows]
    # conv1, its LRN (before the ReLU), pool1; conv2, LRN, the within-map cnorm2, pool2.
    assert names[:8] == ["input", "conv1", "lrn1", "pool1", "conv2", "lrn2", "wnorm2", "pool2"]
    by = {r.layer: r for r in rows}
    assert "before the ReLU" in by["lrn1"].kernel and "a=2e-05 k=2" in by["lrn1"].kernel
    assert "within-map 5x5, a=4e-05 k=1" in by["wnorm2"].kernel
    assert by["wnorm2"].output == (27, 27, 256)
    assert sum(r.params for r in rows) == 60_965_224  # no layer with weights changes
    paper = [r.layer for r in summary.layer_table(_config())]
    assert "wnorm2" not in paper and "lrn1" in paper


@pytest.mark.slow
def test_a_config_the_network_refuses_is_one_line_and_a_non_zero_exit():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "alexnet_jax.summary",
            "--config=configs/alexnet.py",
            "--config.model.lrn_before_relu=('conv9',)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.lrn_before_relu" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
