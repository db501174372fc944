"""``audit``: read the embeddings, build the family, compute every table, write the directory."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from bigcos import io
from bigcos.embedding_audit import family as fam
from bigcos.embedding_audit import inputs, page, tables, verdicts
from bigcos.errors import UserError


@dataclass(frozen=True)
class AuditOptions:
    """Parameters of :func:`audit`; every one can change the tables."""

    depth: int = 10  # N of Jaccard@N and label precision@N
    item_queries: int = 2000  # sampled item queries (all items when fewer)
    user_queries: int = 2000  # sampled users for user-item agreement
    random_members: int = 3  # members with seeded random log-uniform D
    spread: float = 10.0  # random D entries in [1/spread, spread]
    heldout_k: int = 20  # Recall@k and NDCG@k
    n_resamples: int = 1000
    level: float = 0.95
    stable_jaccard: float = 0.9  # "stable" when the interval of mean Jaccard lies above this
    auc_pairs: int = 100_000
    examples: tuple = ()  # item ids whose lists the page shows (default: most popular)
    labels: str | None = None  # item-table column of labels (default cluster, else genres)
    seed: int = 0
    block_rows: int = 1 << 16  # rows per block of the Grams and member products

    def __post_init__(self):
        for name in ("depth", "item_queries", "user_queries", "heldout_k", "n_resamples",
                     "auc_pairs", "block_rows"):
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
          overwrite: bool = False) -> AuditResult:
    """Audit the cosine similarity of a factor model's embeddings; write a report directory.

    Parameters
    ----------
    embeddings : item embeddings: Parquet (``item_id`` + ``embedding``), ``.npy`` (ids from
        ``item_ids`` or ``matrix``), an implicit ``.npz`` (holds users too) or a model directory.
    out : report directory to write atomically (tables listed in :mod:`bigcos.embedding_audit`).
    users : user embeddings (Parquet ``user_id`` + ``embedding`` or ``.npy``); needed for the
        dot-equivalent family and the held-out comparison.
    matrix : matrix directory of ``bigcos ingest``: popularity, training items to exclude and,
        with a test split, the held-out comparison of cosine and dot.
    items : item table (``item_id``, ``title``/``name``, labels ``cluster`` or ``genres``);
        default: the table recorded by ``bigcos ingest --items``.
    item_ids, user_ids : Parquet/CSV id files for ``.npy`` embeddings.
    options : :class:`AuditOptions`.

    Returns
    -------
    AuditResult. Memory: the embeddings plus one (p x r) and (n x r) float32 copy per member
    (3 named + fitted + random_members) and (queries x depth) lists; time is dominated by the
    top-N passes, O((item_queries + user_queries) * p * r) per member.
    """
    opts = options or AuditOptions()
    timings = io.Timings()
    if Path(out).exists() and not overwrite:
        raise UserError(f"{out}: output already exists (pass --overwrite to replace it)")
    data = None
    if matrix is not None:
        from bigcos.matrix import load_matrix

        data = load_matrix(matrix)
        if items is None:
            items = io.read_manifest(matrix).get("inputs", {}).get("items")
    with timings("read"):
        emb = inputs.read_embeddings(embeddings, users, item_ids=item_ids, user_ids=user_ids,
                                     matrix=data)
        aligned = inputs.align(emb, data) if data is not None else None
        info = inputs.read_items(items, emb.item_ids, opts.labels)
    rng = np.random.default_rng(opts.seed)
    popularity = aligned.popularity if aligned is not None else None
    chosen_items = _example_queries(opts, emb.item_ids, popularity)
    item_q = np.union1d(fam.sample(len(emb.items), opts.item_queries, rng), chosen_items)
    skipped: dict[str, str] = {}
    with timings("family"):
        family = None
        members = [fam.Member(fam.OWN, emb.items, emb.users)]
        if emb.users is not None:
            family = fam.build_family(emb.items, emb.users, opts.random_members, opts.spread,
                                      opts.seed, opts.block_rows)
            members = family.members
        else:
            skipped["family, dimensions, members, heldout"] = "need user embeddings"
    with timings("lists"):
        lists = {}
        user_q = None
        for m in members:
            lists[(m.name, "item-item")] = fam.item_lists(m, item_q, opts.depth)
        if family is not None:
            user_q = fam.sample(len(emb.users), opts.user_queries, rng)
            train = aligned.train if aligned is not None else None
            for m in members:
                lists[(m.name, "user-item")] = fam.user_lists(m, user_q, opts.depth, train)
    rows: dict[str, list[dict]] = {}
    with timings("tables"):
        rows["agreement"] = tables.agreement(lists, members, user_q, opts)
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
        if family is not None and aligned is not None and aligned.test is not None:
            per_member = {}
            for m in members:
                if m.name in (fam.OWN, "balanced", "item-orthonormal", "user-orthonormal"):
                    _, per_member[m.name] = tables.heldout_per_user(m, aligned.train,
                                                                    aligned.test, opts.heldout_k)
            rows["heldout"] = tables.heldout(per_member, opts)
            verdict_rows += verdicts.heldout_verdicts(per_member[fam.OWN], opts)
        elif family is not None:
            skipped["heldout"] = "needs a matrix directory with a test split"
        rows["verdicts"] = verdict_rows
        position = {int(q): i for i, q in enumerate(item_q)}
        rows["examples"] = tables.examples(lists, item_q,
                                           np.array([position[int(c)] for c in chosen_items]),
                                           emb.item_ids.to_pylist(), info.titles)
    result = {name: pa.Table.from_pylist(r) for name, r in rows.items() if r}
    params = asdict(opts) | {"examples": [str(e) for e in opts.examples]}
    counts = {"items": len(emb.items), "dimensions": emb.items.shape[1],
              "users": 0 if emb.users is None else len(emb.users),
              "item_queries": len(item_q), "user_queries": 0 if user_q is None else len(user_q),
              "canonical_rank": family.canon.rank if family else None}
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        for name, table in result.items():
            io.write_table(tmp / f"{name}.parquet", table)
        (tmp / "report.html").write_text(_page(result, emb, counts, skipped))
        io.write_manifest(tmp, "audit", params, timings=timings,
                          inputs={"embeddings": str(embeddings), "users": users,
                                  "matrix": matrix, "items": items, "source": emb.source,
                                  "model_params": emb.params},
                          counts=counts, warnings=emb.warnings, skipped=skipped,
                          tables=sorted(result))
    return AuditResult(Path(out), result, emb.warnings, skipped)


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
