"""``bigcos bench scale``: the sharded data plane beside the in-memory one (issue 15 point 7).

At ``--rows`` log rows (default 10M, about 10M non-zeros), side by side:

(a) ingest: ``bigcos ingest`` in memory vs streamed out of core into shards (the same shards);
(b) one SVD pass, the Gram product X^T (X Q) of the fit rows (the users not held out) with Q
    of width l = k + oversampling (k = 64, l = 80), as the fit runs it: in memory,
    :class:`bigcos.gram.GramOperator` on one CSR (threads in this process, where a fit's
    in-memory passes run), vs from the shard files, :class:`bigcos.shard_gram.ShardGramOperator`
    on a LocalCluster's workers (where ``bigcos run``'s sharded fit runs them), its segments
    kept between passes and loaded again by every pass (``keep_segments``, two rows); with
    scipy's ``X.T @ (X @ Q)`` as the peer. All but scipy give the same bits. A sharded row
    also has its first pass with the setup (summaries, loading kept segments), untimed
    otherwise, as the fit's first of ~7 passes pays it;
(c) the neighbour kernel (item-item top-N by cos and dot, :mod:`bigcos.bench.neighbors`) on
    threads in this process vs on the same LocalCluster, whose workers read the model by
    path;
(d) with ``--job DIR``: the per-stage figures a finished ``bigcos run`` recorded in
    ``DIR/manifest.json`` (wall time, peak RSS of the client and of each worker, bytes
    written; see :mod:`bigcos.stage_resources`).

Every row has wall and CPU seconds (of this process), nnz/s (pairs/s for the kernel) and the
ratio to its in-memory peer against the issue's goal (sharded <= 1.3x in memory). Results
are printed as a table and written with their parameters, versions and load average as JSON
(``--json``) and Parquet (``--parquet``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from bigcos import io
from bigcos.bench.common import json_option, measure, report

GOAL_RATIO = 1.3  # issue 15: sharded at most 1.3x the in-memory time


def timed(name: str, fn, repeat: int = 1):
    """:func:`bigcos.bench.common.measure` of ``fn`` ``repeat`` times: the median wall time
    (with its CPU seconds of this process, ``cpu_s``), the largest peak extra RSS, the last
    result."""
    runs = []
    for _ in range(repeat):
        c0 = os.times()
        m, result = measure(name, fn)
        c1 = os.times()
        m.extra["cpu_s"] = round(c1.user + c1.system - c0.user - c0.system, 3)
        runs.append(m)
    best = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    best.peak_extra_rss_bytes = max(r.peak_extra_rss_bytes for r in runs)
    return best, result


def versus(m, base, work: float, unit: str = "nnz_per_s") -> dict:
    """``m``'s row with its throughput and its time over the in-memory ``base`` (and the goal)."""
    m.extra[unit] = round(work / max(m.seconds, 1e-9))
    if base is not None and m is not base:
        ratio = m.seconds / max(base.seconds, 1e-9)
        m.extra["time_vs_in_memory"] = round(ratio, 2)
        m.extra[f"goal_{GOAL_RATIO}x"] = "met" if ratio <= GOAL_RATIO else "missed"
    return m.row()


# --------------------------------------------------------------------------- (b) SVD pass
def sharded_operator(matrix_dir: Path, blas, client=None, keep_segments: bool | None = None):
    """The fit's own Gram operator over the fit rows of ``matrix_dir``'s shards (not held-out
    users; no remedy, no validation rows): a :class:`bigcos.shard_gram.FitShard` per shard,
    :func:`bigcos.shard_gram.summarize`, :class:`bigcos.shard_gram.ShardGramOperator`.

    Parameters
    ----------
    matrix_dir : Path
    blas : bigcos.dense.RowChunks
    client : distributed.Client, optional
        Whose workers load the segments and run the passes (None: threads here).
    keep_segments : bool, optional
        As :class:`~bigcos.shard_gram.ShardGramOperator`: segments loaded once and kept, or
        loaded again by every pass.

    Returns
    -------
    ShardGramOperator
        Float32; its ``timings["place_blocks"]`` holds the seconds of loading the kept
        segments. Close it after use.
    """
    from bigcos.column_remedies import Preprocessing
    from bigcos.shard_gram import FitShard, ShardGramOperator, summarize
    from bigcos.shards import MatrixShards

    matrix = MatrixShards(matrix_dir)
    users_file = str(matrix.directory / "users.parquet")
    shards = [FitShard(s, users_file, (), Preprocessing(), "float32") for s in matrix.shards]
    rows = summarize(shards, matrix.shape[1], None, client)
    return ShardGramOperator(rows, blas=blas, dtype=np.float32, client=client,
                             keep_segments=keep_segments)


