"""``bigcos neighbors`` and ``bigcos similar`` from the command line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from bigcos.cli import main
from bigcos.neighbor_lists import read_neighbors, top_n
from tests.test_neighbors import reference, write_model

TITLES = ["Toy Story (1995)", "Jumanji (1995)", "Heat (1995)", "Toy Story 2 (1999)",
          "Casino (1995)", "Sabrina (1995)"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model over 6 titled items (ids 10, 20, ...) and 4 users, fit on a real matrix dir."""
    from bigcos.matrix import ingest

    root = tmp_path_factory.mktemp("cli")
    item_ids = np.arange(1, 7) * 10
    pq.write_table(pa.table({"item_id": item_ids, "title": TITLES}), root / "items.parquet")
    train = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 1], [0, 1, 1, 0, 1, 0],
                                    [1, 0, 0, 1, 0, 0], [0, 0, 1, 1, 1, 1]], np.float32))
    coo = train.tocoo()
    pq.write_table(pa.table({"user_id": coo.row.astype(np.int64) + 100,
                             "item_id": item_ids[coo.col]}), root / "log.parquet")
    ingest(root / "log.parquet", root / "matrix", items=root / "items.parquet")
    rng = np.random.default_rng(0)
    items = rng.standard_normal((6, 3)).astype(np.float32)
    users = rng.standard_normal((4, 3)).astype(np.float32)
    return write_model(root / "model", "m", items, users, item_ids=item_ids,
                       user_ids=np.arange(4) + 100, matrix_dir=root / "matrix"), train


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_similar_by_title_prints_neighbours_with_titles(model):
    directory, _ = model
    code, out = run("similar", directory, "--item", "Toy Story (1995)", "-N", "3")
    assert code == 0, out
    from bigcos.models import load_model

    m = load_model(directory)
    for metric in ("cos", "dot"):
        index, _ = reference(m.item_embeddings[:1], m.item_embeddings, 3, metric,
                             np.eye(1, 6, dtype=bool))
        block = out.split(f"\n{metric}\n")[1].splitlines()[:3]
        assert [TITLES[i] in line for i, line in zip(index[0], block, strict=True)] == [True] * 3
    assert "Toy Story (1995)  [10]" in out.splitlines()[0]


def test_similar_user_excludes_training_items(model):
    directory, train = model
    code, out = run("similar", directory, "--user-id", "101", "-N", "6", "--metric", "dot")
    assert code == 0, out
    from bigcos.models import load_model

    m = load_model(directory)
    index, _ = top_n(m.user_embeddings[1:2], m.item_embeddings, 6, ["dot"],
                     exclude=train[1])["dot"]
    shown = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(shown) == 6 - train[1].nnz
    assert all(TITLES[i] in line for i, line in zip(index[0], shown, strict=False))


@pytest.mark.parametrize("args, message", [
    (["--item", "Toy Stroy (1995)"], "--item: no title 'Toy Stroy (1995)' in "),
    (["--item", "Toy Stroy (1995)"], "items.parquet (close: Toy Story (1995)"),
    (["--item-id", "11"], "--item-id: no id '11'"),
    (["--item-id", "ten"], "--item-id: 'ten' is not an integer id"),
    (["--user-id", "7"], "--user-id: no id '7'"),
    (["--item", "Heat (1995)", "--item-id", "10"], "exactly one of"),
    (["--item-id", "10", "--metric", "cosine"], "--metric: unknown metric 'cosine'"),
])
def test_similar_errors_are_one_line(model, args, message):
    directory, _ = model
    code, out = run("similar", directory, *args)
    assert code == 1
    assert out.startswith("Error: ") and out.count("\n") == 1 and message in out, out


def test_neighbors_command_writes_the_dataset(model, tmp_path):
    directory, _ = model
    out = tmp_path / "nb"
    code, text = run("neighbors", directory, "--kind", "item-item", "--kind", "user-item",
                     "--metric", "cos", "-N", "2", "--out", out, "--workers", "1",
                     "--query-block", "2", "--candidate-block", "3")
    assert code == 0, text
    table = read_neighbors(out).to_pandas()
    assert set(table["metric"].astype(str)) == {"cos"}
    assert len(table[table["kind"] == "item-item"]) == 6 * 2
    code, text = run("neighbors", directory, "--out", out)
    assert code == 1 and "already exists" in text and text.count("\n") == 1
    code, text = run("neighbors", tmp_path / "missing", "--out", tmp_path / "x")
    assert code == 1 and "no such model directory" in text
    code, text = run("neighbors", directory, "--out", tmp_path / "y", "--memory-budget", "1MiB")
    assert code == 1 and "--memory-budget" in text and text.count("\n") == 1


@pytest.mark.cluster
def test_neighbors_on_a_given_scheduler_matches_the_default(model, tmp_path):
    from distributed import LocalCluster

    directory, _ = model
    code, text = run("neighbors", directory, "--kind", "item-item,user-user", "-N", "3",
                     "--out", tmp_path / "local", "--workers", "1")
    assert code == 0, text
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        code, text = run("neighbors", directory, "--kind", "item-item,user-user", "-N", "3",
                         "--out", tmp_path / "remote", "--scheduler", cluster.scheduler_address)
    assert code == 0, text
    frames = [read_neighbors(tmp_path / d).to_pandas().sort_values(
        ["kind", "metric", "query_id", "rank"]).reset_index(drop=True) for d in ("local", "remote")]
    assert len(frames[0]) == 2 * (6 + 4) * 3  # metrics x (items + users) x N
    assert frames[0].astype(str).equals(frames[1].astype(str))
