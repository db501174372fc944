"""λ paths on validation users and the scores they rank by, against dense numpy."""

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from bigcos.evaluation import HeldOut, from_split, per_user
from bigcos.models import ModelSpec, Scaling, solve
from bigcos.validation import choose, lambda_grid, path, scoring_factors


def _data(seed=0, n=60, p=25):
    rng = np.random.default_rng(seed)
    X = (rng.random((n, p)) < rng.random(p) * 0.5).astype(np.float64)
    return X


def _dense_recall(scores, fold_in, relevant, k):
    scores = np.where(fold_in > 0, -np.inf, scores)
    out = []
    for s, rel in zip(scores, relevant, strict=True):
        order = np.lexsort((np.arange(len(s)), -s))[:k]  # ties: smaller index first
        n_rel = int(rel.sum())
        out.append(rel[order].sum() / min(k, n_rel) if n_rel else np.nan)
    return np.array(out)


@pytest.mark.parametrize("remedy", ["none", "standardize", "popularity"])
@pytest.mark.parametrize("spec", [ModelSpec(1, 3.0, Scaling("sigma")), ModelSpec(2, 0.5),
                                  ModelSpec(1, 3.0, project_back=True),
                                  ModelSpec(2, 0.5, project_back=True)])
def test_dot_factors_are_the_models_prediction_of_x_in_its_own_scale(spec, remedy):
    X = _data()
    counts = X.sum(0)
    mu = X.mean(0) if remedy == "standardize" else np.zeros(X.shape[1])
    s = {"none": np.ones(X.shape[1]), "popularity": np.maximum(counts, 1) ** -0.75,
         "standardize": 1 / np.where(X.std(0) > 0, X.std(0), 1)}[remedy]
    Xt = (X - mu) * s
    _, sigma, Vt = np.linalg.svd(Xt, full_matrices=False)
    k = 8
    V, sigma = Vt[:k].T, sigma[:k]
    sol = solve(sigma, spec)
    # independent: W = A B^T of the objective (project-back: V G V^T), mapped back to X
    if spec.project_back:
        W = V @ np.diag(sol.g) @ V.T
    elif spec.objective == 1:
        W = V @ np.diag(sigma**2 / (sigma**2 + spec.lam)) @ V.T
    else:
        W = V @ np.diag(np.maximum(1 - spec.lam / sigma, 0)) @ V.T
    X_hat = Xt @ W / s + mu
    users, items = scoring_factors(sol, V, Xt @ V, "dot",
                                   mu if remedy == "standardize" else None,
                                   None if remedy == "none" else s)
    np.testing.assert_allclose(users.astype(np.float64) @ items.T, X_hat, atol=2e-5)


def test_cos_factors_are_the_exported_embeddings():
    X = _data(1)
    _, sigma, Vt = np.linalg.svd(X, full_matrices=False)
    V, sigma = Vt[:6].T, sigma[:6]
    sol = solve(sigma, ModelSpec(1, 2.0, Scaling("item-orthonormal")))
    users, items = scoring_factors(sol, V, X @ V, "cos")
    np.testing.assert_allclose(items, sol.B(V), atol=1e-6)
    np.testing.assert_allclose(users, X @ sol.A(V), atol=1e-5)


def test_path_recall_matches_a_dense_ranking_and_choose_takes_the_best():
    X = _data(2, n=120, p=30)
    rng = np.random.default_rng(3)
    hidden = (X > 0) & (rng.random(X.shape) < 0.3)
    fold, rel = np.where(hidden, 0, X), hidden.astype(np.float64)
    val = np.arange(80, 120)
    heldout = from_split(sp.csr_matrix(fold), sp.csr_matrix(rel), val)
    _, sigma, Vt = np.linalg.svd(X[:80], full_matrices=False)
    V, sigma = Vt[:10].T, sigma[:10]
    P = fold[heldout.users] @ V
    grid = lambda_grid(sigma, 1, 6)
    rows = path(sigma, V, P, heldout, lambda lam: solve(sigma, ModelSpec(1, lam)), grid, k=5)
    assert len(rows) == 12
    for r in rows:
        sol = solve(sigma, ModelSpec(1, r["lam"]))
        u, i = scoring_factors(sol, V, P, r["metric"])
        u, i = u.astype(np.float64), i.astype(np.float64)
        if r["metric"] == "cos":
            u = u / np.linalg.norm(u, axis=1, keepdims=True)
            i = i / np.linalg.norm(i, axis=1, keepdims=True)
        dense = _dense_recall(u @ i.T, fold[heldout.users], rel[heldout.users], 5)
        assert r["recall"] == pytest.approx(np.nanmean(dense), abs=1e-12)
    for metric in ("dot", "cos"):
        best = max(r["recall"] for r in rows if r["metric"] == metric)
        chosen = choose(rows, metric)
        assert next(r["recall"] for r in rows
                    if r["metric"] == metric and r["lam"] == chosen) == best