def in_memory_operands(matrix_dir: Path):
    """The fit's in-memory SVD input (:func:`bigcos.fit_data.load_in_memory`): the fit rows
    as one float32 CSR and their row blocks (cut shard by shard, as the sharded operator's)."""
    from bigcos.column_remedies import Preprocessing
    from bigcos.fit_data import load_in_memory
    from bigcos.svd_cache import SVDOptions

    data = load_in_memory(matrix_dir, Preprocessing(), None, SVDOptions(dtype="float32"))
    return data.svd_input, data.row_blocks


def svd_pass_rows(matrix_dir: Path, k: int, oversampling: int, repeat: int, seed: int,
                  client) -> list[dict]:
    """One pass of the fit's in-memory operator (threads here, as the fit runs it) vs the
    fit's sharded operator on ``client``'s workers, segments kept and reloaded every pass;
    scipy as the peer. Memory: the fit rows twice (the CSR and scipy's product)."""
    from bigcos.dense import RowChunks
    from bigcos.gram import GramOperator

    X, row_blocks = in_memory_operands(matrix_dir)
    Q = np.random.default_rng(seed).standard_normal((X.shape[1], k + oversampling),
                                                    dtype=np.float32)
    workers = len(client.scheduler_info()["workers"])
    with RowChunks() as blas:
        op = GramOperator(X, blas=blas, dtype=np.float32, row_blocks=row_blocks)
        op(Q)  # warm-up
        base, Y = timed("SVD pass, in memory (GramOperator, threads)", lambda: op(Q), repeat)
        op.close()
        sharded = []
        for keep, label in ((True, "segments kept"), (False, "segments loaded every pass")):
            t0 = time.perf_counter()
            op = sharded_operator(matrix_dir, blas, client, keep)
            op(Q)  # warm-up: worker imports, page cache, and loading the kept segments
            first = time.perf_counter() - t0
            m, Y_op = timed(f"SVD pass, sharded, {label} ({op.n_shards} shard files, "
                            f"{workers} workers)", lambda op=op: op(Q), repeat)
            m.extra.update(first_pass_with_setup_s=round(first, 3),
                           identical_to_in_memory=bool(np.array_equal(Y_op, Y)))
            op.close()
            sharded.append((m, Y_op))
        scipy_m, Y_scipy = timed("SVD pass, scipy X.T @ (X @ Q)", lambda: X.T @ (X @ Q), repeat)
    scale = max(float(np.abs(Y).max()), 1e-30)
    for m, other in (*sharded, (scipy_m, Y_scipy)):
        m.extra["max_rel_diff_vs_in_memory"] = float(f"{np.abs(other - Y).max() / scale:.2g}")
    figures = [base, *(m for m, _ in sharded), scipy_m]
    for m in figures:
        m.extra.update(part="svd pass", k=k, l=k + oversampling, fit_rows=X.shape[0])
    return [versus(m, base, X.nnz) for m in figures]


# --------------------------------------------------------------------------- (a) ingest
def ingest_rows(log: Path, tmp: Path, rows: int, shard_nnz: int, memory_limit: str | None,
                repeat: int) -> tuple[list[dict], Path, int]:
    from bigcos.matrix import IngestOptions
    from bigcos.matrix import ingest as ingest_log
    from bigcos.shards import MatrixShards

    def run(streaming: str) -> Path:
        out = tmp / f"matrix-{streaming}"
        ingest_log(log, out, IngestOptions(streaming=streaming, shard_nnz=shard_nnz,
                                           memory_limit=memory_limit), overwrite=True)
        return out

    run("off"), run("on")  # warm-up (page cache, imports)
    base, memory_dir = timed("ingest, in memory", lambda: run("off"), repeat)
    streamed, streamed_dir = timed("ingest, streamed (out of core, sharded)",
                                   lambda: run("on"), repeat)
    same = all(np.array_equal(getattr(a.load(), f), getattr(b.load(), f))
               for a, b in zip(MatrixShards(memory_dir).shards, MatrixShards(streamed_dir).shards,
                               strict=True) for f in ("indptr", "indices", "data"))
    shards = MatrixShards(streamed_dir)
    nnz = shards.nnz["train"] + shards.nnz["test"]
    out = []
    for m in (base, streamed):
        m.extra.update(part="ingest", rows_per_s=round(rows / m.seconds),
                       shards=len(shards.shards), identical_shards=same)
        out.append(versus(m, base, nnz))
    return out, memory_dir, nnz


