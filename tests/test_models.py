"""Closed-form models against independent dense numpy / scipy solves on small matrices.

The reference embeddings are built straight from the paper's formulas on ``np.linalg.svd`` of the
dense matrix; bigcos's come from ``solve`` on an eigendecomposition of X^T X plus the blocked
product ``project_rows`` on the sparse matrix. Only rotation-invariant products are compared
(singular vectors have arbitrary signs). Tolerance 1e-5 relative: the float64 path is accurate to
~1e-12 here, so this leaves room only for conditioning, not for a wrong formula.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import scipy.optimize
import scipy.sparse as sp

from bigcos.errors import UserError
from bigcos.matrix import Interactions
from bigcos.models import (
    NAMED_SCALINGS,
    ALSOptions,
    ModelSpec,
    Preprocessing,
    Scaling,
    als_factors,
    losses,
    model_specs,
    parse_scaling,
    project_rows,
    scale_rows,
    solve,
    squared_norm,
)

RTOL = 1e-5


def sparse_matrix(n: int, p: int, density: float, seed: int) -> sp.csr_matrix:
    """Binary n x p CSR float32 with every row and column non-empty."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n, p)) < density).astype(np.float32)
    dense[np.arange(n), rng.integers(0, p, n)] = 1.0
    dense[rng.integers(0, n, p), np.arange(p)] = 1.0
    return sp.csr_matrix(dense)


def eigh_spectrum(Xt: np.ndarray, k: int) -> SimpleNamespace:
    """Spectrum-like (sigma, V, residuals) of dense Xt from eigh of Xt^T Xt (top k)."""
    w, V = np.linalg.eigh(Xt.T @ Xt)
    order = np.argsort(w)[::-1][:k]
    return SimpleNamespace(sigma=np.sqrt(np.maximum(w[order], 0)), V=V[:, order],
                           residuals=np.zeros(k), info={"method": "test-eigh"})


def reference_factors(Xt: np.ndarray, k: int, objective: int, lam: float, scaling: str | None,
                      d_values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) from the paper's formulas on np.linalg.svd (independent of bigcos.models)."""
    _, s, Vt = np.linalg.svd(Xt, full_matrices=False)
    s, V = s[:k], Vt[:k].T
    if objective == 2:
        keep = s > lam
        s, V = s[keep], V[:, keep]
        return (V * np.sqrt((1 / s) * (1 - lam / s)), V * np.sqrt(s * (1 - lam / s)))
    g = s**2 / (s**2 + lam)
    D = {"symmetric": np.ones(k), "item-orthonormal": np.sqrt(g),
         "user-orthonormal": 1 / np.sqrt(g), "sigma": 1 / np.sqrt(s)}.get(scaling, d_values)
    return V * np.sqrt(g) * D, V * np.sqrt(g) / D


def cos(E: np.ndarray) -> np.ndarray:
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    return En @ En.T


def cos2(E: np.ndarray, F: np.ndarray) -> np.ndarray:
    return (E / np.linalg.norm(E, axis=1, keepdims=True)) @ \
        (F / np.linalg.norm(F, axis=1, keepdims=True)).T


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def assert_same_products(users: np.ndarray, items: np.ndarray, ref_users: np.ndarray,
                         ref_items: np.ndarray) -> None:
    pairs = {
        "B B^T": (items @ items.T, ref_items @ ref_items.T),
        "XA (XA)^T": (users @ users.T, ref_users @ ref_users.T),
        "XA B^T": (users @ items.T, ref_users @ ref_items.T),
        "cos(B, B)": (cos(items), cos(ref_items)),
        "cos(XA, XA)": (cos(users), cos(ref_users)),
        "cos(XA, B)": (cos2(users, items), cos2(ref_users, ref_items)),
    }
    for what, (ours, ref) in pairs.items():
        assert rel_err(ours, ref) <= RTOL, what


def dense_loss(Xt: np.ndarray, A: np.ndarray, B: np.ndarray, objective: int, lam: float) -> float:
    XA = Xt @ A
    recon = np.sum((Xt - XA @ B.T) ** 2)
    if objective == 1:
        return float(recon + lam * np.sum((A @ B.T) ** 2))
    return float(recon + lam * (np.sum(XA**2) + np.sum(B**2)))


