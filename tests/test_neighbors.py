"""experiments/paper/neighbors.py: the streaming top-k equals a brute-force stable argsort,
--max_train and --max_queries stop the streams, and a run's outputs match a brute-force search."""

import json

import numpy as np
import pytest

from alexnet_jax import sources
from experiments import common
from experiments.paper import neighbors


def brute(d2, k):
    d2 = np.where(np.isnan(d2), np.inf, d2)
    ids = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(d2, ids, 1)


@pytest.mark.parametrize("k", [1, 4, 10, 60])
@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
def test_topk_merge_equals_stable_argsort_with_ties(k, chunk):
    rng = np.random.default_rng(k * 100 + chunk)
    d2 = rng.integers(0, 5, (9, 50)).astype(np.float64)  # Many exact ties.
    d2[0] = 1.0  # A row of ties only.
    d2[1, ::3] = np.nan
    labels = rng.integers(0, 10, 50)
    top = neighbors.TopK(len(d2), k)
    for start in range(0, d2.shape[1], chunk):
        top.push(
            d2[:, start : start + chunk],
            np.arange(start, start + chunk)[: 50 - start],
            labels[start : start + chunk],
        )
    ids, dist = brute(d2, k)
    np.testing.assert_array_equal(top.ids, ids)
    np.testing.assert_array_equal(top.d2, dist)
    np.testing.assert_array_equal(top.labels, labels[ids])


def test_topk_with_gaps_in_the_indices_and_uneven_chunks():
    """Streamed indices skip the unreadable examples: chunks of increasing, gappy indices."""
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(1000, 120, replace=False))
    d2 = rng.integers(0, 3, (5, 120)).astype(np.float64)
    top, start = neighbors.TopK(5, 8), 0
    for size in [5, 1, 30, 2, 82]:
        top.push(d2[:, start : start + size], ids[start : start + size])
        start += size
    np.testing.assert_array_equal(top.ids, ids[brute(d2, 8)[0]])
    with pytest.raises(ValueError, match="increase"):
        top.push(d2[:, :1], ids[:1])


def test_nearest_equals_brute_force_on_duplicate_keys():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 4, (300, 6)).astype(np.float32)  # Integer: exact distances.
    keys[150:] = keys[:150]  # Every key twice: exact ties the lower index wins.
    queries = rng.integers(0, 4, (11, 6)).astype(np.float32)
    d2 = ((queries[:, None].astype(np.float64) - keys[None]) ** 2).sum(-1)
    for chunk in (1, 7, 1024):
        np.testing.assert_array_equal(
            neighbors.nearest(queries, keys, 20, chunk=chunk), brute(d2, 20)[0]
        )
    # uint8 pixels, as the search gives them.
    pixels = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    d2 = neighbors.sq_distances(pixels[:5].reshape(5, -1), neighbors.sq_norms(pixels[:5]), pixels)
    exact = (pixels[:5, None].astype(np.int64) - pixels[None].astype(np.int64)) ** 2
    np.testing.assert_array_equal(d2, exact.reshape(5, 40, -1).sum(-1))


@pytest.fixture
def digits_run(trained_run):
    """configs/default.py trained briefly (the session's run; read, not changed)."""
    return trained_run


@pytest.mark.slow
def test_max_train_and_max_queries_stop_the_streams(digits_run, monkeypatch):
    config, _, params = common.load_run(str(digits_run))
    config.num_workers = 0
    read, embedded = [], []
    original_get = sources.DigitsSource.__getitem__
    monkeypatch.setattr(
        sources.DigitsSource,
        "__getitem__",
        lambda self, i: read.append((self.split, i)) or original_get(self, i),
    )
    original_embedder = neighbors.embedder

    def counting_embedder(*args):
        embed = original_embedder(*args)
        return lambda images: embedded.append(len(images)) or embed(images)

    monkeypatch.setattr(neighbors, "embedder", counting_embedder)
    found = neighbors.search(config, params, "local4_out", k=3, max_train=70, max_queries=20)
    assert found["train_images"] == 70 and len(found["query_ids"]) == 20
    assert sum(embedded) == 20 + 70  # batches of 32: 20 | 32 + 32 + 6
    assert embedded == [20, 32, 32, 6]
    # Nothing past N is even decoded: training images from 'train[:80%]' (a slice of digits'
    # 'train' from 0), queries from the run's test split, 'test'.
    assert (config.train_split, config.test_split) == ("train[:80%]", "test")
    assert set(read) == {("train", i) for i in range(70)} | {("test", i) for i in range(20)}
    assert found["feature"].ids.shape == (20, 3) and found["feature"].ids.max() < 70


@pytest.mark.slow
def test_main_matches_a_brute_force_search(digits_run, tmp_path):
    summary = neighbors.main(
        [
            f"--workdir={digits_run}",
            f"--out={tmp_path}",
            "--queries=3",
            "--max_train=200",
            "--max_queries=40",
            "--k=5",
        ]
    )
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["train_images"] == 200 and data["test_queries"] == 40
    assert (tmp_path / "neighbors.png").stat().st_size > 5_000
    assert "| raw pixels |" in (tmp_path / "results.md").read_text()

    # Brute force: every feature and image in memory, one distance matrix, a stable argsort.
    config, _, params = common.load_run(str(digits_run))
    stats = neighbors.input_pipeline.load_data_stats(
        config, neighbors.input_pipeline.create_source(config, config.train_split)
    )
    embed = neighbors.embedder(config, params, "local4_out", stats)
    train = [
        neighbors.input_pipeline.create_source(config, config.train_split)[i] for i in range(200)
    ]
    test = [neighbors.input_pipeline.create_source(config, config.test_split)[i] for i in range(40)]
    tx, ty = np.stack([e["image"] for e in train]), np.array([e["label"] for e in train])
    qx, qy = np.stack([e["image"] for e in test]), np.array([e["label"] for e in test])
    tf, qf = embed(tx).astype(np.float64), embed(qx).astype(np.float64)
    feat = brute(((qf[:, None] - tf[None]) ** 2).sum(-1), 5)[0]
    flat = lambda x: x.reshape(len(x), -1).astype(np.float64)  # noqa: E731
    pix = brute(((flat(qx)[:, None] - flat(tx)[None]) ** 2).sum(-1), 5)[0]
    shown = np.linspace(0, 39, 3).astype(int)
    assert summary["shown_queries"] == shown.tolist()
    np.testing.assert_array_equal(summary["neighbours"], feat[shown])
    assert summary["label_agreement"] == pytest.approx(np.mean(ty[feat] == qy[:, None]))
    assert summary["pixel_label_agreement"] == pytest.approx(np.mean(ty[pix] == qy[:, None]))


@pytest.mark.slow
def test_memory_script_on_two_small_training_sets(tmp_path):
    from experiments.bench import neighbors_memory

    before = sorted((p.name, p.stat().st_mtime) for p in common.RESULTS.glob("neighbors/*"))
    summary = neighbors_memory.main(["--sizes=64,160", "--queries=16", f"--out={tmp_path}"])
    assert [r["train_images"] for r in summary["rows"]] == [64, 160]
    assert all(r["test_queries"] == 16 and r["peak_rss_mib"] > 0 for r in summary["rows"])
    assert "| 160 | 160 | 16 |" in (tmp_path / "results.md").read_text()
    after = sorted((p.name, p.stat().st_mtime) for p in common.RESULTS.glob("neighbors/*"))
    assert after == before  # The children write into temporary folders only.
