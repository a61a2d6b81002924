"""Each paper-reproduction script of experiments/ end to end in its quick mode (tiny budgets),
so that they keep working as the training system changes."""

import argparse
import json

import numpy as np
import pytest

from alexnet_jax import train
from alexnet_jax.published import ABLATION_CLAIMS
from configs import alexnet as alexnet_config
from experiments.paper import ablations, filters, neighbors, paper_tables, relu_vs_tanh
from experiments.sweep import plan as sweep_plan


@pytest.fixture(scope="module")
def ablation_quick(tmp_path_factory):
    """experiments/paper/ablations.py --quick: (results, results folder, folder of the runs). Its
    'paper' run (the offline default config, 4 steps) is the trained run the other scripts read."""
    out = tmp_path_factory.mktemp("ablations")
    results = ablations.main(["--quick", f"--out={out}", f"--workdir={out / 'runs'}"])
    return results, out, out / "runs"


@pytest.fixture(scope="module")
def digits_run(ablation_quick):
    return ablation_quick[2] / "paper_seed0"


@pytest.mark.slow
def test_relu_vs_tanh_quick(tmp_path):
    summary = relu_vs_tanh.main(["--quick", "--dataset=digits", f"--out={tmp_path}"])
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["threshold"] == 0.05 and set(data["runs"]) == {"relu", "tanh"}
    for activation in ("relu", "tanh"):
        (run,) = data["runs"][activation]
        assert [p["step"] for p in run["curve"]] == [2, 4, 6, 8]
        assert all(p["seconds"] > 0 for p in run["curve"])
    assert summary["relu"]["lr"] == 0.01
    assert (tmp_path / "figure1.png").stat().st_size > 10_000
    assert "| relu |" in (tmp_path / "results.md").read_text()


def test_time_to_threshold_counts_the_first_epoch_at_or_below_it():
    curve = [
        {"epoch": 1.0, "train_top1_error": 0.5, "seconds": 3.0},
        {"epoch": 2.0, "train_top1_error": 0.25, "seconds": 2.0},
        {"epoch": 3.0, "train_top1_error": 0.1, "seconds": 2.0},
    ]
    assert relu_vs_tanh.time_to_threshold(curve, 0.25) == {
        "reached": True, "epochs": 2.0, "seconds": 5.0
    }  # fmt: skip
    assert not relu_vs_tanh.time_to_threshold(curve, 0.05)["reached"]


def test_ablation_switches_come_from_the_ablation_configs():
    assert sweep_plan.switch("no_lrn") == {"model.lrn": False}
    assert sweep_plan.switch("no_overlap") == {"model.pool_window": 2}
    assert sweep_plan.switch("one_tower") == {"model.towers": 1}
    assert sweep_plan.switch("no_pca") == {"augment.pca_color": False}
    assert sweep_plan.switch("no_dropout") == {"model.dropout_rate": 0.0}
    assert sweep_plan.switch("tanh") == {"model.activation": "tanh"}
    for n in (2, 3, 4, 5):  # §7: one middle conv layer each
        assert sweep_plan.switch(f"no_conv{n}") == {"model.remove_conv": (f"conv{n}",)}
    assert sweep_plan.switch("extra_conv6") == {"model.extra_conv": 256}
    new_rows = {"no_conv2", "no_conv3", "no_conv4", "no_conv5", "extra_conv6"}
    assert set(sweep_plan.VARIANTS) >= new_rows
    assert all(name in ABLATION_CLAIMS for name in sweep_plan.VARIANTS)


@pytest.mark.slow
def test_ablations_quick(ablation_quick):
    results, out, runs = ablation_quick
    assert len(results["paper"]["runs"]) == 1 and len(results["no_lrn"]["runs"]) == 1
    assert results["one_tower"]["runs"] is None  # AlexNet structure: not in the CIFAR net
    table = (out / "results.md").read_text()
    assert "| no_lrn | `model.lrn=False` |" in table and "not run (AlexNet only)" in table
    data = json.loads((out / "results.json").read_text())
    paper, no_lrn = data["results"]["paper"]["runs"][0], data["results"]["no_lrn"]["runs"][0]
    # The test split's error when the base config has one (reported once), else the last eval.
    key = "test_top1_error" if paper.get("test_top1_error") is not None else "eval_top1_error"
    change = 100 * (no_lrn[key] - paper[key])
    assert f"| {change:+.2f} (n = 1)" in table  # one seed: no spread shown
    assert paper["status"] == "started" and data["seconds"] > 0
    # Run again: both runs are finished, so they are skipped with the same numbers.
    again = ablations.main(["--quick", f"--out={out}", f"--workdir={runs}"])
    assert [r["status"] for r in again["paper"]["runs"] + again["no_lrn"]["runs"]] == [
        "skipped", "skipped"
    ]  # fmt: skip
    assert again["no_lrn"]["runs"][0][key] == no_lrn[key]


