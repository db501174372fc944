"""The simulator against its generative model: exact sampling probabilities on small catalogues,
the laws of clusters, popularity and activity, uniqueness, determinism, and the ingest round trip.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from scipy import stats

from bigcos.errors import UserError
from bigcos.simulator import (
    SimulationParams,
    activity_table,
    alias_table,
    block_rngs,
    draw_users,
    make_items,
    read_interactions,
    sample_items,
    simulate,
)

SMALL = SimulationParams(n_users=3_000, n_items=300, max_items=120, block_users=700, seed=11)


def _sorted_log(directory) -> pa.Table:
    return read_interactions(directory).sort_by([("user_id", "ascending"),
                                                 ("timestamp", "ascending")])


# --------------------------------------------------------------------------- exact sampling
def _sequence_probabilities(w: np.ndarray, k: int) -> dict[tuple[int, ...], float]:
    """Exact probability of every ordered k-sequence under sequential sampling w/o replacement."""
    out = {}
    for seq in itertools.permutations(range(w.size), k):
        prob, left = 1.0, w.sum()
        for i in seq:
            prob *= w[i] / left
            left -= w[i]
        out[seq] = prob
    return out


@pytest.mark.parametrize("path", ["stream", "dense", "fallback"])
def test_sampling_is_sequential_without_replacement(path):
    """Frequencies of ordered 3-sequences over 6 items match the exact sequential probabilities
    (chi-square), for each sampling method: with-replacement stream + first distinct draws,
    explicit exponential race, and a stream finished by the race (budget exhausted)."""
    params = SimulationParams(n_items=6, n_clusters=2, cluster_concentration=2.0, seed=1)
    items = make_items(params)
    # clusters of 4 and 2 items with exponents 0.37 and 1.27: unequal sizes, masses and laws
    assert np.diff(items.starts).tolist() == [4, 2]
    n, k = 60_000, 3
    pref = np.array([0.3, 0.7])
    prefs = np.tile(pref, (n, 1))
    dense_fraction, budget = {"stream": (1.0, 1e9), "dense": (0.01, 8.0),
                              "fallback": (1.0, 1.0)}[path]
    user, item, counts = sample_items(items, prefs, np.full(n, k), np.random.default_rng(5),
                                      dense_fraction=dense_fraction, budget_factor=budget)
    if path == "fallback":
        assert 0 < counts["fallback_users"] < n
    assert counts["dense_users"] == (n if path == "dense" else 0)
    assert np.array_equal(user, np.repeat(np.arange(n), k))
    seqs = item.reshape(n, k)
    w = pref[items.cluster] * items.popularity
    exact = _sequence_probabilities(w, k)
    keys = list(exact)
    index = {s: j for j, s in enumerate(keys)}
    observed = np.bincount([index[tuple(s)] for s in seqs.tolist()], minlength=len(keys))
    expected = np.array([exact[s] for s in keys]) * n
    # pool sparse cells so every expected count is >= 5 (the chi-square approximation's rule)
    order = np.argsort(expected)
    small = np.cumsum(expected[order]) < 20
    pooled = [[observed[order][small].sum()], [expected[order][small].sum()]] if small.any() \
        else [[], []]
    obs = np.concatenate([observed[order][~small], pooled[0]])
    exp = np.concatenate([expected[order][~small], pooled[1]])
    assert exp.min() >= 5 and obs.sum() == n
    pvalue = stats.chisquare(obs, exp).pvalue
    assert pvalue > 1e-4, pvalue


def test_sampling_respects_zero_preferences_and_takes_every_item():
    """A user with k = every reachable item gets exactly those items; a zero preference
    excludes its cluster."""
    items = make_items(SimulationParams(n_items=40, n_clusters=3, seed=1))
    reachable = np.flatnonzero(items.cluster != 1)
    prefs = np.array([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
    k = np.array([reachable.size, 40])
    user, item, _ = sample_items(items, prefs, k, np.random.default_rng(0), dense_fraction=1.0,
                                 budget_factor=4.0)
    assert sorted(item[user == 0].tolist()) == reachable.tolist()
    assert sorted(item[user == 1].tolist()) == list(range(40))


@pytest.mark.parametrize("weights", [
    np.arange(1, 200, dtype=float) ** -1.5,  # steep Zipf
    np.random.default_rng(0).random(300) ** 4 + 1e-9,  # many tiny weights
    np.ones(7),
    np.array([5.0]),
])
def test_alias_table_represents_the_distribution_exactly(weights):
    """P(j) = prob[j] / m + sum over cells i aliased to j of (1 - prob[i]) / m equals w_j / W."""
    prob, alias = alias_table(weights)
    m = weights.size
    assert np.all((prob >= 0) & (prob <= 1)) and np.all((alias >= 0) & (alias < m))
    implied = prob / m + np.bincount(alias, weights=(1 - prob) / m, minlength=m)
    assert np.allclose(implied, weights / weights.sum(), rtol=1e-9, atol=1e-15)


# --------------------------------------------------------------------------- generator laws
def test_cluster_shares_follow_p_c():
    params = SimulationParams(n_items=50_000, n_clusters=6, seed=2)
    items = make_items(params)
    sizes = np.bincount(items.cluster, minlength=6)
    assert np.isclose(items.cluster_probability.sum(), 1.0)
    assert stats.chisquare(sizes, items.cluster_probability * params.n_items).pvalue > 1e-4
    assert np.array_equal(np.diff(items.starts), sizes)
    assert np.all((items.exponent >= 0.25) & (items.exponent <= 1.5))


def _shares(params: SimulationParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observed share of interactions per cluster, the p_uc m_c expectation, m_c / p) of a
    simulation generated block by block in memory."""
    from bigcos.simulator import block_interactions

    items = make_items(params)
    sizes = np.diff(items.starts)
    counts, expected, total_k = np.zeros(params.n_clusters), np.zeros(params.n_clusters), 0
    for block in range(params.n_blocks):
        table, _ = block_interactions(params, items, block)
        counts += np.bincount(items.cluster[table.column("item_id").to_numpy()],
                              minlength=params.n_clusters)
        _, prefs, k = draw_users(params, items, block)
        weights = prefs * sizes
        expected += (k[:, None] * weights / weights.sum(axis=1, keepdims=True)).sum(axis=0)
        total_k += k.sum()
    return counts / counts.sum(), expected / total_k, sizes / params.n_items