def ours(X: sp.csr_matrix, Xt: np.ndarray, k: int, spec: ModelSpec, block_rows: int = 7,
         pre: tuple = (None, None)):
    """(solution, users, items, V) of bigcos on sparse X whose preprocessed dense form is Xt."""
    spec_ = eigh_spectrum(Xt, k)
    sol = solve(spec_.sigma, spec)
    P = project_rows(X, spec_.V, *pre, block_rows=block_rows)
    return sol, P[:, sol.kept] * sol.a[sol.kept], sol.B(spec_.V), spec_.V, P


SPECS = ([(1, 50.0, s) for s in NAMED_SCALINGS] + [(1, 0.0, "symmetric"), (1, 50.0, "vector"),
                                                     (1, 50.0, "random"), (2, 2.0, None),
                                                     (2, 0.0, None)])


@pytest.mark.parametrize(("objective", "lam", "scaling"), SPECS)
def test_products_match_dense_reference(objective, lam, scaling):
    X = sparse_matrix(60, 25, 0.2, seed=1)
    Xt = X.toarray().astype(np.float64)
    k = 8
    d_values = np.random.default_rng(5).uniform(0.2, 3.0, k)
    if scaling == "random":  # d_i = 30^u_i, u_i ~ U(-1/2, 1/2) from the seed, drawn here again
        d_values = 30.0 ** np.random.default_rng(4).uniform(-0.5, 0.5, size=k)
    sc = (None if objective == 2 else
          Scaling("vector", values=tuple(d_values)) if scaling == "vector" else
          Scaling("random", spread=30.0, seed=4) if scaling == "random" else Scaling(scaling))
    sol, users, items, _, _ = ours(X, Xt, k, ModelSpec(objective, lam, sc))
    A, B = reference_factors(Xt, k, objective, lam, scaling, d_values)
    assert sol.kept.sum() == A.shape[1]
    assert_same_products(users, items, Xt @ A, B)


def test_objective_2_drops_and_counts_dimensions_with_sigma_at_most_lam():
    X = sparse_matrix(60, 25, 0.2, seed=2)
    Xt = X.toarray().astype(np.float64)
    s = np.linalg.svd(Xt, compute_uv=False)
    lam = float((s[3] + s[4]) / 2)  # exactly 4 dims above lam
    sol, users, items, _, _ = ours(X, Xt, 10, ModelSpec(2, lam))
    assert sol.kept.tolist() == [True] * 4 + [False] * 6
    assert users.shape == (60, 4) and items.shape == (25, 4)
    # P = XA = U_k dMat(sqrt(sigma - lam)): column norms^2 are sigma - lam
    np.testing.assert_allclose(np.sum(users**2, axis=0), s[:4] - lam, rtol=1e-10)
    with pytest.raises(UserError, match="no dimension is kept"):
        solve(s[:10], ModelSpec(2, float(s[0]) * 1.01))


def test_full_rank_item_orthonormal_gives_identity_item_cosine():
    X = sparse_matrix(80, 15, 0.3, seed=3)
    Xt = X.toarray().astype(np.float64)
    assert np.linalg.matrix_rank(Xt) == 15
    _, _, items, _, _ = ours(X, Xt, 15, ModelSpec(1, 30.0, Scaling("item-orthonormal")))
    np.testing.assert_allclose(cos(items), np.eye(15), atol=1e-10)
    _, _, items_sym, _, _ = ours(X, Xt, 15, ModelSpec(1, 30.0, Scaling("symmetric")))
    assert np.max(np.abs(cos(items_sym) - np.eye(15))) > 0.05  # the identity is D's doing


def test_full_rank_user_orthonormal_gives_cosine_of_raw_rows():
    X = sparse_matrix(80, 15, 0.3, seed=4)
    Xt = X.toarray().astype(np.float64)
    _, users, _, _, _ = ours(X, Xt, 15, ModelSpec(1, 30.0, Scaling("user-orthonormal")))
    np.testing.assert_allclose(cos(users), cos(Xt), atol=1e-10)
    _, users_sym, _, _, _ = ours(X, Xt, 15, ModelSpec(1, 30.0, Scaling("symmetric")))
    assert np.max(np.abs(cos(users_sym) - cos(Xt))) > 0.01


