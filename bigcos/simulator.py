"""The paper's simulator (Steck, Ekanadham & Kallus 2024, §4) at any scale.

Generative model (defaults are the paper's where it gives them)::

    p = n_items items, each assigned to one of C clusters with probabilities p_c
    beta_c ~ Unif(beta_min, beta_max)                    per cluster (0.25, 1.5)
    p_i    = PowerLaw(beta_{c_i})                         baseline popularity of item i
    p_uc   = random cluster preferences of user u
    p_ui   = p_{u c_i} p_i / sum_j p_{u c_j} p_j          user-item probabilities
    k_u    ~ PowerLaw(beta_user)                          items of user u (beta_user = 0.5)
    the k_u items of u: sampled sequentially without replacement with probabilities p_ui

Choices the paper leaves open, each a :class:`SimulationParams` field (the default, and why):

- ``cluster_concentration = 5``: p_c ~ Dirichlet(5, ..., 5). Clusters of visibly unequal size,
  as in the paper's Figure 1, but (unlike Dirichlet(1)) almost never a vanishing cluster.
- ``preference_concentration = 1``: p_u. ~ Dirichlet(1, ..., 1), i.e. uniform on the simplex:
  the least informative reading of "randomly sampled user-cluster preferences".
- ``popularity_law = "zipf"``: p_i = r^(-beta_c), r = the item's popularity rank within its
  cluster (a random permutation of 1..m_c), unnormalised, so every cluster's top item has
  p_i = 1 (as the paper's p_ui formula multiplies p_uc by p_i directly; a flat cluster thus has
  a larger mass S_c and draws more interactions than a steep one of the same size). A
  "power-law exponent" in (0.25, 1.5) is how the recommender literature describes
  popularity-vs-rank curves (beta = 1 is Zipf's law). ``"power"`` is the other reading:
  p_i ~ numpy ``Generator.power(beta_c)`` (density beta x^(beta-1) on [0, 1]); for beta > 1 it
  favours values near 1 and so has no heavy tail, which is why it is not the default.
- ``popularity_normalization = "none"``: the p_i above as drawn, so a cluster's mass S_c depends
  on its exponent: at the defaults (20,000 x 1,000) the two flattest clusters (beta_c 0.36 and
  0.40, S_c 43 and 32 against about 3 for the steep ones) hold 33 % of the items but draw 57 %
  of the interactions. ``"cluster"`` rescales each cluster's p_i to sum to its size m_c (mean
  baseline popularity 1 in every cluster, the within-cluster law unchanged), so P(c | u) is
  proportional to p_uc m_c: a cluster's share of interactions follows its share of items
  (m_c / p, about p_c) and the users' preferences, not beta_c.
- ``activity_law = "zipf"``: P(k_u = k) proportional to k^(-beta_user) on
  [min_items, max_items]. ``"power"``: k_u = min_items + floor(x (max_items - min_items + 1)),
  x ~ ``Generator.power(beta_user)``. For beta_user = 0.5 the two coincide up to
  discretisation (density proportional to x^(-0.5)).
- ``min_items = 1``, ``max_items = 1000`` (capped at n_items): at the paper's p = 1,000 every
  k_u in 1..p is possible (mean about p/3, a dense log whose random singular values stay below
  100, the scale the paper's lambdas suggest); beyond that, 1,000 is a realistic cap on one
  user's activity and keeps 10M users x 1M items at ~3 billion interactions.
- ``timestamp``: the position of the item in the user's sequential draw (0 = first), so a
  time-based split holds out the items drawn last.

Sampling k_u items without replacement (exact, no per-user O(p) work for light users).
Sequential sampling without replacement proportional to w_i = p_{u c_i} p_i is the order of
first arrivals in an exponential race: item i arrives at E_i / w_i, E_i ~ Exp(1). The race is
equivalently one Poisson process of rate sum(w) whose points are labelled i with probability
w_i / sum(w), i.e. draws *with* replacement, so the first k_u distinct draws of a with-replacement
stream are exactly the sequential sample. A draw factorises, p_ui = P(cluster c | u) P(i | c)
with P(c | u) proportional to p_uc S_c (S_c = sum of p_i in c) and P(i | c) = p_i / S_c, so a draw
costs O(C) with one alias table per cluster shared by all users. Users with
k_u >= ``dense_fraction`` * p, and users whose rejection stream exceeds ``budget_factor`` * k_u
draws (a user concentrated on a steep cluster keeps redrawing its head), are finished with an
explicit race over all items not yet drawn: by the Markov property of sequential sampling the
rest of the sequence is a sequential sample from the remaining items, so mixing the two methods
stays exact. That explicit race costs O(p) for a user with k_u >= dense_fraction * p, i.e.
O(k_u / dense_fraction).

Scale and determinism. Users are generated in blocks of ``block_users`` (a fixed count, not a
function of the worker count); block b draws from ``SeedSequence(seed, spawn_key=(1, b))`` and
items from ``SeedSequence(seed, spawn_key=(0,))``, so the output is identical for any number of
tasks, workers or threads. Each block is a Dask task that writes
``interactions/part-<b:05d>.parquet`` itself; memory per task is O(block_users x mean k_u).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from bigcos import io, storage
from bigcos.errors import UserError

Law = Literal["zipf", "power"]
Normalization = Literal["none", "cluster"]
ITEMS_STREAM = 0
USERS_STREAM = 1
INTERACTIONS_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()),
                                 ("value", pa.float32()), ("timestamp", pa.int64())])


@dataclass(frozen=True)
class SimulationParams:
    """Every parameter of the generator (see the module docstring for the open choices).

    All of them determine the output, ``block_users`` included (each block has its own random
    stream); the number of Dask workers, threads or tasks does not.
    ``dense_fraction`` and ``budget_factor`` pick the sampling method per user and so also
    change which random numbers are used, though not the distribution sampled.
    """

    n_users: int = 20_000
    n_items: int = 1_000
    n_clusters: int = 5
    beta_min: float = 0.25
    beta_max: float = 1.5
    beta_user: float = 0.5
    popularity_law: Law = "zipf"
    popularity_normalization: Normalization = "none"
    activity_law: Law = "zipf"
    min_items: int = 1
    max_items: int = 1_000
    cluster_concentration: float = 5.0
    preference_concentration: float = 1.0
    block_users: int = 10_000
    dense_fraction: float = 0.05
    budget_factor: float = 8.0
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.n_users >= 1, f"n_users: must be >= 1, got {self.n_users}"),
            (self.n_items >= 1, f"n_items: must be >= 1, got {self.n_items}"),
            (1 <= self.n_clusters <= self.n_items,
             f"n_clusters: must be in [1, n_items={self.n_items}], got {self.n_clusters}"),
            (0 < self.beta_min <= self.beta_max,
             f"beta_min/beta_max: need 0 < beta_min <= beta_max, got {self.beta_min}, "
             f"{self.beta_max}"),
            (self.beta_user > 0, f"beta_user: must be > 0, got {self.beta_user}"),
            (self.popularity_law in ("zipf", "power"),
             f"popularity_law: must be zipf or power, got {self.popularity_law!r}"),
            (self.popularity_normalization in ("none", "cluster"),
             "popularity_normalization: must be none or cluster, got "
             f"{self.popularity_normalization!r}"),
            (self.activity_law in ("zipf", "power"),
             f"activity_law: must be zipf or power, got {self.activity_law!r}"),
            (1 <= self.min_items <= self.max_items,
             f"min_items/max_items: need 1 <= min_items <= max_items, got {self.min_items}, "
             f"{self.max_items}"),
            (self.min_items <= self.n_items,
             f"min_items: {self.min_items} exceeds n_items={self.n_items}"),
            (self.cluster_concentration > 0 and self.preference_concentration > 0,
             "cluster_concentration/preference_concentration: must be > 0"),
            (self.block_users >= 1, f"block_users: must be >= 1, got {self.block_users}"),
            (0 < self.dense_fraction <= 1,
             f"dense_fraction: must be in (0, 1], got {self.dense_fraction}"),
            (self.budget_factor >= 1, f"budget_factor: must be >= 1, got {self.budget_factor}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @property
    def n_blocks(self) -> int:
        return -(-self.n_users // self.block_users)

    @property
    def k_max(self) -> int:
        """Largest possible k_u: ``max_items`` capped at ``n_items``."""
        return min(self.max_items, self.n_items)


# --------------------------------------------------------------------------- items
@dataclass(frozen=True)
class ItemModel:
    """The items' ground truth and the sampling tables shared by all users.

    ``cluster`` (p,) int32 and ``popularity`` (p,) float64 (p_i > 0) are indexed by item id;
    ``rank`` (p,) int32 is the popularity rank within the cluster (1 = most popular).
    ``order`` (p,) int64 lists item ids by (cluster, descending popularity); ``starts``
    (C + 1,) are the cluster boundaries in ``order``; ``mass`` (C,) is S_c (0 for an empty
    cluster). ``alias_prob`` (p,) float64 and ``alias`` (p,) int64 are Walker/Vose alias tables
    of each cluster's distribution p_i / S_c over its positions in ``order``: a uniform position
    j of cluster c is kept with probability alias_prob[j], else replaced by alias[j].
    """

    cluster: np.ndarray
    popularity: np.ndarray
    rank: np.ndarray
    cluster_probability: np.ndarray  # (C,) p_c
    exponent: np.ndarray  # (C,) beta_c
    order: np.ndarray
    starts: np.ndarray
    mass: np.ndarray
    alias_prob: np.ndarray
    alias: np.ndarray

    @property
    def n_items(self) -> int:
        return self.cluster.size

    @property
    def n_clusters(self) -> int:
        return self.mass.size


def make_items(params: SimulationParams) -> ItemModel:
    """Draw the items' clusters and baseline popularities from ``SeedSequence(seed, (0,))``.

    ``popularity_normalization = "cluster"`` rescales each cluster's p_i to sum to its size m_c
    after they are drawn (the same random numbers as ``"none"``, so clusters, ranks and exponents
    are identical; only the masses S_c change)."""
    params.validate()
    rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(ITEMS_STREAM,)))
    p, n_c = params.n_items, params.n_clusters
    p_c = rng.dirichlet(np.full(n_c, params.cluster_concentration))
    beta = rng.uniform(params.beta_min, params.beta_max, size=n_c)
    cluster = rng.choice(n_c, size=p, p=p_c).astype(np.int32)
    popularity = np.empty(p, dtype=np.float64)
    rank = np.empty(p, dtype=np.int32)
    for c in range(n_c):
        members = np.flatnonzero(cluster == c)
        m = members.size
        if params.popularity_law == "zipf":
            r = rng.permutation(m) + 1
            popularity[members] = r.astype(np.float64) ** -beta[c]
            rank[members] = r
        else:
            # 1 - U is in (0, 1], so popularity stays strictly positive.
            values = (1.0 - rng.random(m)) ** (1.0 / beta[c])
            popularity[members] = values
            by_value = np.lexsort((members, -values))
            rank[members[by_value]] = np.arange(1, m + 1)
        if params.popularity_normalization == "cluster" and m:
            popularity[members] *= m / popularity[members].sum()  # S_c = m_c; draws unchanged
    order = np.lexsort((rank, cluster)).astype(np.int64)
    starts = np.searchsorted(cluster[order], np.arange(n_c + 1)).astype(np.int64)
    sorted_popularity = popularity[order]
    mass = np.array([sorted_popularity[s:e].sum() for s, e in zip(starts[:-1], starts[1:],
                                                                  strict=True)])
    alias_prob = np.ones(p, dtype=np.float64)
    alias = np.arange(p, dtype=np.int64)
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        if e > s:
            alias_prob[s:e], alias[s:e] = alias_table(sorted_popularity[s:e])
            alias[s:e] += s
    return ItemModel(cluster, popularity, rank, p_c, beta, order, starts, mass, alias_prob,
                     alias)


def alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias method for the distribution proportional to ``weights`` (m,) > 0.

    Returns (prob (m,) float64, alias (m,) int64): drawing j uniformly and keeping it with
    probability prob[j], else taking alias[j], yields j with probability w_j / sum(w).
    O(m) time (a Python loop over the items: ~1 s per million items, once per simulation).
    """
    m = weights.size
    scaled = (weights * (m / weights.sum())).tolist()
    prob = [1.0] * m
    alias = list(range(m))
    small = [j for j, x in enumerate(scaled) if x < 1.0]
    large = [j for j, x in enumerate(scaled) if x >= 1.0]
    while small and large:
        j = small.pop()
        g = large[-1]
        prob[j] = scaled[j]
        alias[j] = g
        scaled[g] = (scaled[g] + scaled[j]) - 1.0
        if scaled[g] < 1.0:
            small.append(large.pop())
    # Leftovers are 1 up to rounding: they keep prob 1 and alias themselves.
    return np.array(prob, dtype=np.float64), np.array(alias, dtype=np.int64)


