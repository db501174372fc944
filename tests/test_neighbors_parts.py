"""Neighbours of a model whose user embeddings are parts (one per matrix shard): the same
tables as from one ``users.parquet``, with the operands built and the training rows read by
tasks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bigcos.blocked_topn import Blocking
from bigcos.matrix import IngestOptions, ingest
from bigcos.neighbor_lists import neighbors, read_neighbors
from bigcos.neighbor_operands import StackedRows
from bigcos.shards import MatrixShards
from bigcos.user_parts import USERS_FILE, read_all_users, user_parts, write_part
from tests.test_reports import clustered_log

KINDS = ("item-item", "user-user", "user-item")


def split_into_parts(model_dir: Path, out: Path, bounds: list[int]) -> Path:
    """A copy of ``model_dir`` whose users are the parts rows bounds[i]:bounds[i+1]."""
    shutil.copytree(model_dir, out)
    ids, users = read_all_users(out)
    (out / USERS_FILE).unlink()
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        write_part(out, i, len(bounds) - 1, ids.slice(lo, hi - lo), users[lo:hi])
    return out


@pytest.fixture(scope="session")
def sharded_models(tmp_path_factory) -> dict:
    """A matrix of several shards (strong generalisation split) and two closed-form models
    (plain symmetric; project-back with standardised columns), each as one users.parquet and
    as one part per shard."""
    from bigcos.closed_form import ModelSpec, Scaling
    from bigcos.models import Preprocessing, SVDOptions, fit

    tmp = tmp_path_factory.mktemp("parts")
    log, _ = clustered_log()
    log.to_parquet(tmp / "log.parquet")
    ingest(tmp / "log.parquet", tmp / "matrix",
           IngestOptions(split="users", heldout_users=0.25, test_fraction=0.3, seed=1,
                         shard_nnz=450))
    matrix = MatrixShards(tmp / "matrix")
    bounds = [s.start for s in matrix.shards] + [matrix.shape[0]]
    single, parts = [], []
    for pre, spec in ((Preprocessing(), ModelSpec(1, 20.0, Scaling("symmetric"))),
                      (Preprocessing("standardize"), ModelSpec(1, 20.0, project_back=True))):
        out = tmp / f"fit-{pre.kind}"
        fit(tmp / "matrix", out, [spec], SVDOptions(k=8, exact=True), pre, cache_dir=None)
        single.append(out)
        parts.append(split_into_parts(out, tmp / "parts" / out.name, bounds))
    return {"tmp": tmp, "matrix": tmp / "matrix", "bounds": bounds, "single": single,
            "parts": parts}


def test_fixture_has_several_parts_one_per_shard(sharded_models):
    bounds = sharded_models["bounds"]
    assert len(bounds) - 1 >= 3
    for d in sharded_models["parts"]:
        assert [(p.start, p.stop) for p in user_parts(d)] == list(
            zip(bounds[:-1], bounds[1:], strict=True))
    assert len(user_parts(sharded_models["single"][0])) == 1


def test_parts_give_the_tables_of_one_users_file(sharded_models, tmp_path):
    """Every kind and metric, pair and group graphs, small blocks crossing part boundaries:
    the tables of the parts equal those of one users.parquet, value for value."""
    blocking = Blocking(query_block=16, candidate_block=24, group_rows=32, symmetric_block=16)
    for symmetric in (None, False):
        tables = {}
        for layout in ("single", "parts"):
            out = tmp_path / f"{layout}-{symmetric}"
            manifest = neighbors(sharded_models[layout], out, kinds=KINDS, n=7,
                                 blocking=blocking, symmetric=symmetric)
            tables[layout] = read_neighbors(out), manifest
        (single, m1), (parts, m2) = tables["single"], tables["parts"]
        assert single.num_rows > 0 and single.equals(parts)
        assert m1["counts"] == m2["counts"]
        for kind in KINDS:
            assert kind in set(single.column("kind").to_pylist())
        # the files too: same partitions, same part numbers
        files = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
        other = tmp_path / "single-None" if symmetric is None else tmp_path / "single-False"
        for f in files:
            assert pq.read_table(out / f).equals(pq.read_table(other / f))
        assert not (out / ".scratch").exists()


def test_user_item_lists_exclude_training_items_read_from_shards(sharded_models, tmp_path):
    from bigcos.matrix import load_matrix

    data = load_matrix(sharded_models["matrix"])
    out = tmp_path / "ui"
    manifest = neighbors(sharded_models["parts"][:1], out, kinds=("user-item",), n=5)
    table = read_neighbors(out).to_pandas()
    users = {v: i for i, v in enumerate(data.user_ids.to_pylist())}
    items = {v: i for i, v in enumerate(data.item_ids.to_pylist())}
    rows = table["query_id"].map(users).to_numpy()
    cols = table["neighbor_id"].map(items).to_numpy()
    assert len(rows) > 0 and not np.asarray(data.train[rows, cols]).any()
    key = next(iter(manifest["counts"]))
    assert manifest["counts"][key]["excluded_pairs"] == data.train.nnz


def test_stacked_rows_slice_like_one_array():
    rng = np.random.default_rng(0)
    whole = rng.normal(size=(23, 3)).astype(np.float32)
    stacked = StackedRows([whole[:5], whole[5:5], whole[5:17], whole[17:]])
    assert len(stacked) == 23 and stacked.shape == (23, 3)
    for a in range(0, 24, 3):
        for b in range(a, 25, 4):
            assert np.array_equal(stacked[a:b], whole[a:b])
    assert np.array_equal(stacked[:], whole)
    rows = rng.permutation(23)[:17]  # the kernel gathers rows sorted by norm
    assert np.array_equal(stacked[rows], whole[rows])
    assert np.array_equal(stacked[np.array([], np.int64)], whole[:0])