def test_objective_1_loss_is_the_same_for_every_D_and_matches_the_closed_form():
    X = sparse_matrix(50, 20, 0.25, seed=6)
    Xt = X.toarray().astype(np.float64)
    lam, k = 20.0, 6
    spectrum = eigh_spectrum(Xt, k)
    scalings = [Scaling(s) for s in NAMED_SCALINGS] + [
        Scaling("random", spread=100.0, seed=3), Scaling("vector", values=(1, 2, 3, 4, 5, 6))]
    P = Xt @ spectrum.V
    dense, reported = [], []
    for sc in scalings:
        sol = solve(spectrum.sigma, ModelSpec(1, lam, sc))
        dense.append(dense_loss(Xt, sol.A(spectrum.V), sol.B(spectrum.V), 1, lam))
        reported.append(losses(sol, squared_norm(X, None, None), np.sum(P**2, axis=0))
                        ["objective"])
    s = np.linalg.svd(Xt, compute_uv=False)
    closed = np.sum(Xt**2) - np.sum(s[:k] ** 4 / (s[:k] ** 2 + lam))
    np.testing.assert_allclose(dense, closed, rtol=1e-10)
    np.testing.assert_allclose(reported, closed, rtol=1e-10)


def test_objective_2_loss_rises_under_any_small_perturbation():
    X = sparse_matrix(40, 12, 0.3, seed=7)
    Xt = X.toarray().astype(np.float64)
    lam = 1.0
    spectrum = eigh_spectrum(Xt, 5)
    sol = solve(spectrum.sigma, ModelSpec(2, lam))
    A, B = sol.A(spectrum.V), sol.B(spectrum.V)
    base = dense_loss(Xt, A, B, 2, lam)
    rng = np.random.default_rng(0)
    for eps in (1e-2, 1e-3):
        for _ in range(40):
            dA, dB = rng.standard_normal(A.shape), rng.standard_normal(B.shape)
            assert dense_loss(Xt, A + eps * dA, B + eps * dB, 2, lam) > base
    s = np.linalg.svd(Xt, compute_uv=False)
    closed = np.sum(Xt**2) - np.sum(np.maximum(s[:5] - lam, 0) ** 2)
    np.testing.assert_allclose(base, closed, rtol=1e-10)


@pytest.mark.parametrize(("objective", "lam"), [(1, 3.0), (2, 0.5)])
def test_losses_equal_an_independent_numerical_optimum(objective, lam):
    """scipy.optimize over all (A, B) of a tiny problem finds no lower loss than ours."""
    X = sparse_matrix(7, 4, 0.4, seed=8)
    Xt = X.toarray().astype(np.float64)
    k = 2
    spectrum = eigh_spectrum(Xt, k)
    sol = solve(spectrum.sigma, ModelSpec(objective, lam))
    P = Xt @ spectrum.V
    reported = losses(sol, squared_norm(X, None, None), np.sum(P**2, axis=0))["objective"]

    def f(z):
        A, B = z[:8].reshape(4, k), z[8:].reshape(4, k)
        return dense_loss(Xt, A, B, objective, lam)

    rng = np.random.default_rng(1)
    best = min(scipy.optimize.minimize(f, rng.standard_normal(16), method="BFGS",
                                       options={"gtol": 1e-10}).fun for _ in range(8))
    assert best >= reported - 1e-6 * reported
    np.testing.assert_allclose(best, reported, rtol=1e-6)


@pytest.mark.parametrize("objective", [1, 2])
def test_project_back_has_the_inner_products_of_the_original_space(objective):
    X = sparse_matrix(50, 20, 0.25, seed=9)
    Xt = X.toarray().astype(np.float64)
    lam = 10.0 if objective == 1 else 1.0
    sol, users, items, V, _ = ours(X, Xt, 6, ModelSpec(objective, lam, project_back=True))
    for sc in ([None] if objective == 2 else [Scaling(s) for s in NAMED_SCALINGS]):
        fac = solve(sol.sigma, ModelSpec(objective, lam, sc))
        W = fac.A(V) @ fac.B(V).T  # p x p: A B^T, the same for every D
        assert_same_products(users, items, Xt @ W, W)