def test_cluster_normalisation_makes_shares_follow_cluster_sizes_and_preferences():
    """With popularity_normalization="cluster" each cluster's p_i sum to its size m_c (same
    clusters, ranks and exponents as "none"), so a cluster's share of interactions follows the
    p_c-weighted expectation sum_u k_u p_uc m_c / sum_c' p_uc' m_c' (m_c / p ~ p_c): exactly
    for one draw per user (up to sampling noise, sd ~0.003 per share at 20,000 draws), and
    closely for 1..30 draws (later draws without replacement thin a steep cluster's head), far
    closer than the unnormalised default, where flat clusters draw more."""
    base = SimulationParams(n_users=20_000, n_items=600, max_items=1, block_users=5_000, seed=5)
    normalised = replace(base, popularity_normalization="cluster")
    raw, norm = make_items(base), make_items(normalised)
    assert np.array_equal(raw.cluster, norm.cluster) and np.array_equal(raw.rank, norm.rank)
    assert np.array_equal(raw.exponent, norm.exponent)
    sizes = np.diff(norm.starts)
    np.testing.assert_allclose(norm.mass, sizes, rtol=1e-12)
    np.testing.assert_allclose(norm.popularity / raw.popularity,
                               (sizes / raw.mass)[norm.cluster], rtol=1e-12)
    assert raw.mass.max() / raw.mass.min() > 3 * sizes.max() / sizes.min()  # beta_c matters

    def tv(a, b):
        return 0.5 * np.abs(a - b).sum()

    observed, expected, _ = _shares(normalised)
    observed_raw, _, _ = _shares(base)
    assert tv(observed, expected) < 0.01, (observed, expected)
    assert tv(observed_raw, expected) > 0.2, (observed_raw, expected)
    several = replace(base, n_users=6_000, max_items=30)
    observed, expected, size_share = _shares(replace(several, popularity_normalization="cluster"))
    observed_raw, _, _ = _shares(several)
    assert tv(observed, expected) < tv(observed_raw, expected) / 5
    assert tv(observed, size_share) < tv(observed_raw, size_share) / 5


def test_default_simulation_is_bitwise_unchanged(tmp_path):
    """The default (popularity_normalization="none") draws exactly what the simulator drew
    before the option existed: sha256 of SMALL's sorted log and item popularities."""
    import hashlib

    assert SimulationParams().popularity_normalization == "none"
    simulate(tmp_path / "sim", SMALL)
    log = _sorted_log(tmp_path / "sim")
    digest = hashlib.sha256()
    for column in ("user_id", "item_id", "timestamp"):
        digest.update(log.column(column).to_numpy().tobytes())
    digest.update(make_items(SMALL).popularity.tobytes())
    assert log.num_rows == 129_777
    assert digest.hexdigest() == \
        "49ed87ba2ddf1fc03bdaa82665181ab89352ffc05afc03aa994b85d140931baf"


