"""Dask tasks as the stages use them: impure delayed calls computed on a given client.

Every stage that maps over shards or parts builds ``task(fn)(...)`` calls and computes them
with :func:`run_tasks` on the ``client`` its caller passed (None: Dask's threaded scheduler in
this process); nothing here looks for a default client.
"""

from __future__ import annotations

import os


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



def shared(value, client):
    """``value`` as an argument of many tasks, shipped once: scattered to the workers of
    ``client`` (not put into the task graph, which goes through the scheduler), or a Dask
    delayed literal for threads in this process; None stays None. A tuple or dict is shipped
    as one object (``scatter`` alone would scatter its items, a dict's under its own keys)."""
    import dask

    if value is None:
        return None
    if client is not None:
        return client.scatter([value], broadcast=True, hash=False)[0]
    return dask.delayed(value)


def where_tasks_run(client) -> dict:
    """What a run records of where its tasks ran: {"scheduler": address, "workers": count,
    "threads": total} on a cluster, {"scheduler": "threads", "workers": cores} here."""
    if client is None:
        return {"scheduler": "threads", "workers": os.cpu_count()}
    workers = client.scheduler_info().get("workers", {})
    return {"scheduler": client.scheduler.address, "workers": len(workers),
            "threads": sum(w.get("nthreads", 0) for w in workers.values())}
