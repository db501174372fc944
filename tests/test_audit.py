"""``bigcos audit`` on real saved models: implicit ALS/BPR (.npz from implicit's own save) and a
closed-form objective-1 model exported as bare Parquet files, against dense numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bigcos
from bigcos import io as bio
from bigcos.canonical import canonical_form, gram, member_maps, named_scalings, random_scalings
from bigcos.cli import main
from bigcos.embedding_audit import AuditOptions, audit
from bigcos.embedding_audit.family import OWN
from bigcos.errors import UserError
from bigcos.matrix import IngestOptions
from bigcos.models import ModelSpec, Scaling, SVDOptions

FAST = AuditOptions(item_queries=300, user_queries=200, n_resamples=200)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, bundled_log, bundled_items):
    """A matrix with a random test split, and implicit ALS and BPR saved by implicit itself."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from threadpoolctl import threadpool_limits

    root = tmp_path_factory.mktemp("audit")
    bigcos.ingest(bundled_log, root / "matrix", IngestOptions(split="random", threshold=3.5),
                  items=bundled_items)
    data = bigcos.load_matrix(root / "matrix")
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=12, iterations=4, random_state=0)
        als.fit(data.train, show_progress=False)
        als.save(root / "als")
        bpr = BayesianPersonalizedRanking(factors=12, iterations=20, random_state=0)
        bpr.fit(data.train, show_progress=False)
        bpr.save(root / "bpr")
    return root, data


@pytest.fixture(scope="module")
def als_report(saved):
    root, _ = saved
    return audit(root / "als.npz", root / "als-report", matrix=root / "matrix", options=FAST)


def _verdicts(result) -> dict[tuple[str, str], dict]:
    return {(r["question"], r["kind"]): r for r in result.tables["verdicts"].to_pylist()}


def test_als_family_keeps_dot_scores_and_moves_cosines(saved, als_report):
    root, data = saved
    result = als_report
    saved_model = np.load(root / "als.npz")
    P, B = saved_model["user_factors"], saved_model["item_factors"]
    # independent check of the family on the saved factors: every member's P_D B_D' = P B'
    c = canonical_form(gram(P), gram(B))
    dense = P[:50].astype(np.float64) @ B.T.astype(np.float64)
    for d in (named_scalings(c.s) | random_scalings(c.rank, 3, seed=0)).values():
        user_map, item_map = member_maps(c, d)
        np.testing.assert_allclose((P[:50] @ user_map) @ (B @ item_map).T, dense,
                                   atol=2e-5 * np.abs(dense).max())
    # the canonical identity A B' = U S V' on the model
    U, V = P[:50] @ c.user_map, B @ c.item_map
    np.testing.assert_allclose((U * c.s) @ V.T, dense, atol=1e-5 * np.abs(dense).max())
    # the audit's tables say the same: user-item dot lists identical, cosine lists move
    agree = result.tables["agreement"].to_pylist()
    dots = [r for r in agree if r["kind"] == "user-item" and r["metric_a"] == "dot"
            and r["member_a"] != r["member_b"]]
    assert len(dots) == 2 * 7 - 1  # 7 members vs own and (but itself) vs balanced
    assert all(r["max_rel_score_diff"] < 1e-5 and r["jaccard"] > 0.99 for r in dots)
    cos = [r for r in agree if r["kind"] == "user-item" and r["metric_a"] == "cos"
           and r["member_b"] == OWN and r["member_a"] != OWN]
    assert min(r["jaccard"] for r in cos) < 0.5
    v = _verdicts(result)
    assert v[("dot scores identical across dot-equivalent models", "user-item")]["verdict"] \
        == "identical"
    assert v[("cosine lists stable across dot-equivalent models", "user-item")]["verdict"] \
        == "unstable"
    assert "L2" in v[("training pinned the rescaling D", "user-item")]["detail"]
    assert (result.out / "verdicts.parquet").exists()
    assert "cosine vs dot" in (result.out / "report.html").read_text()