def test_zipf_popularity_law_within_each_cluster():
    """p_i = rank^-beta_c exactly; and items drawn by single-item users follow the rank law
    within their cluster (chi-square of rank counts against r^-beta / H)."""
    params = SimulationParams(n_users=40_000, n_items=60, n_clusters=2, min_items=1,
                              max_items=1, block_users=40_000, seed=4)
    items = make_items(params)
    for c in range(2):
        members = items.cluster == c
        ranks = np.sort(items.rank[members])
        assert np.array_equal(ranks, np.arange(1, members.sum() + 1))
        assert np.allclose(items.popularity[members],
                           items.rank[members].astype(float) ** -items.exponent[c])
    _, prefs, k = draw_users(params, items, 0)
    assert np.all(k == 1)
    _, rng = block_rngs(params.seed, 0)
    _, item, _ = sample_items(items, prefs, k, rng)
    for c in range(2):
        in_c = items.cluster[item] == c
        m = int((items.cluster == c).sum())
        observed = np.bincount(items.rank[item[in_c]] - 1, minlength=m)
        law = np.arange(1, m + 1, dtype=float) ** -items.exponent[c]
        assert stats.chisquare(observed, law / law.sum() * in_c.sum()).pvalue > 1e-4


def test_power_popularity_law_ks():
    """With popularity_law='power', p_i within cluster c has CDF x^beta_c (KS test)."""
    params = SimulationParams(n_items=20_000, n_clusters=3, popularity_law="power", seed=6)
    items = make_items(params)
    for c in range(3):
        values = items.popularity[items.cluster == c]
        beta = items.exponent[c]
        assert stats.kstest(values, lambda x, b=beta: np.clip(x, 0, 1) ** b).pvalue > 1e-3
        members = np.flatnonzero(items.cluster == c)
        by_rank = members[np.argsort(items.rank[members])]
        assert np.all(np.diff(items.popularity[by_rank]) <= 0)


@pytest.mark.parametrize("law", ["zipf", "power"])
def test_items_per_user_law(law):
    """Empirical CDF of k_u within the KS band (alpha ~ 0.001) of the chosen law."""
    params = SimulationParams(n_users=30_000, n_items=500, min_items=3, max_items=400,
                              activity_law=law, block_users=30_000, seed=8)
    items = make_items(params)
    _, _, k = draw_users(params, items, 0)
    assert k.min() >= 3 and k.max() <= 400
    support = np.arange(3, 401)
    if law == "zipf":
        cdf = activity_table(params)
    else:
        # k = 3 + floor(398 x), x with CDF x^beta  =>  P(k <= j) = ((j - 2) / 398)^beta
        cdf = np.minimum((support - 2) / 398.0, 1.0) ** params.beta_user
    empirical = np.searchsorted(np.sort(k), support, side="right") / k.size
    assert np.abs(empirical - cdf).max() < 1.95 / np.sqrt(k.size)


def test_log_has_no_duplicates_and_matches_users_table(tmp_path):
    simulate(tmp_path / "sim", SMALL)
    log = read_interactions(tmp_path / "sim")
    users = pa.parquet.read_table(tmp_path / "sim" / "users.parquet")
    user = log.column("user_id").to_numpy()
    item = log.column("item_id").to_numpy()
    assert log.schema.field("user_id").type == pa.int64()
    assert log.schema.field("value").type == pa.float32()
    assert np.unique(user * SMALL.n_items + item).size == log.num_rows
    per_user = np.bincount(user, minlength=SMALL.n_users)
    assert np.array_equal(per_user, users.column("n_items").to_numpy())
    assert users.num_rows == SMALL.n_users
    prefs = np.stack(users.column("cluster_preference").to_numpy(zero_copy_only=False))
    assert prefs.shape == (SMALL.n_users, SMALL.n_clusters)
    assert np.allclose(prefs.sum(axis=1), 1.0)
    ts = _sorted_log(tmp_path / "sim").column("timestamp").to_numpy()
    starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    assert np.array_equal(ts, np.arange(ts.size) - np.repeat(starts, per_user))
    manifest = json.loads((tmp_path / "sim" / "manifest.json").read_text())
    assert manifest["parameters"]["seed"] == 11
    assert manifest["counts"]["interactions"] == log.num_rows
    items = pa.parquet.read_table(tmp_path / "sim" / "items.parquet")
    assert items.column_names[:3] == ["item_id", "cluster", "popularity"]


