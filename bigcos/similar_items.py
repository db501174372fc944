"""The nearest items of one item, or the top items of one user, with titles, in this process.

One query against all items needs one GEMV-sized product, so :func:`similar` calls the top-N
kernel (:mod:`bigcos.topn`) directly: no Dask, no task graph, no output directory. It is what
``bigcos similar`` prints and what a notebook calls to look at one list.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bigcos import io, storage
from bigcos.errors import UserError
from bigcos.topn import METRICS, decode_keys, inverse_norms, query_block_topn

TITLE_COLUMNS = ("title", "name")  # tried in this order when title_col is None
CANDIDATE_BLOCK = 4096


def similar(model_dir_or_model, *, item: str | None = None, item_id=None, user_id=None,
            n: int = 10, metrics: Sequence[str] = METRICS,
            items: str | os.PathLike | None = None, title_col: str | None = None,
            include_train: bool = False) -> pa.Table:
    """Exact top-``n`` items of one query, by cosine and/or dot product, with titles.

    Give exactly one query: ``item`` (a title in the items table), ``item_id`` (the query
    item itself is excluded: item-item) or ``user_id`` (the user's embedding against the item
    embeddings, the user's training items excluded unless ``include_train``: user-item).
    Order and tie rule are those of :func:`bigcos.neighbor_lists.top_n` and ``bigcos
    neighbors``: score descending, then the smaller item index.

    Parameters
    ----------
    model_dir_or_model : str, os.PathLike or bigcos.models.Model
        A model directory written by ``bigcos fit``, or a model loaded by
        :func:`bigcos.load_model`, with item embeddings B (p, k) and user embeddings
        XA (n_users, k).
    item : str, optional
        Title of the query item, matched exactly, else case-insensitively; the first item
        (in matrix order) of that title when several share it. Needs a title column.
    item_id, user_id : int or str, optional
        Original id of the query item or user (text is converted to an integer id when the
        model's ids are integers).
    n : int
        Neighbours per metric; fewer rows when fewer items are eligible (p - 1 for an item,
        p minus the training items for a user).
    metrics : sequence of {"cos", "dot"}
        Both come from the same products.
    items : str or os.PathLike, optional
        Item metadata Parquet with an ``item_id`` column and, optionally, a title column.
        Default: the table recorded by ``bigcos ingest --items`` for the model's matrix; with
        none, titles are the ids.
    title_col : str, optional
        Column of ``items`` holding titles. Default: ``title``, else ``name``, else none
        (the ``title`` column of the result then holds the ids as text).
    include_train : bool
        ``user_id`` only: keep the user's training items among the candidates.

    Returns
    -------
    pyarrow.Table
        At most ``len(metrics) * n`` rows, one list per metric, best first, with columns
        ``metric`` (string), ``rank`` (int32, 1 = best), ``item_id`` (original ids),
        ``title`` (string: the title, or the id as text where there is none) and ``score``
        (float32). Schema metadata ``model`` (model name) and ``query`` (e.g.
        ``item Toy Story (1995) [1]``) describe the query.

    Raises
    ------
    UserError
        Naming the parameter: not exactly one query, an unknown id or title, a missing
        title column (with the table's columns), an unknown metric, n < 1.

    Notes
    -----
    Cost: one (1, k) x (k, p) product per metric pass over candidate tiles of
    ``CANDIDATE_BLOCK`` items, O(p k) time and O(CANDIDATE_BLOCK + n) working memory, plus
    reading the model (its embeddings, (n_users + p) * k * 4 bytes) and two columns of the
    items table. ``user_id`` without ``include_train`` also reads the training matrix.
    """
    from bigcos.blocked_topn import check_metrics
    from bigcos.models import Model, load_model

    if sum(x is not None for x in (item, item_id, user_id)) != 1:
        raise UserError("similar: give exactly one of item, item_id, user_id")
    if n < 1:
        raise UserError(f"n: must be at least 1, got {n}")
    metrics = check_metrics(metrics)
    model = model_dir_or_model if isinstance(model_dir_or_model, Model) else \
        load_model(model_dir_or_model)
    titles = ItemTitles.open(model, items, title_col)
    candidates = np.ascontiguousarray(model.item_embeddings, dtype=np.float32)
    exclude = self_offset = None
    if user_id is not None:
        row = _find_id(model.user_ids, user_id, "user_id")
        query = model.user_embeddings[row:row + 1]
        heading = f"user {user_id}"
        if not include_train:
            from bigcos.neighbor_lists import training_items

            exclude = training_items(model)[row:row + 1]
    else:
        row = (titles.find(item, model.item_ids) if item is not None
               else _find_id(model.item_ids, item_id, "item_id"))
        query = model.item_embeddings[row:row + 1]
        heading = f"item {titles.labels(model.item_ids.take([row]))[0]}"
        self_offset = row
    query = np.ascontiguousarray(query, dtype=np.float32)
    keys = query_block_topn(query, inverse_norms(query), candidates, inverse_norms(candidates),
                            n, metrics, candidate_block=CANDIDATE_BLOCK,
                            self_offset=self_offset, exclude=exclude)
    parts = []
    for metric in metrics:
        scores, index = decode_keys(keys[metric][0])
        valid = scores > -np.inf  # a prefix: padding and excluded pairs sort last
        ids = model.item_ids.take(pa.array(index[valid]))
        parts.append(pa.table({
            "metric": pa.array([metric] * int(valid.sum()), pa.string()),
            "rank": pa.array(np.arange(1, valid.sum() + 1, dtype=np.int32)),
            "item_id": ids,
            "title": pa.array(titles.labels(ids), pa.string()),
            "score": pa.array(scores[valid]),
        }))
    table = pa.concat_tables(parts)
    return table.replace_schema_metadata({"model": model.name, "query": heading})


class ItemTitles:
    """Titles of item ids from an item metadata table (or none: ids stand for themselves)."""

    def __init__(self, where: str, ids: pa.Array | None = None, titles: pa.Array | None = None,
                 columns: Sequence[str] = ()):
        self.where, self.ids, self.titles, self.columns = where, ids, titles, list(columns)

    @classmethod
    def open(cls, model, items: str | os.PathLike | None, title_col: str | None) -> ItemTitles:
        """Read ``item_id`` and the title column of an item metadata table.

        Parameters
        ----------
        model : bigcos.models.Model
            Its matrix manifest names the default table (``bigcos ingest --items``).
        items : str or os.PathLike, optional
            Parquet table with ``item_id``; None = the recorded one, or no titles.
        title_col : str, optional
            None = ``title``, else ``name``, else no titles.

        Returns
        -------
        ItemTitles
            Two columns of (m,) rows held in memory (m = rows of the table), or none.
        """
        if items is None and model.matrix_dir is not None:
            try:
                items = io.read_manifest(model.matrix_dir).get("inputs", {}).get("items")
            except UserError:
                items = None
        if items is None:
            if title_col is not None:
                raise UserError(f"title_col: model '{model.name}' has no items table recorded "
                                "with its matrix; give items")
            return cls(f"model '{model.name}' (no items table)")
        try:
            fs, where = storage.filesystem_and_path(items)
            columns = pq.read_schema(where, filesystem=fs).names
        except FileNotFoundError:
            raise UserError(f"{items}: no such file") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{items}: cannot be read as Parquet ({exc})") from None
        listed = ", ".join(columns)
        if "item_id" not in columns:
            raise UserError(f"{items}: column 'item_id' not found (columns: {listed})")
        if title_col is not None and title_col not in columns:
            raise UserError(f"title_col: no column '{title_col}' in {items} "
                            f"(columns: {listed})")
        if title_col is None:
            title_col = next((c for c in TITLE_COLUMNS if c in columns), None)
        if title_col is None:
            return cls(str(items), columns=columns)
        table = io.read_table(items, columns=["item_id", title_col])
        return cls(str(items), table.column("item_id").combine_chunks(),
                   table.column(title_col).combine_chunks().cast(pa.string()), columns)

    def labels(self, item_ids: pa.Array) -> list[str]:
        """Labels of ``item_ids`` (shape (r,)): ``title  [id]`` where the id has a title,
        else the id as text; a list of r strings."""
        ids = item_ids.to_pylist()
        if self.titles is None:
            return [str(i) for i in ids]
        found = pc.index_in(item_ids.cast(self.ids.type), value_set=self.ids).to_pylist()
        titles = [None if f is None else self.titles[f].as_py() for f in found]
        return [str(i) if t is None else f"{t}  [{i}]" for i, t in zip(ids, titles, strict=True)]

    def find(self, title: str, item_ids: pa.Array) -> int:
        """Row (in ``item_ids``, shape (p,), the model's items) of the first item titled
        ``title``: exact match, else case-insensitive. UserError naming ``item`` otherwise,
        with close titles."""
        if self.titles is None:
            raise UserError(f"item: {self.where} has no title column "
                            f"({' or '.join(TITLE_COLUMNS)})"
                            + (f"; its columns: {', '.join(self.columns)}" if self.columns
                               else "") + "; give item_id, or title_col")
        hits = pc.equal(self.titles, title)
        if not pc.any(hits).as_py():
            hits = pc.equal(pc.utf8_lower(self.titles), title.lower())
        matches = self.ids.filter(pc.fill_null(hits, False))
        if not len(matches):
            known = pc.unique(self.titles.drop_null()).to_pylist()
            close = difflib.get_close_matches(title, known, n=5, cutoff=0.5)
            close += [t for t in known if title.casefold() in t.casefold() and t not in close]
            hint = f" (close: {'; '.join(close[:5])})" if close else ""
            raise UserError(f"item: no title '{title}' in {self.where}{hint}")
        found = np.flatnonzero(pc.is_in(item_ids, value_set=matches.cast(item_ids.type))
                               .to_numpy(zero_copy_only=False))
        if not len(found):
            raise UserError(f"item: '{title}' (id {matches[0].as_py()}) is not an item of "
                            "this model")
        return int(found[0])


def _find_id(ids: pa.Array, value, parameter: str) -> int:
    """Row of ``value`` among ``ids`` (text converted to the ids' integer type)."""
    if pa.types.is_integer(ids.type):
        try:
            value = int(value)
        except ValueError:
            raise UserError(f"{parameter}: '{value}' is not an integer id") from None
    else:
        value = str(value)
    row = pc.index(ids, pa.scalar(value, ids.type)).as_py()
    if row < 0:
        raise UserError(f"{parameter}: no id '{value}' in this model")
    return row