@pytest.mark.parametrize("kind", ["standardize", "popularity"])
def test_column_remedies_are_implicit_and_match_the_dense_preprocessed_matrix(kind):
    X = sparse_matrix(70, 18, 0.25, seed=10)
    dense = X.toarray().astype(np.float64)
    if kind == "standardize":
        Xt = (dense - dense.mean(axis=0)) / dense.std(axis=0)
    else:
        Xt = dense * (dense != 0).sum(axis=0) ** -0.5
    pre = Preprocessing(kind, beta=0.5)
    center, scale = pre.columns(X)
    assert squared_norm(X, center, scale) == pytest.approx(np.sum(Xt**2), rel=1e-12)
    for spec in (ModelSpec(1, 5.0, Scaling("sigma")), ModelSpec(2, 0.5)):
        sol, users, items, _, _ = ours(X, Xt, 6, spec, pre=(center, scale))
        A, B = reference_factors(Xt, 6, spec.objective, spec.lam,
                                 "sigma" if spec.objective == 1 else None)
        assert_same_products(users, items, Xt @ A, B)


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_row_remedy_scales_each_row_by_its_count_and_matches_the_dense_scaled_matrix(gamma):
    """diag(r) X with r_u = count_u^-gamma, from the CSR data alone: the randomised SVD's
    spectrum is that of np.linalg.svd(diag(r) X) and both objectives' embeddings are the dense
    closed form of the scaled matrix. An explicit stored zero does not count, an empty row
    keeps r = 1."""
    from bigcos.svd import truncated_svd

    X = sparse_matrix(70, 18, 0.25, seed=13)
    X = sp.vstack([X, sp.csr_matrix((1, 18), dtype=np.float32)]).tocsr()  # an empty row
    X.data[X.indptr[3]] = 0.0  # a stored zero in row 3
    dense = X.toarray().astype(np.float64)
    counts = (dense != 0).sum(axis=1)
    r_ref = np.where(counts > 0, np.maximum(counts, 1) ** -gamma, 1.0)
    Xt = dense * r_ref[:, None]
    pre = Preprocessing("rows", gamma=gamma)
    assert pre.columns(X) == (None, None)
    r = pre.rows(X)
    np.testing.assert_allclose(r, r_ref, rtol=1e-15)
    assert r[-1] == 1.0 and r[3] == pytest.approx((counts[3]) ** -gamma)
    Xs = scale_rows(X, r)
    assert Xs.data.dtype == np.float64
    assert np.shares_memory(Xs.indices, X.indices) and np.shares_memory(Xs.indptr, X.indptr)
    np.testing.assert_allclose(Xs.toarray(), Xt, rtol=1e-15)
    assert np.array_equal(X.toarray(), dense.astype(np.float32))  # X itself untouched
    assert scale_rows(X, None) is X and pre.key() == {"kind": "rows", "gamma": gamma}
    assert squared_norm(Xs, None, None) == pytest.approx(np.sum(Xt**2), rel=1e-12)
    spectrum = truncated_svd(Xs, 6, seed=0, dtype=np.float64, n_iter=30)
    np.testing.assert_allclose(spectrum.sigma, np.linalg.svd(Xt, compute_uv=False)[:6],
                               rtol=1e-8)
    for spec in (ModelSpec(1, 0.5, Scaling("sigma")), ModelSpec(2, 0.2)):
        sol, users, items, _, _ = ours(Xs, Xt, 6, spec)
        A, B = reference_factors(Xt, 6, spec.objective, spec.lam,
                                 "sigma" if spec.objective == 1 else None)
        assert sol.kept.sum() == A.shape[1]
        assert not users[-1].any()  # the empty row: a zero embedding, left out of the cosines
        assert_same_products(users[:-1], items, Xt[:-1] @ A, B)