@pytest.mark.slow
def test_paper_tables(digits_run, tmp_path):
    result = paper_tables.main([f"--workdir={digits_run}", f"--out={tmp_path}"])
    assert result["eval_examples"] == 360
    for key in ("eval_top1_error", "eval10_top1_error", "eval10_top5_error"):
        assert 0.0 <= result[key] <= 1.0
    # The tables read the run's test split; its centre crop equals the test error that
    # training logged, once, at the end, for the same checkpoint.
    logged = [e for e in train.metrics.read_metrics(str(digits_run)) if "test_loss" in e][-1]
    assert result["eval_top1_error"] == pytest.approx(logged["test_top1_error"])
    text = (tmp_path / "results.md").read_text()
    assert "| Table 2 | ILSVRC-2012 val | 1 CNN | 40.7 | 18.2 |" in text
    assert (
        "| 2012 code | ILSVRC-2010 test | #145-2010, centre patch (same file:180) | 39.02 | 18.30 |"
        in text
    )


@pytest.mark.slow
def test_neighbors(digits_run, tmp_path):
    summary = neighbors.main([f"--workdir={digits_run}", f"--out={tmp_path}", "--queries=2"])
    assert summary["layer"] == "local4_out"
    assert np.array(summary["neighbours"]).shape == (2, 6)
    assert 0.0 <= summary["label_agreement"] <= 1.0
    assert (tmp_path / "neighbors.png").exists()