def test_choose_breaks_ties_towards_the_smaller_lambda():
    rows = [{"lam": lam, "metric": "dot", "recall": rec}
            for lam, rec in [(4.0, 0.3), (1.0, 0.2), (2.0, 0.3), (8.0, 0.1)]]
    assert choose(rows, "dot") == 2.0
    with pytest.raises(ValueError, match="no row for metric 'cos'"):
        choose(rows, "cos")


def test_lambda_grid_is_relative_to_the_spectrum():
    sigma = np.array([10.0, 4.0, 1.0, 0.0])
    g1 = lambda_grid(sigma, 1, 5)
    assert g1[0] == pytest.approx(0.1) and g1[-1] == pytest.approx(1000.0)
    assert np.all(np.diff(g1) > 0)
    g2 = lambda_grid(sigma, 2, 5)
    assert g2[0] == 0 and g2[1] == pytest.approx(0.1) and g2[-1] == pytest.approx(9.9)
    # objective 2 keeps at least one dimension at every grid point
    assert all(solve(sigma, ModelSpec(2, lam)).kept.sum() >= 1 for lam in g2)


def test_per_user_excludes_fold_in_items():
    users = np.eye(3, dtype=np.float32)
    items = np.eye(3, dtype=np.float32)
    fold = sp.csr_matrix(np.eye(3))
    rel = sp.csr_matrix(np.roll(np.eye(3), 1, axis=1))
    out = per_user(users, items, HeldOut(np.arange(3), fold, rel), ("dot",), k=1)
    # each user's best item is its own fold-in item: excluded; ties go to the smaller index
    np.testing.assert_array_equal(out["dot"]["recall"], [1.0, 0.0, 1.0])


# --------------------------------------------------------------------------- in bigcos.fit
@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    import bigcos
    from bigcos.matrix import IngestOptions
    from bigcos.models import SVDOptions, fit

    d = tmp_path_factory.mktemp("validated")
    bigcos.ingest("data/ml-latest-small/interactions.parquet", d / "m",
                  IngestOptions(threshold=4, min_user=5, min_item=5, split="users"))
    specs = [ModelSpec(1, None, Scaling("symmetric")), ModelSpec(1, None, Scaling("sigma")),
             ModelSpec(1, None, Scaling("random", spread=100, seed=0)), ModelSpec(2, None),
             ModelSpec(1, 50.0, Scaling("item-orthonormal"))]
    result = fit(d / "m", d / "models", specs, SVDOptions(k=24), cache_dir=None)
    return d, specs, result


def _manifest(path):
    import json

    return json.loads((path / "manifest.json").read_text())["parameters"]


def test_fit_keeps_the_best_validation_point_for_each_metric(validated):
    import pyarrow.parquet as pq

    d, _, result = validated
    table = pq.read_table(d / "models" / "lambda_path.parquet").to_pylist()
    assert len({r["n_users"] for r in table}) == 1
    for name, model_dir in result.models.items():
        params = _manifest(model_dir)
        if params["lam_source"] == "fixed":
            assert name == "obj1-item-orthonormal" and params["lam"] == 50.0
            continue
        rows = [r for r in table if r["model"] == params["family"]]
        assert pq.read_table(model_dir / "lambda_path.parquet").num_rows == len(rows)
        for metric in ("dot", "cos"):
            mine = [r for r in rows if r["metric"] == metric]
            best = max(r["recall"] for r in mine)
            first_best = min(r["lam"] for r in mine if r["recall"] == best)
            assert params["lam_validated"][metric] == first_best
            assert [r["lam"] for r in mine if r["chosen"]] == [first_best]
        expected = params["lam_validated"]["cos" if name.endswith("-lamcos") else "dot"]
        assert params["lam"] == expected
    # every objective-1 family shares the dot λ, so its D's stay dot-equivalent
    dot_lams = {_manifest(p)["lam"] for n, p in result.models.items()
                if n.startswith("obj1") and not n.endswith("-lamcos") and "item-orth" not in n}
    assert len(dot_lams) == 1
    assert "obj1-random100x-seed0-lamcos" not in result.models