def test_project_rows_is_the_same_for_any_block_size_and_on_a_local_cluster():
    from distributed import get_task_stream

    from bigcos.cluster import ClusterOptions, dask_client

    X = sparse_matrix(300, 40, 0.1, seed=11)
    V = np.linalg.qr(np.random.default_rng(0).standard_normal((40, 5)))[0]
    center, scale = np.linspace(0, 1, 40), np.linspace(1, 2, 40)
    one = project_rows(X, V, center, scale, block_rows=300)
    many = project_rows(X, V, center, scale, block_rows=19)
    dense = (X.toarray() - center) * scale @ V
    np.testing.assert_allclose(one, dense, rtol=1e-12, atol=1e-12)
    assert np.array_equal(one, many)
    with dask_client(ClusterOptions(workers=2, processes=True)) as client:
        with get_task_stream(client) as on_workers:
            distributed = project_rows(X, V, center, scale, block_rows=19, client=client)
        assert len(on_workers.data) >= 16  # one task per block of 19 rows ran on the workers
        with get_task_stream(client) as ignored:
            threads = project_rows(X, V, center, scale, block_rows=19)
        assert ignored.data == []  # client=None: threads here, the open client is not looked up
    assert np.array_equal(one, distributed) and np.array_equal(one, threads)


def test_parse_scaling_accepts_documented_forms_and_rejects_others():
    assert parse_scaling("sigma") == Scaling("sigma")
    assert parse_scaling("random:10:3") == Scaling("random", spread=10.0, seed=3)
    assert parse_scaling("random:4") == Scaling("random", spread=4.0, seed=0)
    assert parse_scaling("1,0.5,2").values == (1.0, 0.5, 2.0)
    for bad in ("banana", "random", "random:0.5", "random:x:1", "1,-2", "1,inf"):
        with pytest.raises(UserError):
            parse_scaling(bad)
    d = Scaling("random", spread=10.0, seed=3).diagonal(np.ones(1000), np.ones(1000))
    assert d.min() >= 10**-0.5 and d.max() <= 10**0.5 and d.max() / d.min() > 9
    with pytest.raises(UserError, match="3 values given"):
        solve(np.ones(4), ModelSpec(1, 0.0, Scaling("vector", values=(1, 2, 3))))


def test_model_spec_rejects_meaningless_combinations():
    with pytest.raises(UserError, match="objective 1 only"):
        ModelSpec(2, 1.0, Scaling("sigma"))
    with pytest.raises(UserError, match="do not depend on D"):
        ModelSpec(1, 1.0, Scaling("sigma"), project_back=True)
    with pytest.raises(UserError, match=">= 0"):
        ModelSpec(1, -1.0)
    with pytest.raises(UserError, match="must be 1 or 2"):
        ModelSpec(3)


@pytest.mark.parametrize(("make", "start"), [
    (lambda: ModelSpec(1, -1.0), "lam1: must be finite and >= 0"),
    (lambda: ModelSpec(2, float("nan")), "lam2: must be finite and >= 0"),
    (lambda: ModelSpec(3), "objective: must be 1 or 2"),
    (lambda: ModelSpec(2, 1.0, Scaling("sigma")), "scaling: objective 2"),
    (lambda: parse_scaling("banana"), "scaling 'banana': not one of"),
    (lambda: model_specs(("2",), {1: 0.0, 2: 0.0}, ("sigma",), False, False), "scalings: "),
    (lambda: solve(np.ones(3), ModelSpec(1, 0.0, Scaling("vector", values=(1, 2)))),
     "scaling: 2 values given"),
    (lambda: Preprocessing("banana"), "kind: unknown column remedy"),
    (lambda: Preprocessing("popularity", beta=-1.0), "beta: must be finite"),
    (lambda: Preprocessing("rows", gamma=float("inf")), "gamma: must be finite"),
    (lambda: ALSOptions(factors=0), "factors and iterations must be >= 1, not 0 and 15"),
    (lambda: ALSOptions(iterations=0), "factors and iterations must be >= 1"),
    (lambda: ALSOptions(alpha=0.0), "regularization must be >= 0 and alpha > 0"),
])
def test_library_errors_name_the_parameter_not_a_flag(make, start):
    with pytest.raises(UserError) as err:
        make()
    text = str(err.value)
    assert text.startswith(start) and "--" not in text and "\n" not in text