# --------------------------------------------------------------------------- determinism
def test_identical_for_any_scheduler_and_worker_count(tmp_path):
    """Threaded scheduler, synchronous scheduler and a 2-process LocalCluster write the same
    rows (same files, even); a different seed does not."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(scheduler="threads", num_workers=3):
        simulate(tmp_path / "threads", SMALL)
    with dask.config.set(scheduler="synchronous"):
        simulate(tmp_path / "sync", SMALL)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster):
        simulate(tmp_path / "cluster", SMALL)
    reference = _sorted_log(tmp_path / "threads")
    assert reference.equals(_sorted_log(tmp_path / "sync"))
    assert reference.equals(_sorted_log(tmp_path / "cluster"))
    parts = sorted(p.name for p in (tmp_path / "threads" / "interactions").iterdir())
    assert len(parts) == SMALL.n_blocks
    for name in parts:
        a = pa.parquet.read_table(tmp_path / "threads" / "interactions" / name)
        assert a.equals(pa.parquet.read_table(tmp_path / "cluster" / "interactions" / name))
    with dask.config.set(scheduler="threads"):
        simulate(tmp_path / "other", replace(SMALL, seed=12))
    assert not reference.equals(_sorted_log(tmp_path / "other"))


def test_blocks_depend_only_on_seed_and_block_index():
    """A block computed alone equals the same block inside a run (no shared RNG state)."""
    from bigcos.simulator import block_interactions

    items = make_items(SMALL)
    alone, _ = block_interactions(SMALL, items, 3)
    bigger = replace(SMALL, n_users=SMALL.n_users + 5_000)  # more blocks after block 3
    again, _ = block_interactions(bigger, make_items(bigger), 3)
    assert alone.equals(again)


# --------------------------------------------------------------------------- ingest
def test_round_trip_through_ingest(tmp_path):
    import bigcos

    simulate(tmp_path / "sim", SMALL)
    data = bigcos.ingest(tmp_path / "sim" / "interactions", tmp_path / "matrix")
    loaded = bigcos.load_matrix(tmp_path / "matrix")
    log = read_interactions(tmp_path / "sim")
    user = log.column("user_id").to_numpy()
    item = log.column("item_id").to_numpy()
    expected = sp.csr_matrix((np.ones(user.size, np.float32), (user, item)),
                             shape=(SMALL.n_users, SMALL.n_items))
    item_ids = loaded.item_ids.to_numpy()
    user_ids = loaded.user_ids.to_numpy()
    assert np.array_equal(user_ids, np.arange(SMALL.n_users))  # every user has >= 1 item
    assert (loaded.train != expected[user_ids][:, item_ids]).nnz == 0
    assert loaded.train.nnz == log.num_rows == data.train.nnz


# --------------------------------------------------------------------------- errors and CLI
@pytest.mark.parametrize("change, message", [
    ({"n_clusters": 0}, "n_clusters"),
    ({"beta_min": 2.0, "beta_max": 1.0}, "beta_min"),
    ({"min_items": 5, "max_items": 2}, "min_items"),
    ({"popularity_law": "lognormal"}, "popularity_law"),
    ({"popularity_normalization": "global"}, "popularity_normalization: must be none or "),
])
def test_bad_parameters_are_user_errors(change, message):
    with pytest.raises(UserError, match=message):
        make_items(replace(SimulationParams(), **change))


def test_cli_simulate(tmp_path):
    from bigcos.cli import main

    out = tmp_path / "sim"
    args = ["simulate", "--out", str(out), "--n-users", "400", "--n-items", "80",
            "--max-items", "30", "--block-users", "150", "--workers", "1", "--seed", "9"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "400 users x 80 items" in result.output
    assert len(list((out / "interactions").glob("part-*.parquet"))) == 3
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already exists" in again.output
    normalised = CliRunner().invoke(main, [*args[:2], str(tmp_path / "norm"), *args[3:],
                                           "--popularity-normalization", "cluster"])
    assert normalised.exit_code == 0, normalised.output
    manifest = json.loads((tmp_path / "norm" / "manifest.json").read_text())
    assert manifest["parameters"]["popularity_normalization"] == "cluster"
    assert json.loads((out / "manifest.json").read_text())["parameters"][
        "popularity_normalization"] == "none"
    np.testing.assert_allclose(manifest["ground_truth"]["cluster_mass"],
                               manifest["counts"]["cluster_sizes"], rtol=1e-12)
    bad = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path / "x"),
                                    "--min-items", "9", "--max-items", "3"])
    assert bad.exit_code == 1 and "Error: min_items" in bad.output