# --------------------------------------------------------------------------- users
def block_rngs(seed: int, block: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators of user block ``block``: (user attributes, item draws)."""
    users_ss, draws_ss = np.random.SeedSequence(seed, spawn_key=(USERS_STREAM, block)).spawn(2)
    return np.random.default_rng(users_ss), np.random.default_rng(draws_ss)


def activity_table(params: SimulationParams) -> np.ndarray:
    """CDF of k_u under the zipf activity law over k = min_items .. k_max (float64)."""
    k = np.arange(params.min_items, params.k_max + 1, dtype=np.float64)
    cdf = np.cumsum(k ** -params.beta_user)
    return cdf / cdf[-1]


def draw_users(params: SimulationParams, items: ItemModel, block: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User ids (B,), cluster preferences p_uc (B, C) and item counts k_u (B,) of ``block``.

    k_u is capped at the number of items with positive p_ui (a preference that underflows to 0
    removes its cluster).
    """
    first = block * params.block_users
    ids = np.arange(first, min(first + params.block_users, params.n_users), dtype=np.int64)
    rng, _ = block_rngs(params.seed, block)
    prefs = rng.dirichlet(np.full(items.n_clusters, params.preference_concentration),
                          size=ids.size)
    lo, hi = params.min_items, params.k_max
    if params.activity_law == "zipf":
        k = lo + np.searchsorted(activity_table(params), rng.random(ids.size), side="right")
    else:
        k = lo + np.floor(rng.power(params.beta_user, ids.size) * (hi - lo + 1)).astype(np.int64)
    sizes = np.diff(items.starts)
    reachable = ((prefs > 0) & (items.mass > 0)) @ sizes
    k = np.minimum(np.minimum(k, hi), reachable).astype(np.int64)
    return ids, prefs, k


# --------------------------------------------------------------------------- sampling
def sample_items(items: ItemModel, prefs: np.ndarray, k: np.ndarray, rng: np.random.Generator,
                 dense_fraction: float = 0.05, budget_factor: float = 8.0
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Sequential samples without replacement, user u drawing k[u] items with p ∝ prefs[u, c_i] p_i.

    prefs: (B, C) >= 0; k: (B,) int, each at most the number of items with positive weight.
    Returns (user, item, counts): ``user`` (sum k,) int64 local user index in 0..B-1 and
    ``item`` (sum k,) int64 item ids, grouped by user in increasing order, each user's items in
    draw order; ``counts`` says how many draws and explicit races it took.
    """
    B = k.size
    weights = prefs * items.mass  # (B, C): unnormalised P(cluster | user)
    dense = k >= dense_fraction * items.n_items
    seqs_user: list[np.ndarray] = []
    seqs_item: list[np.ndarray] = []
    counts = {"draws": 0, "dense_users": int(dense.sum()), "fallback_users": 0}

    # Light users: with-replacement stream, first distinct draws, in rounds.
    pending = np.flatnonzero(~dense & (k > 0))
    have_user = np.empty(0, np.int64)
    have_item = np.empty(0, np.int64)
    attempts = np.zeros(B, dtype=np.int64)
    n_have = np.zeros(B, dtype=np.int64)
    ccum = np.cumsum(weights, axis=1)
    ccum /= np.where(ccum[:, -1:] > 0, ccum[:, -1:], 1.0)
    while pending.size:
        missing = k[pending] - n_have[pending]
        rate = np.where(attempts[pending] > 0,
                        attempts[pending] / np.maximum(n_have[pending], 1), 1.0)
        n_draw = np.ceil(missing * np.minimum(rate, budget_factor) * 1.1).astype(np.int64) + 4
        users = np.repeat(pending, n_draw)
        new = _draw_with_replacement(items, ccum, users, rng)
        attempts[pending] += n_draw
        counts["draws"] += int(n_draw.sum())
        # Previous sequence of each pending user first, then the new draws; keep first
        # occurrences of each (user, item) and the first k[u] of them.
        cand_user = np.concatenate([have_user, users])  # have_* hold pending users only
        cand_item = np.concatenate([have_item, new])
        order = np.argsort(cand_user, kind="stable")
        cand_user, cand_item = cand_user[order], cand_item[order]
        _, first = np.unique(cand_user * items.n_items + cand_item, return_index=True)
        first.sort()
        cand_user, cand_item = cand_user[first], cand_item[first]
        position = _position_in_group(cand_user)
        take = position < k[cand_user]
        have_user, have_item = cand_user[take], cand_item[take]
        n_have[pending] = np.bincount(have_user, minlength=B)[pending]
        done = n_have[pending] >= k[pending]
        finished = np.isin(have_user, pending[done])
        seqs_user.append(have_user[finished])
        seqs_item.append(have_item[finished])
        have_user, have_item = have_user[~finished], have_item[~finished]
        pending = pending[~done]
        over = attempts[pending] > budget_factor * k[pending]
        if over.any():
            # Finish the users whose stream keeps hitting items they already have.
            stuck = pending[over]
            counts["fallback_users"] += int(stuck.size)
            mine = np.isin(have_user, stuck)
            u_, i_ = _explicit_race(items, prefs, k, stuck, have_user[mine], have_item[mine], rng)
            seqs_user += [have_user[mine], u_]
            seqs_item += [have_item[mine], i_]
            have_user, have_item = have_user[~mine], have_item[~mine]
            pending = pending[~over]

    # Heavy users: explicit race over all items.
    u_, i_ = _explicit_race(items, prefs, k, np.flatnonzero(dense & (k > 0)),
                            np.empty(0, np.int64), np.empty(0, np.int64), rng)
    seqs_user.append(u_)
    seqs_item.append(i_)
    user = np.concatenate(seqs_user)
    item = np.concatenate(seqs_item)
    order = np.argsort(user, kind="stable")  # each user's items stay in draw order
    return user[order], item[order], counts


def _position_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal values (input sorted)."""
    n = sorted_keys.size
    if n == 0:
        return np.empty(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    run_start = np.repeat(starts, np.diff(np.concatenate([starts, [n]])))
    return np.arange(n, dtype=np.int64) - run_start


def _draw_with_replacement(items: ItemModel, ccum: np.ndarray, users: np.ndarray,
                           rng: np.random.Generator) -> np.ndarray:
    """One item id per entry of ``users`` (local indices), drawn with p ∝ prefs[u, c_i] p_i.

    ccum: (B, C) normalised cumulative cluster probabilities of each user.
    """
    u_cluster = rng.random(users.size)
    cluster = np.zeros(users.size, dtype=np.int64)
    for c in range(items.n_clusters - 1):
        # A cluster of zero weight has the previous boundary again, and ">=" steps past it.
        cluster += u_cluster >= np.ascontiguousarray(ccum[:, c])[users]
    # Item within the cluster: a uniform position, kept or replaced by its alias.
    size = (items.starts[1:] - items.starts[:-1])[cluster]
    pos = items.starts[cluster] + np.minimum((rng.random(users.size) * size).astype(np.int64),
                                             size - 1)
    pos = np.where(rng.random(users.size) < items.alias_prob[pos], pos, items.alias[pos])
    return items.order[pos]


def _explicit_race(items: ItemModel, prefs: np.ndarray, k: np.ndarray, users: np.ndarray,
                   have_user: np.ndarray, have_item: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Complete the sequences of ``users`` by an exponential race over all their missing items.

    have_user/have_item: items each of these users already drew (excluded from the race).
    Returns (user, item) of the remaining k[u] - len(have) draws of each user, in race order.
    Costs O(p) memory per user, in chunks of about 4M keys.
    """
    if users.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    p = items.n_items
    chunk = max(1, (1 << 22) // p)
    out_user, out_item = [], []
    slot = np.full(prefs.shape[0], -1, dtype=np.int64)
    for s in range(0, users.size, chunk):
        block = users[s:s + chunk]
        slot[block] = np.arange(block.size)
        w = prefs[block][:, items.cluster] * items.popularity  # (b, p)
        with np.errstate(divide="ignore"):
            keys = rng.standard_exponential(w.shape) / w
        mine = np.isin(have_user, block)
        keys[slot[have_user[mine]], have_item[mine]] = np.inf
        missing = k[block] - np.bincount(slot[have_user[mine]], minlength=block.size)
        # the smallest `missing` keys of each row, in increasing order: partition, then sort
        width = int(missing.max())
        if width < p:
            candidates = np.argpartition(keys, width - 1, axis=1)[:, :width]
        else:
            candidates = np.broadcast_to(np.arange(p), keys.shape)
        order = np.take_along_axis(
            candidates, np.argsort(np.take_along_axis(keys, candidates, axis=1), axis=1,
                                   kind="stable"), axis=1)
        take = np.arange(width) < missing[:, None]
        rows = np.nonzero(take)[0]
        out_user.append(block[rows])
        out_item.append(order[take].astype(np.int64))
        slot[block] = -1
    return np.concatenate(out_user), np.concatenate(out_item)


# --------------------------------------------------------------------------- output
def block_interactions(params: SimulationParams, items: ItemModel, block: int) -> tuple[
        pa.Table, dict[str, int]]:
    """The interactions of user block ``block`` (schema :data:`INTERACTIONS_SCHEMA`).

    Rows are grouped by user_id (increasing); each user's items in draw order, ``timestamp``
    being the 0-based position in that order.
    """
    ids, prefs, k = draw_users(params, items, block)
    _, rng = block_rngs(params.seed, block)
    user, item, counts = sample_items(items, prefs, k, rng, params.dense_fraction,
                                      params.budget_factor)
    table = pa.table({
        "user_id": pa.array(ids[user]),
        "item_id": pa.array(item),
        "value": pa.array(np.ones(item.size, dtype=np.float32)),
        "timestamp": pa.array(_position_in_group(user)),
    }, schema=INTERACTIONS_SCHEMA)
    counts["users"] = int(ids.size)
    counts["interactions"] = int(item.size)
    return table, counts


def write_block(params: SimulationParams, items: ItemModel, block: int, directory: str
                ) -> dict[str, int]:
    """Write ``directory/part-<block:05d>.parquet`` (one Dask task); return the block's counts."""
    table, counts = block_interactions(params, items, block)
    io.write_table(storage.as_path(directory) / f"part-{block:05d}.parquet", table)
    return counts


def users_table(params: SimulationParams, items: ItemModel, block: int) -> pa.Table:
    """Ground truth of the users of ``block``: user_id, cluster_preference (list of C
    float64, p_uc), top_cluster (argmax of p_uc) and n_items (k_u)."""
    ids, prefs, k = draw_users(params, items, block)
    flat = pa.array(prefs.reshape(-1), type=pa.float64())
    return pa.table({
        "user_id": pa.array(ids),
        "cluster_preference": pa.FixedSizeListArray.from_arrays(flat, items.n_clusters),
        "top_cluster": pa.array(prefs.argmax(axis=1).astype(np.int32)),
        "n_items": pa.array(k.astype(np.int32)),
    })


def items_table(items: ItemModel) -> pa.Table:
    """Ground truth of the items: item_id, cluster, popularity (p_i), popularity_rank (1 = most
    popular in its cluster) and cluster_exponent (beta_c)."""
    return pa.table({
        "item_id": pa.array(np.arange(items.n_items, dtype=np.int64)),
        "cluster": pa.array(items.cluster),
        "popularity": pa.array(items.popularity),
        "popularity_rank": pa.array(items.rank),
        "cluster_exponent": pa.array(items.exponent[items.cluster]),
    })


def _write_users(path: Path, params: SimulationParams, items: ItemModel,
                 rows_per_group: int = 1 << 20) -> None:
    """Stream users.parquet block by block (only ~rows_per_group users in memory)."""
    writer = None
    pending: list[pa.Table] = []
    n_pending = 0
    try:
        for block in range(params.n_blocks):
            table = users_table(params, items, block)
            pending.append(table)
            n_pending += table.num_rows
            if n_pending >= rows_per_group or block == params.n_blocks - 1:
                chunk = pa.concat_tables(pending)
                if writer is None:
                    writer = io.parquet_writer(path, chunk.schema)
                writer.write_table(chunk)
                pending, n_pending = [], 0
    finally:
        if writer is not None:
            writer.close()


def simulate(out: str | os.PathLike, params: SimulationParams | None = None,
             overwrite: bool = False, client=None) -> dict:
    """Generate a simulation directory at ``out`` (atomically); return its manifest.

    Layout: ``interactions/part-<block>.parquet`` (user_id int64, item_id int64, value float32
    1.0, timestamp int64: position in the user's draw order), readable by ``bigcos ingest``;
    ``items.parquet`` (:func:`items_table`), ``users.parquet`` (:func:`users_table`),
    ``manifest.json`` (every parameter, the seed, the drawn p_c and beta_c, counts).

    Blocks run as Dask tasks on ``client`` (a ``distributed.Client``), or with None on Dask's
    threaded scheduler in this process; each writes its own part file, so workers must see
    ``out``'s filesystem. The result does not depend on the scheduler or the number of workers.
    """
    import dask

    params = params or SimulationParams()
    params.validate()
    timings = io.Timings()
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        with timings("items"):
            items = make_items(params)
            io.write_table(tmp / "items.parquet", items_table(items))
        parts = tmp / "interactions"
        parts.mkdir()
        with timings("interactions"):
            shared_items = dask.delayed(make_items, pure=True)(params)
            tasks = [dask.delayed(write_block, pure=True)(params, shared_items, b, str(parts))
                     for b in range(params.n_blocks)]
            results = dask.compute(*tasks, scheduler="threads" if client is None else client)
        with timings("users"):
            _write_users(tmp / "users.parquet", params, items)
        counts = {key: int(sum(r[key] for r in results)) for key in results[0]}
        counts["items"] = params.n_items
        counts["cluster_sizes"] = np.diff(items.starts).tolist()
        counts["blocks"] = params.n_blocks
        seconds = timings.seconds["interactions"]
        counts["users_per_second"] = round(params.n_users / max(seconds, 1e-9), 1)
        manifest = io.write_manifest(
            tmp, "simulate", parameters=asdict(params), timings=timings,
            ground_truth={"cluster_probability": items.cluster_probability,
                          "cluster_exponent": items.exponent,
                          "cluster_mass": items.mass},
            counts=counts)
    return manifest


def read_interactions(directory: str | os.PathLike) -> pa.Table:
    """All interactions of a simulation directory as one table (small simulations only)."""
    return io.open_dataset(storage.as_path(directory) / "interactions").to_table()
