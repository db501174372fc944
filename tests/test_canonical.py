"""The dot-equivalent family against dense numpy: canonical identity, members, placement."""

import numpy as np
import pytest

from bigcos.canonical import (
    canonical_form,
    canonical_from_factors,
    gram,
    member_maps,
    named_scalings,
    placement,
    qr_factor,
    random_scalings,
    refine_factor,
    triangular_factor,
)


def _factors(seed=0, n=60, p=40, k=6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)) * rng.uniform(0.2, 3, k), rng.normal(size=(p, k))


def test_gram_is_blocked_xtx():
    P, _ = _factors()
    np.testing.assert_allclose(gram(P.astype(np.float32), block_rows=7), P.T @ P, rtol=1e-6)


def test_canonical_identity_and_orthonormal_factors():
    P, B = _factors()
    c = canonical_form(gram(P), gram(B))
    U, V = P @ c.user_map, B @ c.item_map
    np.testing.assert_allclose(U.T @ U, np.eye(c.rank), atol=1e-10)
    np.testing.assert_allclose(V.T @ V, np.eye(c.rank), atol=1e-10)
    np.testing.assert_allclose(U * c.s @ V.T, P @ B.T, atol=1e-10)  # A B' = U S V'
    # s are the singular values of the score matrix
    np.testing.assert_allclose(c.s, np.linalg.svd(P @ B.T, compute_uv=False)[:c.rank], rtol=1e-10)
    np.testing.assert_allclose(U @ c.user_coords, P, atol=1e-10)
    np.testing.assert_allclose(V @ c.item_coords, B, atol=1e-10)


def _cos(x):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def test_every_member_has_the_same_scores_but_not_the_same_cosines():
    P, B = _factors(1)
    c = canonical_form(gram(P), gram(B))
    members = named_scalings(c.s) | random_scalings(c.rank, 3, seed=2)
    cosines = []
    for d in members.values():
        um, im = member_maps(c, d)
        np.testing.assert_allclose((P @ um) @ (B @ im).T, P @ B.T, atol=1e-9)
        cosines.append(_cos(B @ im))
    for a in range(len(cosines)):
        for b in range(a):
            assert np.abs(cosines[a] - cosines[b]).max() > 0.05
    # named members are what their names say
    U = P @ member_maps(c, members["user-orthonormal"])[0]
    V = B @ member_maps(c, members["item-orthonormal"])[1]
    np.testing.assert_allclose(U.T @ U, np.eye(c.rank), atol=1e-10)
    np.testing.assert_allclose(V.T @ V, np.eye(c.rank), atol=1e-10)
    Pb, Bb = P @ member_maps(c, members["balanced"])[0], B @ member_maps(c, members["balanced"])[1]
    np.testing.assert_allclose(Pb.T @ Pb, Bb.T @ Bb, atol=1e-9)  # the L2 stationarity condition


def test_placement_recovers_the_d_of_a_rotated_member_and_flags_a_non_member():
    P, B = _factors(2)
    c = canonical_form(gram(P), gram(B))
    d = random_scalings(c.rank, 1, seed=4)["random-1"]
    um, im = member_maps(c, d)
    Q = np.linalg.qr(np.random.default_rng(5).normal(size=(c.rank, c.rank)))[0]
    P2, B2 = P @ um @ Q, B @ im @ Q  # a member, rotated: what a trained model looks like
    c2 = canonical_form(gram(P2), gram(B2))
    np.testing.assert_allclose(c2.s, c.s, rtol=1e-9)
    place = placement(c2)
    assert place.item_off_diagonal < 1e-9 and place.user_off_diagonal < 1e-9
    np.testing.assert_allclose(place.fitted_d, d, rtol=1e-7)
    np.testing.assert_allclose(place.user_ratio * place.item_ratio, 1.0, rtol=1e-7)
    # the fitted member's cosines are the model's own
    np.testing.assert_allclose(_cos(B2 @ c2.item_map * np.sqrt(c2.s) / place.fitted_d), _cos(B2),
                               atol=1e-9)
    # a general factor pair (random P, B) is no member: its M M' has off-diagonal mass
    assert placement(c).item_off_diagonal > 0.05


