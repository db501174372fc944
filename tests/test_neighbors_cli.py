"""``bigcos neighbors`` and ``bigcos similar`` from the command line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from bigcos.cli import main
from bigcos.neighbor_lists import read_neighbors
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


def dense_top(query, candidates, n, metric, banned):
    """Independent of bigcos: every score with numpy (cosine as q.c / (|q| |c|) in float64),
    banned candidates dropped, sorted by score descending then index."""
    q = np.asarray(query, np.float64)
    c = np.asarray(candidates, np.float64)
    scores = c @ q
    if metric == "cos":  # MATH.md: a zero-norm embedding has no cosine, it scores 0
        norms = np.linalg.norm(c, axis=1) * np.linalg.norm(q)
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    order = [int(j) for j in np.lexsort((np.arange(len(c)), -scores)) if j not in set(banned)]
    return order[:n], scores[order[:n]]


def shown_lists(out: str) -> dict[str, list[tuple[float, str]]]:
    """{metric: [(score, label)]} from the printed lists of `bigcos similar`."""
    lists, metric = {}, None
    for line in out.splitlines()[1:]:
        if line in ("cos", "dot"):
            metric = lists.setdefault(line, [])
        elif line.strip():
            _, score, label = line.split(maxsplit=2)
            metric.append((float(score), label))
    return lists


def test_similar_user_excludes_training_items(model):
    directory, train = model
    from bigcos.models import load_model

    m = load_model(directory)
    for flags, banned in (([], train[1].indices.tolist()), (["--include-train"], [])):
        code, out = run("similar", directory, "--user-id", "101", "-N", "6", *flags)
        assert code == 0, out
        lists = shown_lists(out)
        for metric in ("cos", "dot"):
            index, scores = dense_top(m.user_embeddings[1], m.item_embeddings, 6, metric, banned)
            assert [label for _, label in lists[metric]] == [
                f"{TITLES[i]}  [{(i + 1) * 10}]" for i in index], (flags, metric)
            np.testing.assert_allclose([s for s, _ in lists[metric]], scores, atol=6e-5)


def test_similar_library_returns_the_lists_as_a_table(model):
    import bigcos

    directory, _ = model
    from bigcos.models import load_model

    m = load_model(directory)
    table = bigcos.similar(directory, item_id=30, n=10, metrics=["dot", "cos"])
    assert table.column_names == ["metric", "rank", "item_id", "title", "score"]
    assert table.schema.metadata[b"query"] == b"item Heat (1995)  [30]"
    frame = table.to_pandas()
    for metric in ("cos", "dot"):
        rows = frame[frame["metric"] == metric]
        index, scores = dense_top(m.item_embeddings[2], m.item_embeddings, 10, metric, [2])
        assert len(index) == 5  # the 6 items but the query: N is cut to what exists
        assert rows["rank"].tolist() == [1, 2, 3, 4, 5]
        assert rows["item_id"].tolist() == [(i + 1) * 10 for i in index]
        assert rows["title"].tolist() == [f"{TITLES[i]}  [{(i + 1) * 10}]" for i in index]
        np.testing.assert_allclose(rows["score"], scores, rtol=1e-5)
    same = bigcos.similar(m, item="heat (1995)", n=10, metrics=["dot", "cos"])
    assert same.equals(table)


def test_similar_without_a_title_column(model, tmp_path):
    """Simulated data and many logs have no titles: ids stand in; --item says why it can't."""
    directory, _ = model
    untitled = tmp_path / "untitled.parquet"
    pq.write_table(pa.table({"item_id": np.arange(1, 7) * 10,
                             "name": [f"n{i}" for i in range(6)],
                             "genre": ["a"] * 6}), untitled)
    code, out = run("similar", directory, "--item-id", "10", "-N", "2", "--items", untitled,
                    "--title-col", "genre")
    assert code == 0, out
    assert out.splitlines()[0] == "m: nearest to item a  [10]"
    code, out = run("similar", directory, "--item", "n3", "--items", untitled)  # `name` column
    assert code == 0 and "nearest to item n3  [40]" in out, out
    pq.write_table(pa.table({"item_id": np.arange(1, 7) * 10, "genre": ["a"] * 6}), untitled)
    code, out = run("similar", directory, "--item-id", "20", "-N", "2", "--items", untitled)
    assert code == 0, out
    labels = [label for lst in shown_lists(out).values() for _, label in lst]
    assert len(labels) == 4 and all(label.isdigit() for label in labels)
    code, out = run("similar", directory, "--item", "Heat (1995)", "--items", untitled)
    assert code == 1 and out.count("\n") == 1, out
    assert f"--item: {untitled} has no title column" in out and "columns: item_id, genre" in out


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
    # ids and ranks are dictionary-encoded, scores (nearly all distinct floats) are not
    part = next(out.rglob("part-*.parquet"))
    meta = pq.ParquetFile(part).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings
                 for i in range(meta.num_columns)}
    assert "RLE_DICTIONARY" not in encodings["score"], encodings
    assert all("RLE_DICTIONARY" in encodings[c] for c in ("query_id", "rank", "neighbor_id"))
    # checked before any cluster: an unreachable scheduler is never contacted
    code, text = run("neighbors", directory, "--out", out, "--scheduler", "tcp://127.0.0.1:9")
    assert code == 1 and "already exists" in text and text.count("\n") == 1, text
    code, text = run("neighbors", directory, "--out", tmp_path / "big", "-N", "50",
                     "--kind", "item-item", "--workers", "1")
    assert code == 0 and f"wrote {tmp_path / 'big'}: {2 * 6 * 5} rows" in text, text
    assert text.splitlines()[-1] == "N used (fewer candidates than -N 50): m/item-item 5"
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


def test_similar_on_a_shared_dataset_titled_by_name(shared_data, tmp_path):
    """Last.fm artists have a `name`, not a `title` column: the default falls back to it."""
    from bigcos.models import load_model

    data = shared_data / "lastfm-hetrec2011-2k"
    code, out = run("ingest", data / "interactions.parquet", "--out", tmp_path / "matrix",
                    "--items", data / "items.parquet")
    assert code == 0, out
    code, out = run("fit", tmp_path / "matrix", "--out", tmp_path / "model", "-k", "16",
                    "--workers", "1")
    assert code == 0, out
    model = load_model(tmp_path / "model")
    artists = pq.read_table(data / "items.parquet", columns=["item_id", "name"]).to_pydict()
    names = dict(zip(artists["item_id"], artists["name"], strict=True))
    row = 0
    query = model.item_ids[row].as_py()
    code, out = run("similar", tmp_path / "model", "--item", names[query], "-N", "5",
                    "--metric", "cos")
    assert code == 0, out
    index, _ = dense_top(model.item_embeddings[row], model.item_embeddings, 5, "cos", [row])
    expected = [model.item_ids[i].as_py() for i in index]
    assert [label for _, label in shown_lists(out)["cos"]] == [
        f"{names[i]}  [{i}]" for i in expected]
