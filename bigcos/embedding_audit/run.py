"""``audit``: read the embeddings, build the family, compute every table, write the directory.

Where the work runs: the user embeddings' passes (Gram, CholeskyQR2, sampled rows, held-out
ranking) are Dask tasks over user shards (:mod:`bigcos.embedding_audit.shards`) and the
neighbour lists Dask tasks over query groups (:mod:`bigcos.embedding_audit.lists`), on
``client`` or, with None, on threads in this process; the results are the same either way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from bigcos import canonical, io, storage
from bigcos.dask_tasks import where_tasks_run
from bigcos.embedding_audit import family as fam
from bigcos.embedding_audit import inputs, page, shards, tables, verdicts
from bigcos.embedding_audit.lists import ListJob, blocking_for, compute_lists
from bigcos.errors import UserError
from bigcos.options import opt

HELDOUT_MEMBERS = (fam.OWN, "balanced", "item-orthonormal", "user-orthonormal")


@dataclass(frozen=True)
class AuditOptions:
    """Parameters of :func:`audit`; every one but ``block_rows`` and ``shard_rows`` can change
    the tables (those two change memory and speed only)."""

    depth: int = opt(10, "N of Jaccard@N and label precision@N.", minimum=1)
    item_queries: int = opt(2000, "Seeded sample of item queries, each ranked against all "
                                  "items (all items when fewer).", minimum=1)
    user_queries: int = opt(2000, "Seeded sample of users for the user-item lists, each "
                                  "ranked against all items.", minimum=1)
    random_members: int = opt(3, "Family members with seeded random log-uniform D.",
                              minimum=0)
    spread: float = opt(10.0, "Random D entries in [1/spread, spread].", minimum=1)
    heldout_k: int = opt(20, "K of held-out Recall@K and NDCG@K.", minimum=1)
    heldout_users: int = opt(100_000, "Seeded sample of test users for the held-out "
                                      "comparison (all when fewer).", minimum=1)
    n_resamples: int = opt(1000, "Bootstrap resamples of every interval.", minimum=1)
    level: float = 0.95
    stable_jaccard: float = 0.9  # "stable" when the interval of mean Jaccard lies above this
    auc_pairs: int = opt(100_000, "Random item pairs of the same-label AUC.", minimum=1)
    examples: tuple = ()  # item ids whose lists the page shows (default: most popular)
    labels: str | None = None  # item-table column of labels (default cluster, else genres)
    seed: int = 0
    block_rows: int = opt(1 << 16, "Item rows per block of the Grams and member products.",
                          minimum=1, speed_only=True)
    shard_rows: int = opt(shards.SHARD_ROWS, "Rows per user shard of a .npy (Parquet files "
                                             "keep their row groups).", minimum=1,
                          speed_only=True)

    def __post_init__(self):
        for name in ("depth", "item_queries", "user_queries", "heldout_k", "heldout_users",
                     "n_resamples", "auc_pairs", "block_rows", "shard_rows"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.random_members < 0 or self.spread < 1:
            raise UserError("random_members must be >= 0 and spread >= 1")
        if not 0 < self.level < 1:
            raise UserError(f"level: must be in (0, 1), got {self.level}")


@dataclass
class AuditResult:
    """The report directory, its tables by name, the warnings and what was not assessed."""

    out: Path
    tables: dict[str, pa.Table]
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _example_queries(opts: AuditOptions, item_ids: pa.Array, popularity) -> np.ndarray:
    if opts.examples:
        ids = [str(i) for i in item_ids.to_pylist()]
        where = {v: i for i, v in enumerate(ids)}
        missing = [str(e) for e in opts.examples if str(e) not in where]
        if missing:
            raise UserError(f"examples: item id {missing[0]} is not among the embedded items")
        return np.array([where[str(e)] for e in opts.examples], np.int64)
    if popularity is not None:
        return np.argsort(-popularity, kind="stable")[:3]
    return np.arange(min(3, len(item_ids)))


def audit(embeddings: str | os.PathLike, out: str | os.PathLike, *,
          users: str | os.PathLike | None = None, matrix: str | os.PathLike | None = None,
          items: str | os.PathLike | None = None, item_ids: str | os.PathLike | None = None,
          user_ids: str | os.PathLike | None = None, options: AuditOptions | None = None,
          overwrite: bool = False, client=None) -> AuditResult:
    """Audit the cosine similarity of a factor model's embeddings; write a report directory.

    Parameters
    ----------
    embeddings : item embeddings: Parquet (``item_id`` + ``embedding``), ``.npy`` (ids from
        ``item_ids`` or ``matrix``), an implicit ``.npz`` (holds users too) or a model directory.
    out : report directory to write atomically (tables listed in :mod:`bigcos.embedding_audit`).
    users : user embeddings (Parquet file or directory of files, ``user_id`` + ``embedding``,
        or ``.npy``); needed for the dot-equivalent family and the held-out comparison.
    matrix : matrix directory of ``bigcos ingest``: popularity, training items to exclude and,
        with a test split, the held-out comparison of cosine and dot.
    items : item table (``item_id``, ``title``/``name``, labels ``cluster`` or ``genres``);
        default: the table recorded by ``bigcos ingest --items``.
    item_ids, user_ids : Parquet/CSV id files for ``.npy`` embeddings.
    options : :class:`AuditOptions`.
    client : ``distributed.Client`` running the tasks (its workers must see ``out``'s file
        system), or None: Dask's threaded scheduler in this process. Same tables either way.

    Returns
    -------
    AuditResult. Memory here: the item embeddings (p x k float32), k x k factors, n-length
    user ids and masks, and (queries x depth) lists; the user embeddings stay in their shards
    (only the ``user_queries`` sampled rows come here). Disk: one (p x r) float32 file per
    member in a scratch directory inside ``out`` (removed at the end). Time is dominated by
    the top-N tasks, O((item_queries + user_queries) * p * r) per member, and the held-out
    tasks, O(heldout_users * p * r) per held-out member.
    """
    opts = options or AuditOptions()
    timings = io.Timings()
    if storage.as_path(out).exists() and not overwrite:
        raise UserError(f"{out}: output already exists (pass --overwrite to replace it)")
    data = None
    if matrix is not None:
        from bigcos.matrix import load_matrix

        data = load_matrix(matrix)
        if items is None:
            items = io.read_manifest(matrix).get("inputs", {}).get("items")
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp, _scratch(tmp) as scratch:
        with timings("read"):
            embeddings, users, item_ids, user_ids = (
                _local(path, scratch) for path in (embeddings, users, item_ids, user_ids))
            emb = inputs.read_embeddings(embeddings, users, item_ids=item_ids,
                                         user_ids=user_ids, matrix=data, scratch=scratch,
                                         shard_rows=opts.shard_rows)
        user_factor = None
        if emb.users is not None:
            with timings("user_factor"):  # two passes over the user shards (CholeskyQR2)
                user_gram = shards.scan(emb.users, client)
                emb.warnings += emb.users.warnings
                user_factor = shards.user_factor(emb.users, user_gram, client)
        with timings("read"):
            aligned = inputs.align(emb, data) if data is not None else None
            info = inputs.read_items(items, emb.item_ids, opts.labels)
        rng = np.random.default_rng(opts.seed)
        popularity = aligned.popularity if aligned is not None else None
        chosen_items = _example_queries(opts, emb.item_ids, popularity)
        item_q = np.union1d(fam.sample(len(emb.items), opts.item_queries, rng), chosen_items)
        skipped: dict[str, str] = {}
        user_q = None
        with timings("family"):
            family = None
            if emb.users is not None:
                user_q = fam.sample(len(emb.users), opts.user_queries, rng)
                sampled = shards.take(emb.users, user_q, client)
                family = fam.build_family(
                    emb.items, canonical.qr_factor(emb.items, opts.block_rows), user_factor,
                    sampled, emb.users.max_norm, opts.random_members, opts.spread, opts.seed,
                    opts.block_rows, scratch)
                members = family.members
            else:
                members = [fam.own_member(emb.items, opts.block_rows, scratch)]
                skipped["family, dimensions, members, heldout"] = "need user embeddings"
        with timings("lists"):
            p = len(emb.items)
            jobs = [ListJob(m.name, "item-item", m.items.take(item_q), m.items_file,
                            fam.self_pairs(item_q, p)) for m in members]
            if family is not None:
                train = aligned.train[user_q] if aligned is not None else None
                jobs += [ListJob(m.name, "user-item", m.users, m.items_file, train)
                         for m in members]
            lists = compute_lists(jobs, opts.depth, blocking_for(opts.depth), client)
        held_q = None
        per_member = None
        if family is not None and aligned is not None and aligned.test is not None:
            with timings("heldout"):
                test_users = np.flatnonzero(np.diff(aligned.test.indptr) > 0)
                held_q = test_users[fam.sample(len(test_users), opts.heldout_users,
                                               np.random.default_rng(opts.seed))]
                chosen = [m for m in members if m.name in HELDOUT_MEMBERS]
                per_member = shards.heldout(
                    emb.users, held_q, {m.name: (m.user_map, m.user_floor) for m in chosen},
                    {m.name: m.items_file for m in chosen}, aligned.train, aligned.test,
                    opts.heldout_k, client)
        elif family is not None:
            skipped["heldout"] = "needs a matrix directory with a test split"
        rows: dict[str, list[dict]] = {}
        with timings("tables"):
            rows["agreement"] = tables.agreement(lists, members, opts)
            if family is not None:
                rows["dimensions"] = tables.dimensions(family)
                rows["members"] = tables.member_scalings(family)
            if popularity is not None:
                rows["popularity"] = tables.popularity(lists, members, item_q, popularity, opts)
            else:
                skipped["popularity"] = "needs a matrix directory (matrix)"
            if info.labels is not None:
                rows["labels"] = tables.labels(lists, members, item_q, info.labels,
                                               info.label_column, opts)
            else:
                skipped["labels"] = "needs an item table with labels (cluster or genres)"
            verdict_rows = verdicts.family_verdicts(rows["agreement"], family, emb.source,
                                                    emb.params, opts)
            if per_member is not None:
                rows["heldout"] = tables.heldout(per_member, opts)
                verdict_rows += verdicts.heldout_verdicts(per_member[fam.OWN], opts)
            rows["verdicts"] = verdict_rows
            position = {int(q): i for i, q in enumerate(item_q)}
            rows["examples"] = tables.examples(lists, item_q,
                                               np.array([position[int(c)] for c in chosen_items]),
                                               emb.item_ids.to_pylist(), info.titles)
        result = {name: pa.Table.from_pylist(r) for name, r in rows.items() if r}
        params = asdict(opts) | {"examples": [str(e) for e in opts.examples]}
        counts = {"items": len(emb.items), "dimensions": emb.items.shape[1],
                  "users": 0 if emb.users is None else len(emb.users),
                  "user_shards": 0 if emb.users is None else len(emb.users.shards),
                  "item_queries": len(item_q), "user_queries": 0 if user_q is None else len(user_q),
                  "heldout_users": 0 if held_q is None else len(held_q),
                  "canonical_rank": family.canon.rank if family else None}
        for name, table in result.items():
            io.write_table(tmp / f"{name}.parquet", table)
        (tmp / "report.html").write_text(_page(result, emb, counts, skipped))
        io.write_manifest(tmp, "audit", params, timings=timings,
                          inputs={"embeddings": str(embeddings), "users": users,
                                  "matrix": matrix, "items": items, "source": emb.source,
                                  "model_params": emb.params},
                          counts=counts, warnings=emb.warnings, skipped=skipped,
                          tables=sorted(result), scheduler=where_tasks_run(client))
    return AuditResult(storage.as_path(out), result, emb.warnings, skipped)


@contextlib.contextmanager
def _scratch(tmp) -> Iterator[Path]:
    """The members' memory-mapped files: a hidden directory inside the output's temporary
    (its workers see it), or for an output in an object store a local temporary directory
    (memory maps need a local file; such an audit runs on this host's workers). Removed at
    the end either way."""
    if isinstance(tmp, storage.StorePath):
        with tempfile.TemporaryDirectory(prefix="bigcos-audit-") as local:
            yield Path(local)
        return
    scratch = tmp / ".scratch"
    scratch.mkdir()
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _local(path, scratch: Path):
    """``path`` itself, or for a store URL its copy in ``scratch`` (a file, or a directory of
    Parquet row groups), read once here."""
    if path is None or not storage.is_url(str(path)):
        return path
    source = storage.as_path(str(path))
    target = scratch / "inputs" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        target.mkdir()
        for f in source.files():
            (target / f.name).write_bytes(f.read_bytes())
    else:
        target.write_bytes(source.read_bytes())
    return str(target)


_SECTIONS = (
    ("verdicts", "Verdicts", "One row per question. Cosine is trustworthy on these embeddings "
     "only if its lists are stable across the dot-equivalent family (all members score every "
     "user-item pair exactly as the model does)."),
    ("agreement", "Agreement across the family", "Jaccard@N of each member's lists with the "
     "model's own (member_b = own) or with the balanced member, with bootstrap intervals over "
     "queries. User-item dot lists must agree (same scores); cosine lists move with D."),
    ("dimensions", "Where the model sits", "Per canonical dimension: singular value s, the "
     "model's item and user factor norms relative to the balanced member (1 = balanced), and the "
     "D of the member its item embeddings match."),
    ("heldout", "Held-out ranking", "Recall and NDCG of test users ranking all items minus "
     "their training items, by cosine and by dot, with bootstrap intervals over users."),
    ("popularity", "Popularity", "Spearman correlation of item-embedding norm with popularity, "
     "and how much more popular (log10) item-item neighbours are than their query."),
    ("labels", "Labels", "Label precision@N of item-item lists and the same-label AUC of "
     "random item pairs, per member and metric."),
    ("examples", "Example lists", "Nearest items of example queries under the model's own "
     "embeddings and two members, by cosine and dot."),
    ("members", "Members", "The diagonal D of every member, per canonical dimension."),
)


def _page(result: dict[str, pa.Table], emb, counts: dict, skipped: dict[str, str]) -> str:
    intro = (f"{counts['items']:,} items, {counts['users']:,} users, {counts['dimensions']} "
             f"dimensions ({emb.source}); canonical rank {counts['canonical_rank']}.")
    sections = [(title, text, result[name]) for name, title, text in _SECTIONS if name in result]
    return page.render("bigcos audit: is cosine similarity of these embeddings about "
                       "similarity?", intro, emb.warnings, skipped, sections)