def test_als_heldout_matches_dense_ranking_and_has_paired_intervals(saved, als_report):
    root, data = saved
    result = als_report
    z = np.load(root / "als.npz")
    scores = z["user_factors"].astype(np.float64) @ z["item_factors"].T.astype(np.float64)
    test_users = np.flatnonzero(np.diff(data.test.indptr) > 0)
    recalls = []
    for u in test_users:
        s = scores[u].copy()
        s[data.train[u].indices] = -np.inf
        top = np.argsort(-s, kind="stable")[:20]
        relevant = set(data.test[u].indices)
        recalls.append(len(relevant & set(top)) / min(20, len(relevant)))
    held = {(r["member"], r["metric"], r["measure"]): r
            for r in result.tables["heldout"].to_pylist()}
    own_dot = held[(OWN, "dot", "recall_at_20")]
    assert own_dot["n_users"] == len(test_users)
    assert own_dot["mean"] == pytest.approx(np.mean(recalls), abs=2e-3)  # float32 near-ties
    for member in ("balanced", "item-orthonormal", "user-orthonormal"):  # dot is D-invariant
        assert held[(member, "dot", "recall_at_20")]["mean"] == pytest.approx(own_dot["mean"],
                                                                             abs=2e-3)
    v = _verdicts(result)
    for measure in ("recall_at_20", "ndcg_at_20"):
        row = v[(f"held-out {measure}: cosine vs dot", "user-item")]
        assert row["lo"] <= row["estimate"] <= row["hi"]
        diff = held[(OWN, "cos", measure)]["mean"] - held[(OWN, "dot", measure)]["mean"]
        assert row["estimate"] == pytest.approx(diff, abs=1e-9)
        expected = ("cosine better" if row["lo"] > 0 else "dot better" if row["hi"] < 0
                    else "no difference")
        assert row["verdict"] == expected
    # evidence tables: popularity and genres (from the item table recorded at ingest)
    assert {r["metric"] for r in result.tables["popularity"].to_pylist()} == {"cos", "dot"}
    labels = result.tables["labels"].to_pylist()
    assert labels[0]["label_column"] == "genres"
    assert all(0 <= r["same_label_auc"] <= 1 for r in labels)
    titles = {r["title"] for r in result.tables["examples"].to_pylist()}
    assert any("(19" in t or "(20" in t for t in titles)  # real movie titles with years


def test_bpr_with_bias_columns(saved, tmp_path):
    root, _ = saved
    z = np.load(root / "bpr.npz")
    assert z["item_factors"].shape[1] == 13  # implicit's BPR: 12 factors + an item bias column
    result = audit(root / "bpr.npz", tmp_path / "rep", matrix=root / "matrix", options=FAST)
    v = _verdicts(result)
    assert v[("dot scores identical across dot-equivalent models", "user-item")]["verdict"] \
        == "identical"
    assert "BPR" in v[("training pinned the rescaling D", "user-item")]["detail"]
    assert result.tables["dimensions"].num_rows == 13


@pytest.fixture(scope="module")
def closed_form(saved):
    """Objective 1 under two rescalings, from one SVD (bigcos.fit)."""
    root, _ = saved
    bigcos.fit(root / "matrix", root / "obj1", [ModelSpec(1, 50.0, Scaling("item-orthonormal")),
                                                ModelSpec(1, 50.0, Scaling("sigma"))],
               SVDOptions(k=16, exact=True), cache_dir=None)
    return root / "obj1"


@pytest.mark.parametrize("scaling, member", [("item-orthonormal", "item-orthonormal"),
                                             ("sigma", "balanced")])
def test_closed_form_export_is_recognised_as_its_member(closed_form, tmp_path, scaling, member):
    model = closed_form / f"obj1-{scaling}"
    bare = tmp_path / "bare"  # just the two Parquet files, no manifest
    bare.mkdir()
    for name in ("items.parquet", "users.parquet"):
        pq.write_table(pq.read_table(model / name), bare / name)
    result = audit(bare / "items.parquet", tmp_path / "rep", users=bare / "users.parquet",
                   options=FAST)
    agree = {(r["kind"], r["member_a"], r["metric_a"], r["member_b"]): r
             for r in result.tables["agreement"].to_pylist()}
    assert agree[("item-item", member, "cos", OWN)]["jaccard"] == 1.0
    assert agree[("item-item", "fitted", "cos", OWN)]["jaccard"] == 1.0
    others = [r["jaccard"] for (k, m, mt, b), r in agree.items()
              if k == "item-item" and mt == "cos" and b == OWN and m.startswith("random")]
    assert max(others) < 0.95
    row = _verdicts(result)[("embeddings are a member of the dot-equivalent family", "item-item")]
    assert row["verdict"] == f"member, nearest named: {member}"
    dims = result.tables["dimensions"].to_pylist()
    named = {"item-orthonormal": lambda s: np.sqrt(s), "balanced": lambda s: 1.0}[member]
    for r in dims:
        assert r["fitted_d"] == pytest.approx(named(r["s"]), rel=1e-3)
    assert (result.skipped or {}).get("popularity")  # no matrix given: said, not silent


