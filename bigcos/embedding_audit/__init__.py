"""Audit your own embeddings: is their cosine similarity about similarity, or about a choice
training never made? (``bigcos audit``, ``bigcos.audit``; MATH.md, "Any factor model: the
dot-equivalent family".)

The audit builds the model's dot-equivalent family (:mod:`bigcos.canonical`): embeddings with
exactly the same user-item dot scores but other rescalings D, and measures how far cosine
neighbour lists move across it, where the model's own factors sit in it, what its training
objective pins, and (with a matrix and item table) popularity, label and held-out evidence.

Report directory (written atomically; a table is absent when its input is missing, and
``manifest.json`` says why under ``skipped``; its ``warnings`` count dropped or unmatched rows)::

    verdicts.parquet    question string, kind string ("item-item" / "user-item"), estimate,
                        lo, hi float64 (interval; NaN where none), verdict string, detail string
    agreement.parquet   kind, member_a, metric_a, member_b, metric_b string, depth int64,
                        n_queries int64, jaccard, jaccard_lo, jaccard_hi float64 (mean Jaccard@N
                        over queries, bootstrap interval), max_rel_score_diff float64 (user-item
                        dot only: largest |member score - own score| / max |own score|)
    dimensions.parquet  dimension int64, s float64 (canonical singular value), item_norm_ratio,
                        user_norm_ratio float64 (model's factor norm / balanced member's, per
                        canonical dimension), fitted_d float64 (D of the member matching the
                        model's item embeddings)
    members.parquet     member string, dimension int64, d float64
    heldout.parquet     member, metric, measure string (recall_at_K, ndcg_at_K), n_users int64,
                        mean, lo, hi float64
    popularity.parquet  member, metric string, norm_popularity_spearman float64, n_queries
                        int64, log_pop_ratio, log_pop_ratio_lo, log_pop_ratio_hi float64
    labels.parquet      member, metric, label_column string, depth, n_queries int64, precision,
                        precision_lo, precision_hi, same_label_auc float64, n_auc_pairs,
                        n_items int64
    examples.parquet    query_id, query_title, member, metric string, rank int64, item_id,
                        title string, score float64
    report.html         the page: verdicts, warnings, then every table
    manifest.json       parameters, inputs, counts, warnings, skipped, versions, timings

At scale (:mod:`~bigcos.embedding_audit.shards`, :mod:`~bigcos.embedding_audit.lists`): the
user embeddings stay in their shards (Parquet row groups or ``.npy`` row ranges) and are reduced
on Dask workers (Grams for CholeskyQR2, a seeded sample of rows, the held-out ranking of a seeded
sample of test users); lists rank a seeded sample of queries against every item, one Dask task
per query group, with the blocks of ``bigcos neighbors``. ``manifest.json`` counts the shards,
queries and held-out users; ``scheduler`` says where it ran.

Members: ``own`` (the model's embeddings as given), ``balanced`` (D = I),
``item-orthonormal`` (D = S^1/2), ``user-orthonormal`` (D = S^-1/2), ``fitted`` (D matching the
model's item factors) and ``random-1`` ... (seeded log-uniform D). Intervals are percentile
bootstrap intervals (:mod:`bigcos.stats`): over queries for agreement, labels and popularity,
paired over test users for the cosine-vs-dot verdicts.
"""

from bigcos.embedding_audit.run import AuditOptions, AuditResult, audit

__all__ = ["audit", "AuditOptions", "AuditResult"]
