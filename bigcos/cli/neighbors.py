"""``bigcos neighbors`` (every list, to Parquet) and ``bigcos similar`` (one entity, on screen)."""

from __future__ import annotations

import difflib

import click
import numpy as np
import pyarrow as pa

from bigcos.cli.common import dask_options, overwrite_option
from bigcos.errors import UserError


def _split(ctx, param, value):
    items = [v.strip() for chunk in value for v in chunk.split(",") if v.strip()]
    if not items:
        raise click.BadParameter("give at least one value")
    return tuple(dict.fromkeys(items))


def _bytes(ctx, param, value):
    if value is None:
        return None
    from dask.utils import parse_bytes

    try:
        return parse_bytes(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a size like 4GiB or 500MB") from None


@click.command()
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Neighbour dataset directory to write (created atomically).")
@click.option("--kind", "kinds", multiple=True, default=("item-item",), callback=_split,
              show_default=True,
              help="item-item, user-user and/or user-item (comma-separated or repeated).")
@click.option("--metric", "metrics", multiple=True, default=("cos,dot",), callback=_split,
              show_default=True, help="cos and/or dot; both come from the same products.")
@click.option("-N", "n", type=click.IntRange(min=1), default=100, show_default=True,
              help="Neighbours per query.")
@click.option("--include-train", is_flag=True,
              help="user-item: keep the user's training items (excluded by default).")
@click.option("--memory-budget", callback=_bytes, default=None,
              help="Working memory per worker thread, e.g. 1GiB; sizes the blocks "
                   "(default 2GiB). Changes speed and memory, never results.")
@click.option("--query-block", type=click.IntRange(min=1), default=None,
              help="Queries per tile (overrides --memory-budget).")
@click.option("--candidate-block", type=click.IntRange(min=1), default=None,
              help="Candidates per tile (overrides --memory-budget).")
@overwrite_option
@dask_options
def neighbors(model_dirs, out, kinds, metrics, n, include_train, memory_budget, query_block,
              candidate_block, overwrite, cluster):
    """Exact top-N neighbours of every item and/or user of each MODEL_DIR, by cosine and by
    dot product, written as one Parquet dataset partitioned by kind, model and metric
    (columns query_id, rank, neighbor_id, score; ties go to the smaller index).

    Tiles run as Dask tasks: on threads in this process for small models, else (or with
    --workers) on a LocalCluster (one process per core, one BLAS thread each), or on
    --scheduler; workers write their partitions into OUT directly.

    Read it with pandas (pd.read_parquet(OUT)),
    DuckDB (read_parquet('OUT/**/*.parquet', hive_partitioning=true)) or Polars
    (pl.read_parquet('OUT/**/*.parquet', hive_partitioning=True)).

    Example:

        bigcos neighbors out/models/obj1-symmetric out/models/obj2 \\
            --kind item-item,user-item --metric cos,dot -N 100 --out out/neighbors
    """
    from bigcos import io
    from bigcos.cli.common import matrix_interactions
    from bigcos.cluster import job_client
    from bigcos.neighbor_lists import Blocking
    from bigcos.neighbor_lists import neighbors as run_neighbors

    for model_dir in model_dirs:  # fail fast, before starting a cluster
        io.require_dir(model_dir, "model", "items.parquet")
    blocking = None
    if query_block or candidate_block:
        if memory_budget is not None:
            raise UserError("--memory-budget: give it or --query-block/--candidate-block, "
                            "not both")
        default = Blocking()
        blocking = Blocking(query_block or default.query_block,
                            candidate_block or default.candidate_block)
    with job_client(cluster, matrix_interactions(*model_dirs)) as client:
        manifest = run_neighbors(model_dirs, out, kinds=kinds, metrics=metrics, n=n,
                                 exclude_train=not include_train, blocking=blocking,
                                 memory_budget=memory_budget, overwrite=overwrite, client=client)
    total = sum(v for c in manifest["counts"].values() for k, v in c.items()
                if k.startswith("rows_"))
    click.echo(f"wrote {out}: {total} rows in {manifest['timings_s']['total']:.1f} s")


@click.command()
@click.argument("model_dir", type=click.Path(path_type=str))
@click.option("--item", "title", default=None, help="Title of the query item (items table).")
@click.option("--item-id", default=None, help="Id of the query item.")
@click.option("--user-id", default=None,
              help="Id of a user: shows the items recommended to them (user-item).")
@click.option("-N", "n", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--metric", "metrics", multiple=True, default=("cos,dot",), callback=_split,
              show_default=True, help="cos and/or dot.")
@click.option("--items", "items_path", type=click.Path(path_type=str), default=None,
              help="Item metadata Parquet with item_id and title (default: the one recorded "
                   "by `bigcos ingest --items` for the model's matrix).")
@click.option("--include-train", is_flag=True,
              help="--user-id: keep the user's training items.")
def similar(model_dir, title, item_id, user_id, n, metrics, items_path, include_train):
    """Show the N nearest items of one item (by title or id) or the top-N items of one user,
    by cosine and by dot product, with titles.

    Example:

        bigcos similar out/models/obj1-symmetric --item "Toy Story (1995)" -N 10
    """
    from bigcos.models import load_model
    from bigcos.neighbor_lists import check_metrics, operands, top_n

    if sum(x is not None for x in (title, item_id, user_id)) != 1:
        raise UserError("similar: give exactly one of --item, --item-id, --user-id")
    metrics = check_metrics(metrics)
    model = load_model(model_dir)
    items = _items_table(model, items_path, required=title is not None)
    if user_id is not None:
        ops = operands(model, "user-item", exclude_train=not include_train)
        row = _find_id(model.user_ids, user_id, "--user-id")
        heading = f"user {user_id}"
    else:
        ops = operands(model, "item-item")
        row = (_find_title(items, title, items_path or "items table", model.item_ids)
               if title is not None else _find_id(model.item_ids, item_id, "--item-id"))
        heading = f"item {_label(model.item_ids[row].as_py(), items)}"
    if ops.exclude_self:
        exclude = _self_pair(row, len(ops.candidates))
    else:
        exclude = ops.exclude[row:row + 1] if ops.exclude is not None else None
    lists = top_n(ops.queries[row:row + 1], ops.candidates, n, metrics, exclude=exclude)
    click.echo(f"{model.name}: nearest to {heading}")
    for metric in metrics:
        index, score = lists[metric]
        click.echo(f"\n{metric}")
        for rank, (i, s) in enumerate(zip(index[0], score[0], strict=True), start=1):
            if i < 0:
                break
            click.echo(f"{rank:>4}  {s:>9.4f}  {_label(ops.candidate_ids[int(i)].as_py(), items)}")


def _self_pair(row: int, p: int):
    import scipy.sparse as sp

    return sp.csr_matrix((np.ones(1, np.float32), ([0], [row])), shape=(1, p))


def _items_table(model, path: str | None, required: bool) -> dict | None:
    """{item_id: title} from the items metadata table, or None when there is none."""
    from bigcos import io

    if path is None and model.matrix_dir is not None:
        try:
            path = io.read_manifest(model.matrix_dir).get("inputs", {}).get("items")
        except UserError:
            path = None
    if path is None:
        if required:
            raise UserError("--item: no items table recorded for this model's matrix; "
                            "pass --items PATH")
        return None
    table = io.read_table(path)
    for column in ("item_id", "title"):
        if column not in table.column_names:
            raise UserError(f"{path}: column '{column}' not found")
    ids = table.column("item_id").to_pylist()
    titles = table.column("title").to_pylist()
    return dict(zip(ids, titles, strict=True))


def _find_title(items: dict, title: str, where: str, item_ids: pa.Array) -> int:
    by_title: dict[str, list] = {}
    for item, t in items.items():
        if t is not None:
            by_title.setdefault(str(t), []).append(item)
    matches = by_title.get(title) or next(
        (v for t, v in by_title.items() if t.casefold() == title.casefold()), None)
    if not matches:
        close = difflib.get_close_matches(title, list(by_title), n=5, cutoff=0.5)
        close += [t for t in by_title if title.casefold() in t.casefold() and t not in close]
        hint = f" (close: {'; '.join(close[:5])})" if close else ""
        raise UserError(f"--item: no title '{title}' in {where}{hint}")
    positions = {v: i for i, v in enumerate(item_ids.to_pylist())}
    found = [positions[m] for m in matches if m in positions]
    if not found:
        raise UserError(f"--item: '{title}' (id {matches[0]}) is not an item of this model")
    return min(found)


def _find_id(ids: pa.Array, text: str, option: str) -> int:
    value: object = text
    if pa.types.is_integer(ids.type):
        try:
            value = int(text)
        except ValueError:
            raise UserError(f"{option}: '{text}' is not an integer id") from None
    matches = np.flatnonzero(np.asarray(ids.to_pylist(), dtype=object) == value)
    if not len(matches):
        raise UserError(f"{option}: no id '{text}' in this model")
    return int(matches[0])


def _label(item, items: dict | None) -> str:
    if items is None or items.get(item) is None:
        return str(item)
    return f"{items[item]}  [{item}]"
