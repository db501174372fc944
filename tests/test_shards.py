"""The sharded matrix dataset and the out-of-core ingest: bitwise equal to the in-memory build.

Each streamed ingest here is forced (``streaming="on"``) through many spill partitions and
small record batches by a tight ``memory_limit`` and a large ``SPILL_BYTES_PER_ROW``, so the
partition, filter-round, split and shard code paths all run on small logs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigcos
from bigcos import memory, streamed_ingest
from bigcos.log_reader import read_log
from bigcos.log_scan import scan_vocabularies
from bigcos.matrix import IngestOptions, build, ingest, load_matrix
from bigcos.shards import MatrixShards, shard_bounds
from tests.test_matrix import logs, write_log


@pytest.fixture
def many_partitions(monkeypatch):
    """About 20k log rows per spill partition; a memory limit giving a 64 MiB working budget
    from now (small record batches)."""
    monkeypatch.setattr(streamed_ingest, "SPILL_BYTES_PER_ROW", 1600)
    return lambda: f"{memory.rss_bytes() + (64 << 20)}"


def assert_same_csr(a: sp.csr_matrix | None, b: sp.csr_matrix | None) -> None:
    assert (a is None) == (b is None)
    if a is None:
        return
    assert a.shape == b.shape
    for name in ("indptr", "indices", "data"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def assert_same_directories(a: Path, b: Path) -> None:
    """Same shard layout, shard arrays, vocabularies and counts."""
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["shards"] == mb["shards"]
    assert ma["counts"] == mb["counts"]
    sa, sb = MatrixShards(a), MatrixShards(b)
    for shard_a, shard_b in zip(sa.shards, sb.shards, strict=True):
        assert_same_csr(shard_a.load("train"), shard_b.load("train"))
        if sa.has_test:
            assert_same_csr(shard_a.load("test"), shard_b.load("test"))
    for table in ("users.parquet", "items.parquet"):
        assert pq.read_table(a / table).equals(pq.read_table(b / table))


CASES = [
    dict(split="random", test_fraction=0.3, seed=3),
    dict(split="users", threshold=3.5, min_user=5, min_item=5, heldout_users=0.25),
    dict(split="time", duplicates="last"),
    dict(duplicates="max", min_user=3, min_item=20),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_streamed_ingest_equals_in_memory(bundled_log, tmp_path, many_partitions, case):
    memory = IngestOptions(streaming="off", shard_nnz=15_000, **case)
    whole, counts = build(bundled_log, memory)
    ingest(bundled_log, tmp_path / "memory", memory)
    streamed = IngestOptions(streaming="on", shard_nnz=15_000, memory_limit=many_partitions(),
                             **case)
    lazy = ingest(bundled_log, tmp_path / "streamed", streamed)
    manifest = bigcos.io.read_manifest(tmp_path / "streamed")
    assert manifest["build"]["streamed"] and manifest["counts"] == counts
    assert_same_directories(tmp_path / "memory", tmp_path / "streamed")
    shards = MatrixShards(tmp_path / "streamed")
    assert len(shards.shards) > 2  # several shards, each cut between users
    loaded = load_matrix(tmp_path / "streamed")
    assert_same_csr(loaded.train, whole.train)
    assert_same_csr(loaded.test, whole.test)
    assert loaded.user_ids.equals(whole.user_ids) and loaded.item_ids.equals(whole.item_ids)
    assert np.array_equal(loaded.heldout_users, whole.heldout_users) or (
        loaded.heldout_users is None and whole.heldout_users is None)
    # what ingest returned reads its shards on first use
    assert lazy.shape == whole.shape
    assert_same_csr(lazy.train, whole.train)
    assert np.array_equal(lazy.fit_rows, whole.fit_rows)


def test_shards_hold_whole_users_within_the_size(bundled_log, tmp_path):
    ingest(bundled_log, tmp_path / "m", IngestOptions(split="random", shard_nnz=9_000))
    shards = MatrixShards(tmp_path / "m")
    whole = load_matrix(tmp_path / "m")
    row_nnz = np.diff(whole.train.indptr) + np.diff(whole.test.indptr)
    assert shards.shards[0].start == 0 and shards.shards[-1].stop == whole.shape[0]
    for prev, shard in zip(shards.shards[:-1], shards.shards[1:], strict=True):
        assert shard.start == prev.stop
    for shard in shards.shards:
        train, test = shards.load_shard(shard.index), shards.load_shard(shard.index, "test")
        # every interaction of the shard's users is in the shard: rows are whole users
        assert_same_csr(train, whole.train[shard.start:shard.stop])
        assert_same_csr(test, whole.test[shard.start:shard.stop])
        assert train.nnz == shard.train_nnz and test.nnz == shard.test_nnz
        total = row_nnz[shard.start:shard.stop].sum()
        assert total <= 9_000 or shard.n_rows == 1
        if shard.stop < whole.shape[0]:  # closed because the next user did not fit
            assert total + row_nnz[shard.stop] > 9_000
    assert shards.nnz == {"train": whole.train.nnz, "test": whole.test.nnz}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 50), max_size=40), st.integers(1, 60))
def test_shard_bounds_are_greedy_and_never_split_a_row(row_nnz, limit):
    row_nnz = np.array(row_nnz, np.int64)
    bounds = shard_bounds(row_nnz, limit)
    assert bounds[0] == 0 and bounds[-1] == len(row_nnz) and (np.diff(bounds) >= 1).all() or (
        len(row_nnz) == 0 and list(bounds) == [0, 0])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        assert row_nnz[a:b].sum() <= limit or b - a == 1
        if b < len(row_nnz):
            assert row_nnz[a:b + 1].sum() > limit


FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE_OK)
@given(logs(), st.sampled_from(["sum", "max", "last"]),
       st.sampled_from(["none", "random", "time", "users"]), st.integers(1, 3),
       st.integers(1, 3), st.sampled_from([None, 2.0]))
def test_random_logs_streamed_equals_in_memory(tmp_path_factory, log, how, split, min_user,
                                               min_item, threshold):
    df, parts = log
    tmp = tmp_path_factory.mktemp("log")
    path = write_log(tmp, df, parts)
    common = dict(duplicates=how, split=split, min_user=min_user, min_item=min_item,
                  threshold=threshold, heldout_users=0.5, test_fraction=0.4, shard_nnz=7)
    try:
        whole, counts = build(path, IngestOptions(**common))
    except bigcos.UserError as exc:
        with pytest.raises(bigcos.UserError, match="no interactions left"):
            ingest(path, tmp / "s", IngestOptions(streaming="on", **common))
        assert "no interactions left" in str(exc)
        return
    streamed = IngestOptions(streaming="on", **common)
    old = streamed_ingest.SPILL_BYTES_PER_ROW
    streamed_ingest.SPILL_BYTES_PER_ROW = 10**9  # a few users per partition
    try:
        ingest(path, tmp / "s", streamed)
    finally:
        streamed_ingest.SPILL_BYTES_PER_ROW = old
    loaded = load_matrix(tmp / "s")
    assert_same_csr(loaded.train, whole.train)
    assert_same_csr(loaded.test, whole.test)
    assert loaded.user_ids.equals(whole.user_ids) and loaded.item_ids.equals(whole.item_ids)
    assert bigcos.io.read_manifest(tmp / "s")["counts"] == counts
    assert not (tmp / "s" / ".spill").exists()


def test_time_split_with_missing_and_extreme_times(tmp_path, many_partitions, monkeypatch):
    monkeypatch.setattr(streamed_ingest, "SPILL_BYTES_PER_ROW", 10**6)  # ~50 rows each
    rng = np.random.default_rng(1)
    n = 3000
    times = rng.integers(-(2**62), 2**62, n)
    times[rng.random(n) < 0.5] = times[0]  # many ties at the cut-off
    table = pa.table({"user_id": rng.integers(0, 300, n), "item_id": rng.integers(0, 80, n),
                      "value": np.ones(n, np.float32),
                      "timestamp": pa.array(times, pa.timestamp("ns"),
                                            mask=rng.random(n) < 0.1)})
    pq.write_table(table, tmp_path / "log.parquet", row_group_size=500)
    for fraction in (0.0, 0.35):
        opts = dict(split="time", test_fraction=fraction, duplicates="last")
        whole, _ = build(tmp_path / "log.parquet", IngestOptions(**opts))
        ingest(tmp_path / "log.parquet", tmp_path / f"s{fraction}",
               IngestOptions(streaming="on", memory_limit=many_partitions(), **opts))
        loaded = load_matrix(tmp_path / f"s{fraction}")
        assert_same_csr(loaded.train, whole.train)
        assert_same_csr(loaded.test, whole.test)
        assert (whole.test.nnz > 0) == (fraction > 0)


@pytest.mark.parametrize("ids", ["dense", "sparse", "strings"])
def test_vocabulary_pass_merges_like_the_in_memory_reader(tmp_path, ids):
    rng = np.random.default_rng(2)
    n = 5000
    users = rng.integers(0, 700, n)
    users = {"dense": users, "sparse": users * 10**12 - 5 * 10**14,
             "strings": pa.array([f"u{u}" for u in users])}[ids]
    table = pa.table({"user_id": users, "item_id": rng.integers(0, 90, n)})
    pq.write_table(table, tmp_path / "log.parquet", row_group_size=700)
    cols, _ = read_log(tmp_path / "log.parquet", user_col="user_id", item_col="item_id",
                       value_col=None, time_col=None, need_time=False)
    # one-row merges and no dense table: every batch is a pending reduction, merged each time
    user_vocab, user_rows, item_vocab, rows = scan_vocabularies(
        tmp_path / "log.parquet", columns={"user": "user_id", "item": "item_id",
                                           "value": None, "time": None},
        need_time=False, batch_rows=256, merge_rows=1, table_bytes=0)
    assert user_vocab.equals(cols.user_vocab) and item_vocab.equals(cols.item_vocab)
    assert rows == n and np.array_equal(user_rows, np.bincount(cols.users))


def test_shards_load_by_path_on_a_dask_cluster(bundled_log, tmp_path):
    from distributed import Client, LocalCluster

    opts = dict(split="users", shard_nnz=20_000, threshold=3.0)
    whole, _ = build(bundled_log, IngestOptions(**opts))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        ingest(bundled_log, tmp_path / "m", IngestOptions(streaming="on", **opts),
               client=client)
        shards = MatrixShards(tmp_path / "m")
        blocks = client.gather(client.map(lambda s: s.load("test"), shards.shards))
    assert_same_csr(sp.vstack(blocks, format="csr").astype(np.float32), whole.test)
    assert_same_csr(shards.load_matrix(), whole.train)


def test_single_file_directory_reads_as_one_shard(bundled_log, tmp_path):
    """A matrix directory without a shards section (older bigcos) is one shard."""
    data = ingest(bundled_log, tmp_path / "m", IngestOptions(split="random"))
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["shards"]["files"][0]["train"] == "train.npz"  # the layout of before
    del manifest["shards"]
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    shards = MatrixShards(tmp_path / "m")
    assert [(s.start, s.stop) for s in shards.shards] == [(0, data.shape[0])]
    assert shards.nnz == {"train": data.train.nnz, "test": data.test.nnz}
    assert_same_csr(load_matrix(tmp_path / "m").test, data.test)


def test_memory_limit_option_errors_name_the_flag(bundled_log, tmp_path):
    from click.testing import CliRunner

    from bigcos.cli import main

    result = CliRunner().invoke(main, ["ingest", str(bundled_log), "--out",
                                       str(tmp_path / "m"), "--memory-limit", "lots"])
    assert result.exit_code != 0 and "--memory-limit" in result.output
    assert "'lots' is not a size" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["ingest", str(bundled_log), "--out",
                                       str(tmp_path / "m"), "--memory-limit", "1MiB",
                                       "--streaming", "on"])
    assert result.exit_code != 0 and "--memory-limit" in result.output
    assert "already uses" in result.output
    assert IngestOptions().memory_limit is None  # default: a share of the machine
    assert bigcos.matrix.memory_limit_bytes(IngestOptions()) == int(
        memory.MEMORY_FRACTION * memory.machine_memory())


def _write_big_log(path: Path, rows: int) -> None:
    """A log of ``rows`` rows (int64 ids and times, float32 values) in 1M-row row groups."""
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, rows, 1 << 20):
        m = min(1 << 20, rows - start)
        table = pa.table({"user_id": rng.integers(0, 400_000, m) * 3,
                          "item_id": rng.integers(0, 60_000, m),
                          "value": np.ones(m, np.float32),
                          "timestamp": rng.integers(0, 10**9, m)})
        writer = writer or pq.ParquetWriter(path, table.schema, compression="snappy")
        writer.write_table(table)
    writer.close()


# Runs a command and prints its peak RSS. A child's ru_maxrss starts from the RSS of the
# process it was forked from, so the command is forked from this small launcher, not pytest.
LAUNCHER = ("import os, subprocess, sys; child = subprocess.Popen(sys.argv[1:]); "
            "_, status, usage = os.wait4(child.pid, 0); "
            "print('peak', usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status))")


def peak_rss(command: list[str]) -> tuple[int, str]:
    """(peak RSS in bytes, output) of ``command``, which must succeed."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True,
                          text=True)
    *output, last = done.stdout.strip().splitlines()
    _, peak, code = last.split()
    assert int(code) == 0 and done.returncode == 0, done.stdout + done.stderr
    return int(peak), "\n".join(output)


