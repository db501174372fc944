"""The model trained w.r.t. cosine: maths against dense numpy, optimiser, driver, Dask, data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

import bigcos
from bigcos import cosine_model as cm
from bigcos import models, reports
from bigcos.blocked_topn import top_n
from bigcos.cosine_fit import CosineOptions, _ThreadTerms, fit_cosine
from bigcos.errors import UserError
from bigcos.evaluation import validation_split
from bigcos.matrix import IngestOptions


def random_problem(n=40, p=15, k=4, seed=0):
    """Binary sparse X (n, p) with row 3 empty, and random A, B (p, k), float64."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, p, density=0.3, random_state=seed, format="csr", dtype=np.float64)
    X.data[:] = 1.0
    X = sp.csr_matrix(sp.diags((np.arange(n) != 3).astype(np.float64)) @ X)
    X.eliminate_zeros()
    assert X[3].nnz == 0 and X.nnz > 0
    return X, rng.normal(size=(p, k)), rng.normal(size=(p, k))


def sq(X):
    return float(X.multiply(X).sum())


def flat_loss(x, shape, terms, sq_norm, tau):
    size = shape[0] * shape[1]
    return cm.evaluate(x[:size].reshape(shape), x[size:].reshape(shape), terms, sq_norm,
                       tau).loss


@pytest.mark.parametrize("tau", [None, 0.7])
def test_gradient_matches_central_differences(tau):
    X, A, B = random_problem()
    terms = cm.serial_terms([X[:17], X[17:]])
    ev = cm.evaluate(A, B, terms, sq(X), tau)
    x = np.concatenate([A.ravel(), B.ravel()])
    h = 1e-6
    numeric = np.array([(flat_loss(x + h * e, A.shape, terms, sq(X), tau)
                         - flat_loss(x - h * e, A.shape, terms, sq(X), tau)) / (2 * h)
                        for e in np.eye(len(x))])
    size = A.size
    for analytic, num in ((ev.grad_A.ravel(), numeric[:size]), (ev.grad_B.ravel(), numeric[size:])):
        assert np.linalg.norm(analytic - num) / np.linalg.norm(num) < 1e-5


def test_zero_rows_score_zero_and_get_zero_gradient():
    X, A, B = random_problem()
    B[5] = 0.0  # an item whose embedding is zero
    P, inv = cm.normalize_rows(X @ A)
    assert np.all(P[3] == 0) and inv[3] == 0  # the empty user row
    ev = cm.evaluate(A, B, cm.serial_terms([X]), sq(X))
    assert np.all(ev.grad_B[5] == 0) and np.all(np.isfinite(ev.grad_A))
    # the loss equals the dense one, in which user 3 and item 5 predict 0
    assert ev.loss == pytest.approx(cm.dense_loss(X, A, B, ev.tau), rel=1e-12)


@pytest.mark.parametrize("tau", [None, 0.3, 2.0])
def test_streamed_loss_equals_dense_loss(tau):
    X, A, B = random_problem(seed=1)
    ev = cm.evaluate(A, B, cm.serial_terms([X]), sq(X), tau)
    assert ev.loss == pytest.approx(cm.dense_loss(X, A, B, ev.tau), rel=1e-12)
    if tau is None:  # the profiled tau minimises the dense loss over tau
        for other in (ev.tau * 0.99, ev.tau * 1.01):
            assert cm.dense_loss(X, A, B, other) > ev.loss


