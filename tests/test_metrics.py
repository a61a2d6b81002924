"""metrics.py: cross-entropy and top-k against NumPy, and the metric writers' files."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import metrics


def test_cross_entropy_matches_float64_log_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 11)) * 5
    labels = rng.integers(0, 11, 6)
    shifted = logits - logits.max(axis=1, keepdims=True)
    want = -(shifted[np.arange(6), labels] - np.log(np.exp(shifted).sum(axis=1)))
    got = metrics.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    assert got.shape == (6,)  # per example: the step averages it


@pytest.mark.parametrize("k", [1, 3, 5])
def test_topk_correct_matches_argsort_without_ties(k):
    rng = np.random.default_rng(k)
    scores = rng.permuted(np.tile(np.arange(10.0), (50, 1)), axis=1)  # distinct per row
    labels = rng.integers(0, 10, 50)
    want = [label in np.argsort(-row)[:k] for row, label in zip(scores, labels)]
    got = metrics.topk_correct(jnp.asarray(scores), jnp.asarray(labels), k)
    assert np.asarray(got).tolist() == want


def test_ties_count_against_and_a_constant_output_is_never_correct():
    labels = jnp.array([0, 1])
    constant = jnp.zeros((2, 4))
    assert not np.asarray(metrics.topk_correct(constant, labels, 1)).any()
    assert not np.asarray(metrics.topk_correct(constant, labels, 3)).any()
    assert np.asarray(metrics.topk_correct(constant, labels, 4)).all()  # k = classes: all in
    # Label 0 ties with class 2 for the top score: not a top-1 hit, a top-2 hit.
    tied = jnp.array([[5.0, 1.0, 5.0, 0.0]])
    assert not bool(metrics.topk_correct(tied, jnp.array([0]), 1)[0])
    assert bool(metrics.topk_correct(tied, jnp.array([0]), 2)[0])


def test_writer_appends_events_and_non_finite_values_as_strings(tmp_path):
    writer = metrics.MetricWriter(str(tmp_path))
    assert not (tmp_path / "tensorboard").exists()  # nothing written before the first event
    writer.write(1, {"train_loss": np.float32(2.5), "n": jnp.int32(3)})
    writer.write(2, {"train_loss": math.nan, "eval_top1_error": 0.25})
    writer.close()
    events = metrics.read_metrics(str(tmp_path))
    assert events == [
        {"step": 1, "train_loss": 2.5, "n": 3},
        {"step": 2, "train_loss": "nan", "eval_top1_error": 0.25},
    ]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    assert any((tmp_path / "tensorboard").iterdir())


def test_resume_drops_events_logged_after_the_checkpoint(tmp_path):
    writer = metrics.MetricWriter(str(tmp_path))
    for step in (10, 20, 30, 40):
        writer.write(step, {"train_loss": float(step)})
    writer.close()
    # The run is killed after step 40 and resumes from the checkpoint of step 20.
    resumed = metrics.MetricWriter(str(tmp_path), resume_step=20)
    resumed.write(30, {"train_loss": -1.0})
    resumed.close()
    got = [(e["step"], e["train_loss"]) for e in metrics.read_metrics(str(tmp_path))]
    assert got == [(10, 10.0), (20, 20.0), (30, -1.0)]
