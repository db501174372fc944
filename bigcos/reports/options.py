"""The report's parameters."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from bigcos.errors import UserError


@dataclass(frozen=True)
class Options:
    """Report parameters: each changes numbers in the report.

    Attributes
    ----------
    depth : int
        N of Jaccard@N, RBO and label precision@N; neighbour lists are cut there.
    rbo_p : float
        Persistence p of rank-biased overlap, in (0, 1).
    n_bins : int
        Popularity bins of the popularity-matched random baseline.
    auc_pairs : int
        Random item pairs drawn for the within- vs between-label AUC.
    seed : int
        Seed of the random baseline, the AUC pairs, the items of the heatmaps and the
        bootstrap resamples.
    max_queries : int
        Agreement and D-sensitivity compare every two configurations on one seeded sample of
        at most this many queries per kind (all queries when there are fewer); their
        intervals resample these queries, so they account for the sample.
    max_heldout_users : int
        Held-out evaluation and its paired comparisons rank one seeded uniform sample without
        replacement of at most this many test users (all when there are fewer), the same for
        every configuration; their intervals resample these users, so they account for the
        sample. Cost: O(users x items x k) per configuration.
    n_resamples : int
        Percentile bootstrap resamples of every interval (users for held-out figures and
        comparisons, queries for agreement figures).
    level : float
        Coverage of every interval, in (0, 1); comparisons' verdicts test at 1 - level.
    examples : tuple of str
        Item ids (as text) whose neighbour lists the page shows; default: the most popular.
    n_examples : int
        How many popular items to show when ``examples`` is empty.
    label_col : str or None
        Item column holding ground-truth labels; default ``cluster``, else ``genres``, else
        ``tags``. An integer or string column gives one label per item, a list column a set.
    title_col : str or None
        Item column with display names; default ``title``, else ``name``, else the item id.
    dataset : str or None
        Name of the data set, written in every table's ``dataset`` column and on the page;
        default: the name of the matrix directory's parent.
    job : str or None
        Name of the job that made the report (``bigcos run``), shown on the page.
    labels : str or None
        Deprecated alias of ``label_col`` (removed in the next version).
    """

    depth: int = 10
    rbo_p: float = 0.9
    n_bins: int = 10
    auc_pairs: int = 200_000
    seed: int = 0
    max_queries: int = 5000
    max_heldout_users: int = 100_000
    n_resamples: int = 1000
    level: float = 0.95
    examples: tuple[str, ...] = ()
    n_examples: int = 4
    label_col: str | None = None
    title_col: str | None = None
    dataset: str | None = None
    job: str | None = None
    labels: str | None = None

    def __post_init__(self):
        if self.labels is not None:
            if self.label_col is not None and self.label_col != self.labels:
                raise UserError(f"report labels '{self.labels}' and label_col "
                                f"'{self.label_col}' disagree (labels is the old name of "
                                f"label_col)")
            warnings.warn("report option 'labels' is deprecated: use 'label_col'",
                          DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "label_col", self.labels)
            object.__setattr__(self, "labels", None)
        for name in ("depth", "n_bins", "auc_pairs", "n_examples", "n_resamples",
                     "max_queries", "max_heldout_users"):
            if getattr(self, name) < 1:
                raise UserError(f"report {name}: must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.rbo_p < 1.0:
            raise UserError(f"report rbo_p: must be in (0, 1), got {self.rbo_p}")
        if not 0.0 < self.level < 1.0:
            raise UserError(f"report level: must be in (0, 1), got {self.level}")
        object.__setattr__(self, "examples", tuple(str(e) for e in self.examples))