def test_test_users_never_influence_the_choice(validated, tmp_path):
    import shutil

    from bigcos.matrix import load_matrix
    from bigcos.models import SVDOptions, fit

    d, specs, result = validated
    other = tmp_path / "m"
    shutil.copytree(d / "m", other)
    data = load_matrix(other)
    held = np.flatnonzero(data.heldout_users)
    rng = np.random.default_rng(7)
    # replace every held-out (test) user's fold-in and test rows by random items
    noise = sp.random(data.train.shape[0], data.train.shape[1], density=0.05, random_state=rng,
                      format="csr", dtype=np.float32)
    noise.data[:] = 1
    keep = sp.diags((~data.heldout_users).astype(np.float32))
    swap = sp.diags(data.heldout_users.astype(np.float32))
    train = (keep @ data.train + swap @ noise).tocsr()
    test = (swap @ noise[::-1]).tocsr()
    assert len(held) and (train != data.train).nnz and (test != data.test).nnz
    sp.save_npz(other / "train.npz", train)
    sp.save_npz(other / "test.npz", test)
    again = fit(other, tmp_path / "models", specs, SVDOptions(k=24), cache_dir=None)
    for name, model_dir in result.models.items():
        assert _manifest(again.models[name])["lam"] == _manifest(model_dir)["lam"], name


def test_als_regularisation_is_chosen_on_the_same_validation_users(validated, tmp_path):
    import json

    import pyarrow.parquet as pq

    from bigcos.als import REGULARIZATION_GRID, ALSOptions, fit_als
    from bigcos.validation import Selection

    d, _, _ = validated
    out = fit_als(d / "m", tmp_path / "als", ALSOptions(factors=8, iterations=3),
                  selection=Selection())
    manifest = json.loads((out / "manifest.json").read_text())
    params, counts = manifest["parameters"], manifest["counts"]
    path = pq.read_table(out / "lambda_path.parquet").to_pylist()
    assert sorted({r["lam"] for r in path}) == list(REGULARIZATION_GRID)
    for metric in ("dot", "cos"):
        mine = [r for r in path if r["metric"] == metric]
        best = max(r["recall"] for r in mine)
        assert params["lam_validated"][metric] == min(r["lam"] for r in mine
                                                      if r["recall"] == best)
    assert params["lam_source"] == "validated"
    assert params["regularization"] == params["lam_validated"]["dot"]
    closed = json.loads((d / "models" / "obj1-symmetric" / "manifest.json").read_text())
    assert counts["validation_users"] == closed["counts"]["validation_users"] > 0
    assert counts["fit_users"] == closed["counts"]["fit_users"]


def test_select_runs_its_rankings_as_tasks_with_the_rows_of_path():
    """select ranks every (family, λ, metric) as a Dask task; its rows are the sequential
    path's, whether the tasks run on threads or on a 2-process LocalCluster."""
    from distributed import Client, LocalCluster

    from bigcos.validation import Selection, select

    X = sp.csr_matrix(_data(3, n=80, p=30))
    rng = np.random.default_rng(5)
    hide = X.multiply(sp.csr_matrix(rng.random(X.shape) < 0.3)).tocsr()
    fold_in = (X - hide).tocsr()
    fold_in.eliminate_zeros()
    heldout = HeldOut(np.arange(X.shape[0]), fold_in, hide)
    _, sigma, Vt = np.linalg.svd(X.toarray(), full_matrices=False)
    V, sigma = Vt[:8].T, sigma[:8]
    P = fold_in @ V
    specs = [ModelSpec(1, None, Scaling("symmetric")), ModelSpec(1, None, Scaling("sigma")),
             ModelSpec(2, None)]
    selection = Selection(points=5, at=5)
    rows, chosen = select(sigma, V, P, heldout, specs, selection, solve)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert select(sigma, V, P, heldout, specs, selection, solve, client=client) == (
            rows, chosen)
    for spec in specs:
        grid = lambda_grid(sigma, spec.objective, selection.points)
        expected = path(sigma, V, P, heldout,
                        lambda lam, spec=spec: solve(sigma, dataclasses.replace(spec, lam=lam)),
                        grid, ("dot",), 5) + path(
            sigma, V, P, heldout,
            lambda lam, spec=spec: solve(sigma, dataclasses.replace(spec, lam=lam)),
            grid, ("cos",), 5)
        mine = [{k: v for k, v in r.items() if k not in ("model", "objective", "chosen")}
                for r in rows if r["model"] == spec.name]
        assert mine == expected, spec.name
        assert {r["lam"] for r in rows if r["model"] == spec.name and r["chosen"]} <= set(grid)
