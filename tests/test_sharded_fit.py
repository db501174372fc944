"""Closed-form fits from a matrix's shards: the same bits as the fit of the whole matrix.

One small matrix (values that are not dyadic, so float summation order shows in the last
bits) is ingested in ~8 shards with held-out users; every test fits it both ways and
compares sigma, V (from the SVD cache), items.parquet, spectrum.parquet, the λ path and the
user embeddings (the concatenated parts against the one users.parquet) bit for bit.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from bigcos.matrix import IngestOptions, ingest
from bigcos.models import ModelSpec, Preprocessing, Scaling, SVDOptions, fit
from bigcos.shards import MatrixShards
from bigcos.svd import load_spectrum
from bigcos.user_parts import USERS_DIR, USERS_FILE, read_all_users
from bigcos.validation import Selection

N_USERS, N_ITEMS, K = 12_000, 150, 8
SPECS = [ModelSpec(1, None, Scaling("symmetric")), ModelSpec(1, 5.0, Scaling("sigma")),
         ModelSpec(2, 0.5), ModelSpec(1, 2.0, project_back=True)]
SELECTION = Selection(max_users=60, points=4)


@pytest.fixture(scope="module")
def sharded_matrix(tmp_path_factory):
    """~100k interactions of 12,000 users (20% held out), ingested in shards of 10k nnz."""
    rng = np.random.default_rng(7)
    per_user = rng.integers(1, 16, N_USERS)
    users = np.repeat(np.arange(N_USERS), per_user)
    items = np.minimum(rng.zipf(1.3, len(users)) - 1, N_ITEMS - 1)
    log = pd.DataFrame({"user_id": users, "item_id": items,
                        "value": rng.uniform(0.5, 5.0, len(users)).astype(np.float32),
                        "timestamp": np.arange(len(users), dtype=np.int64)})
    root = tmp_path_factory.mktemp("sharded_fit")
    log.to_parquet(root / "log.parquet")
    ingest(root / "log.parquet", root / "m",
           IngestOptions(split="users", heldout_users=0.2, shard_nnz=10_000))
    assert len(MatrixShards(root / "m").shards) >= 6
    return root / "m"


def _fit(matrix, out, cache, pre, *, in_memory, client=None, specs=SPECS, block_rows=None):
    return fit(matrix, out, specs, SVDOptions(k=K, seed=3, block_rows=block_rows), pre,
               cache_dir=cache,
               selection=SELECTION, root=True, in_memory=in_memory, client=client)


def _spectrum(cache):
    [entry] = [d for d in cache.iterdir() if d.is_dir()]
    return load_spectrum(entry)


def assert_same_fits(a, b, names):
    for name in names:
        for f in ("items.parquet", "spectrum.parquet", "columns.parquet",
                  "lambda_path.parquet"):
            assert (a / name / f).exists() == (b / name / f).exists(), (name, f)
            if (a / name / f).exists():
                assert (a / name / f).read_bytes() == (b / name / f).read_bytes(), (name, f)
        ids_a, users_a = read_all_users(a / name)
        ids_b, users_b = read_all_users(b / name)
        assert ids_a.equals(ids_b)
        assert users_a.dtype == users_b.dtype == np.float32
        assert np.array_equal(users_a.view(np.uint32), users_b.view(np.uint32)), name
        ma, mb = (json.loads((d / name / "manifest.json").read_text()) for d in (a, b))
        assert ma["counts"] == mb["counts"]
        assert ma["losses"] == mb["losses"]


@pytest.mark.parametrize("pre", [Preprocessing("standardize"), Preprocessing("rows")],
                         ids=["columns", "rows"])
def test_sharded_fit_is_bitwise_the_in_memory_fit(sharded_matrix, tmp_path, pre):
    """Validation split, column remedy / row remedy, every objective: identical bits (with the
    row remedy, several row blocks per shard)."""
    block_rows = 700 if pre.kind == "rows" else None
    mem = _fit(sharded_matrix, tmp_path / "mem", tmp_path / "c-mem", pre, in_memory=True,
               block_rows=block_rows)
    shard = _fit(sharded_matrix, tmp_path / "shard", tmp_path / "c-shard", pre,
                 in_memory=False, block_rows=block_rows)
    assert list(mem.models) == list(shard.models)
    assert shard.spectrum_info["sharded"] and "sharded" not in mem.spectrum_info
    s_mem, s_shard = _spectrum(tmp_path / "c-mem"), _spectrum(tmp_path / "c-shard")
    assert np.array_equal(s_mem.sigma, s_shard.sigma)
    assert np.array_equal(s_mem.V, s_shard.V)
    names = list(mem.models)
    assert_same_fits(tmp_path / "mem", tmp_path / "shard", names)
    n_shards = len(MatrixShards(sharded_matrix).shards)
    one = tmp_path / "shard" / names[0]
    assert not (one / USERS_FILE).exists()
    assert len(list((one / USERS_DIR).glob("part-*.parquet"))) == n_shards
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["counts"]["validation_users"] == SELECTION.max_users
    assert manifest["counts"]["users"] == N_USERS
    if pre.kind == "standardize":  # an independent check: dense numpy on the fitted rows
        from bigcos.evaluation import validation_split
        from bigcos.matrix import load_matrix

        data = load_matrix(sharded_matrix)
        rows, *_ = validation_split(data.train, data.fit_rows, SELECTION.fraction,
                                    SELECTION.holdout, SELECTION.seed,
                                    max_rows=SELECTION.max_users)
        X = data.train[np.setdiff1d(data.fit_rows, rows)].toarray().astype(np.float64)
        assert X.shape[0] == manifest["counts"]["fit_users"]
        sd = X.std(axis=0)
        Xt = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        dense = np.linalg.svd(Xt, compute_uv=False)[:K]
        # a residual r bounds the error of sigma^2 by r sigma^2 (bigcos.svd); plus float32
        assert np.all(np.abs(s_shard.sigma - dense) <= (s_shard.residuals + 1e-5) * dense)


def test_one_shard_matrix_keeps_the_in_memory_fit(tmp_path):
    """A one-shard matrix fits in memory by default, and the sharded path gives its bytes."""
    rng = np.random.default_rng(1)
    log = pd.DataFrame({"user_id": rng.integers(0, 400, 4000), "item_id": rng.integers(0, 60,
                                                                                        4000),
                        "value": rng.uniform(1, 2, 4000).astype(np.float32)})
    log.to_parquet(tmp_path / "log.parquet")
    ingest(tmp_path / "log.parquet", tmp_path / "m", IngestOptions(time_col=None))
    assert len(MatrixShards(tmp_path / "m").shards) == 1
    default = _fit(tmp_path / "m", tmp_path / "a", tmp_path / "ca", Preprocessing(),
                   in_memory=None)
    shard = _fit(tmp_path / "m", tmp_path / "b", tmp_path / "cb", Preprocessing(),
                 in_memory=False)
    assert "sharded" not in default.spectrum_info and shard.spectrum_info["sharded"]
    assert np.array_equal(_spectrum(tmp_path / "ca").V, _spectrum(tmp_path / "cb").V)
    assert_same_fits(tmp_path / "a", tmp_path / "b", list(default.models))
    name = list(default.models)[0]
    assert (tmp_path / "b" / name / USERS_FILE).read_bytes() == \
        (tmp_path / "a" / name / USERS_FILE).read_bytes()


class _ResultSizes:
    """A scheduler plugin recording the size of every task result (key -> bytes)."""

    name = "bigcos-result-sizes"

    def __init__(self):
        self.sizes = {}

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory" and "nbytes" in kwargs:
            self.sizes[str(key)] = kwargs["nbytes"]


def test_two_worker_cluster_matches_threads_and_ships_no_user_matrix(sharded_matrix,
                                                                        tmp_path):
    """2 worker processes give the bits of client=None; no task result but the workers'
    persisted matrix segments is as large as an n-length float32 array."""
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    from bigcos.cosine_fit import CosineOptions, fit_cosine

    plugin = type("ResultSizes", (_ResultSizes, SchedulerPlugin), {})()
    pre = Preprocessing("popularity")
    specs = SPECS[:3]
    _fit(sharded_matrix, tmp_path / "threads", tmp_path / "c1", pre, in_memory=False,
         specs=specs)
    cos_opts = CosineOptions(k=4, iterations=2, validation_fraction=0.0)
    cos_threads = fit_cosine(sharded_matrix, tmp_path / "cos1", cos_opts, in_memory=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.register_plugin(plugin)
        result = _fit(sharded_matrix, tmp_path / "cluster", tmp_path / "c2", pre,
                      in_memory=False, client=client, specs=specs)
        sizes = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins[_ResultSizes.name].sizes)
        cos_cluster = fit_cosine(sharded_matrix, tmp_path / "cos2", cos_opts, in_memory=False,
                                 client=client)
    assert result.spectrum_info["scheduler"] == "distributed"
    s1, s2 = _spectrum(tmp_path / "c1"), _spectrum(tmp_path / "c2")
    assert np.array_equal(s1.sigma, s2.sigma) and np.array_equal(s1.V, s2.V)
    assert_same_fits(tmp_path / "threads", tmp_path / "cluster", list(result.models))
    assert np.array_equal(read_all_users(cos_threads)[1], read_all_users(cos_cluster)[1])
    segments = {k: v for k, v in sizes.items() if k.startswith("bigcos-fit-segment")}
    others = {k: v for k, v in sizes.items() if k not in segments}
    assert len(segments) >= 6 and others
    assert max(segments.values()) > 4 * N_USERS / 8  # the segments do hold the data
    biggest = max(others, key=others.get)
    assert others[biggest] < 4 * N_USERS, (biggest, others[biggest])


def test_cosine_fit_from_shards_is_bitwise_the_in_memory_fit(sharded_matrix, tmp_path):
    """The cosine-trained model: SVD, every loss/gradient pass and the users from the
    shards give the bits of the in-memory fit (several row blocks per shard)."""
    from bigcos.cosine_fit import CosineOptions, fit_cosine

    opts = CosineOptions(k=4, iterations=3, block_rows=900, validation_fraction=0.02)
    mem = fit_cosine(sharded_matrix, tmp_path / "mem", opts, in_memory=True)
    shard = fit_cosine(sharded_matrix, tmp_path / "shard", opts, in_memory=False)
    assert (mem / "items.parquet").read_bytes() == (shard / "items.parquet").read_bytes()
    ids_a, users_a = read_all_users(mem)
    ids_b, users_b = read_all_users(shard)
    assert ids_a.equals(ids_b) and np.array_equal(users_a, users_b)
    assert (shard / USERS_DIR).is_dir() and (mem / USERS_FILE).is_file()
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (mem, shard))
    assert ma["counts"] | {"blocks": 0} == mb["counts"] | {"blocks": 0}
    assert ma["optimisation"]["loss_curve"] == mb["optimisation"]["loss_curve"]
    assert ma["optimisation"]["iterations"] == 3 and ma["counts"]["validation_rows"] > 0
    # validation_max_users caps the rows held out (the same seeded rows in both paths)
    capped = dataclasses.replace(opts, validation_max_users=5)
    mem = fit_cosine(sharded_matrix, tmp_path / "mem5", capped, in_memory=True)
    shard = fit_cosine(sharded_matrix, tmp_path / "shard5", capped, in_memory=False)
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (mem, shard))
    assert ma["counts"]["validation_rows"] == mb["counts"]["validation_rows"] == 5
    assert ma["counts"]["train_rows"] > json.loads((tmp_path / "mem" / "manifest.json"
                                                    ).read_text())["counts"]["train_rows"]
    assert (ma["optimisation"]["validation_rows_sha256"]
            == mb["optimisation"]["validation_rows_sha256"])


def test_user_mistakes_are_one_line_errors(sharded_matrix, tmp_path):
    import scipy.sparse as sp

    from bigcos.errors import UserError
    from bigcos.svd import truncated_svd

    X = sp.random(50, 20, density=0.3, format="csr", random_state=0)
    with pytest.raises(UserError, match="row_blocks"):
        truncated_svd(X, 3, row_blocks=[(0, 20), (25, 50)])
    with pytest.raises(UserError, match="row_blocks"):
        truncated_svd(X, 3, row_blocks=[(0, 20)])
    with pytest.raises(UserError, match="in_memory"):
        fit(sharded_matrix, tmp_path / "x", SPECS[1:2], SVDOptions(k=3, exact=True),
            in_memory=False)


def test_passes_that_reload_their_rows_give_the_kept_rows_bits(sharded_matrix):
    """A matrix larger than the workers' memory is loaded again by every pass instead of
    kept: the same blocks, the same sums, the same bits."""
    from bigcos.dense import RowChunks
    from bigcos.shard_gram import FitShard, ShardGramOperator, summarize

    matrix = MatrixShards(sharded_matrix)
    users_file = str(matrix.directory / "users.parquet")
    fit_shards = [FitShard(s, users_file, (), Preprocessing(), "float32")
                  for s in matrix.shards]
    rows = summarize(fit_shards, matrix.shape[1], 700)  # several blocks per shard
    assert sum(len(b) for b in rows.bounds) > len(fit_shards)
    Q = np.random.default_rng(0).standard_normal((matrix.shape[1], 5))
    out = {}
    with RowChunks() as blas:
        for keep in (True, False):
            op = ShardGramOperator(rows, blas=blas, keep_segments=keep)
            out[keep] = (op(Q), op(Q), op.describe()["keep_segments"])
            op.close()
    assert out[True][2] is True and out[False][2] is False
    for a, b in zip(out[True][:2], out[False][:2], strict=True):
        assert np.array_equal(a, b)
    X = matrix.load_matrix()[np.flatnonzero(~pd.read_parquet(users_file).heldout.to_numpy())]
    np.testing.assert_allclose(out[False][0], X.T @ (X @ Q.astype(np.float32)), rtol=2e-5,
                               atol=1e-3)
