"""The model's dot-equivalent family (bigcos.canonical) and how neighbour lists move across it.

Members are embeddings with exactly the model's user-item dot scores: the named ones
(balanced, item-orthonormal, user-orthonormal), ``fitted`` (the member whose D best matches the
model's own item factors; the model itself when it is a member) and seeded random log-uniform D.
Lists: item-item (sampled item queries against all items, the query excluded) and user-item
(sampled users against all items, their training items excluded when a matrix is given), each
by cosine and dot, top ``depth``, computed on Dask by :mod:`bigcos.embedding_audit.lists`.
Members' item embeddings live in ``.npy`` files of a scratch directory (memory-mapped by the
workers); only the sampled users' rows of each member are held here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bigcos import canonical
from bigcos.embedding_audit.shards import TINY_NORM, NpyRows, row_norms
from bigcos.topn import inverse_norms

OWN = "own"


@dataclass
class Member:
    """One set of embeddings: the model's own (``d`` None) or a family member with diagonal d.

    items (p, r): ``items_file`` (float32 ``.npy``, with its inverse norms in
    ``<items_file>.inv.npy``), read by rows here and memory-mapped by the workers' tasks.
    users (m, r): the sampled users' rows only (None without user embeddings).
    user_map (k, r): a user's own row times it is the member's row (None for the model's
    own), rows whose norm falls below ``user_floor`` set to zero.
    """

    name: str
    items: NpyRows
    users: np.ndarray | None
    items_file: str
    d: np.ndarray | None = None
    user_map: np.ndarray | None = None
    user_floor: float = 0.0


@dataclass
class Family:
    """The canonical form, where the model sits in it, and the members (own first)."""

    canon: canonical.Canonical
    place: canonical.Placement
    members: list[Member]


def project(x: np.ndarray, linear_map: np.ndarray, floor: float) -> np.ndarray:
    """``x @ linear_map`` in float64, stored float32; rows with norm below ``floor`` set to 0."""
    out = (np.asarray(x, np.float64) @ linear_map).astype(np.float32)
    out[np.linalg.norm(out, axis=1) < floor] = 0.0
    return out


def floor(max_norm: float, linear_map: np.ndarray | None) -> float:
    """Zero-norm threshold of projected rows: TINY_NORM times a bound of their largest norm
    (the largest input norm times the map's spectral norm), as the inputs' own rows."""
    scale = 1.0 if linear_map is None else float(np.linalg.norm(linear_map, 2))
    return TINY_NORM * max_norm * scale


def write_items(path: Path, items: np.ndarray, linear_map: np.ndarray | None, floor_: float,
                block_rows: int) -> np.ndarray:
    """Write ``project(items, linear_map)`` (or items) and its inverse norms as ``.npy`` files
    block by block (plain writes, so the pages are not mapped here); return its reader.
    Memory: one block."""
    width = items.shape[1] if linear_map is None else linear_map.shape[1]
    with open(path, "wb") as out, open(f"{path}.inv.npy", "wb") as inv:
        for fh, shape in ((out, (len(items), width)), (inv, (len(items),))):
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.dtype(np.float32).str, "fortran_order": False, "shape": shape})
        for start in range(0, len(items), block_rows):
            block = np.asarray(items[start:start + block_rows], np.float32)
            if linear_map is not None:
                block = project(block, linear_map, floor_)
            out.write(np.ascontiguousarray(block).tobytes())
            inv.write(inverse_norms(block).tobytes())
    return NpyRows(path)


def build_family(items: np.ndarray, item_factor, user_factor, sampled_users: np.ndarray,
                 max_user_norm: float, n_random: int, spread: float, seed: int,
                 block_rows: int, scratch: Path) -> Family:
    """The canonical form from the thin-QR factors (R, R^+) of the items and the users
    (:func:`bigcos.canonical.qr_factor`, :func:`bigcos.embedding_audit.shards.user_factor`),
    and every member: its item embeddings written to ``scratch``, its rows of the sampled
    users (m x k) projected here.

    Memory: one block of items; disk: one (p x r) float32 file per member.
    """
    canon = canonical.canonical_from_factors(user_factor, item_factor)
    place = canonical.placement(canon)
    scalings = canonical.named_scalings(canon.s)
    scalings["fitted"] = place.fitted_d
    scalings |= canonical.random_scalings(canon.rank, n_random, seed, spread)
    max_item_norm = float(np.max(row_norms(items, block_rows), initial=0.0))
    own_file = scratch / f"{OWN}.npy"
    members = [Member(OWN, write_items(own_file, items, None, 0.0, block_rows),
                      sampled_users, str(own_file))]
    for i, (name, d) in enumerate(scalings.items()):
        user_map, item_map = canonical.member_maps(canon, d)
        path = scratch / f"member-{i}.npy"
        user_floor = floor(max_user_norm, user_map)
        members.append(Member(
            name, write_items(path, items, item_map, floor(max_item_norm, item_map), block_rows),
            None if sampled_users is None else project(sampled_users, user_map, user_floor),
            str(path), d, user_map, user_floor))
    return Family(canon, place, members)


def own_member(items: np.ndarray, block_rows: int, scratch: Path) -> Member:
    """The model's own item embeddings alone (no user embeddings: no family)."""
    path = scratch / f"{OWN}.npy"
    return Member(OWN, write_items(path, items, None, 0.0, block_rows), None, str(path))


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


def dot_deviation(own: Member, member: Member, index: np.ndarray) -> float:
    """Largest |member score - own score| over the pairs (sampled user i, item index[i, j]),
    relative to the largest |own score| there: 0 up to float error for every dot-equivalent
    member. ``index`` (m, N) rows follow the sampled users (``Member.users``)."""
    valid = index >= 0
    rows = np.repeat(np.arange(len(index)), index.shape[1])[valid.ravel()]
    cols = index[valid]
    own_s = np.einsum("ij,ij->i", own.users[rows].astype(np.float64),
                      own.items.take(cols).astype(np.float64))
    mem_s = np.einsum("ij,ij->i", member.users[rows].astype(np.float64),
                      member.items.take(cols).astype(np.float64))
    scale = np.abs(own_s).max(initial=0.0)
    return float(np.abs(mem_s - own_s).max(initial=0.0) / scale) if scale > 0 else 0.0