def test_peak_memory_stays_under_the_limit(tmp_path):
    """`bigcos ingest` of a 5M-row log (its in-memory build: ~550 MB) under a limit of the
    interpreter's own RSS + 150 MB."""
    rows = 5_000_000
    _write_big_log(tmp_path / "log.parquet", rows)
    baseline, _ = peak_rss([sys.executable, "-c", "import bigcos.cli, bigcos.matrix, "
                            "bigcos.streamed_ingest, pyarrow.dataset, pyarrow.parquet"])
    limit = baseline + (150 << 20)
    opts = IngestOptions(duplicates="last", split="time")
    assert bigcos.matrix.in_memory_bytes(tmp_path / "log.parquet", opts) > 3 * (150 << 20)
    started = time.perf_counter()
    peak, output = peak_rss([sys.executable, "-m", "bigcos", "ingest",
                             str(tmp_path / "log.parquet"), "--out", str(tmp_path / "m"),
                             "--duplicates", "last", "--split", "time",
                             "--memory-limit", str(limit), "--shard-nnz", "1000000"])
    assert peak < limit, f"peak {peak >> 20} MiB >= limit {limit >> 20} MiB"
    manifest = bigcos.io.read_manifest(tmp_path / "m")
    assert manifest["build"]["streamed"]  # auto: the in-memory build would not fit
    counts = manifest["counts"]
    assert counts["log_rows"] == rows and counts["train_nnz"] + counts["test_nnz"] == (
        counts["pairs"])
    shards = MatrixShards(tmp_path / "m")
    assert len(shards.shards) >= 5 and all(s.train_nnz + s.test_nnz <= 1_000_000
                                           for s in shards.shards)
    print(f"{output}; peak {peak >> 20} MiB, baseline {baseline >> 20} MiB, limit "
          f"{limit >> 20} MiB, {time.perf_counter() - started:.1f} s")


