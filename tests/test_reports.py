"""bigcos.reports and `bigcos report` on a small clustered data set built here.

Model directories and the neighbour dataset are written in exactly the contract layout from a
dense numpy SVD and dense numpy top-N (an oracle independent of bigcos.reports).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bigcos
from bigcos import io, metrics, reports
from bigcos.cli import main
from bigcos.errors import UserError
from bigcos.matrix import IngestOptions, ingest

N_USERS, N_ITEMS, N_CLUSTERS, K, DEPTH = 180, 60, 3, 8, 12
LAM1, LAM2 = 20.0, 2.0
CHROMIUM = Path("/usr/bin/chromium")
DUCKDB_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER", "int8": "TINYINT",
                "double": "DOUBLE", "bool": "BOOLEAN", "list<item: string>": "VARCHAR[]",
                "dictionary<values=string, indices=int32, ordered=0>": "VARCHAR"}


# --------------------------------------------------------------------------- fixtures
def clustered_log(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users prefer one of three item clusters; item popularity varies within a cluster."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(N_ITEMS) % N_CLUSTERS
    popularity = rng.power(0.7, size=N_ITEMS) + 0.05
    rows = []
    for u in range(N_USERS):
        pref = np.where(cluster == u % N_CLUSTERS, 1.0, 0.08) * popularity
        n = rng.integers(6, 18)
        for i in rng.choice(N_ITEMS, size=n, replace=False, p=pref / pref.sum()):
            rows.append((1000 + u, 500 + int(i), 1.0))
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "value"])
    items = pd.DataFrame({"item_id": 500 + np.arange(N_ITEMS), "cluster": cluster,
                          "title": [f"Film {i} (c{c})" for i, c in enumerate(cluster)]})
    return log, items


def factor_models(fit: np.ndarray, train: np.ndarray) -> dict[str, tuple]:
    """Objective 1 under three D and objective 2 from a dense SVD of ``fit``.

    Returns name -> (items, users, params); users are rows of X A over every row of ``train``
    (fold-in rows of held-out users included).
    """
    _, sigma, vt = np.linalg.svd(fit, full_matrices=False)
    V, s = vt[:K].T, sigma[:K]
    g = s**2 / (s**2 + LAM1)
    rng = np.random.default_rng(42)
    out = {}
    svd = {"k": K, "seed": 0}
    pre = {"kind": "none"}
    for name, d, scaling in (
            ("obj1-symmetric", np.ones(K), {"kind": "symmetric"}),
            ("obj1-random100x-seed1", 100 ** rng.uniform(-.5, .5, K),
             {"kind": "random", "spread": 100.0, "seed": 1}),
            ("obj1-random100x-seed2", 100 ** rng.uniform(-.5, .5, K),
             {"kind": "random", "spread": 100.0, "seed": 2})):
        A = V * np.sqrt(g) * d
        B = V * np.sqrt(g) / d
        params = {"objective": 1, "lam": LAM1, "scaling": scaling, "svd": svd,
                  "preprocessing": pre}
        out[name] = (B, train @ A, params)
    keep = np.clip(1 - LAM2 / s, 0, None)
    A2, B2 = V * np.sqrt(keep / s), V * np.sqrt(s * keep)
    out["obj2"] = (B2, train @ A2, {"objective": 2, "lam": LAM2, "scaling": None, "svd": svd,
                                    "preprocessing": pre})
    return out


def dense_topn(queries: np.ndarray, candidates: np.ndarray, metric: str, n: int,
               exclude: np.ndarray) -> np.ndarray:
    """Top-n candidate indices per query row, ties by smaller index; exclude: (m, c) bool."""
    if metric == "cos":
        queries, candidates = (x / np.where(n > 0, n, 1) for x, n in
                               ((x, np.linalg.norm(x, axis=1, keepdims=True))
                                for x in (queries, candidates)))
    scores = np.where(exclude, -np.inf, queries @ candidates.T)
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores),
                       axis=1)
    return order[:, :n], np.take_along_axis(scores, order[:, :n], axis=1)


def write_neighbors(root: Path, kind: str, model: str, metric: str, query_ids, neighbor_ids,
                    top: np.ndarray, scores: np.ndarray) -> None:
    leaf = root / f"kind={kind}" / f"model={model}" / f"metric={metric}"
    leaf.mkdir(parents=True)
    m, n = top.shape
    table = pa.table({"query_id": np.repeat(np.asarray(query_ids), n),
                      "rank": pa.array(np.tile(np.arange(1, n + 1), m), pa.int32()),
                      "neighbor_id": np.asarray(neighbor_ids)[top.reshape(-1)],
                      "score": pa.array(scores.reshape(-1), pa.float32())})
    pq.write_table(table, leaf / "part-00000.parquet")


def write_validation_paths(fit: np.ndarray, model_dirs: list[Path]) -> None:
    """What `bigcos fit` writes when λ is validated: lambda_path.parquet (a real path from
    bigcos.validation.select on validation rows of ``fit``) and manifest fields, plus an
    objective-2 warning, into the obj1-symmetric and obj2 directories."""
    import scipy.sparse as sp

    from bigcos.closed_form import ModelSpec, Scaling, solve
    from bigcos.evaluation import HeldOut, validation_split
    from bigcos.validation import Selection, select

    X = sp.csr_matrix(fit)
    _, s, vt = np.linalg.svd(fit, full_matrices=False)
    rows, fold, held = validation_split(X, np.arange(X.shape[0]), 0.3, 0.3, seed=0)
    V = vt[:K].T
    specs = [ModelSpec(1, None, Scaling("symmetric")), ModelSpec(2, None)]
    path, chosen = select(s[:K], V, fold @ V, HeldOut(rows, fold, held), specs,
                          Selection(points=6, at=10), solve)
    for d in model_dirs:
        if d.name not in ("obj1-symmetric", "obj2"):
            continue
        family = specs[d.name == "obj2"].name
        mine = [r for r in path if r["model"] == family]
        pq.write_table(pa.Table.from_pylist(mine), d / "lambda_path.parquet")
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["parameters"] |= {"lam_source": "validated", "family": family,
                                   "lam_validated": chosen[d.name == "obj2"],
                                   "validation_measure": "recall"}
        if d.name == "obj2":
            manifest["warnings"] = ["objective 2 keeps 2 of 8 dimensions (fewer than 3)"]
        (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("report-inputs")
    log, items = clustered_log()
    log.to_parquet(tmp / "log.parquet")
    items.to_parquet(tmp / "items.parquet")
    data = ingest(tmp / "log.parquet", tmp / "matrix",
                  IngestOptions(split="users", heldout_users=0.25, test_fraction=0.3, seed=1),
                  items=tmp / "items.parquet")
    train = data.train.toarray().astype(np.float64)
    fit = data.fit_matrix.toarray().astype(np.float64)
    user_ids = np.asarray(data.user_ids)
    item_ids = np.asarray(data.item_ids)
    model_dirs = []
    nb_root = tmp / "neighbors"
    for name, (B, U, params) in factor_models(fit, train).items():
        d = tmp / "models" / name
        d.mkdir(parents=True)
        io.write_embeddings(d / "items.parquet", data.item_ids, B.astype(np.float32), "item_id")
        io.write_embeddings(d / "users.parquet", data.user_ids, U.astype(np.float32), "user_id")
        io.write_manifest(d, "fit", params, model_name=name, matrix_dir=str(tmp / "matrix"))
        model_dirs.append(d)
        B32, U32 = B.astype(np.float32), U.astype(np.float32)
        for metric in ("cos", "dot"):
            top, sc = dense_topn(B32, B32, metric, DEPTH, np.eye(N_ITEMS, dtype=bool))
            write_neighbors(nb_root, "item-item", name, metric, item_ids, item_ids, top, sc)
            top, sc = dense_topn(U32, B32, metric, DEPTH, train > 0)
            write_neighbors(nb_root, "user-item", name, metric, user_ids, item_ids, top, sc)
            top, sc = dense_topn(U32, U32, metric, DEPTH, np.eye(len(user_ids), dtype=bool))
            write_neighbors(nb_root, "user-user", name, metric, user_ids, user_ids, top, sc)
    io.write_manifest(nb_root, "neighbors", {"n": DEPTH}, filename=io.DATASET_MANIFEST)
    write_validation_paths(fit, model_dirs)
    return {"tmp": tmp, "matrix": tmp / "matrix", "models": model_dirs, "neighbors": nb_root,
            "items": tmp / "items.parquet"}


@pytest.fixture(scope="module")
def report_dir(inputs) -> Path:
    out = inputs["tmp"] / "report"
    args = ["report", "--matrix", str(inputs["matrix"]), "--neighbors", str(inputs["neighbors"]),
            "--out", str(out), "--depth", "10", "--auc-pairs", "5000", "--example", "500"]
    for d in inputs["models"]:
        args += ["--model", str(d)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


# --------------------------------------------------------------------------- reading inputs
def test_lists_from_table_round_trip_with_string_ids():
    ids = pa.array(["a", "b", "c", "d"])
    table = pa.table({"query_id": ["c", "a", "a", "c", "a"], "rank": pa.array([2, 2, 1, 1, 3],
                                                                            pa.int32()),
                      "neighbor_id": ["a", "c", "b", "d", "d"]})
    nl = reports.lists_from_table(table, "item-item", "m", "cos", ids, ids, "t")
    np.testing.assert_array_equal(nl.queries, [0, 2])
    np.testing.assert_array_equal(nl.neighbors, [[1, 2, 3], [3, 0, -1]])
    bad = table.set_column(2, "neighbor_id", pa.array(["a", "zz", "b", "d", "d"]))
    with pytest.raises(UserError, match="id zz is not in the matrix"):
        reports.lists_from_table(bad, "item-item", "m", "cos", ids, ids, "t")


def test_read_neighbor_lists_matches_written_oracle(inputs):
    data_items = pq.read_table(inputs["matrix"] / "items.parquet").column("item_id")
    data_users = pq.read_table(inputs["matrix"] / "users.parquet").column("user_id")
    lists = reports.read_neighbor_lists(inputs["neighbors"], data_users.combine_chunks(),
                                        data_items.combine_chunks())
    assert len(lists) == 4 * 2 * 3
    nl = next(x for x in lists if (x.kind, x.model, x.metric) == ("item-item", "obj2", "dot"))
    rows = pq.read_table(inputs["neighbors"] / "kind=item-item/model=obj2/metric=dot").to_pandas()
    first = rows[rows["query_id"] == 500].sort_values("rank")["neighbor_id"].to_numpy() - 500
    np.testing.assert_array_equal(nl.neighbors[0], first)
    cut = reports.read_neighbor_lists(inputs["neighbors"], data_users.combine_chunks(),
                                      data_items.combine_chunks(), max_rank=4)
    assert all(c.neighbors.shape[1] == 4 for c in cut)
    np.testing.assert_array_equal(cut[lists.index(nl)].neighbors, nl.neighbors[:, :4])
    with pytest.raises(UserError, match="not a neighbour dataset"):
        reports.read_neighbor_lists(inputs["matrix"], data_users.combine_chunks(),
                                    data_items.combine_chunks())


def test_read_item_info_aligns_labels_and_titles(inputs):
    ids = pa.array([502, 999, 500], pa.int64())
    info = reports.read_item_info(inputs["items"], ids)
    assert info.label_source == "cluster" and info.single_label and info.n_unlabelled == 1
    first, missing, last = reports.single_labels(info.labels)
    assert missing == -1 and first >= 0 and last >= 0 and first != last
    assert list(info.titles) == ["Film 2 (c2)", "999", "Film 0 (c0)"]
    assert list(info.label_text) == ["2", "", "0"] and info.title_source == "title"


def test_read_item_info_label_columns(tmp_path):
    pq.write_table(pa.table({"item_id": [1, 2, 3], "category": ["x", "y", "x"],
                             "tags": [["a", "b"], [], ["b"]], "name": ["A", "B", "C"]}),
                   tmp_path / "items.parquet")
    ids = pa.array([3, 1, 2], pa.int64())
    cat = reports.read_item_info(tmp_path / "items.parquet", ids, "category")
    assert cat.single_label and cat.label_source == "category" and cat.n_unlabelled == 0
    np.testing.assert_allclose(metrics.label_precision(cat.labels, np.array([0, 0]),
                                                       np.array([[1], [2]])), [1.0, 0.0])
    tags = reports.read_item_info(tmp_path / "items.parquet", ids, "tags")
    assert not tags.single_label and list(tags.titles) == ["C", "A", "B"]
    assert tags.n_unlabelled == 1 and list(tags.label_text) == ["b", "a|b", ""]
    by_id = reports.read_item_info(tmp_path / "items.parquet", ids, "tags", title_col="item_id")
    assert list(by_id.titles) == ["3", "1", "2"] and by_id.title_source == "item_id"
    np.testing.assert_allclose(metrics.label_precision(tags.labels, np.array([0, 2]),
                                                       np.array([[1, 2], [0, 1]])),
                               [0.5, np.nan])
    with pytest.raises(UserError, match="label_col 'genres' is not a column"):
        reports.read_item_info(tmp_path / "items.parquet", ids, "genres")
    with pytest.raises(UserError, match="title_col 'title' is not a column"):
        reports.read_item_info(tmp_path / "items.parquet", ids, title_col="title")
    assert reports.read_item_info(tmp_path / "items.parquet", ids).labels is None


def test_d_family_groups_objective1_rescalings_only():
    params = {"objective": 1, "lam": 10.0, "scaling": {"kind": "random"}, "svd": {"k": 8},
              "preprocessing": {"kind": "none"}}
    fam = reports.d_family({"parameters": params}, "x")
    assert fam == reports.DFamily(1, 8, 10.0, "none", None)
    assert fam.label == "objective 1, λ=10, k=8"
    assert fam == reports.d_family({"parameters": {**params, "scaling": {"kind": "sigma"}}}, "y")
    assert fam != reports.d_family({"parameters": {**params, "lam": 5.0}}, "x")
    std = {**params, "preprocessing": {"kind": "standardize"}}
    assert reports.d_family({"parameters": std}, "x") == fam._replace(remedy="standardize")
    back = {**params, "scaling": None, "project_back": True}
    assert reports.d_family({"parameters": back}, "obj1-project-back") is None
    assert reports.d_family({"parameters": {**params, "objective": 2}}, "obj2") is None
    # no fit parameters: the name decides
    assert reports.d_family({}, "obj1-sigma-pop0.5") == \
        reports.DFamily(1, None, None, "popularity", 0.5)
    assert reports.d_family({}, "obj1-project-back") is None


def test_model_params_describe_every_model_name():
    from dataclasses import asdict

    from bigcos.models import Scaling

    closed = {"model": "closed-form", "objective": 1, "lam": 20.0, "project_back": False,
              "svd": {"k": 8}, "preprocessing": {"kind": "popularity", "beta": 0.75},
              "scaling": asdict(Scaling("random", spread=100.0, seed=3))}
    p = reports.model_params("obj1-random100x-seed3-pop0.75", {"parameters": closed}, 8)
    assert (p.objective, p.k, p.lam, p.scaling, p.remedy, p.remedy_beta) == \
        (1, 8, 20.0, "random100x-seed3", "popularity", 0.75)
    assert "λ=20" in p.description and "seed 3" in p.description
    assert "popularity^-0.75" in p.description
    als = reports.model_params("als", {"parameters": {"model": "als", "factors": 16,
                                                       "regularization": 0.01, "alpha": 1.0,
                                                       "iterations": 5}}, 16)
    assert als.model_type == "als" and als.k == 16 and "ALS" in als.description
    back = reports.model_params("obj2-project-back-std", {}, 4)
    assert back.objective == 2 and back.project_back and back.remedy == "standardize"
    assert "project-back" in back.description and "standardised" in back.description


def test_options_are_checked():
    with pytest.raises(UserError, match="rbo_p"):
        reports.Options(rbo_p=1.0)
    with pytest.raises(UserError, match="depth"):
        reports.Options(depth=0)
    assert reports.Options(examples=(1, "2")).examples == ("1", "2")
    with pytest.warns(DeprecationWarning, match="label_col"):
        assert reports.Options(labels="genres").label_col == "genres"
    with pytest.raises(UserError, match="disagree"):
        reports.Options(labels="genres", label_col="tags")


# --------------------------------------------------------------------------- kernels
def test_pair_scores_and_zero_norm_cosine():
    emb = np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    np.testing.assert_allclose(reports.pair_scores(emb, np.array([0, 0]), np.array([2, 1]), "cos"),
                               [1.0, 0.0])
    np.testing.assert_allclose(reports.pair_scores(emb, np.array([0]), np.array([2]), "dot"), [50])


# --------------------------------------------------------------------------- tables
def test_tables_read_back_with_documented_schema(report_dir):
    manifest = json.loads((report_dir / "manifest.json").read_text())
    assert manifest["schema"]["version"] == reports.SCHEMA_VERSION
    for name in reports.TABLES:
        path = report_dir / f"{name}.parquet"
        schema = pq.read_schema(path)
        expected = reports.table_schema(name, pa.int64())
        assert schema.equals(expected, check_metadata=False), name
        assert json.loads(schema.metadata[b"bigcos.schema"]) == {"table": name, "version": 5}
        frame = pd.read_parquet(path)
        assert list(frame.columns) == [f.name for f in expected]
        assert manifest["counts"][name] == len(frame) > 0
        con = duckdb.connect()
        assert con.execute(f"select count(*) from read_parquet('{path}')").fetchone()[0] == \
            len(frame)
        described = {r[0]: r[1] for r in con.execute(
            f"describe select * from read_parquet('{path}')").fetchall()}
        assert described == {f.name: DUCKDB_TYPES[str(f.type)] for f in expected}, name
        datasets = con.execute(f"select distinct dataset from read_parquet('{path}')").fetchall()
        assert datasets == [("report-inputs0",)], name  # the matrix directory's parent


def test_agreement_pairs_and_identities(report_dir):
    agree = pd.read_parquet(report_dir / "agreement.parquet")
    n_configs = 4 * 2
    assert len(agree) == 3 * n_configs * (n_configs - 1)  # every pair in both orders
    assert (agree["depth"] == 10).all()
    keys = ["kind", "model_a", "metric_a", "model_b", "metric_b"]
    swapped = agree.rename(columns={"model_a": "model_b", "model_b": "model_a",
                                    "metric_a": "metric_b", "metric_b": "metric_a"})
    both = agree.merge(swapped, on=keys, suffixes=("", "_swapped"))
    assert len(both) == len(agree)
    np.testing.assert_array_equal(both["jaccard_mean"], both["jaccard_mean_swapped"])
    per_item = pd.read_parquet(report_dir / "agreement_per_item.parquet")
    pairs = per_item[["model_a", "metric_a", "model_b", "metric_b"]].astype(str).drop_duplicates()
    assert len(pairs) == n_configs * (n_configs - 1) // 2
    assert (pairs.model_a + "/" + pairs.metric_a < pairs.model_b + "/" + pairs.metric_b).all()
    # user-item dot is D-invariant (X A B^T does not depend on D): identical lists up to
    # float32 rounding of near-ties.
    d_sens = pd.read_parquet(report_dir / "d_sensitivity.parquet")
    ui = d_sens[(d_sens["kind"] == "user-item")].set_index("metric")
    assert ui.loc["dot", "n_models"] == 3 and ui.loc["dot", "n_pairs"] == 3
    assert ui.loc["dot", "jaccard_mean"] > 0.98
    assert ui.loc["cos", "jaccard_mean"] < ui.loc["dot", "jaccard_mean"]
    ii = d_sens[d_sens["kind"] == "item-item"].set_index("metric")
    assert ii.loc["cos", "jaccard_min"] < 0.95  # cosine of item embeddings moves with D
    assert (d_sens[["objective", "k", "lam", "remedy"]].drop_duplicates().values.tolist()
            == [[1, K, LAM1, "none"]])
    assert d_sens["remedy_beta"].isna().all()
    assert [list(m) for m in d_sens["models"]] == [["obj1-random100x-seed1",
                                                    "obj1-random100x-seed2", "obj1-symmetric"]
                                                   ] * len(d_sens)


def test_heldout_on_a_user_sample_is_the_heldout_of_the_sampled_users(inputs):
    from bigcos.matrix import load_matrix
    from bigcos.models import load_model

    data = load_matrix(inputs["matrix"])
    models = {m.name: m for m in map(load_model, inputs["models"])}
    full = reports.heldout_scores(models, data)
    test_users = np.flatnonzero(data.heldout_users & (np.diff(data.test.indptr) > 0))
    np.testing.assert_array_equal(full.users, test_users)
    assert full.n_test_users == len(test_users) > 30
    sampled = reports.heldout_scores(models, data, max_users=12, seed=4)
    users = sampled.users
    assert users.size == 12 and np.all(np.diff(users) > 0) and np.isin(users, test_users).all()
    assert sampled.n_test_users == len(test_users)
    other = reports.heldout_scores(models, data, max_users=12, seed=5).users
    assert not np.array_equal(other, users)  # the seed draws the sample
    rows = np.searchsorted(full.users, users)
    assert sampled.values.keys() == full.values.keys() and len(sampled.values) == 8
    for key, per in sampled.values.items():  # one sample for every model and metric
        for measure, v in per.items():
            assert v.shape == (12,)
            np.testing.assert_array_equal(v, full.values[key][measure][rows], err_msg=str(key))
    # the table and the paired comparisons say how many users were ranked, of how many
    opts = reports.Options(max_heldout_users=12, seed=4, n_resamples=100)
    held = reports.heldout(models, data, opts=opts)
    assert {(r["n_users"], r["n_test_users"]) for r in held} == {(12, len(test_users))}
    params = {n: reports.model_params(n, m.manifest, 0) for n, m in models.items()}
    compared = reports.comparisons(sampled, params, opts)
    assert compared and {r["n_users"] for r in compared} == {12}
    # a cap at or above the number of test users ranks them all: the uncapped result
    for cap in (len(test_users), 10 * len(test_users)):
        whole = reports.heldout_scores(models, data, max_users=cap, seed=4)
        np.testing.assert_array_equal(whole.users, full.users)
        assert whole.n_test_users == full.n_test_users
        for key, per in full.values.items():
            for measure, v in per.items():
                np.testing.assert_array_equal(whole.values[key][measure], v)
    with pytest.raises(UserError, match="max_users"):
        reports.heldout_scores(models, data, max_users=0)
    with pytest.raises(UserError, match="max_heldout_users"):
        reports.Options(max_heldout_users=0)


def test_agreement_on_a_query_sample_is_the_agreement_of_the_sampled_queries():
    from bigcos.reports.tables import agreement, sample_queries

    rng = np.random.default_rng(3)
    ids = pa.array([str(i) for i in range(300)])
    queries = np.arange(0, 300, 2)  # 150 queries, every config of a kind has the same ones
    lists = [reports.NeighborLists(kind, model, metric, queries,
                                   np.argsort(rng.random((150, 300)), axis=1)[:, :10])
             for kind in ("item-item", "user-item") for model in ("m1", "m2")
             for metric in ("cos", "dot")]
    sampled = sample_queries(lists, 40, seed=5)
    kept = {nl.kind: [] for nl in sampled}
    for nl in sampled:
        kept[nl.kind].append(nl.queries)
        assert nl.queries.size == 40 and np.isin(nl.queries, queries).all()
    for same in kept.values():  # one sample per kind, shared by every configuration
        assert all(np.array_equal(same[0], q) for q in same)
    assert sample_queries(lists, 150, seed=5) == lists  # small enough: kept whole
    opts = reports.Options(max_queries=40, n_resamples=200, seed=5)
    rows = agreement(lists, opts, ids).rows
    assert {r["n_queries"] for r in rows} == {40}
    full = {(nl.kind, nl.model, nl.metric): nl for nl in lists}
    for r in rows[:6]:
        a, b = full[r["kind"], r["model_a"], r["metric_a"]], full[r["kind"], r["model_b"],
                                                                  r["metric_b"]]
        rows_of = np.searchsorted(queries, kept[r["kind"]][0])
        expected = metrics.jaccard(a.neighbors[rows_of], b.neighbors[rows_of]).mean()
        assert r["jaccard_mean"] == pytest.approx(expected, rel=1e-12)
        assert r["jaccard_lo"] <= r["jaccard_mean"] <= r["jaccard_hi"]


def test_models_table_holds_parameters_and_folders(report_dir, inputs):
    models = pd.read_parquet(report_dir / "models.parquet").set_index("model")
    assert sorted(models.index) == sorted(d.name for d in inputs["models"])
    assert all((report_dir / models.loc[d.name, "directory"]).resolve() == d.resolve()
               for d in inputs["models"])
    assert models.loc["obj2", "directory"] == "../models/obj2"
    assert models.loc["obj2", "objective"] == 2 and models.loc["obj2", "lam"] == LAM2
    assert models.loc["obj1-random100x-seed2", "scaling"] == "random100x-seed2"
    assert (models["k"] == K).all() and (models["remedy"] == "none").all()
    assert models["description"].str.len().min() > 20


def test_agreement_per_item_recomputes_from_the_neighbour_files(report_dir, inputs):
    per_item = pd.read_parquet(report_dir / "agreement_per_item.parquet")
    pair = per_item[(per_item.model_a == "obj1-symmetric") & (per_item.metric_a == "cos")
                    & (per_item.model_b == "obj2") & (per_item.metric_b == "dot")]
    assert len(pair) == N_ITEMS
    def lists(model, metric):
        t = pd.read_parquet(inputs["neighbors"] / f"kind=item-item/model={model}/metric={metric}")
        t = t[t["rank"] <= 10].sort_values(["query_id", "rank"])
        return {q: list(g["neighbor_id"]) for q, g in t.groupby("query_id")}

    a, b = lists("obj1-symmetric", "cos"), lists("obj2", "dot")
    for _, row in pair.head(15).iterrows():
        sa, sb = set(a[row.query_id]), set(b[row.query_id])
        assert row.jaccard == pytest.approx(len(sa & sb) / len(sa | sb))
        x = [len(set(a[row.query_id][:d]) & set(b[row.query_id][:d])) for d in range(1, 11)]
        rbo = x[-1] / 10 * 0.9**10 + 0.1 / 0.9 * sum(x[d - 1] / d * 0.9**d for d in range(1, 11))
        assert row.rbo == pytest.approx(rbo)


def test_ground_truth_beats_popularity_matched_baseline(report_dir, inputs):
    truth = pd.read_parquet(report_dir / "ground_truth.parquet")
    assert len(truth) == 8 and (truth["label_source"] == "cluster").all()
    assert (truth["precision"] > truth["baseline_precision"]).all()
    assert truth["baseline_precision"].between(0.2, 0.5).all()  # 3 equal clusters: ~1/3
    assert (truth["auc"] > 0.5).all() and (truth["n_auc_pairs"] > 1000).all()
    # precision recomputed by hand from the neighbour files
    t = pd.read_parquet(inputs["neighbors"] / "kind=item-item/model=obj2/metric=cos")
    t = t[t["rank"] <= 10]
    share = ((t["query_id"] - 500) % 3 == (t["neighbor_id"] - 500) % 3).mean()
    got = truth.set_index(["model", "metric"]).loc[("obj2", "cos"), "precision"]
    assert got == pytest.approx(share)
    # intervals: the bootstrap of the per-query precisions recomputed from the same file
    from bigcos.stats import bootstrap_mean

    per_query = t.assign(hit=(t["query_id"] - 500) % 3 == (t["neighbor_id"] - 500) % 3
                         ).groupby("query_id")["hit"].mean().to_numpy()
    row = truth.set_index(["model", "metric"]).loc[("obj2", "cos")]
    assert row["n_queries"] == len(per_query) and (truth["level"] == 0.95).all()
    assert (truth["precision_lo"] <= truth["precision"]).all()
    assert (truth["precision"] <= truth["precision_hi"]).all()
    assert (truth["baseline_lo"] <= truth["baseline_precision"]).all()
    assert (truth["above_baseline_lo"] > 0).all()  # every configuration beats its baseline
    # the queries are in item order in both; the interval is the one of that array's mean
    iv = bootstrap_mean(per_query, 1000, 0.95, 0)
    assert row["precision_lo"] == pytest.approx(iv.lo, abs=2e-3)
    assert row["precision_hi"] == pytest.approx(iv.hi, abs=2e-3)


def test_heldout_matches_a_python_loop(report_dir, inputs):
    from bigcos.matrix import load_matrix

    held = pd.read_parquet(report_dir / "heldout.parquet")
    assert len(held) == 8 and (held["protocol"] == "strong").all()
    data = load_matrix(inputs["matrix"])
    items = pq.read_table(inputs["models"][0] / "items.parquet").column("embedding")
    users = pq.read_table(inputs["models"][0] / "users.parquet").column("embedding")
    B = np.array(items.to_pylist(), np.float32)
    U = np.array(users.to_pylist(), np.float32)
    train, test = data.train.toarray() > 0, data.test.toarray() > 0
    recalls = []
    for u in np.flatnonzero(data.heldout_users & test.any(1)):
        scores = np.where(train[u], -np.inf, U[u] @ B.T)
        top = np.lexsort((np.arange(N_ITEMS), -scores))[:20]
        recalls.append(test[u, top].sum() / min(20, test[u].sum()))
    row = held.set_index(["model", "metric"]).loc[("obj1-symmetric", "dot")]
    assert row["n_users"] == row["n_test_users"] == len(recalls)  # fewer than the cap: all
    assert row["recall_at_20"] == pytest.approx(np.mean(recalls))
    # dot ranking is D-invariant: every objective 1 model gets the same held-out numbers
    dot = held[(held.metric == "dot") & held.model.str.startswith("obj1")]
    np.testing.assert_allclose(dot["ndcg_at_100"], dot["ndcg_at_100"].iloc[0], rtol=1e-6)


def test_heldout_names_its_columns_after_ks(inputs):
    from bigcos.matrix import load_matrix
    from bigcos.models import load_model

    data = load_matrix(inputs["matrix"])
    model = load_model(inputs["models"][0])
    rows = reports.heldout({model.name: model}, data, ks=(5, 7, 9))
    assert list(rows[0]) == ["model", "metric", "protocol", "n_users", "n_test_users",
                             "recall_at_5",
                             "recall_at_5_lo", "recall_at_5_hi", "recall_at_7", "recall_at_7_lo",
                             "recall_at_7_hi", "ndcg_at_9", "ndcg_at_9_lo", "ndcg_at_9_hi",
                             "level", "lam", "lam_source", "scoring"]
    train, test = data.train.toarray() > 0, data.test.toarray() > 0
    B, U = model.item_embeddings, model.user_embeddings
    recalls = []
    for u in np.flatnonzero(data.heldout_users & test.any(1)):
        scores = np.where(train[u], -np.inf, U[u] @ B.T)
        top = np.lexsort((np.arange(N_ITEMS), -scores))[:5]
        recalls.append(test[u, top].sum() / min(5, test[u].sum()))
    dot = next(r for r in rows if r["metric"] == "dot")
    assert dot["recall_at_5"] == pytest.approx(np.mean(recalls))
    schema = reports.table_schema("heldout", fields=reports.schema.heldout_fields((5, 7, 9)))
    assert reports.schema.make_table("heldout", rows, schema).num_rows == 2


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    """Reports and Figure 1 draw on their own Agg canvas: no pyplot, no matplotlib.use."""
    code = ("import sys, matplotlib, numpy as np\n"
            "matplotlib.use('svg')\n"
            "from bigcos.reports import plots\n"
            "from bigcos import figures\n"
            "fig = plots.similarity_panels({'a': np.eye(3), 'b': -np.eye(3)}, ncols=1)\n"
            "assert plots.png_bytes(fig)[:4] == b'\\x89PNG'\n"
            f"figures.plot(__import__('pathlib').Path(r'{tmp_path}') / 'f.png',"
            " {'a': np.eye(4)}, {'a': 'A'}, np.array([0, 2, 4]))\n"
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["svg", "False"]
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_popularity_table(report_dir, inputs):
    pop = pd.read_parquet(report_dir / "popularity.parquet")
    assert len(pop) == 8
    assert pop["norm_popularity_spearman"].between(-1, 1).all()
    assert pop["frac_more_popular"].between(0, 1).all()
    # both metrics of one model share the model's norm-popularity correlation
    assert pop.groupby("model")["norm_popularity_spearman"].nunique().max() == 1


def test_report_refuses_existing_output_and_bad_schema_version(report_dir, inputs, tmp_path):
    result = CliRunner().invoke(main, ["report", "--matrix", str(inputs["matrix"]), "--model",
                                       str(inputs["models"][0]), "--neighbors",
                                       str(inputs["neighbors"]), "--out", str(report_dir)])
    assert result.exit_code == 1 and "already exists" in result.output
    table = reports.read_report_table(report_dir, "agreement")
    pq.write_table(table.replace_schema_metadata({"bigcos.schema": '{"version": 0}'}),
                   tmp_path / "agreement.parquet")
    with pytest.raises(UserError, match="schema version 0"):
        reports.read_report_table(tmp_path, "agreement")


# --------------------------------------------------------------------------- the page
def test_html_is_self_contained_with_examples(report_dir):
    page = (report_dir / "report.html").read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:|//|file:)", page)
    assert page.count("data:image/png;base64,") >= 6
    assert "Nearest items to Film 0 (c0)" in page and "✓ Film" in page
    assert "<title>bigcos report: report-inputs0" in page
    assert "<h2>Findings</h2>" in page and "user-item neighbours across 3 rescalings D" in page
    assert page.count("Held-out Recall@20 across the D of") == 1  # obj2 is no D-family


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed")
def test_html_renders_its_images_in_headless_chromium(report_dir, inputs, tmp_path):
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => {const imgs = [...document.images];"
              "const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
              "const d = document.createElement('div'); d.id = 'probe';"
              "d.textContent = `images ${ok}/${imgs.length}`; document.body.appendChild(d);});"
              "</script>")
    probe.write_text((report_dir / "report.html").read_text().replace("</body>",
                                                                      script + "</body>"))
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    match = re.search(r"images (\d+)/(\d+)", dom)
    assert match, dom[-500:]
    assert int(match[2]) >= 6 and match[1] == match[2]
    # the header names dataset, version and k; the legend explains every model
    header = re.search(r"<header id=\"report-header\">(.*?)</header>", dom, re.S)[1]
    assert re.search(r'id="meta-dataset">report-inputs0<', header)
    assert re.search(rf'id="meta-bigcos">{re.escape(bigcos.__version__)}<', header)
    assert f"objective 1: λ={LAM1:g}, k={K} (3 models)" in header
    assert f"objective 2: λ={LAM2:g}, k={K} (1 model)" in header
    assert "N = 10 neighbours compared (computed: 12)" in header
    assert "users: 25% of users held out" in header
    assert "column <code>cluster</code>" in header and "0 of 60 items have no label" in header
    legend = re.search(r'<section id="legend">(.*?)</section>', dom, re.S)[1]
    for d in inputs["models"]:
        assert re.search(rf"<code>{d.name}</code></td><td>[^<]{{20,}}</td>", legend), d.name
    assert "random100x-seed1" in legend and "-std / -pop" in legend
    # findings generated from the comparisons' verdicts, and the validation curves
    findings = re.search(r'<ul id="findings">(.*?)</ul>', dom, re.S)[1]
    assert "paired comparisons of held-out Recall@20" in findings and "Holm-adjusted" in findings
    validation = re.search(r'<section id="validation">(.*?)</section>', dom, re.S)[1]
    assert "Validation curves: choosing λ" in validation and "<img" in validation
    shot = Path(os.environ.get("BIGCOS_SCREENSHOT", tmp_path / "page.png"))
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,3000",
                    (report_dir / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000


def _report_args(inputs, out, *extra):
    args = ["report", "--matrix", str(inputs["matrix"]), "--neighbors", str(inputs["neighbors"]),
            "--out", str(out), "--auc-pairs", "500", *extra]
    for d in inputs["models"]:
        args += ["--model", str(d)]
    return args


def test_example_not_in_the_matrix_fails_at_once(inputs, tmp_path):
    result = CliRunner().invoke(main, _report_args(inputs, tmp_path / "r", "--example", "4242"))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: example item 4242: not in the matrix {inputs['matrix']} (60 items; an item "
        f"can be missing from the log or dropped by ingest filters such as min_item)"]
    assert not (tmp_path / "r").exists()


def test_models_of_another_matrix_fail_with_one_line(inputs, tmp_path):
    other = ingest(inputs["tmp"] / "log.parquet", tmp_path / "filtered",
                   IngestOptions(split="users", heldout_users=0.25, test_fraction=0.3, seed=1,
                                 min_item=40))
    assert other.shape[1] < N_ITEMS
    args = _report_args(inputs, tmp_path / "r")
    args[args.index("--matrix") + 1] = str(tmp_path / "filtered")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "was fit on another matrix" in lines[0], result.output
    assert f"differ from the {other.shape[1]:,} of {tmp_path / 'filtered'}" in lines[0]


def test_cli_label_and_title_columns_and_deprecated_labels(inputs, tmp_path):
    result = CliRunner().invoke(main, _report_args(
        inputs, tmp_path / "r", "--labels", "cluster", "--title-col", "item_id",
        "--dataset", "clustered", "--job", "nightly"))
    assert result.exit_code == 0, result.output
    assert "--labels is deprecated" in result.output
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<title>bigcos report: clustered, job nightly (" in page
    assert "Nearest items to 509 (id 509" in page  # titles from item_id, most popular item
    truth = pd.read_parquet(tmp_path / "r" / "ground_truth.parquet")
    assert set(truth["dataset"]) == {"clustered"} and set(truth["label_source"]) == {"cluster"}
    result = CliRunner().invoke(main, _report_args(inputs, tmp_path / "r2", "--label-col",
                                                   "nope"))
    assert result.exit_code == 1 and "label_col 'nope' is not a column" in result.output


# --------------------------------------------------------------------------- with the real modules
def test_report_on_models_and_neighbours_from_bigcos_itself(inputs, tmp_path):
    """bigcos fit (exact SVD) + bigcos neighbors (threaded scheduler) feed the report."""
    from bigcos.models import ModelSpec, Scaling, SVDOptions, fit
    from bigcos.neighbor_lists import neighbors

    specs = [ModelSpec(1, LAM1, Scaling("symmetric")),
             ModelSpec(1, LAM1, Scaling("random", spread=100.0, seed=1)),
             ModelSpec(1, LAM1, Scaling("random", spread=100.0, seed=2)),
             ModelSpec(2, LAM2)]
    fitted = fit(inputs["matrix"], tmp_path / "models", specs, SVDOptions(k=K, exact=True),
                 cache_dir=None)
    dirs = [fitted.models[name] for name in sorted(fitted.models)]
    neighbors(dirs, tmp_path / "nb", kinds=("item-item", "user-item"), n=10)
    report = reports.write_report(tmp_path / "report", inputs["matrix"], dirs, tmp_path / "nb",
                                  options=reports.Options(auc_pairs=2000))
    d_sens = report.tables["d_sensitivity"].to_pandas().set_index(["kind", "metric"])
    assert set(zip(d_sens["k"], d_sens["lam"], strict=True)) == {(K, LAM1)}
    assert report.tables["models"].column("model").to_pylist() == [d.name for d in dirs]
    assert d_sens.loc[("user-item", "dot"), "n_models"] == 3
    assert d_sens.loc[("user-item", "dot"), "jaccard_mean"] > 0.98
    assert d_sens.loc[("item-item", "cos"), "jaccard_min"] < 0.95
    held = report.tables["heldout"].to_pandas()
    dot = held[(held.metric == "dot") & held.model.str.startswith("obj1")]
    np.testing.assert_allclose(dot["recall_at_20"], dot["recall_at_20"].iloc[0], rtol=1e-6)
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000


# --------------------------------------------------------------------------- issue 11: statistics
@pytest.fixture(scope="module")
def remedy_models(inputs) -> dict:
    """obj1 symmetric, user-orthonormal and project-back fit by bigcos.fit, plain, -std and -pop."""
    from bigcos.closed_form import ModelSpec, Scaling
    from bigcos.models import Preprocessing, SVDOptions, fit, load_model

    specs = [ModelSpec(1, LAM1, Scaling("symmetric")), ModelSpec(1, LAM1, project_back=True)]
    models = {}
    for pre in (Preprocessing(), Preprocessing("standardize"), Preprocessing("popularity")):
        out = inputs["tmp"] / f"fit-{pre.kind}"
        if not out.exists():
            fit(inputs["matrix"], out, specs, SVDOptions(k=K, exact=True), pre, cache_dir=None)
        for d in sorted(p for p in out.iterdir() if p.is_dir()):
            models[d.name] = load_model(d)
    return models


def test_heldout_dot_is_the_models_prediction_of_x(inputs, remedy_models):
    """Project-back and column remedies: the held-out dot equals a dense X-scale prediction."""
    from bigcos.column_remedies import Preprocessing
    from bigcos.matrix import load_matrix

    data = load_matrix(inputs["matrix"])
    scores = reports.heldout_scores(remedy_models, data)
    users = scores.users
    X = data.train.toarray().astype(np.float64)
    X_fit = data.fit_train.toarray().astype(np.float64)
    train, test = X[users] > 0, data.test.toarray()[users] > 0
    for name, model in remedy_models.items():
        if "project-back" not in name and name == "obj1-symmetric":
            continue
        kind = ("standardize" if name.endswith("-std") else
                "popularity" if "-pop" in name else "none")
        mu = X_fit.mean(0) if kind == "standardize" else np.zeros(N_ITEMS)
        if kind == "standardize":
            s = 1 / X_fit.std(0)
        elif kind == "popularity":
            s = (X_fit > 0).sum(0) ** -Preprocessing("popularity").beta
        else:
            s = np.ones(N_ITEMS)
        _, sigma, vt = np.linalg.svd((X_fit - mu) * s, full_matrices=False)
        V, g = vt[:K].T, sigma[:K] ** 2 / (sigma[:K] ** 2 + LAM1)
        W = V @ np.diag(g) @ V.T  # every objective-1 model of this λ predicts X~ W
        predicted = ((X[users] - mu) * s) @ W / s + mu
        u, i = reports.dot_factors(model, users)
        got = u.astype(np.float64) @ i.T.astype(np.float64)
        np.testing.assert_allclose(got, predicted, rtol=2e-3, atol=2e-4 * np.abs(predicted).max(),
                                   err_msg=name)
        if "project-back" in name:  # the exported factors' dot is X~ V G^2 V^T instead
            exported = model.user_embeddings[users] @ model.item_embeddings.T
            assert not np.allclose(exported, predicted, rtol=1e-2)
        recalls = []
        for row in range(len(users)):
            order = np.lexsort((np.arange(N_ITEMS), -np.where(train[row], -np.inf,
                                                               predicted[row])))[:20]
            recalls.append(test[row, order].sum() / min(20, test[row].sum()))
        np.testing.assert_allclose(scores.values[name, "dot"]["recall_at_20"], recalls)
    assert scores.dot_scoring["obj1-project-back"] == "project-back"
    assert scores.dot_scoring["obj1-symmetric-std"] == "column-remedy"
    assert scores.dot_scoring["obj1-project-back-pop0.75"] == "project-back+column-remedy"
    # the remedy comparisons name the model each remedy repairs
    params = {n: reports.model_params(n, m.manifest, 0) for n, m in remedy_models.items()}
    stated = reports.stated_comparisons(params, set(remedy_models))
    pairs = {(s.model_a, s.model_b, s.metric_a): s.identical_by_construction
             for s in stated if s.comparison == "remedy vs repaired"}
    assert pairs[("obj1-project-back", "obj1-symmetric", "dot")] is True
    assert pairs[("obj1-symmetric-std", "obj1-symmetric", "cos")] is False
    assert ("obj1-project-back-std", "obj1-symmetric", "dot") in pairs


def test_intervals_contain_the_estimate_and_shrink_with_more_users(inputs, remedy_models):
    from bigcos.matrix import load_matrix

    scores = reports.heldout_scores(remedy_models, load_matrix(inputs["matrix"]))
    opts = reports.Options(n_resamples=400, seed=3)
    lams = {n: (LAM1, "fixed") for n in remedy_models}
    rows = reports.heldout_rows(scores, lams, opts)
    for r in rows:
        for m in scores.measures:
            assert r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"], (r["model"], m)
        assert r["level"] == 0.95 and r["lam"] == LAM1 and r["lam_source"] == "fixed"
    # a bigger sample of users from the same population: narrower intervals
    rng = np.random.default_rng(0)
    many = dataclasses_replace(scores, rng.integers(0, len(scores.users), 20 * len(scores.users)))
    wide = {(r["model"], r["metric"]): r["recall_at_20_hi"] - r["recall_at_20_lo"] for r in rows}
    for r in reports.heldout_rows(many, lams, opts):
        assert r["recall_at_20_hi"] - r["recall_at_20_lo"] < 0.5 * wide[r["model"], r["metric"]]


def dataclasses_replace(scores, rows: np.ndarray):
    """HeldOutScores of the users at positions ``rows`` (repeats allowed)."""
    import dataclasses

    return dataclasses.replace(scores, users=scores.users[rows], values={
        key: {m: v[rows] for m, v in per.items()} for key, per in scores.values.items()})


def test_a_planted_per_user_effect_gives_a_verdict():
    rng = np.random.default_rng(11)
    base = rng.beta(2, 5, 400)
    noise = lambda: rng.normal(0, 0.05, base.size)  # noqa: E731
    values = {("obj1-symmetric", "dot"): {"recall_at_20": base + 0.03 + noise()},
              ("obj1-symmetric", "cos"): {"recall_at_20": base + noise()},
              ("obj2", "dot"): {"recall_at_20": base + noise()},
              ("obj2", "cos"): {"recall_at_20": base + 0.03 + noise()},
              ("als", "dot"): {"recall_at_20": base + noise()},
              ("als", "cos"): {"recall_at_20": base + noise()}}
    scores = reports.HeldOutScores(np.arange(base.size), "strong", ["recall_at_20"], values,
                                   dict.fromkeys(("obj1-symmetric", "obj2", "als"), "exported"))
    params = {n: reports.model_params(n, {}, 0) for n in ("obj1-symmetric", "obj2", "als")}
    rows = reports.comparisons(scores, params, reports.Options(n_resamples=500))
    by = {(r["comparison"], r["model_a"], r["metric_a"]): r for r in rows}
    assert by["dot vs cosine", "obj1-symmetric", "dot"]["verdict"] == "a better"
    assert by["dot vs cosine", "obj2", "dot"]["verdict"] == "b better"
    assert by["dot vs cosine", "als", "dot"]["verdict"] == "no difference"
    assert by["vs ALS", "obj1-symmetric", "dot"]["verdict"] == "a better"
    assert by["vs ALS", "obj2", "cos"]["verdict"] == "a better"
    assert {r["n_comparisons"] for r in rows} == {len(rows)}
    # Holm only ever turns a verdict into "no difference"
    assert all(r["verdict_holm"] in (r["verdict"], "no difference") for r in rows)
    assert by["dot vs cosine", "obj1-symmetric", "dot"]["verdict_holm"] == "a better"


def test_findings_follow_the_comparisons_table(report_dir):
    page = (report_dir / "report.html").read_text()
    findings = re.search(r"<ul id=findings>(.*?)</ul>", page, re.S)[1]
    comp = pd.read_parquet(report_dir / "comparisons.parquet")
    first = comp[comp.measure == "recall_at_20"]
    assert f"{len(first)} paired comparisons of held-out Recall@20" in findings
    words = {"a better": "dot better", "b better": "cosine better",
             "no difference": "no difference"}
    for r in first[first.comparison == "dot vs cosine"].itertuples():
        sentence = re.search(rf"{re.escape(r.model_a)}: Recall@20 by dot [^<]*", findings)[0]
        assert f": {words[r.verdict]} (dot − cosine {r.estimate:+.3f}" in sentence
        assert f"Holm-adjusted: {words[r.verdict_holm]}" in sentence
    assert "id=validation" in page and "Validation curves: choosing λ" in page
    assert re.search(r'<section id=validation>.*?<img alt="validation curves"', page, re.S)
    assert "obj2: objective 2 keeps 2 of 8 dimensions" in page  # the manifest warning
    path = pd.read_parquet(report_dir / "lambda_path.parquet")
    assert set(path.model) == {"obj1-symmetric", "obj2"} and path.chosen.sum() == 4
    held = pd.read_parquet(report_dir / "heldout.parquet").set_index(["model", "metric"])
    assert held.loc[("obj1-symmetric", "dot"), "lam_source"] == "validated"
    assert held.loc[("obj2", "cos"), "lam"] == LAM2
    agree = pd.read_parquet(report_dir / "agreement.parquet")
    assert ((agree.jaccard_lo <= agree.jaccard_mean + 1e-12)
            & (agree.jaccard_mean <= agree.jaccard_hi + 1e-12)).all()