# --------------------------------------------------------------------------- (c) kernel
def kernel_rows(tmp: Path, p: int, k: int, n: int, seed: int, repeat: int, client
                ) -> list[dict]:
    """The kernel on threads here (``client=None``) vs on ``client``'s workers."""
    from bigcos.bench.neighbors import (
        embedding,
        run_bigcos,
        worker_peak_rss,
        write_model,
    )

    model = write_model(tmp / "kernel-model", embedding(p, k, seed))
    pairs = p * p
    bound = 2 * p * p * k / 195e9  # seconds at this machine's peak float32 rate
    run_bigcos(model, tmp / "kernel-threads", n, None)  # warm-up
    base, _ = timed("neighbour kernel, threads (client=None)",
                    lambda: run_bigcos(model, tmp / "kernel-threads", n, None), repeat)
    run_bigcos(model, tmp / "kernel-cluster", n, client)  # warm-up (worker imports)
    cluster, _ = timed("neighbour kernel, LocalCluster workers",
                       lambda: run_bigcos(model, tmp / "kernel-cluster", n, client), repeat)
    cluster.extra["worker_peak_rss_mib"] = round(worker_peak_rss(client) / 2**20)
    out = []
    for m in (base, cluster):
        m.extra.update(part="neighbour kernel", items=p, k=k, n=n, metric="cos+dot",
                       flop_bound_s=float(f"{bound:.3g}"),
                       time_vs_flop_bound=round(m.seconds / bound, 2))
        out.append(versus(m, base, pairs, "pairs_per_s"))
    return out


# --------------------------------------------------------------------------- (d) a job
def stage_records(job_dir: Path) -> dict[str, dict]:
    """The records kept in the job's stage markers (``stage.json``), by stage label: those of
    every stage completed so far, also of a run that was cut before its manifest."""
    records = {}
    for marker in sorted(Path(job_dir).glob("**/stage.json")):
        stamp = json.loads(marker.read_text())
        if "resources" in stamp:
            records[f"{stamp['dataset']}/{stamp['stage']}"] = stamp["resources"]
    return records