def test_blocks_sum_to_one_block():
    X, A, B = random_problem(n=60, seed=2)
    whole = cm.evaluate(A, B, cm.serial_terms([X]), sq(X))
    blocks = [X[a:b] for a, b in ((0, 7), (7, 30), (30, 31), (31, 60))]
    for terms in (cm.serial_terms(blocks), _ThreadTerms(blocks)):
        split = cm.evaluate(A, B, terms, sq(X))
        assert split.loss == pytest.approx(whole.loss, rel=1e-12)
        np.testing.assert_allclose(split.grad_A, whole.grad_A, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(split.grad_B, whole.grad_B, rtol=1e-10, atol=1e-12)


def test_lbfgs_loss_curve_decreases_from_the_warm_start():
    X, _, _ = random_problem(n=80, p=20, seed=3)
    _, sigma, Vt = np.linalg.svd(X.toarray(), full_matrices=False)
    A0, B0 = cm.warm_start(Vt[:5].T, sigma[:5], X.shape[0])
    terms = cm.serial_terms([X[:40], X[40:]])
    fit = cm.fit_lbfgs(A0, B0, terms, sq(X), iterations=30, tol=0.0)
    curve = np.array(fit.loss_curve)
    assert fit.iterations == len(curve) - 1 >= 5
    assert np.all(np.diff(curve) <= 1e-9 * curve[0])
    assert fit.loss == pytest.approx(curve[-1], rel=1e-12) and fit.loss < curve[0]
    assert fit.loss == pytest.approx(cm.dense_loss(X, fit.A, fit.B, fit.tau), rel=1e-10)


def test_warm_start_is_objective1_symmetric_up_to_what_N_ignores():
    X, _, _ = random_problem(seed=4)
    _, sigma, Vt = np.linalg.svd(X.toarray(), full_matrices=False)
    V, s = Vt[:4].T, sigma[:4]
    A0, B0 = cm.warm_start(V, s, X.shape[0], lam=2.0)
    g = s**2 / (s**2 + 2.0)
    np.testing.assert_allclose(cm.normalize_rows(X @ A0)[0],
                               cm.normalize_rows(X @ (V * np.sqrt(g)))[0], atol=1e-12)
    np.testing.assert_allclose(B0, cm.normalize_rows(V * np.sqrt(g))[0], atol=1e-12)
    assert np.mean(np.sum((X @ A0) ** 2, axis=1)) == pytest.approx(1.0, rel=1e-10)


def test_early_stopping_returns_the_best_validated_iterate():
    X, A, B = random_problem(seed=5)
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2, 0.9])
    fit = cm.fit_lbfgs(A, B, cm.serial_terms([X]), sq(X), iterations=50, tol=0.0,
                       validate=lambda a, b: next(scores), patience=3)
    assert fit.validation_curve == [0.1, 0.5, 0.4, 0.3, 0.2]
    assert fit.best_iteration == 1 and fit.iterations == 4
    assert fit.stop_reason == "early stopping"
    assert fit.loss == pytest.approx(fit.loss_curve[1], rel=1e-12)


def test_cosine_recall_matches_the_exact_top_n_kernel():
    X, A, B = random_problem(n=50, p=30, seed=6)
    opts = CosineOptions(k=2, validation_fraction=0.5, seed=3)
    rows, fold, held = validation_split(X, np.arange(50), opts.validation_fraction,
                                        opts.validation_holdout, opts.seed)
    got = cm.cosine_recall(fold, held, A, B, at=5, chunk=7)
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    ranked = top_n((fold @ A)[users], B, 5, ("cos",), exclude=fold[users])["cos"][0]
    hits = bigcos.metrics.relevance_hits(ranked, users, held)
    n_rel = np.diff(held.indptr)[users]
    expected = np.mean(bigcos.metrics.recall_at_k(hits, n_rel, 5))
    assert got == pytest.approx(expected, abs=1e-6)


def test_validation_split_partitions_each_row():
    X, _, _ = random_problem(n=60, p=20, seed=7)
    rows, fold, held = validation_split(X, np.arange(60), 0.25, 0.2, 0)
    assert len(rows) == 15 and np.all(np.diff(X.indptr)[rows] >= 2)
    assert abs(fold + held - X[rows]).sum() == 0
    assert fold.multiply(held).nnz == 0
    assert np.all(np.diff(fold.indptr) >= 1) and np.all(np.diff(held.indptr) >= 1)
    given, _, _ = validation_split(X, np.arange(60), 0.1, 0.2, 0, rows=[9, 0])
    assert list(given) == [0, 9]
    with pytest.raises(UserError, match="validation_rows: row 3"):
        validation_split(X, np.arange(60), 0.1, 0.2, 0, rows=[3])


@pytest.mark.parametrize("change, name", [({"k": 0}, "k"), ({"iterations": 0}, "iterations"),
                                          ({"tol": -1.0}, "tol"), ({"lam": float("nan")}, "lam"),
                                          ({"validation_fraction": 1.0}, "validation_fraction"),
                                          ({"validation_holdout": 0.0}, "validation_holdout"),
                                          ({"patience": 0}, "patience"), ({"seed": -1}, "seed"),
                                          ({"block_rows": 0}, "block_rows"),
                                          ({"validation_max_users": 0},
                                           "validation_max_users")])
