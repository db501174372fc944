"""The report's held-out evaluation as tasks over the matrix's shards x the models' user parts:
the same users and numbers as in memory, on threads and on a 2-process LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest

import bigcos
from bigcos import reports
from bigcos.matrix import load_matrix
from bigcos.model_info import load_model_info
from bigcos.neighbor_lists import neighbors
from bigcos.reports.evaluation import sample_users
from bigcos.reports.inputs import item_popularity, matrix_summary
from tests.test_neighbors_parts import sharded_models  # noqa: F401  (a shared fixture)


def same_scores(a, b) -> None:
    assert a.protocol == b.protocol and a.n_test_users == b.n_test_users
    assert np.array_equal(a.users, b.users) and a.dot_scoring == b.dot_scoring
    assert list(a.values) == list(b.values)
    for key in a.values:
        for measure in a.measures:
            np.testing.assert_array_equal(a.values[key][measure], b.values[key][measure])


@pytest.mark.parametrize("max_users", [None, 17])
def test_heldout_of_parts_equals_in_memory(sharded_models, max_users):  # noqa: F811
    """In memory (whole Model, Interactions: one task), sharded with one users.parquet, and
    sharded with one part per shard give the same sampled users and the same measures."""
    matrix = sharded_models["matrix"]
    data = load_matrix(matrix)
    whole = {m.name: m for m in map(bigcos.load_model, sharded_models["single"])}
    memory = reports.heldout_scores(whole, data, max_users=max_users, seed=3)
    test_users = np.flatnonzero((np.diff(data.test.indptr) > 0) & data.heldout_users)
    assert memory.protocol == "strong" and memory.n_test_users == test_users.size
    assert np.array_equal(memory.users, sample_users(test_users, max_users, 3))
    assert len(memory.users) == (17 if max_users else test_users.size)
    assert set(memory.dot_scoring.values()) == {"exported", "project-back+column-remedy"}
    for layout in ("single", "parts"):
        infos = {m.name: m for m in map(load_model_info, sharded_models[layout])}
        same_scores(memory, reports.heldout_scores(infos, matrix, max_users=max_users, seed=3))


def test_summary_popularity_is_that_of_the_fit_rows(sharded_models):  # noqa: F811
    data = load_matrix(sharded_models["matrix"])
    summary = matrix_summary(sharded_models["matrix"])
    assert np.array_equal(summary.popularity, item_popularity(data.fit_matrix))
    assert summary.user_ids.equals(data.user_ids) and summary.item_ids.equals(data.item_ids)


def test_report_on_a_cluster_from_parts_equals_threads_from_one_file(sharded_models,  # noqa: F811
                                                                     tmp_path):
    """write_report on a 2-process LocalCluster (parts, read by the workers) and on threads
    (one users.parquet) write the same tables, models' directories aside."""
    from distributed import Client, LocalCluster

    nb = tmp_path / "nb"
    neighbors(sharded_models["single"], nb, kinds=("item-item", "user-item"), n=10)
    opts = reports.Options(max_heldout_users=20, n_resamples=200)
    threads = reports.write_report(tmp_path / "threads", sharded_models["matrix"],
                                   sharded_models["single"], nb, options=opts)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        remote = reports.write_report(tmp_path / "cluster", sharded_models["matrix"],
                                      sharded_models["parts"], nb, options=opts, client=client)
    assert threads.tables["heldout"].num_rows == 4
    for name, table in threads.tables.items():
        if name == "models":
            table, other = (t.drop_columns(["directory"]) for t in
                            (table, remote.tables[name]))
        else:
            other = remote.tables[name]
        assert table.equals(other), name


def test_user_lists_read_as_the_agreement_sample(sharded_models, tmp_path):  # noqa: F811
    """Reading only the sampled user queries gives the lists the agreement would sample from
    every list; item-item lists stay whole."""
    from bigcos.reports.tables import sample_queries

    nb = tmp_path / "nb"
    neighbors(sharded_models["parts"], nb, kinds=("item-item", "user-user", "user-item"), n=6)
    data = load_matrix(sharded_models["matrix"])
    whole = reports.read_neighbor_lists(nb, data.user_ids, data.item_ids, 4)
    read = reports.read_neighbor_lists(nb, data.user_ids, data.item_ids, 4, 13, seed=2)
    expected = sample_queries(whole, 13, 2)
    expected = [e if e.kind.startswith("user") else w for e, w in
                zip(sorted(expected, key=lambda x: (x.kind, x.model, x.metric)), whole,
                    strict=True)]
    assert [(x.kind, x.model, x.metric) for x in read] == \
        [(x.kind, x.model, x.metric) for x in expected]
    for got, want in zip(read, expected, strict=True):
        assert np.array_equal(got.queries, want.queries)
        assert np.array_equal(got.neighbors, want.neighbors)
        assert got.queries.size == (13 if got.kind.startswith("user") else data.shape[1])