def test_objective_one_spectrum_and_objective_two_is_balanced():
    rng = np.random.default_rng(3)
    X = (rng.random((80, 30)) < 0.2).astype(float)
    U, sigma, Vt = np.linalg.svd(X, full_matrices=False)
    k, lam1, lam2 = 5, 4.0, 1.0
    U, sigma, V = U[:, :k], sigma[:k], Vt[:k].T
    g = sigma**2 / (sigma**2 + lam1)
    B1 = V * np.sqrt(g)  # objective 1, `symmetric` D = I of MATH.md's table
    c1 = canonical_form(gram(X @ B1), gram(B1))  # P = X A with A = B here
    np.testing.assert_allclose(c1.s, sigma * g, rtol=1e-9)  # S = Sigma_k G
    np.testing.assert_allclose(placement(c1).fitted_d, np.sqrt(sigma), rtol=1e-7)
    root = np.sqrt(np.maximum(sigma - lam2, 0))
    c2 = canonical_form(gram(U * root), gram(V * root))  # objective 2: P = U (S-l)+^1/2
    np.testing.assert_allclose(placement(c2).item_ratio, 1.0, rtol=1e-7)


def test_rank_deficient_factors_use_the_eigen_factor():
    P, B = _factors(4, k=5)
    P = np.hstack([P, P[:, :1] * 2.0])  # 6 columns, rank 5
    B = np.hstack([B, np.zeros((len(B), 1))])
    r, r_inv = triangular_factor(gram(B))
    assert r.shape == (5, 6)
    np.testing.assert_allclose(r.T @ r, gram(B), atol=1e-9)
    np.testing.assert_allclose(r @ r_inv, np.eye(5), atol=1e-10)
    c = canonical_form(gram(P), gram(B))
    assert c.rank == 5
    U, V = P @ c.user_map, B @ c.item_map
    np.testing.assert_allclose(U * c.s @ V.T, P @ B.T, atol=1e-9)


def test_bad_d_is_refused():
    P, B = _factors()
    c = canonical_form(gram(P), gram(B))
    with pytest.raises(ValueError, match="positive"):
        member_maps(c, -np.ones(c.rank))


def _ill_conditioned(seed=6, m=500, k=8, cond=1e4):
    rng = np.random.default_rng(seed)
    q1 = np.linalg.qr(rng.normal(size=(m, k)))[0]
    q2 = np.linalg.qr(rng.normal(size=(k, k)))[0]
    return (q1 * np.logspace(0, -np.log10(cond), k)) @ q2


def test_cholesky_qr2_matches_numpy_qr_where_one_pass_loses_orthogonality():
    x = _ill_conditioned()
    q_np, r_np = np.linalg.qr(x)
    signs = np.sign(np.diag(r_np))
    r_np = r_np * signs[:, None]  # numpy's R with a positive diagonal: the unique thin-QR R
    r, r_inv = qr_factor(x, block_rows=64)
    np.testing.assert_allclose(r, r_np, atol=1e-12 * np.abs(r_np).max())
    np.testing.assert_allclose(r @ r_inv, np.eye(8), atol=1e-9)
    q = x @ r_inv
    np.testing.assert_allclose(q.T @ q, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(q, q_np * signs, atol=1e-9)
    # one Cholesky-QR pass (the Gram alone) is visibly less orthogonal at cond 1e4 (Gram 1e8;
    # larger condition numbers count as rank-deficient at RTOL, see triangular_factor)
    one_pass = x @ triangular_factor(gram(x))[1]
    assert np.abs(one_pass.T @ one_pass - np.eye(8)).max() > 100 * np.abs(q.T @ q - np.eye(8)).max()
    # the second pass is the Gram of the projected rows, summed over any split of the rows
    first = triangular_factor(gram(x))
    halves = gram(x[:123], right=first[1]) + gram(x[123:], right=first[1])
    np.testing.assert_allclose(refine_factor(first, halves)[0], r, atol=1e-12 * np.abs(r).max())


def test_canonical_from_qr_factors_is_the_canonical_form():
    P, B = _factors(7)
    c = canonical_from_factors(qr_factor(P, block_rows=9), qr_factor(B, block_rows=9))
    ref = canonical_form(gram(P), gram(B))
    np.testing.assert_allclose(c.s, ref.s, rtol=1e-12)
    np.testing.assert_allclose(P @ c.user_map, P @ ref.user_map, atol=1e-10)
    np.testing.assert_allclose(B @ c.item_map, B @ ref.item_map, atol=1e-10)