def job_rows(job_dir: Path) -> list[dict]:
    """Per-stage rows of a ``bigcos run``: from its run manifest, plus the stage markers of
    stages completed by runs that were cut (:func:`stage_records`)."""
    path = Path(job_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        manifest = None
        if not stage_records(job_dir):
            raise click.UsageError(f"--job: {path}: not a bigcos run ({exc})") from None
    resources = {**stage_records(job_dir), **((manifest or {}).get("resources") or {})}
    if not resources:  # a run from before the records: its timings only
        return [{"name": label, "part": "job stage", "seconds": s, "recorded": "time only"}
                for label, s in manifest.get("timings_s", {}).items()]
    rows = []
    for label, rec in resources.items():
        workers = rec["peak_rss_bytes"]["workers"]
        rows.append({"name": label, "part": "job stage", "seconds": rec["seconds"],
                     "peak_rss_client_mib": round(rec["peak_rss_bytes"]["client"] / 2**20, 1),
                     "peak_rss_worker_max_mib": (round(max(workers.values()) / 2**20, 1)
                                                 if workers else None),
                     "workers": len(workers),
                     "bytes_written_mib": round(rec["bytes_written"] / 2**20, 1)})
    return rows


def write_parquet(path: str, rows: list[dict], context: dict) -> None:
    """The rows as a Parquet table, the context (JSON) in its metadata under ``bench``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [r.get(key) for r in rows]
        try:
            columns[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: as text
            columns[key] = pa.array([None if v is None else str(v) for v in values])
    table = pa.table(columns)
    table = table.replace_schema_metadata({"bench": json.dumps(context, default=str)})
    pq.write_table(table, path)


@click.command("scale")
@click.option("--rows", type=click.IntRange(min=1000), default=10_000_000, show_default=True,
              help="Log rows generated (about as many non-zeros).")
@click.option("--users", "n_users", type=int, default=1_000_000, show_default=True)
@click.option("--items", "n_items", type=int, default=100_000, show_default=True)
@click.option("--shard-nnz", type=click.IntRange(min=1), default=2_000_000, show_default=True,
              help="Non-zeros per shard of the sharded matrix.")
@click.option("--memory-limit", default=None, help="memory_limit of the streamed ingest.")
@click.option("-k", "k", type=click.IntRange(min=1), default=64, show_default=True,
              help="SVD rank: the pass's block is k + --oversampling columns.")
@click.option("--oversampling", type=click.IntRange(min=0), default=16, show_default=True)
@click.option("--kernel-items", type=click.IntRange(min=10), default=20_000, show_default=True,
              help="Items p of the neighbour kernel (all p x p pairs are scored).")
@click.option("--kernel-k", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("-N", "n", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--parts", default="ingest,svd,kernel", show_default=True,
              help="Which of ingest, svd, kernel to run ('' for none: only --job).")
@click.option("--job", "job_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="A finished `bigcos run` output directory: its per-stage figures too.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Timed runs of each (median), after a warm-up.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--parquet", "parquet_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures as Parquet (context in the schema metadata).")
@json_option
def scale(rows, n_users, n_items, shard_nnz, memory_limit, k, oversampling, kernel_items,
          kernel_k, n, parts, job_dir, repeat, seed, parquet_path, json_path):
    """Sharded vs in memory at 10M non-zeros: ingest, one SVD pass, the neighbour kernel
    (nnz/s, ratio to in memory, goal <= 1.3x); and a finished job's per-stage figures.

    \b
    Example:
      bigcos bench scale --json bench-scale.json
      bigcos bench scale --parts '' --job out/scale-1b
    """
    from bigcos.bench.ingest import generate_log
    from bigcos.cluster import ClusterOptions, dask_client

    wanted = {p.strip() for p in parts.split(",") if p.strip()}
    unknown = wanted - {"ingest", "svd", "kernel"}
    if unknown:
        raise click.UsageError(f"--parts: unknown {', '.join(sorted(unknown))} "
                               "(ingest, svd, kernel)")
    context = {"rows": rows, "users": n_users, "items": n_items, "shard_nnz": shard_nnz,
               "memory_limit": memory_limit, "k": k, "l": k + oversampling,
               "kernel_items": kernel_items, "kernel_k": kernel_k, "n": n, "repeat": repeat,
               "seed": seed, "parts": sorted(wanted), "job": job_dir,
               "cores": os.cpu_count(), "goal_ratio": GOAL_RATIO,
               "load_average_before": [round(v, 2) for v in os.getloadavg()],
               "versions": io.versions()}
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bigcos-bench-scale-") as tmp_dir, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmp_dir)
        started = []

        def cluster():  # one LocalCluster (of `bigcos run`'s defaults) for svd and kernel
            if not started:
                started.append(stack.enter_context(dask_client(ClusterOptions())))
            return started[0]

        if wanted & {"ingest", "svd"}:
            log = tmp / "log.parquet"
            click.echo(f"generating {rows:,} rows ...")
            generate_log(log, rows, n_users, n_items, seed)
            ingest_figures, matrix_dir, nnz = ingest_rows(log, tmp, rows, shard_nnz,
                                                          memory_limit, repeat)
            context["nnz"] = nnz
            if "ingest" in wanted:
                out += ingest_figures
            if "svd" in wanted:
                out += svd_pass_rows(matrix_dir, k, oversampling, repeat, seed, cluster())
        if "kernel" in wanted:
            out += kernel_rows(tmp, kernel_items, kernel_k, n, seed, repeat, cluster())
    if job_dir is not None:
        out += job_rows(Path(job_dir))
    context["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    for part in dict.fromkeys(r["part"] for r in out):  # a table per part: fewer columns
        report(f"{part}: sharded vs in memory (goal <= {GOAL_RATIO}x)" if part != "job stage"
               else f"per stage of the run in {job_dir}",
               [{k: v for k, v in r.items() if k != "part"} for r in out if r["part"] == part])
    if json_path:  # the layout of bigcos.bench.common.report's JSON
        Path(json_path).write_text(json.dumps({"title": "bigcos bench scale",
                                               "context": context, "rows": out}, indent=2))
        click.echo(f"wrote {json_path}")
    if parquet_path:
        write_parquet(parquet_path, out, context)
        click.echo(f"wrote {parquet_path}")
    click.echo(f"load average (1, 5, 15 min): before {context['load_average_before']}, after "
               f"{context['load_average_after']} on {os.cpu_count()} cores")