def test_nearest_is_euclidean():
    keys = np.array([[0.0, 0.0], [10.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(neighbors.nearest(np.array([[9.0, 0.0]]), keys, 2), [[1, 2]])


@pytest.mark.slow
def test_filters_of_a_two_tower_alexnet(tmp_path):
    """A freshly initialised two-tower AlexNet saved as a run: config.json and a checkpoint."""
    import jax
    import orbax.checkpoint as ocp

    from alexnet_jax import parallel

    config = alexnet_config.get_config()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config.to_json_best_effort())
    params = parallel.init_params(config.model, (227, 227, 3), jax.random.key(0))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(run / "checkpoints" / "0" / "state", {"params": params})
    summary = filters.main([f"--workdir={run}", f"--out={tmp_path / 'out'}"])
    colour = np.array(summary["colourfulness"])
    assert summary["step"] == 0
    assert colour.shape == (2, 48)  # two towers of 48 11x11x3 kernels
    # N(0, 0.01) random kernels: colour noise, about 2/3 of the energy off the grey axis.
    assert 0.6 < colour.mean() < 0.72
    assert (tmp_path / "out" / "conv1_filters.png").exists()


def test_colourfulness_is_zero_for_grey_and_two_thirds_for_one_channel():
    grey = np.random.default_rng(0).normal(size=(11, 11, 1)).repeat(3, axis=-1)
    assert filters.colourfulness(grey) == pytest.approx(0.0, abs=1e-12)
    red = np.zeros((11, 11, 3))
    red[..., 0] = np.random.default_rng(1).normal(size=(11, 11))
    # Energy in one channel: grey holds 1/3 of it, so 2/3 is off the grey axis (about the mean).
    assert filters.colourfulness(red) == pytest.approx(2 / 3, rel=0.05)


@pytest.mark.slow
def test_gpu_report_quick_runs_every_step(tmp_path):
    from experiments.bench import gpu_report

    report = gpu_report.main(["--quick", "--out", str(tmp_path)])
    assert set(report["harness"]) == {"b2_float32_auto", "b2_float32_cpu"}
    for tag, run in report["harness"].items():
        assert run is not None, (tmp_path / f"benchmark_{tag}.txt").read_text()
        assert run["jax_train_images_per_sec"] > 0
    assert report["harness"]["b2_float32_auto"]["kernels_resolved"] == "cpu"  # the CPU backend
    assert report["harness"]["b2_float32_cpu"]["kernels"] == "cpu"
    # The tests simulate 4 CPU devices (conftest), so the tower split is measured too.
    assert report["environment"]["device_count"] >= 2
    assert report["tower_split"]["ratio"] > 0, (tmp_path / "tower_split.txt").read_text()
    assert report["input_pipeline"]["host_256_w0"] > 0
    text = (tmp_path / "report.md").read_text()
    assert "QUICK" in text and "Tower split" in text and "the input" in text
    assert json.loads((tmp_path / "report.json").read_text())["quick"] is True


def test_the_ablations_run_against_the_2012_code_and_no_lrn_removes_both_normalizations(tmp_path):
    from alexnet_jax import summary

    base = sweep_plan.load_base("configs/alexnet_2012_code.py")
    planned = ablations.plan(base, ["no_lrn", "no_overlap", "one_tower"], 1, tmp_path)
    assert planned["no_lrn"]["overrides"] == {"model.lrn": False}
    _, config, _ = planned["no_lrn"]["runs"][0]
    assert config.optimizer.schedule == "manual"  # the base's recipe, not the paper's
    layers = [r.layer for r in summary.layer_table(config)]
    assert "lrn1" not in layers and "wnorm2" not in layers  # as run #148
    code_layers = [r.layer for r in summary.layer_table(base)]
    assert "lrn1" in code_layers and "wnorm2" in code_layers
    _, pooled, _ = planned["no_overlap"]["runs"][0]
    assert pooled.model.pool_window == 2 and pooled.model.within_map_after == ("conv2",)


def test_the_ablation_runner_scales_the_base_schedule_when_asked():
    base = "configs/alexnet_2012_code.py"
    budget = {"num_epochs": 10}
    kept = sweep_plan.base_config(base, "digits", "", budget)
    assert kept.optimizer.manual_schedule == ((25, 1e-3), (51, 1e-4), (79, 1e-5))
    scaled = sweep_plan.base_config(base, "digits", "", budget, scale_schedule=True)
    f = 10 / 91
    assert scaled.optimizer.manual_schedule == ((25 * f, 1e-3), (51 * f, 1e-4), (79 * f, 1e-5))
    assert scaled.augment.pca_color_end_epoch == pytest.approx(67 * f)
    paper = sweep_plan.base_config("alexnet", "digits", "", {"num_epochs": 9}, scale_schedule=True)
    assert paper.optimizer.step_epochs == pytest.approx((3, 6, 8))  # (30, 60, 80) of 90


def test_paper_vs_code_scales_the_2012_epochs_to_the_budget():
    from experiments.paper import paper_vs_code

    args = argparse.Namespace(
        dataset="digits", data_dir="", epochs=13, steps=-1, batch_size=32, quick=False
    )
    code = paper_vs_code.build("2012_code", args, seed=2)
    f = 13 / 91
    assert code.optimizer.manual_schedule == ((25 * f, 1e-3), (51 * f, 1e-4), (79 * f, 1e-5))
    assert code.optimizer.layer_lr_multipliers == (
        ("conv1/kernel", ((67 * f, 0.1),)), ("conv1", ((72 * f, 0.0),)),
    )  # fmt: skip
    assert code.augment.pca_color_end_epoch == pytest.approx(67 * f)
    assert (code.seed, code.num_epochs, code.model.num_classes) == (2, 13, 10)
    paper = paper_vs_code.build("paper", args, seed=2)
    # The same data, budget and cadence; only what the two configs differ in differs.
    assert paper.eval_every_steps == code.eval_every_steps == 35  # one epoch of 1,150 / 32
    assert (paper.dataset, paper.train_split, paper.test_split) == (
        code.dataset, code.train_split, code.test_split,
    )  # fmt: skip
    assert paper.optimizer.schedule == "plateau" and code.optimizer.schedule == "manual"


def test_a_run_recorded_by_older_code_still_loads(tmp_path):
    from experiments import common

    saved = json.loads(alexnet_config.get_config().to_json_best_effort())
    del saved["model"]["kernels"]  # added since
    saved["model"]["conv1_matmul"] = True  # removed since
    saved["model"]["lrn"] = False  # the run's own value is kept
    saved["optimizer"]["step_epochs"] = [10, 20]
    del saved["model"]["dropout_scaling"]  # added since, with another behaviour before it
    del saved["model"]["within_map_after"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = common.run_config(tmp_path)
    assert config.model.kernels == "auto" and "conv1_matmul" not in config.model
    # A run from before dropout_scaling used inverted dropout: evaluated as it was trained.
    assert config.model.dropout_scaling == "inverted" and config.model.within_map_after == ()
    assert config.model.lrn is False and config.optimizer.step_epochs == (10, 20)


@pytest.mark.slow
def test_paper_vs_code_quick(tmp_path):
    from experiments.paper import paper_vs_code

    results = paper_vs_code.main(
        ["--quick", f"--out={tmp_path / 'out'}", f"--workdir={tmp_path / 'runs'}", "--fresh"]
    )
    assert set(results) == {"paper", "2012_code"}
    for runs in results.values():
        assert len(runs) == 1 and 0.0 <= runs[0]["test_top1_error"] <= 1.0
    text = (tmp_path / "out" / "paper_vs_code.md").read_text()
    assert "2012_code" in text and "proxy" in text and "2 steps of batch 32" in text