def test_options_errors_name_the_parameter(change, name):
    with pytest.raises(UserError, match=f"^{name}: must be"):
        dataclasses.replace(CosineOptions(), **change)


# --------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def matrix(tmp_path_factory, bundled_log):
    out = tmp_path_factory.mktemp("cosine") / "matrix"
    bigcos.ingest(bundled_log, out, IngestOptions(threshold=4, min_user=5, min_item=5,
                                                  split="users"))
    return out


def test_dask_client_gives_the_same_model_as_threads(matrix, tmp_path):
    from distributed import Client, LocalCluster

    opts = CosineOptions(k=16, iterations=4, block_rows=150)
    local = bigcos.load_model(fit_cosine(matrix, tmp_path / "threads", opts))
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        remote = bigcos.load_model(fit_cosine(matrix, tmp_path / "dask", opts, client=client))
    assert remote.manifest["optimisation"]["scheduler"] == "distributed"
    assert remote.manifest["counts"]["blocks"] >= 3
    assert remote.manifest["optimisation"]["loss_curve"] == \
        local.manifest["optimisation"]["loss_curve"]
    np.testing.assert_array_equal(remote.item_embeddings, local.item_embeddings)
    np.testing.assert_array_equal(remote.user_embeddings, local.user_embeddings)


def test_fit_cosine_writes_a_model_that_beats_closed_form_cosine(matrix, tmp_path):
    k = 64
    opts = CosineOptions(k=k, iterations=30)
    out = fit_cosine(matrix, tmp_path / "cos", opts)
    model = bigcos.load_model(out)
    data = bigcos.load_matrix(matrix)
    opt = model.manifest["optimisation"]
    assert model.name == "cosine" and model.manifest["parameters"]["model"] == "cosine"
    assert model.item_embeddings.shape == (data.shape[1], k)
    assert model.user_embeddings.shape == (data.shape[0], k)
    assert 1 <= opt["iterations"] <= 30 and len(opt["loss_curve"]) == opt["iterations"] + 1
    assert len(opt["validation_recall_at_20_cos"]) == len(opt["loss_curve"])
    assert opt["loss"] < opt["loss_curve"][0]
    # dot of the written embeddings is the model's prediction tau N(XA) N(B)^T: its loss on
    # the training rows, computed densely, is the manifest's loss
    counts = model.manifest["counts"]
    assert counts["train_rows"] + counts["validation_rows"] == counts["fit_users"]
    fit_rows = np.flatnonzero(~data.heldout_users)
    val_rows, _, _ = validation_split(data.train, fit_rows, opts.validation_fraction,
                                     opts.validation_holdout, opts.seed)
    train_rows = np.setdiff1d(fit_rows, val_rows)
    prediction = model.user_embeddings[train_rows] @ model.item_embeddings.T
    dense = np.sum((data.train[train_rows].toarray() - prediction.astype(np.float64)) ** 2)
    assert dense == pytest.approx(opt["loss"], rel=1e-5)
    norms = np.linalg.norm(model.user_embeddings, axis=1)
    np.testing.assert_allclose(norms[norms > 0], np.sqrt(opt["tau"]), rtol=1e-5)
    # neighbours treat it like any model
    lists = top_n(model.item_embeddings, model.item_embeddings, 10, exclude_self=True)
    assert np.all(lists["cos"][0] >= 0)
    with pytest.raises(UserError, match="already exists"):
        fit_cosine(matrix, out, CosineOptions(k=k))
    closed = models.fit(matrix, tmp_path / "obj1", [models.ModelSpec(1, 0.0)],
                        models.SVDOptions(k=k), cache_dir=None).models["obj1-symmetric"]
    rows = reports.heldout({"cosine": model, "obj1": bigcos.load_model(closed)}, data)
    recall = {(r["model"], r["metric"]): r["recall_at_20"] for r in rows}
    print("held-out Recall@20", recall)
    assert recall["cosine", "cos"] > recall["obj1", "cos"] + 0.02