def test_items_alone_say_what_needs_users(tmp_path, saved):
    root, data = saved
    z = np.load(root / "als.npz")
    np.save(tmp_path / "items.npy", z["item_factors"])
    pq.write_table(pa.table({"item_id": data.item_ids}), tmp_path / "ids.parquet")
    result = audit(tmp_path / "items.npy", tmp_path / "rep", item_ids=tmp_path / "ids.parquet",
                   matrix=root / "matrix", options=FAST)
    v = _verdicts(result)
    assert v[("cosine lists stable across dot-equivalent models", "item-item")]["verdict"] \
        == "not assessed"
    assert "needs user embeddings" in v[("training pinned the rescaling D", "user-item")]["detail"]
    assert "popularity" in result.tables and "labels" in result.tables
    assert "heldout" not in result.tables and "dimensions" not in result.tables


def test_bad_inputs_are_one_line_errors_or_counted_warnings(tmp_path, saved):
    root, data = saved
    rng = np.random.default_rng(0)
    items = rng.normal(size=(30, 4)).astype(np.float32)
    items[3] = np.nan
    items[5] = 0.0
    # written around write_embeddings, which refuses NaN: foreign files may hold them
    pq.write_table(bio.embeddings_table(np.arange(30), items, "item_id"),
                   tmp_path / "items.parquet")
    bio.write_embeddings(tmp_path / "users.parquet", np.arange(20),
                               rng.normal(size=(20, 4)), "user_id")
    bio.write_embeddings(tmp_path / "users5.parquet", np.arange(20),
                               rng.normal(size=(20, 5)), "user_id")
    result = audit(tmp_path / "items.parquet", tmp_path / "rep", users=tmp_path / "users.parquet",
                   options=AuditOptions(n_resamples=50))
    assert "1 item rows with NaN or inf dropped" in result.warnings
    assert "1 item rows are all zero (no cosine: scored 0)" in result.warnings
    with pytest.raises(UserError, match="users5.parquet: user embeddings have 5 dimensions"):
        audit(tmp_path / "items.parquet", tmp_path / "r2", users=tmp_path / "users5.parquet")
    with pytest.raises(UserError, match="ids of type string cannot be matched to matrix ids"):
        bio.write_embeddings(tmp_path / "s.parquet", pa.array(["a", "b"]), np.eye(2), "item_id")
        audit(tmp_path / "s.parquet", tmp_path / "r3", matrix=root / "matrix")
    with pytest.raises(UserError, match="no item id of the embeddings is in the matrix"):
        bio.write_embeddings(tmp_path / "x.parquet", 10**12 + np.arange(2), np.eye(2), "item_id")
        audit(tmp_path / "x.parquet", tmp_path / "r3", matrix=root / "matrix")
    np.save(tmp_path / "short.npy", items[:10])
    runner = CliRunner()
    res = runner.invoke(main, ["audit", str(tmp_path / "short.npy"), "--matrix",
                               str(root / "matrix"), "--out", str(tmp_path / "r4")])
    assert res.exit_code == 1
    assert res.output.strip().count("\n") == 0
    assert "10 item rows but the matrix has" in res.output
    assert not (tmp_path / "r4").exists()


def test_cli_audits_an_implicit_model(saved, tmp_path):
    root, _ = saved
    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["audit", str(root / "als.npz"), "--matrix",
                                    str(root / "matrix"), "--out", str(out), "--queries", "300",
                                    "--resamples", "100", "--example", "1"])
    assert res.exit_code == 0, res.output
    assert "dot scores identical across dot-equivalent models (user-item): identical" in res.output
    examples = pq.read_table(out / "examples.parquet").to_pylist()
    assert {r["query_title"] for r in examples} == {"Toy Story (1995)"}
    manifest = bio.read_manifest(out)
    assert manifest["inputs"]["source"] == "implicit-als"
    assert manifest["parameters"]["n_resamples"] == 100


