"""Exact top-N neighbours against a brute-force numpy reference, implicit, and themselves under
every blocking and scheduler; the dataset's layout, readers, manifest and atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from bigcos import io
from bigcos.blocked_topn import Blocking, top_n
from bigcos.errors import UserError
from bigcos.neighbor_lists import neighbors, read_neighbors
from bigcos.topn import EMPTY, decode_keys, encode_keys, inverse_norms

METRICS = ("cos", "dot")


# --------------------------------------------------------------------------- the reference
def reference(queries, candidates, n, metric, exclude=None):
    """Brute force: all scores densely, excluded pairs -inf, then a full lexsort per row by
    (score descending, index ascending). Cosine is dot * (inv(q) * inv(c)), inv = 1/||x||
    accumulated in float64, 0 for a zero row (the documented definition)."""
    q = np.asarray(queries, np.float32)
    c = np.asarray(candidates, np.float32)
    scores = q @ c.T
    if metric == "cos":
        def inv(x):
            norms = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1))
            return np.where(norms > 0, 1 / np.where(norms > 0, norms, 1), 0).astype(np.float32)
        scores = scores * (inv(q)[:, None] * inv(c)[None, :])
    scores = scores + np.float32(0)  # -0.0 -> 0.0
    if exclude is not None:
        scores[exclude] = -np.inf
    index = np.empty((len(q), n), np.int64)
    out = np.empty((len(q), n), np.float32)
    for r in range(len(q)):
        order = np.lexsort((np.arange(len(c)), -scores[r]))[:n]
        index[r], out[r] = order, scores[r, order]
    index[out == -np.inf] = -1
    return index, out


def tied_embeddings(rng, m, k, zero_rows=(3, 17)):
    """Small-integer embeddings (every product exact in float32) with duplicate rows (ties)
    and zero rows."""
    x = rng.integers(-2, 3, size=(m, k)).astype(np.float32)
    x[1::7] = x[0]  # many exact duplicates of row 0
    x[5] = 2 * x[4]  # same direction, different norm: cosine ties, dot does not
    x[list(zero_rows)] = 0
    return x


# --------------------------------------------------------------------------- the kernel
def test_keys_order_is_score_then_smaller_index():
    rng = np.random.default_rng(0)
    scores = rng.choice(np.array([-np.inf, -1.5, -0.0, 0.0, 1e-30, 2.0, np.inf], np.float32),
                        size=500)
    index = rng.integers(0, 2**32 - 1, size=500)
    keys = encode_keys(scores, index)
    got_scores, got_index = decode_keys(keys)
    assert np.array_equal(got_scores, scores + np.float32(0)) and np.array_equal(got_index, index)
    expected = np.lexsort((index, -(scores + np.float32(0))))
    assert np.array_equal(np.argsort(-keys, kind="stable"), expected)
    # EMPTY is (-inf, the largest index): strictly below every key of an index < 2**32 - 1,
    # -inf scores included (the sample has them), so an empty slot never displaces one
    assert (scores == -np.inf).any() and (keys > EMPTY).all()
    assert decode_keys(np.array([EMPTY]))[0][0] == -np.inf
    assert decode_keys(np.array([EMPTY]))[1][0] == 2**32 - 1


@pytest.mark.parametrize("blocking", [Blocking(512, 4096), Blocking(7, 5), Blocking(64, 33)])
def test_every_kind_and_metric_matches_brute_force_with_ties_and_zero_rows(blocking):
    rng = np.random.default_rng(1)
    items = tied_embeddings(rng, 150, 6)
    users = tied_embeddings(rng, 90, 6, zero_rows=(2,))
    train = sp.random(90, 150, density=0.1, format="csr", random_state=3)
    train.data[:] = 1
    n = 12
    cases = {
        "item-item": (items, items, True, None),
        "user-user": (users, users, True, None),
        "user-item": (users, items, False, train),
    }
    for kind, (q, c, exclude_self, exclude) in cases.items():
        mask = np.zeros((len(q), len(c)), bool)
        if exclude_self:
            mask[np.arange(len(q)), np.arange(len(q))] = True
        if exclude is not None:
            mask |= exclude.toarray() > 0
        got = top_n(q, c, n, METRICS, exclude_self=exclude_self, exclude=exclude,
                    blocking=blocking)
        for metric in METRICS:
            index, scores = reference(q, c, n, metric, mask)
            assert np.array_equal(got[metric][0], index), (kind, metric)
            assert np.array_equal(got[metric][1], scores), (kind, metric)
            assert not np.isnan(got[metric][1]).any()


def test_zero_norm_queries_get_first_eligible_candidates_with_score_zero():
    x = np.zeros((6, 3), np.float32)
    x[4] = [1, 2, 3]
    got = top_n(x, x, 3, METRICS, exclude_self=True, blocking=Blocking(2, 2))
    for metric in METRICS:
        index, scores = got[metric]
        assert index[0].tolist() == [1, 2, 3] and index[2].tolist() == [0, 1, 3]
        assert (scores == 0).all()


def test_fewer_candidates_than_n_pads_with_minus_one():
    x = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    index, scores = top_n(x, x, 10, ["dot"], exclude_self=True)["dot"]
    assert (index[:, :3] >= 0).all() and (index[:, 3:] == -1).all()
    assert (scores[:, 3:] == -np.inf).all()


def test_float_embeddings_match_reference_up_to_rounding():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 32)).astype(np.float32)
    got = top_n(x, x, 20, METRICS, exclude_self=True, blocking=Blocking(64, 100))
    mask = np.eye(300, dtype=bool)
    for metric in METRICS:
        index, scores = reference(x, x, 20, metric, mask)
        np.testing.assert_allclose(got[metric][1], scores, rtol=1e-5, atol=1e-5)
        # ids agree except where two scores are within rounding of each other
        gaps = np.abs(np.diff(scores, axis=1)) > 1e-4
        stable = np.concatenate([gaps[:, :1], gaps[:, 1:] & gaps[:, :-1], gaps[:, -1:]], axis=1)
        assert (got[metric][0] == index)[stable].all()


# --------------------------------------------------------------------------- implicit
def test_agrees_with_implicit_similar_items_and_recommend():
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(5)
    items = rng.standard_normal((400, 16)).astype(np.float32)
    users = rng.standard_normal((120, 16)).astype(np.float32)
    train = sp.random(120, 400, density=0.05, format="csr", random_state=6, dtype=np.float32)
    train.data[:] = 1
    model = AlternatingLeastSquares(factors=16)
    model.item_factors, model.user_factors = items, users
    n = 10
    # similar_items: cosine, the item itself included (first): ours excludes it.
    ids, scores = model.similar_items(np.arange(400), N=n + 1)
    ours = top_n(items, items, n, ["cos"], exclude_self=True)["cos"]
    assert (ids[:, 0] == np.arange(400)).all()
    assert np.array_equal(ours[0], ids[:, 1:])
    np.testing.assert_allclose(ours[1], scores[:, 1:], rtol=1e-5, atol=1e-6)
    # recommend: dot product, the user's training items filtered out.
    ids, scores = model.recommend(np.arange(120), train, N=n, filter_already_liked_items=True)
    ours = top_n(users, items, n, ["dot"], exclude=train)["dot"]
    assert np.array_equal(ours[0], ids)
    np.testing.assert_allclose(ours[1], scores, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the dataset
def write_model(directory: Path, name: str, items: np.ndarray, users: np.ndarray,
                item_ids=None, user_ids=None, matrix_dir: Path | None = None) -> Path:
    """A model directory in the layout of contracts.md (read back by bigcos.models.load_model)."""
    directory.mkdir(parents=True)
    io.write_embeddings(directory / "items.parquet",
                        np.arange(len(items)) if item_ids is None else item_ids, items, "item_id")
    io.write_embeddings(directory / "users.parquet",
                        np.arange(len(users)) if user_ids is None else user_ids, users, "user_id")
    io.write_json(directory / "manifest.json", {
        "model_name": name, "matrix_dir": str(matrix_dir) if matrix_dir else None})
    return directory


def write_matrix(directory: Path, train: sp.csr_matrix) -> Path:
    """A matrix directory via bigcos.ingest of a log holding exactly ``train``'s entries
    (every user and item must occur, so row/column order = the ids 0..n-1 / 0..p-1)."""
    from bigcos.matrix import ingest

    coo = train.tocoo()
    log = directory.parent / f"{directory.name}-log.parquet"
    pq.write_table(pa.table({"user_id": coo.row.astype(np.int64),
                             "item_id": coo.col.astype(np.int64),
                             "value": np.ones(coo.nnz, np.float32)}), log)
    ingest(log, directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(7)
    n_users, n_items = 70, 130
    train = sp.random(n_users, n_items, density=0.08, format="lil", random_state=8)
    for u in range(n_users):
        train[u, u % n_items] = 1
    for i in range(n_items):
        train[i % n_users, i] = 1
    train = train.tocsr()
    train.data[:] = 1
    matrix = write_matrix(root / "matrix", train)
    a = write_model(root / "a", "model-a", tied_embeddings(rng, n_items, 5),
                    tied_embeddings(rng, n_users, 5, zero_rows=(9,)), matrix_dir=matrix)
    b = write_model(root / "b", "model-b", rng.standard_normal((n_items, 5)).astype(np.float32),
                    rng.standard_normal((n_users, 5)).astype(np.float32), matrix_dir=matrix)
    return {"a": a, "b": b, "train": train, "root": root}


def as_lists(table: pa.Table, kind: str, model: str, metric: str, n_queries: int, n: int):
    """(index, score) arrays of one partition, for ids 0..p-1 (id = index)."""
    df = table.to_pandas()
    df = df[(df["kind"] == kind) & (df["model"] == model) & (df["metric"] == metric)]
    index = np.full((n_queries, n), -1, np.int64)
    scores = np.full((n_queries, n), -np.inf, np.float32)
    index[df["query_id"], df["rank"] - 1] = df["neighbor_id"]
    scores[df["query_id"], df["rank"] - 1] = df["score"]
    return index, scores


def test_dataset_matches_reference_for_every_kind_model_and_metric(models, tmp_path):
    out = tmp_path / "nb"
    manifest = neighbors([models["a"], models["b"]], out, kinds=["item-item", "user-user",
                                                                 "user-item"],
                         n=9, blocking=Blocking(16, 32, 32, symmetric_block=16))
    table = read_neighbors(out)
    assert table.schema.field("rank").type == pa.int32()
    assert table.schema.field("score").type == pa.float32()
    from bigcos.models import load_model

    train = models["train"].toarray() > 0
    for key in ("a", "b"):
        model = load_model(models[key])
        cases = {"item-item": (model.item_embeddings, model.item_embeddings, None),
                 "user-user": (model.user_embeddings, model.user_embeddings, None),
                 "user-item": (model.user_embeddings, model.item_embeddings, train)}
        for kind, (q, c, exclude) in cases.items():
            mask = np.eye(len(q), dtype=bool) if exclude is None else exclude
            for metric in METRICS:
                got = as_lists(table, kind, model.name, metric, len(q), 9)
                index, scores = reference(q, c, 9, metric, mask)
                assert np.array_equal(got[0], index), (key, kind, metric)
                np.testing.assert_allclose(got[1], scores, rtol=1e-6)
    counts = manifest["counts"]["model-a/user-user"]
    assert counts["zero_norm_queries"] == 1 and counts["queries"] == 70
    assert counts["rows_cos"] == 70 * 9
    assert manifest["counts"]["model-a/user-item"]["excluded_pairs"] == models["train"].nnz
    assert manifest["counts"]["model-a/user-user"]["symmetric"] is True
    assert manifest["counts"]["model-a/user-item"]["symmetric"] is False
    assert json.loads((out / "_manifest.json").read_text())["parameters"]["n"] == 9
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # scratch removed


def sorted_frame(path):
    df = read_neighbors(path).to_pandas()
    for col in ("kind", "model", "metric"):
        df[col] = df[col].astype(str)
    return df.sort_values(["kind", "model", "metric", "query_id", "rank"]).reset_index(drop=True)


@pytest.mark.cluster
def test_same_output_for_any_blocking_threads_and_processes(models, tmp_path):
    from bigcos.cluster import ClusterOptions, dask_client

    kinds = ["item-item", "user-item"]
    neighbors([models["a"]], tmp_path / "one", kinds=kinds, n=7,
              blocking=Blocking(1000, 1000, 1000))
    neighbors([models["a"]], tmp_path / "many", kinds=kinds, n=7, blocking=Blocking(8, 3, 16),
              symmetric=False)
    neighbors([models["a"]], tmp_path / "pairs", kinds=kinds, n=7,
              blocking=Blocking(8, 3, 16, symmetric_block=5), symmetric=True)
    with dask_client(ClusterOptions(workers=2, processes=True)):
        manifest = neighbors([models["a"]], tmp_path / "procs", kinds=kinds, n=7,
                             blocking=Blocking(8, 16, 24, symmetric_block=8))
    assert manifest["scheduler"]["workers"] == 2
    assert manifest["counts"]["model-a/item-item"]["symmetric"] is True
    one = sorted_frame(tmp_path / "one")
    assert len(one) > 0
    for other in ("many", "pairs", "procs"):
        frame = sorted_frame(tmp_path / other)
        assert one.equals(frame), other
    assert len(list((tmp_path / "many" / "kind=item-item" / "model=model-a" / "metric=cos")
                    .glob("part-*.parquet"))) > 1


def test_readable_as_one_table_by_pandas_duckdb_and_polars(models, tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl

    out = tmp_path / "nb"
    neighbors([models["a"], models["b"]], out, kinds=["item-item", "user-item"], n=5)
    expected = sorted_frame(out)
    assert len(expected) == 2 * 2 * (130 + 70) * 5
    columns = ["kind", "model", "metric", "query_id", "rank", "neighbor_id", "score"]
    frames = {
        "pandas": pd.read_parquet(out),
        "duckdb": duckdb.sql(f"select * from read_parquet('{out}/**/*.parquet', "
                             "hive_partitioning=true)").df(),
        "polars": pl.read_parquet(f"{out}/**/*.parquet", hive_partitioning=True).to_pandas(),
    }
    for name, frame in frames.items():
        frame = frame[columns].astype({"kind": str, "model": str, "metric": str})
        frame = frame.sort_values(columns[:5]).reset_index(drop=True)
        assert len(frame) == len(expected), name
        for col in columns:
            assert (frame[col].to_numpy() == expected[col].to_numpy()).all(), (name, col)


def test_string_ids_are_kept(tmp_path):
    rng = np.random.default_rng(9)
    ids = np.array([f"item-{i}" for i in range(40)])
    model = write_model(tmp_path / "s", "strings", rng.standard_normal((40, 4)).astype(np.float32),
                        rng.standard_normal((10, 4)).astype(np.float32), item_ids=ids)
    neighbors([model], tmp_path / "nb", kinds=["item-item"], n=5)
    table = read_neighbors(tmp_path / "nb")
    assert pa.types.is_string(table.schema.field("query_id").type) or \
        pa.types.is_large_string(table.schema.field("query_id").type)
    frame = table.to_pandas()
    assert set(frame["query_id"]) == set(ids) and set(frame["neighbor_id"]) <= set(ids)
    assert (frame["query_id"] != frame["neighbor_id"]).all()


def test_failed_run_leaves_previous_output_intact(models, tmp_path, monkeypatch):
    import bigcos.neighbor_graphs as nb  # the writer of the tasks

    out = tmp_path / "nb"
    neighbors([models["a"]], out, kinds=["item-item"], n=5)
    before = sorted_frame(out)
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(*args)

    original = nb.neighbor_table
    monkeypatch.setattr(nb, "neighbor_table", failing)
    with pytest.raises(OSError, match="disk full"):
        neighbors([models["b"]], out, kinds=["item-item"], n=5,
                  blocking=Blocking(16, 16, 16), overwrite=True)
    assert sorted_frame(out).equals(before)
    assert [p.name for p in tmp_path.iterdir()] == ["nb"]  # no temporary leftovers
    with pytest.raises(UserError, match="already exists"):
        neighbors([models["a"]], out, kinds=["item-item"], n=5)


def test_n_above_the_candidate_count_is_cut_with_one_warning(models, tmp_path, caplog):
    n = 500  # > 130 items, > 70 users
    with caplog.at_level("WARNING", logger="bigcos.neighbor_lists"):
        manifest = neighbors([models["b"]], tmp_path / "nb", n=n,
                             kinds=["item-item", "user-user", "user-item"])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"N = {n} exceeds the candidates of model-b/item-item (129), "
                                  "model-b/user-user (69), model-b/user-item (130)")
    counts = manifest["counts"]
    assert [counts[f"model-b/{k}"]["n_used"] for k in ("item-item", "user-user", "user-item")] \
        == [129, 69, 130]
    frame = sorted_frame(tmp_path / "nb")
    per_kind = frame[frame["metric"] == "dot"].groupby("kind").size().to_dict()
    train_nnz = models["train"].nnz
    assert per_kind == {"item-item": 130 * 129, "user-user": 70 * 69,
                        "user-item": 70 * 130 - train_nnz}
    caplog.clear()
    neighbors([models["b"]], tmp_path / "nb2", n=129, kinds=["item-item"])
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_user_errors_name_the_culprit(models, tmp_path):
    with pytest.raises(UserError, match="--kind: unknown kind 'item-user'"):
        neighbors([models["a"]], tmp_path / "x", kinds=["item-user"])
    with pytest.raises(UserError, match="metrics: unknown metric"):
        neighbors([models["a"]], tmp_path / "x", metrics=["cosine"])
    with pytest.raises(UserError, match="appears twice"):
        neighbors([models["a"], models["a"]], tmp_path / "x")
    no_matrix = write_model(tmp_path / "m", "no-matrix", np.ones((3, 2), np.float32),
                            np.ones((2, 2), np.float32))
    with pytest.raises(UserError, match="no matrix_dir"):
        neighbors([no_matrix], tmp_path / "x", kinds=["user-item"])
    assert not (tmp_path / "x").exists()


def traced_peak(run) -> int:
    """Peak bytes allocated (numpy arrays included: numpy reports to tracemalloc) by run()."""
    import tracemalloc

    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("budget", [24 * 2**20, 48 * 2**20])
def test_tasks_sized_from_a_budget_stay_within_it(budget):
    """Measured, not the formula: the allocations of a group task (its query blocks against
    all candidates, then its output table) and of a pair task (two groups' lists resumed)
    with the blocks that from_budget picks stay below the budget."""
    from bigcos.blocked_topn import group_keys
    from bigcos.neighbor_lists import neighbor_table
    from bigcos.topn import symmetric_topn

    n, metrics = 100, METRICS
    blocking = Blocking.from_budget(budget, n, len(metrics))
    g = blocking.group_rows
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2 * g, 8)).astype(np.float32)
    inv = inverse_norms(x)
    ids = pa.array(np.arange(2 * g))

    def group_task():
        keys = group_keys(x[:g], inv[:g], x, inv, n, metrics, blocking, 0, None)
        for m in metrics:
            neighbor_table(ids.slice(0, g), keys[m], ids)

    lists = symmetric_topn(x, inv, n, metrics, (0, g), (0, g), block=blocking.symmetric_block)
    lists_h = symmetric_topn(x, inv, n, metrics, (g, 2 * g), (g, 2 * g),
                             block=blocking.symmetric_block)

    def pair_task():
        symmetric_topn(x, inv, n, metrics, (0, g), (g, 2 * g), block=blocking.symmetric_block,
                       lists_g=lists[0], lists_h=lists_h[0])

    for task in (group_task, pair_task):
        peak = traced_peak(task)
        # within the budget, and not needlessly small blocks (which would be slow)
        assert budget / 8 <= peak <= budget, (task.__name__, peak / 2**20, budget / 2**20)


def test_blocking_from_budget_picks_blocks_and_refuses_tiny_budgets():
    assert Blocking.from_budget(2**30, 100, 2).query_block >= 256
    with pytest.raises(UserError, match="memory_budget: "):
        Blocking.from_budget(2**20, 100, 2)
    groups = Blocking(10, 10, 40).groups(1001)
    assert groups[0][0] == 0 and groups[-1][1] == 1001
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:], strict=False))
    assert all((g1 - g0) % 10 == 0 for g0, g1 in groups[:-1])


def test_inverse_norms_zero_rows():
    x = np.array([[3, 4], [0, 0]], np.float32)
    assert inverse_norms(x).tolist() == [pytest.approx(0.2), 0.0]


def test_denormal_rows_count_as_zero_norm_and_never_overflow():
    from bigcos.topn import inverse_norms

    x = np.array([[3.0, 4.0], [1e-44, 0.0], [0.0, 0.0]], np.float32)
    assert x[1, 0] > 0  # a denormal float32
    inv = inverse_norms(x)
    np.testing.assert_array_equal(inv, np.float32([0.2, 0.0, 0.0]))
    lists = top_n(x, x, 2, ("cos",), exclude_self=True)
    index, scores = lists["cos"]
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(scores[1], [0.0, 0.0])  # zero-norm: every cosine is 0
