"""Neighbour lists of a seeded query sample (``max_queries``): each list is the full run's list
of that query, every model of a kind gets the same queries, ``full_models`` keeps item-item
whole, and the sample is the one the report's agreement draws with the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from bigcos.blocked_topn import Blocking
from bigcos.errors import UserError
from bigcos.neighbor_lists import neighbors, query_sample, read_neighbors
from tests.test_neighbors_parts import KINDS, sharded_models  # noqa: F401  (fixture)

BLOCKING = Blocking(query_block=16, candidate_block=24, group_rows=32, symmetric_block=16)


def _by_query(table) -> dict:
    df = table.to_pandas().sort_values(["kind", "model", "metric", "query_id", "rank"])
    return {key: g[["rank", "neighbor_id", "score"]].to_numpy()
            for key, g in df.groupby(["kind", "model", "metric", "query_id"])}


def test_sampled_lists_are_the_full_lists_of_the_sampled_queries(sharded_models, tmp_path):  # noqa: F811
    models = sharded_models["parts"]  # users in parts: the sample gathers rows across parts
    neighbors(models, tmp_path / "full", kinds=KINDS, n=7, blocking=BLOCKING)
    full = read_neighbors(tmp_path / "full")
    name0 = full.column("model").unique()[0].as_py()
    neighbors(models, tmp_path / "sampled", kinds=KINDS, n=7, blocking=BLOCKING,
              max_queries=9, full_models=[name0], seed=3)
    sampled = read_neighbors(tmp_path / "sampled")
    whole, part = _by_query(full), _by_query(sampled)
    assert part and set(part) <= set(whole)
    for key, rows in part.items():  # rank, neighbour and score, exactly
        assert np.array_equal(rows, whole[key]), key
    df = sampled.to_pandas()
    for kind in KINDS:
        of_kind = df[df.kind == kind]
        per_model = {m: set(g.query_id) for m, g in of_kind.groupby("model")}
        for model, queries in per_model.items():
            if kind == "item-item" and model == name0:  # full_models: every item
                assert queries == set(full.to_pandas().query(
                    "kind == @kind and model == @model").query_id)
            else:
                assert len(queries) == 9
        sampled_sets = [q for m, q in per_model.items() if not (kind == "item-item"
                                                                and m == name0)]
        assert all(q == sampled_sets[0] for q in sampled_sets)  # same queries per kind


def test_sampled_user_item_alone_writes_only_the_sampled_users(sharded_models, tmp_path,  # noqa: F811
                                                                  monkeypatch):
    """Without user-user, a sampled user-item run writes the scratch rows of the sampled users
    alone (and their train rows once per matrix), and its lists are the full run's lists."""
    import bigcos.neighbor_operands as operands

    models = sharded_models["parts"]
    kinds = ("item-item", "user-item")
    neighbors(models, tmp_path / "full", kinds=kinds, n=7, blocking=BLOCKING)
    written, train_files = [], []
    write_part, write_train = operands.write_user_part, operands._write_sampled_train

    def spy_part(scratch, part, rows=None):
        zero = write_part(scratch, part, rows)
        written.append(len(np.load(scratch / f"users-{part.index:05d}.npy", mmap_mode="r")))
        return zero

    def spy_train(path, shard, rows):
        train_files.append(path.name)
        return write_train(path, shard, rows)

    monkeypatch.setattr("bigcos.neighbor_lists.write_user_part", spy_part)
    monkeypatch.setattr(operands, "_write_sampled_train", spy_train)
    manifest = neighbors(models, tmp_path / "sampled", kinds=kinds, n=7, blocking=BLOCKING,
                         max_queries=9, seed=3)
    n_models = len(models)
    assert sum(written) == 9 * n_models  # nine users per model, not all of them
    assert len(train_files) == len(set(train_files))  # each matrix's sample rows once
    whole, part = (_by_query(read_neighbors(tmp_path / d)) for d in ("full", "sampled"))
    user_item = {key: rows for key, rows in part.items() if key[0] == "user-item"}
    assert len(user_item) == 9 * n_models * 2  # 9 queries x models x 2 metrics
    for key, rows in part.items():
        assert np.array_equal(rows, whole[key]), key
    for name, c in manifest["counts"].items():
        if name.endswith("/user-item"):
            assert c["queries"] == 9 and c["sampled_from"] > 9


def test_query_sample_is_the_report_sample():
    rows = query_sample(1000, 50, seed=7)
    assert np.array_equal(rows, np.sort(np.random.default_rng(7).choice(
        np.arange(1000), 50, replace=False)))
    assert np.array_equal(query_sample(30, 50, seed=7), np.arange(30))


def test_bad_sample_requests_are_one_line_errors(sharded_models, tmp_path):  # noqa: F811
    models = sharded_models["single"]
    with pytest.raises(UserError, match="max_queries: must be at least 1"):
        neighbors(models, tmp_path / "a", max_queries=0)
    with pytest.raises(UserError, match="full_models: no model named 'nope'"):
        neighbors(models, tmp_path / "b", max_queries=5, full_models=["nope"])
