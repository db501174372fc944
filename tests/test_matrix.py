"""Interaction logs to CSR: checked against an independent pandas pivot of the same Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigcos
from bigcos.matrix import IngestOptions, build
from tests.conftest import shared_dataset


def pandas_oracle(df: pd.DataFrame, how: str = "sum", threshold=None):
    """Dense (users x items) matrix of a log frame, built with pandas alone."""
    if how == "last":
        df = df.sort_values("timestamp", kind="stable").groupby(
            ["user_id", "item_id"], as_index=False).last()
    else:
        df = df.groupby(["user_id", "item_id"], as_index=False)["value"].agg(how)
    if threshold is not None:
        df = df[df["value"] >= threshold].assign(value=1.0)
    pivot = df.pivot_table(index="user_id", columns="item_id", values="value", aggfunc="sum",
                           fill_value=0.0)
    return pivot.sort_index().sort_index(axis=1)


def assert_matches(data, pivot):
    assert data.shape == pivot.shape
    assert data.user_ids.to_pylist() == list(pivot.index)
    assert data.item_ids.to_pylist() == list(pivot.columns)
    np.testing.assert_allclose(data.train.toarray(), pivot.to_numpy(np.float64), rtol=1e-6)


def test_bundled_log_matches_pandas_pivot(bundled_log, tmp_path):
    data = bigcos.ingest(bundled_log, tmp_path / "m")
    df = pd.read_parquet(bundled_log)
    pivot = pandas_oracle(df)
    assert_matches(bigcos.load_matrix(tmp_path / "m"), pivot)
    assert data.train.nnz == len(df) == 100_836
    assert data.train.dtype == np.float32 and data.train.has_sorted_indices


def test_bundled_log_binarised(bundled_log, tmp_path):
    data = bigcos.ingest(bundled_log, tmp_path / "m", IngestOptions(threshold=4.0))
    df = pd.read_parquet(bundled_log)
    assert_matches(data, pandas_oracle(df, threshold=4.0))
    assert set(np.unique(data.train.data)) == {1.0}


ids_int = st.integers(min_value=-5, max_value=40)
ids_str = st.text(alphabet="abcxyzé", min_size=0, max_size=3)


@st.composite
def logs(draw):
    string_ids = draw(st.booleans())
    n = draw(st.integers(1, 60))
    ids = ids_str if string_ids else ids_int
    users = draw(st.lists(ids, min_size=n, max_size=n))
    items = draw(st.lists(ids, min_size=n, max_size=n))
    values = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.5, 5.0]), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True))
    parts = draw(st.integers(1, 4))
    return pd.DataFrame({"user_id": users, "item_id": items, "value": np.float32(values),
                         "timestamp": np.int64(times)}), parts


def write_log(tmp: Path, df: pd.DataFrame, parts: int) -> Path:
    """One file, or several files in a directory (partitioned on a hive column when possible)."""
    if parts == 1:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp / "log.parquet")
        return tmp / "log.parquet"
    out = tmp / "logdir"
    df = df.assign(shard=np.arange(len(df)) % parts)
    pads.write_dataset(pa.Table.from_pandas(df, preserve_index=False), out, format="parquet",
                       partitioning=pads.partitioning(pa.schema([("shard", pa.int64())]),
                                                      flavor="hive"))
    return out


FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(logs(), st.sampled_from(["sum", "max", "last"]))
def test_random_logs_match_pandas(tmp_path_factory, log, how):
    df, parts = log
    tmp = tmp_path_factory.mktemp("log")
    path = write_log(tmp, df, parts)
    data, counts = build(path, IngestOptions(duplicates=how))
    assert_matches(data, pandas_oracle(df, how))
    assert counts["log_rows"] == len(df)
    assert counts["duplicate_rows"] == len(df) - len(df.drop_duplicates(["user_id", "item_id"]))


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(logs(), st.integers(1, 4), st.integers(1, 4))
def test_min_counts_iterated_until_stable(tmp_path_factory, log, min_user, min_item):
    df, parts = log
    path = write_log(tmp_path_factory.mktemp("log"), df, parts)
    opts = IngestOptions(min_user=min_user, min_item=min_item)
    try:
        data, _ = build(path, opts)
    except bigcos.UserError as exc:
        assert "no interactions left" in str(exc)
        return
    x = data.train
    assert (np.diff(x.indptr) >= min_user).all()
    assert (np.bincount(x.indices, minlength=x.shape[1]) >= min_item).all()
    # a pandas reimplementation of the same fixed point
    pairs = df.drop_duplicates(["user_id", "item_id"])[["user_id", "item_id"]]
    while True:
        uc = pairs.groupby("user_id")["item_id"].transform("size")
        ic = pairs.groupby("item_id")["user_id"].transform("size")
        kept = pairs[(uc >= min_user) & (ic >= min_item)]
        if len(kept) == len(pairs):
            break
        pairs = kept
    assert x.nnz == len(pairs)


def test_order_of_rows_does_not_matter(bundled_log, tmp_path):
    df = pd.read_parquet(bundled_log).sample(frac=1.0, random_state=3)
    path = write_log(tmp_path, df, 3)
    a, _ = build(bundled_log)
    b, _ = build(path)
    assert (a.train != b.train).nnz == 0
    assert a.user_ids.equals(b.user_ids) and a.item_ids.equals(b.item_ids)


@pytest.mark.parametrize("split", ["random", "time", "users"])
def test_splits_partition_the_interactions(bundled_log, tmp_path, split):
    opts = IngestOptions(split=split, test_fraction=0.25, heldout_users=0.3, seed=5)
    data = bigcos.ingest(bundled_log, tmp_path / "m", opts)
    full, _ = build(bundled_log)
    # train and test are disjoint and together give the full matrix
    assert data.train.multiply(data.test).nnz == 0
    assert abs((data.train + data.test) - full.train).max() == 0
    frac = data.test.nnz / full.train.nnz
    loaded = bigcos.load_matrix(tmp_path / "m")
    assert (loaded.test != data.test).nnz == 0
    if split != "users":  # every row is fit on: fit_train is train itself, not a copy
        assert loaded.heldout_users is None and loaded.fit_train is loaded.train
        assert np.array_equal(loaded.fit_rows, np.arange(loaded.shape[0]))
        assert loaded.fit_matrix is loaded.train
    if split == "random":
        assert 0.23 < frac < 0.27
        per_user_train = np.diff(data.train.indptr)
        assert (per_user_train > 0).all()
    if split == "time":
        df = pd.read_parquet(bundled_log)
        cutoff = np.quantile(df["timestamp"], 0.75, method="higher")
        assert data.test.nnz == int((df["timestamp"] >= cutoff).sum())
    if split == "users":
        held = loaded.heldout_users
        assert held is not None and abs(held.mean() - 0.3) < 0.01
        test_rows = np.diff(data.test.indptr) > 0
        assert not (test_rows & ~held).any()  # only held-out users have test interactions
        assert data.fit_matrix[held].nnz == 0
        assert (data.fit_matrix[~held] != data.train[~held]).nnz == 0
        assert np.array_equal(loaded.fit_rows, np.flatnonzero(~held))
        assert (loaded.fit_train != data.train[~held]).nnz == 0
        fold_in = data.train[held]
        assert fold_in.nnz > 0  # held-out users keep a fold-in part to embed them


def test_split_is_seeded(bundled_log):
    a, _ = build(bundled_log, IngestOptions(split="random", seed=1))
    b, _ = build(bundled_log, IngestOptions(split="random", seed=1))
    c, _ = build(bundled_log, IngestOptions(split="random", seed=2))
    assert (a.test != b.test).nnz == 0
    assert (a.test != c.test).nnz > 0


def test_string_ids_and_missing_value_column(tmp_path):
    table = pa.table({"u": ["b", "a", "b", "c"], "i": ["x", "y", "x", "z"]})
    pq.write_table(table, tmp_path / "log.parquet")
    data, counts = build(tmp_path / "log.parquet", IngestOptions(user_col="u", item_col="i"))
    assert data.user_ids.to_pylist() == ["a", "b", "c"]
    assert data.item_ids.to_pylist() == ["x", "y", "z"]
    np.testing.assert_array_equal(data.train.toarray(), [[0, 1, 0], [2, 0, 0], [0, 0, 1]])
    assert counts["duplicate_rows"] == 1


@pytest.mark.realdata
def test_real_dataset_ml100k_round_trip(tmp_path):
    path = shared_dataset("ml-100k")
    data = bigcos.ingest(path / "interactions.parquet", tmp_path / "m",
                         IngestOptions(threshold=4.0, min_user=5, min_item=5))
    df = pd.read_parquet(path / "interactions.parquet")
    assert data.train.nnz <= int((df["value"] >= 4).sum())
    assert (np.diff(data.train.indptr) >= 5).all()


@pytest.mark.parametrize("users", [
    [10**15, -(10**12), 7, 10**15, 5_000_000_000],   # range > 2^32 within one batch: raw int64
    [3_000_000_000, 3_000_000_007, 3_900_000_000, 3_000_000_000, 3_900_000_000],  # sparse range
])
def test_integer_ids_with_wide_or_sparse_ranges(tmp_path, users):
    df = pd.DataFrame({"user_id": np.array(users, np.int64), "item_id": [5, 6, 5, 5, 9],
                       "value": np.float32([1, 2, 3, 4, 5]), "timestamp": np.arange(5)})
    path = write_log(tmp_path, df, 2)
    data, _ = build(path)
    assert_matches(data, pandas_oracle(df))


def test_bench_ingest_builds_the_same_matrix_as_its_pandas_baseline(tmp_path):
    import json

    from click.testing import CliRunner

    from bigcos.cli import main

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "ingest", "--rows", "20000", "--users", "500",
                                       "--items", "300", "--repeat", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "same matrix as pandas: True" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows][-1] == "pandas read_parquet + coo_matrix"
    assert all(r["rows_per_s"] > 0 and r["peak_extra_rss_bytes"] >= 0 for r in rows)
