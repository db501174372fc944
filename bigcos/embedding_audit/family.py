"""The model's dot-equivalent family (bigcos.canonical) and how neighbour lists move across it.

Members are embeddings with exactly the model's user-item dot scores: the named ones
(balanced, item-orthonormal, user-orthonormal), ``fitted`` (the member whose D best matches the
model's own item factors; the model itself when it is a member) and seeded random log-uniform D.
Lists: item-item (sampled item queries against all items, the query excluded) and user-item
(sampled users against all items, their training items excluded when a matrix is given), each
by cosine and dot, top ``depth``, from the blocked kernel :func:`bigcos.neighbor_lists.top_n`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from bigcos import canonical
from bigcos.blocked_topn import top_n
from bigcos.embedding_audit.inputs import TINY_NORM

OWN = "own"


@dataclass
class Member:
    """One set of embeddings: the model's own (``d`` None) or a family member with diagonal d."""

    name: str
    items: np.ndarray
    users: np.ndarray | None
    d: np.ndarray | None = None


@dataclass
class Family:
    """The canonical form, where the model sits in it, and the members (own first)."""

    canon: canonical.Canonical
    place: canonical.Placement
    members: list[Member]


def build_family(items: np.ndarray, users: np.ndarray, n_random: int, spread: float, seed: int,
                 block_rows: int) -> Family:
    """Canonical form of ``users @ items.T`` from blocked Grams, and the members' embeddings.

    Memory: one (p x r) and one (n x r) float32 array per member.
    """
    canon = canonical.canonical_form(canonical.gram(users, block_rows),
                                     canonical.gram(items, block_rows))
    place = canonical.placement(canon)
    scalings = canonical.named_scalings(canon.s)
    scalings["fitted"] = place.fitted_d
    scalings |= canonical.random_scalings(canon.rank, n_random, seed, spread)
    members = [Member(OWN, items, users)]
    for name, d in scalings.items():
        user_map, item_map = canonical.member_maps(canon, d)
        members.append(Member(name, _apply(items, item_map, block_rows),
                              _apply(users, user_map, block_rows), d))
    return Family(canon, place, members)


def _apply(x: np.ndarray, linear_map: np.ndarray, block_rows: int) -> np.ndarray:
    """``x @ linear_map`` in float64 per row block, stored float32."""
    out = np.empty((len(x), linear_map.shape[1]), np.float32)
    for start in range(0, len(x), block_rows):
        out[start:start + block_rows] = np.asarray(x[start:start + block_rows],
                                                   np.float64) @ linear_map
    norms = np.linalg.norm(out, axis=1)
    out[norms < TINY_NORM * norms.max(initial=0.0)] = 0.0  # as inputs does for the model's own
    return out


def sample(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted sample of ``min(count, n)`` distinct indices of range(n)."""
    return np.arange(n) if count >= n else np.sort(rng.choice(n, count, replace=False))


def self_pairs(queries: np.ndarray, p: int) -> sp.csr_matrix:
    """(m x p) CSR excluding each item query from its own list."""
    m = len(queries)
    return sp.csr_matrix((np.ones(m, bool), (np.arange(m), queries)), shape=(m, p))


@dataclass
class Lists:
    """Top-``depth`` lists of one member and kind: {metric: (index (m, N), score (m, N))}."""

    member: str
    kind: str
    lists: dict[str, tuple[np.ndarray, np.ndarray]]


def item_lists(member: Member, queries: np.ndarray, depth: int) -> Lists:
    exclude = self_pairs(queries, len(member.items))
    return Lists(member.name, "item-item",
                 top_n(member.items[queries], member.items, depth, exclude=exclude))


def user_lists(member: Member, queries: np.ndarray, depth: int,
               train: sp.csr_matrix | None) -> Lists:
    exclude = None if train is None else train[queries]
    return Lists(member.name, "user-item",
                 top_n(member.users[queries], member.items, depth, exclude=exclude))


def dot_deviation(own: Member, member: Member, queries: np.ndarray,
                  index: np.ndarray) -> float:
    """Largest |member score - own score| over the pairs (query, index), relative to the
    largest |own score| there: 0 up to float error for every dot-equivalent member."""
    valid = index >= 0
    rows = np.repeat(queries, index.shape[1])[valid.ravel()]
    cols = index[valid]
    own_s = np.einsum("ij,ij->i", own.users[rows].astype(np.float64),
                      own.items[cols].astype(np.float64))
    mem_s = np.einsum("ij,ij->i", member.users[rows].astype(np.float64),
                      member.items[cols].astype(np.float64))
    scale = np.abs(own_s).max(initial=0.0)
    return float(np.abs(mem_s - own_s).max(initial=0.0) / scale) if scale > 0 else 0.0