# --------------------------------------------------------------------------- at scale
def _write_sharded(directory, ids, x, rows_per_group, files=1):
    """Parquet ``user_id`` + ``embedding`` split over ``files`` files of several row groups."""
    directory.mkdir()
    for f, part in enumerate(np.array_split(np.arange(len(x)), files)):
        pq.write_table(bio.embeddings_table(ids.take(pa.array(part)), x[part], "user_id"),
                       directory / f"part-{f}.parquet", row_group_size=rows_per_group)
    return directory


def test_user_shards_reduce_to_small_results_equal_to_numpy(saved, tmp_path):
    from bigcos.embedding_audit import shards

    root, data = saved
    z = np.load(root / "als.npz")
    P = z["user_factors"].astype(np.float32)
    P[7] = np.nan  # dropped by the scan, as the in-memory checks drop item rows
    P[200] = 0.0  # kept, counted; its shard is read whole (a read-only Arrow view)
    directory = _write_sharded(tmp_path / "users", data.user_ids, P, 64, files=2)
    users = shards.UserShards(*shards.parquet_shards(directory))
    assert len(users.shards) == 10  # 305 rows per file in row groups of 64: 5 + 5
    gram = shards.scan(users)
    kept = np.delete(P, 7, axis=0).astype(np.float64)
    assert gram.shape == (12, 12)  # k x k: what the client receives of the Gram pass
    np.testing.assert_allclose(gram, kept.T @ kept, rtol=1e-6)
    assert len(users) == len(P) - 1 and "1 user rows with NaN or inf dropped" in users.warnings
    assert "1 user rows are all zero (no cosine: scored 0)" in users.warnings
    r, r_inv = shards.user_factor(users, gram)
    r_np = np.linalg.qr(kept)[1]
    np.testing.assert_allclose(r, r_np * np.sign(np.diag(r_np))[:, None], rtol=1e-6,
                               atol=1e-8 * np.abs(r_np).max())
    rows = np.array([0, 6, 7, 300, len(P) - 2])  # indices among the kept rows
    np.testing.assert_array_equal(shards.take(users, rows), np.delete(P, 7, axis=0)[rows])


@pytest.fixture(scope="module")
def cluster_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


def test_sharded_audit_on_a_cluster_equals_the_in_process_audit(saved, tmp_path, cluster_client):
    """The implicit model in process (threads, users copied to one .npy in shards of 100 rows)
    and the same factors as Parquet files (users: 2 files of 100-row groups) on a 2-process
    LocalCluster: the same tables."""
    root, data = saved
    z = np.load(root / "als.npz")
    bio.write_embeddings(tmp_path / "items.parquet", data.item_ids, z["item_factors"], "item_id")
    _write_sharded(tmp_path / "users", data.user_ids[:300], z["user_factors"][:300], 100)
    more = data.user_ids[300:]
    pq.write_table(bio.embeddings_table(more, z["user_factors"][300:], "user_id"),
                   tmp_path / "users" / "part-1.parquet", row_group_size=100)
    opts = AuditOptions(item_queries=300, user_queries=200, n_resamples=100, shard_rows=100,
                        heldout_users=150)
    here = audit(root / "als.npz", tmp_path / "here", matrix=root / "matrix", options=opts)
    there = audit(tmp_path / "items.parquet", tmp_path / "there", users=tmp_path / "users",
                  matrix=root / "matrix", options=opts, client=cluster_client)
    for name in ("agreement", "dimensions", "members", "heldout", "popularity", "labels",
                 "examples"):
        a, b = here.tables[name].to_pydict(), there.tables[name].to_pydict()
        assert a.keys() == b.keys(), name
        for col in a:
            if isinstance(a[col][0], float):
                np.testing.assert_allclose(a[col], b[col], rtol=1e-9, err_msg=f"{name}.{col}")
            else:
                assert a[col] == b[col], f"{name}.{col}"
    for a, b in zip(here.tables["verdicts"].to_pylist(), there.tables["verdicts"].to_pylist(),
                    strict=True):
        assert a["verdict"] == b["verdict"] and a["estimate"] == pytest.approx(b["estimate"])
    m_here, m_there = bio.read_manifest(here.out), bio.read_manifest(there.out)
    assert m_here["counts"]["user_shards"] == 7 and m_there["counts"]["user_shards"] == 7
    assert m_there["counts"]["heldout_users"] == 150  # a seeded sample of the test users
    assert m_there["scheduler"]["workers"] == 2 and m_here["scheduler"]["scheduler"] == "threads"
    assert not (there.out / ".scratch").exists()