def test_als_factors_fit_the_data_and_fold_in_heldout_users():
    X = sparse_matrix(200, 30, 0.15, seed=12)
    heldout = np.zeros(200, bool)
    heldout[::10] = True
    data = Interactions(X, None, pa.array(np.arange(200)), pa.array(np.arange(30)), heldout)
    opts = ALSOptions(factors=8, iterations=10, regularization=0.05, seed=1)
    items, users = als_factors(data, opts)
    assert items.shape == (30, 8) and users.shape == (200, 8)
    assert items.dtype == users.dtype == np.float32
    assert np.isfinite(items).all() and np.isfinite(users).all()
    again = als_factors(data, opts)
    np.testing.assert_array_equal(again[0], items)
    scores = users @ items.T
    dense = X.toarray() > 0
    for rows in (~heldout, heldout):  # observed items outscore unobserved, fit and folded-in
        assert scores[rows][dense[rows]].mean() > scores[rows][~dense[rows]].mean() + 0.2


def test_write_embeddings_refuses_nan_and_inf_naming_file_count_and_first_id(tmp_path):
    from bigcos import io

    emb = np.ones((6, 3), np.float32)
    emb[2, 1], emb[5, 0] = np.nan, -np.inf
    ids = pa.array(["a", "b", "c", "d", "e", "f"])
    path = tmp_path / "items.parquet"
    with pytest.raises(UserError) as err:
        io.write_embeddings(path, ids, emb, "item_id")
    assert str(err.value) == (f"{path}: 2 of 6 embedding rows hold NaN or inf "
                              "(first: item_id 'c')")
    assert not path.exists()
    io.write_embeddings(path, ids, np.ones((6, 3)), "item_id")  # finite float64 is fine
    assert io.read_embeddings(path, "item_id")[1].dtype == np.float32


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_read_embeddings_refuses_a_file_planted_with_nan_or_inf(tmp_path, bad):
    import pyarrow.parquet as pq

    from bigcos import io

    values = np.arange(40, dtype=np.float32)
    values[[13, 14, 30]] = bad  # rows 3 (two values) and 7 of a 10 x 4 embedding
    table = pa.table({"user_id": pa.array(100 + np.arange(10)),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(values), 4)})
    path = tmp_path / "users.parquet"
    pq.write_table(table, path)
    with pytest.raises(UserError) as err:
        io.read_embeddings(path, "user_id")
    assert str(err.value) == f"{path}: 2 of 10 embedding rows hold NaN or inf (first: user_id 103)"


def test_als_factors_refuse_a_failed_fold_in_and_diverged_factors():
    dense = np.zeros((40, 12), np.float32)
    dense[np.arange(40), np.arange(40) % 12] = 1.0
    dense[:, 1] = 1.0
    dense[0, 0] = 1e20  # a held-out user's fold-in row: implicit's Cholesky fails on it
    heldout = np.zeros(40, bool)
    heldout[:5] = True
    data = Interactions(sp.csr_matrix(dense), None, pa.array(np.arange(40)),
                        pa.array(np.arange(12)), heldout)
    with pytest.raises(UserError, match=r"^ALS model 'als' \(factors=4.*folding in held-out"):
        als_factors(data, ALSOptions(factors=4, iterations=2))
    data.heldout_users = None
    binary = data.train.copy()
    binary.data[:] = 1.0
    data.train = binary
    with pytest.raises(UserError, match=r"^ALS model 'x' .*embedding rows hold NaN or inf"):
        als_factors(data, ALSOptions(factors=4, iterations=2, regularization=0.0, alpha=1e20),
                    name="x")


def test_the_maths_modules_import_no_dask_distributed_pyarrow_or_io():
    import subprocess
    import sys

    code = ("import sys, bigcos.closed_form, bigcos.column_remedies; print(sorted({m.split('.')[0]"
            " for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'pyarrow')}"
            " | ({'bigcos.io'} & set(sys.modules))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
