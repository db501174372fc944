"""Dask tasks as the stages use them: impure delayed calls computed on a given client.

Every stage that maps over shards or parts builds ``task(fn)(...)`` calls and computes them
with :func:`run_tasks` on the ``client`` its caller passed (None: Dask's threaded scheduler in
this process); nothing here looks for a default client.
"""

from __future__ import annotations


def run_tasks(tasks: list, client) -> list:
    """Compute Dask ``tasks`` on ``client`` (None: threads in this process), one BLAS thread
    per task; return their results in order."""
    import dask
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # one BLAS thread per task: tasks are the parallelism
        return list(dask.compute(*tasks, scheduler="threads" if client is None else client))


def task(fn):
    """``fn`` as an impure ``dask.delayed`` (every call is a new task)."""
    import dask

    return dask.delayed(fn, pure=False)


def share(value, client):
    """``value`` as a task argument: on a client, scattered once to every worker (a future,
    so tasks that take it do not each carry a copy); None (threads) or None values as is."""
    if client is None or value is None:
        return value
    return client.scatter(value, broadcast=True, hash=False)