def test_in_memory_estimate_is_an_upper_bound_of_the_build(bundled_log):
    """``auto`` picks the in-memory build only when it fits: its estimate bounds it."""
    from bigcos.bench.common import measure

    for opts in (IngestOptions(), IngestOptions(duplicates="last", split="time")):
        m, _ = measure("build", lambda opts=opts: build(bundled_log, opts))
        estimate = bigcos.matrix.in_memory_bytes(bundled_log, opts)
        assert m.peak_extra_rss_bytes < estimate + (8 << 20), (opts, m.peak_extra_rss_bytes)
    assert pd.read_parquet(bundled_log).shape[0] * 60 == bigcos.matrix.in_memory_bytes(
        bundled_log, IngestOptions())


def test_matrix_digest_covers_every_shard(bundled_log, tmp_path):
    """The SVD cache key of a sharded matrix changes with its content and not with the path."""
    from bigcos.models import matrix_digest

    opts = dict(shard_nnz=20_000, streaming="on")
    ingest(bundled_log, tmp_path / "a", IngestOptions(**opts))
    ingest(bundled_log, tmp_path / "b", IngestOptions(**opts))
    ingest(bundled_log, tmp_path / "c", IngestOptions(threshold=2.0, **opts))
    assert not (tmp_path / "a" / "train.npz").exists()
    assert matrix_digest(tmp_path / "a") == matrix_digest(tmp_path / "b")
    assert matrix_digest(tmp_path / "a") != matrix_digest(tmp_path / "c")


def test_bench_sharded_ingest_compares_identical_shards(tmp_path):
    from click.testing import CliRunner

    from bigcos.cli import main

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "ingest", "--sharded", "--rows", "30000",
                                       "--users", "2000", "--items", "500", "--repeat", "1",
                                       "--shard-nnz", "5000", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "identical shards: True" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["bigcos ingest, in memory",
                                         "bigcos ingest, streamed (out of core)"]
    assert all(r["nnz_per_s"] > 0 for r in rows) and rows[0]["time_vs_in_memory"] == 1
