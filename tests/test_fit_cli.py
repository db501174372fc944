"""``bigcos fit`` end to end on small matrix directories made by ``bigcos.matrix.ingest``.

Embeddings read back with ``load_model`` are compared (rotation-invariant products, float32
storage: 1e-5 relative) with the paper's formulas on ``np.linalg.svd`` of the dense matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bigcos
from bigcos.cli import main
from bigcos.io import read_manifest
from bigcos.matrix import IngestOptions, ingest, load_matrix

RTOL = 1e-5


def write_log(path: Path, n_users: int, n_items: int, seed: int) -> None:
    """A log with string user ids and int item ids; every user and item appears."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=int(rng.integers(3, n_items // 2)), replace=False)
        users += [f"user-{u:03d}"] * len(chosen)
        items += (chosen * 10 + 7).tolist()
    users += [f"user-{u % n_users:03d}" for u in range(n_items)]
    items += [i * 10 + 7 for i in range(n_items)]
    pq.write_table(pa.table({"user_id": users, "item_id": pa.array(items, pa.int64())}), path)


@pytest.fixture(scope="module")
def matrix_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fitcli")
    write_log(root / "log.parquet", 60, 16, seed=0)
    ingest(root / "log.parquet", root / "matrix")
    return root / "matrix"


@pytest.fixture(scope="module")
def heldout_matrix_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fitcli-heldout")
    write_log(root / "log.parquet", 80, 16, seed=1)
    ingest(root / "log.parquet", root / "matrix",
           IngestOptions(split="users", heldout_users=0.25, test_fraction=0.3, seed=2))
    return root / "matrix"


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, ["-q", "fit", *map(str, args), "--workers", "1"])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def cos(E: np.ndarray) -> np.ndarray:
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    return En @ En.T


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def dense_reference(Xfit: np.ndarray, k: int, lam: float, d_of) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of objective 1 with D = d_of(sigma, g), from np.linalg.svd."""
    _, s, Vt = np.linalg.svd(Xfit, full_matrices=False)
    s, V = s[:k], Vt[:k].T
    g = s**2 / (s**2 + lam)
    d = d_of(s, g)
    return V * np.sqrt(g) * d, V * np.sqrt(g) / d


def test_fit_writes_a_model_directory_that_load_model_reads_back(matrix_dir, tmp_path):
    out = tmp_path / "obj1-sigma"
    run(matrix_dir, "--out", out, "-k", 6, "--scaling", "sigma", "--lam", 20, "--exact",
        "--dtype", "float64", "--svd-cache", tmp_path / "cache")
    model = bigcos.load_model(out)
    data = load_matrix(matrix_dir)
    assert model.name == "obj1-sigma"
    assert model.matrix_dir == matrix_dir.resolve()
    assert model.item_ids.equals(data.item_ids) and model.user_ids.equals(data.user_ids)
    assert model.item_embeddings.shape == (16, 6) and model.user_embeddings.shape == (60, 6)
    assert model.item_embeddings.dtype == np.float32
    X = data.train.toarray().astype(np.float64)
    A, B = dense_reference(X, 6, 20.0, lambda s, g: 1 / np.sqrt(s))
    items, users = model.item_embeddings.astype(np.float64), model.user_embeddings
    assert rel_err(items @ items.T, B @ B.T) < RTOL
    assert rel_err(users @ items.T, (X @ A) @ B.T) < RTOL
    assert rel_err(cos(users.astype(np.float64)), cos(X @ A)) < RTOL
    m = model.manifest
    assert m["svd"]["cache_hit"] is False and m["counts"]["dims_kept"] == 6
    assert m["parameters"]["lam"] == 20.0 and m["parameters"]["objective"] == 1
    s = np.linalg.svd(X, compute_uv=False)
    np.testing.assert_allclose(m["losses"]["objective"],
                               np.sum(X**2) - np.sum(s[:6] ** 4 / (s[:6] ** 2 + 20)), rtol=1e-6)
    dims = model.dimensions.to_pydict()
    np.testing.assert_allclose(dims["sigma"], s[:6], rtol=1e-6)
    np.testing.assert_allclose(dims["d"], 1 / np.sqrt(s[:6]), rtol=1e-6)


def test_second_fit_reuses_the_cached_svd_and_a_new_k_does_not(matrix_dir, tmp_path):
    cache = tmp_path / "cache"
    common = ["-k", 5, "--exact", "--svd-cache", cache]
    run(matrix_dir, "--out", tmp_path / "a", *common, "--scaling", "symmetric", "--lam", 0)
    second = run(matrix_dir, "--out", tmp_path / "b", *common, "--objective", "2", "--lam", 1)
    assert "SVD from cache" in second.output
    a, b = bigcos.load_model(tmp_path / "a"), bigcos.load_model(tmp_path / "b")
    assert a.manifest["svd"]["cache_hit"] is False and b.manifest["svd"]["cache_hit"] is True
    assert a.manifest["svd"]["key"] == b.manifest["svd"]["key"]
    assert a.dimensions.column("sigma").equals(b.dimensions.column("sigma"))
    assert len(list(cache.iterdir())) == 1
    run(matrix_dir, "--out", tmp_path / "c", "-k", 4, "--exact", "--svd-cache", cache,
        "--lam", 0)
    assert bigcos.load_model(tmp_path / "c").manifest["svd"]["cache_hit"] is False
    assert len(list(cache.iterdir())) == 2
    run(matrix_dir, "--out", tmp_path / "d", *common, "--remedy", "popularity")
    assert bigcos.load_model(tmp_path / "d").manifest["svd"]["cache_hit"] is False


def test_all_writes_every_model_of_one_svd_under_a_root(matrix_dir, tmp_path):
    out = tmp_path / "models"
    run(matrix_dir, "--out", out, "-k", 16, "--exact", "--all", "--lam", "1:5", "--lam", "2:0.5",
        "--no-svd-cache")
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == sorted(["obj1-symmetric", "obj1-item-orthonormal", "obj1-user-orthonormal",
                            "obj1-sigma", "obj2", "obj1-project-back", "obj2-project-back"])
    assert sorted(read_manifest(out)["models"]) == names
    X = load_matrix(matrix_dir).train.toarray().astype(np.float64)
    # k = p (full rank): the paper's two identities, through the files
    item_orth = bigcos.load_model(out / "obj1-item-orthonormal").item_embeddings
    np.testing.assert_allclose(cos(item_orth.astype(np.float64)), np.eye(16), atol=1e-5)
    user_orth = bigcos.load_model(out / "obj1-user-orthonormal").user_embeddings
    np.testing.assert_allclose(cos(user_orth.astype(np.float64)), cos(X), atol=1e-5)
    obj2 = bigcos.load_model(out / "obj2")
    kept = obj2.dimensions.column("kept").to_numpy(zero_copy_only=False)
    s = np.linalg.svd(X, compute_uv=False)
    assert kept.sum() == (s > 0.5).sum() == obj2.item_embeddings.shape[1]
    assert obj2.manifest["counts"]["dims_dropped"] == 16 - kept.sum()
    losses = [bigcos.load_model(out / n).manifest["losses"]["objective"]
              for n in names if n.startswith("obj1")]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-9)


def test_heldout_users_are_folded_in_not_fitted(heldout_matrix_dir, tmp_path):
    out = tmp_path / "m"
    run(heldout_matrix_dir, "--out", out, "-k", 5, "--exact", "--scaling", "user-orthonormal",
        "--no-svd-cache", "--lam", 0)  # a fixed λ: every non-held-out row is fit
    data = load_matrix(heldout_matrix_dir)
    held = data.heldout_users
    assert held.sum() == 20
    X = data.train.toarray().astype(np.float64)
    _, s, Vt = np.linalg.svd(X[~held], full_matrices=False)
    model = bigcos.load_model(out)
    np.testing.assert_allclose(model.dimensions.column("sigma").to_numpy(), s[:5], rtol=1e-6)
    users = model.user_embeddings.astype(np.float64)
    ref = X @ Vt[:5].T  # user-orthonormal: A = V_k, so every user (fold-in too) is x_u V_k
    assert rel_err(users @ users.T, ref @ ref.T) < RTOL
    assert np.abs(users[held]).sum() > 0
    assert model.manifest["counts"]["fit_users"] == 60


@pytest.mark.parametrize(("objective", "lam", "d_of"), [
    ("1", 0.3, lambda s, g: 1 / np.sqrt(s)),          # objective 1, D = sigma^-1/2
    ("2", 0.2, None),                                 # objective 2
])
def test_row_remedy_fits_diag_r_x_and_scales_folded_in_rows_alike(heldout_matrix_dir, tmp_path,
                                                                  objective, lam, d_of):
    """--remedy rows --gamma 0.5: the spectrum is the SVD of diag(r) X over the fitted rows
    (r_u = count_u^-0.5), every user's embedding (held-out fold-in rows included) is
    r_u x_u A of the dense closed form of that scaled matrix, and the manifest records gamma."""
    out = tmp_path / "m"
    scaling = ["--scaling", "sigma"] if objective == "1" else []
    run(heldout_matrix_dir, "--out", out, "-k", 5, "--exact", "--dtype", "float64",
        "--objective", objective, "--lam", lam, *scaling, "--remedy", "rows", "--gamma", 0.5,
        "--svd-cache", tmp_path / "cache")
    data = load_matrix(heldout_matrix_dir)
    held = data.heldout_users
    X = data.train.toarray().astype(np.float64)
    Xs = X * ((X != 0).sum(axis=1) ** -0.5)[:, None]  # every row is non-empty here
    _, s, Vt = np.linalg.svd(Xs[~held], full_matrices=False)
    model = bigcos.load_model(out)
    np.testing.assert_allclose(model.dimensions.column("sigma").to_numpy(), s[:5], rtol=1e-8)
    if objective == "1":
        A, B = dense_reference(Xs[~held], 5, lam, d_of)
    else:
        s5, V = s[:5], Vt[:5].T
        A, B = V * np.sqrt(1 / s5 - lam / s5**2), V * np.sqrt(s5 - lam)
    items, users = (model.item_embeddings.astype(np.float64),
                    model.user_embeddings.astype(np.float64))
    assert rel_err(items @ items.T, B @ B.T) < RTOL
    assert rel_err(users @ users.T, (Xs @ A) @ (Xs @ A).T) < RTOL  # held-out rows scaled alike
    assert rel_err(users[held] @ items.T, Xs[held] @ A @ B.T) < RTOL
    params = model.manifest["parameters"]
    assert params["preprocessing"] == {"kind": "rows", "gamma": 0.5}
    assert model.manifest["losses"]["squared_norm"] == pytest.approx(np.sum(Xs[~held] ** 2),
                                                                      rel=1e-9)
    assert model.manifest["model_name"].endswith("-rows0.5")


def test_als_model_is_written_in_the_same_format(matrix_dir, tmp_path):
    out = tmp_path / "als"
    run(matrix_dir, "--out", out, "--model", "als", "--factors", 4, "--als-iterations", 5)
    model = bigcos.load_model(out)
    assert model.name == "als" and model.dimensions is None
    assert model.item_embeddings.shape == (16, 4) and model.user_embeddings.shape == (60, 4)
    assert model.manifest["parameters"]["iterations"] == 5
    assert model.item_ids.equals(load_matrix(matrix_dir).item_ids)


@pytest.fixture(scope="module")
def bundled_users_split(tmp_path_factory, bundled_log) -> Path:
    """ml-latest-small, ratings >= 4 as 1, users and items with >= 5, 20 % of users held out."""
    out = tmp_path_factory.mktemp("bundled") / "matrix"
    result = CliRunner().invoke(main, ["-q", "ingest", str(bundled_log), "--out", str(out),
                                       "--threshold", "4", "--min-user", "5", "--min-item", "5",
                                       "--split", "users"])
    assert result.exit_code == 0, result.output
    return out


def test_cosine_model_on_the_bundled_data_is_read_by_load_model(bundled_users_split, tmp_path):
    """--model cosine -k 16 --iterations 5 writes a model directory: every user (held-out ones
    folded in) and item embedding has norm tau^(1/2), and the manifest's loss equals
    ||X - U I^T||^2 recomputed densely from the exported embeddings over the training rows."""
    out = tmp_path / "cos"
    result = run(bundled_users_split, "--out", out, "--model", "cosine", "-k", 16,
                 "--iterations", 5, "--validation-fraction", 0, "--tol", 0, "--seed", 3)
    assert "cosine, 16 dimensions" in result.output
    model = bigcos.load_model(out)
    data = load_matrix(bundled_users_split)
    assert model.name == "cosine" and model.dimensions is None
    assert model.item_ids.equals(data.item_ids) and model.user_ids.equals(data.user_ids)
    assert model.item_embeddings.shape == (data.train.shape[1], 16)
    assert model.user_embeddings.shape == (data.train.shape[0], 16)
    m = model.manifest
    params, run_info = m["parameters"], m["optimisation"]
    assert params["model"] == "cosine" and params["k"] == 16 and params["iterations"] == 5
    assert params["validation_fraction"] == 0 and params["tol"] == 0 and params["seed"] == 3
    assert 1 <= run_info["iterations"] <= 5 and run_info["passes_over_x"] >= run_info["iterations"]
    tau = run_info["tau"]
    users = model.user_embeddings.astype(np.float64)
    items = model.item_embeddings.astype(np.float64)
    held = data.heldout_users
    assert held.sum() > 0 and m["counts"]["train_rows"] == (~held).sum()
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), np.sqrt(tau), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), np.sqrt(tau), rtol=1e-5)
    X = data.train[~held].toarray().astype(np.float64)
    loss = np.sum((X - users[~held] @ items.T) ** 2)
    np.testing.assert_allclose(run_info["loss"], loss, rtol=1e-4)
    assert run_info["loss"] < run_info["sq_norm"] == pytest.approx(np.sum(X**2))
    assert run_info["loss_curve"][-1] <= run_info["loss_curve"][0]


def test_cosine_model_with_early_stopping_records_its_validation(bundled_users_split, tmp_path):
    out = tmp_path / "cos"
    run(bundled_users_split, "--out", out, "--model", "cosine", "-k", 16, "--iterations", 5,
        "--validation-fraction", 0.1, "--validation-holdout", 0.3, "--patience", 2,
        "--lam", 1.5, "--name", "cos16")
    model = bigcos.load_model(out)
    m = model.manifest
    assert model.name == "cos16" and m["parameters"]["patience"] == 2
    assert m["parameters"]["lam"] == 1.5 and m["parameters"]["validation_holdout"] == 0.3
    fit_users = m["counts"]["fit_users"]
    assert m["counts"]["validation_rows"] == round(0.1 * fit_users)
    assert m["counts"]["train_rows"] == fit_users - m["counts"]["validation_rows"]
    curve = m["optimisation"]["validation_recall_at_20_cos"]
    assert len(curve) >= 1 and all(0 <= r <= 1 for r in curve)


@pytest.mark.parametrize(("args", "message"), [
    (["--scaling", "banana"], "--scaling 'banana'"),
    (["--scaling", "sigma", "--remedy", "project-back", "--objective", "2"], "--scaling: "),
    (["--beta", "-1", "--remedy", "popularity"], "--beta: must be finite and >= 0"),
    (["--scaling", "random:0.1"], "SPREAD >= 1"),
    (["--objective", "2", "--scaling", "sigma"], "objective 1 only"),
    (["--lam", "-3"], "--lam: must be finite and >= 0"),
    (["--lam", "3:1"], "objective must be 1 or 2"),
    (["--remedy", "standardize", "--remedy", "popularity"], "pick one"),
    (["--remedy", "rows", "--remedy", "popularity"], "pick one"),
    (["--gamma", "nan", "--remedy", "rows"], "--gamma: must be finite and >= 0"),
    (["--model", "als", "--scaling", "sigma"], "closed-form models only"),
    (["--factors", "3"], "--model als only"),
    (["-k", "99", "--exact"], "-k: 99 is larger than the number of items"),
    (["--objective", "2", "--lam", "1e9", "--exact"], "no dimension is kept"),
    (["--scaling", "1,2"], "2 values given"),
    (["--model", "cosine", "--scaling", "sigma"], "--model cosine: "),
    (["--model", "cosine", "--iterations", "0"], "--iterations: must be an integer >= 1"),
    (["--model", "cosine", "--validation-fraction", "1.5"],
     "--validation-fraction: must be in [0, 1)"),
    (["--model", "cosine", "--validation-holdout", "0"], "--validation-holdout: must be in (0, 1)"),
    (["--model", "cosine", "--patience", "0"], "--patience: must be an integer >= 1"),
    (["--model", "cosine", "--tol", "nan"], "--tol: must be finite and >= 0"),
    (["--model", "cosine", "--lam", "2:3"], "--lam: --model cosine takes LAM or 1:LAM"),
    (["--model", "cosine", "-k", "99"], "-k: 99 is larger than min(training rows, items)"),
    (["--patience", "3"], "--patience: applies to --model cosine only"),
])
def test_bad_options_give_one_line_errors_and_exit_1(matrix_dir, tmp_path, args, message):
    result = run(matrix_dir, "--out", tmp_path / "m", "-k", 4, "--no-svd-cache", *args, ok=False)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_existing_output_needs_overwrite(matrix_dir, tmp_path):
    out = tmp_path / "m"
    run(matrix_dir, "--out", out, "-k", 3, "--exact", "--no-svd-cache")
    result = run(matrix_dir, "--out", out, "-k", 3, "--exact", "--no-svd-cache", ok=False)
    assert result.exit_code == 1 and "--overwrite" in result.output
    run(matrix_dir, "--out", out, "-k", 2, "--exact", "--no-svd-cache", "--overwrite")
    assert bigcos.load_model(out).item_embeddings.shape == (16, 2)


def test_help_ends_with_an_example():
    result = CliRunner().invoke(main, ["fit", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output
    result = CliRunner().invoke(main, ["bench", "fit", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output


def test_randomised_svd_path_reports_its_accuracy(matrix_dir, tmp_path):
    out = tmp_path / "m"
    run(matrix_dir, "--out", out, "-k", 4, "--objective", "2", "--lam", "0.5",
        "--dtype", "float64", "--svd-iterations", 6, "--no-svd-cache")
    model = bigcos.load_model(out)
    X = load_matrix(matrix_dir).train.toarray().astype(np.float64)
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    svd = model.manifest["svd"]
    assert svd["info"]["passes"] >= 1 and svd["residual_max"] < 1e-6
    np.testing.assert_allclose(model.dimensions.column("sigma").to_numpy(), s[:4], rtol=1e-8)
    B = Vt[:4].T * np.sqrt(s[:4] - 0.5)
    items = model.item_embeddings.astype(np.float64)
    assert rel_err(items @ items.T, B @ B.T) < RTOL


def test_bench_fit_runs_small_and_writes_json(tmp_path):
    import json

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "fit", "--users", 3000, "--items", 300,
                                       "--nnz", 30000, "-k", 8, "--als-iterations", 2,
                                       "--lam1", 10, "--lam2", 1, "--cosine-iterations", 3,
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["models"] for r in rows] == [7, 1, 1]
    assert all(r["seconds"] > 0 for r in rows)
    cosine = rows[2]
    assert cosine["name"].startswith("cosine-trained")
    assert 1 <= cosine["iterations"] <= 3 and cosine["passes_over_x"] >= cosine["iterations"]
    assert 0 < cosine["relative_loss"] < 1 and cosine["final_loss"] > 0
    table = result.output.splitlines()
    header = next(line for line in table if line.startswith("name"))
    assert "passes_over_x" in header and "final_loss" in header
    assert any(line.startswith("cosine-trained") for line in table)


def test_bench_fit_stays_cheap_to_import():
    import subprocess
    import sys

    code = ("import sys, bigcos.bench.fit; print(sorted(m for m in ('implicit', 'distributed',"
            " 'bigcos.cosine_fit', 'bigcos.models', 'scipy.optimize') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fit_with_an_explicit_client_runs_there_and_matches_threads(matrix_dir, tmp_path):
    """fit(client=None) never looks for the open client; fit(client=c) runs the row projection
    on c's workers, with the same embeddings either way."""
    from distributed import get_task_stream

    from bigcos.cluster import ClusterOptions, dask_client
    from bigcos.models import ModelSpec, Scaling, SVDOptions, fit

    specs = [ModelSpec(1, 2.0, Scaling("sigma")), ModelSpec(2, 0.5)]
    svd = SVDOptions(k=4, dtype="float64", block_rows=7)
    with dask_client(ClusterOptions(workers=2, processes=True)) as client:
        with get_task_stream(client) as threads_stream:
            here = fit(matrix_dir, tmp_path / "threads", specs, svd, cache_dir=None)
        with get_task_stream(client) as client_stream:
            there = fit(matrix_dir, tmp_path / "client", specs, svd, cache_dir=None,
                        client=client)
    assert threads_stream.data == []
    assert len(client_stream.data) >= 60 // 7  # at least the projection's blocks ran there
    for name in here.models:
        a, b = bigcos.load_model(here.models[name]), bigcos.load_model(there.models[name])
        np.testing.assert_array_equal(a.item_embeddings, b.item_embeddings)
        np.testing.assert_array_equal(a.user_embeddings, b.user_embeddings)


@pytest.mark.parametrize(("k", "message"), [(0, "k: must be >= 1, not 0"),
                                            (17, "k: 17 is larger than the number of items")])
def test_fit_errors_name_the_parameter_k(matrix_dir, tmp_path, k, message):
    from bigcos.errors import UserError
    from bigcos.models import ModelSpec, SVDOptions, fit

    with pytest.raises(UserError, match=message):
        fit(matrix_dir, tmp_path / "m", [ModelSpec(1)], SVDOptions(k=k, exact=True),
            cache_dir=None)
    assert not (tmp_path / "m").exists()


def test_load_model_refuses_an_embedding_file_planted_with_nan(matrix_dir, tmp_path):
    out = tmp_path / "m"
    run(matrix_dir, "--out", out, "-k", 3, "--exact", "--no-svd-cache")
    users = pq.read_table(out / "users.parquet")
    emb = np.stack(users.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    emb[[4, 9], 1] = np.nan
    emb[11, 0] = np.inf
    planted = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), 3)
    pq.write_table(users.set_column(1, "embedding", planted), out / "users.parquet")
    first = users.column("user_id")[4].as_py()
    with pytest.raises(bigcos.UserError) as err:
        bigcos.load_model(out)
    text = str(err.value)
    assert "\n" not in text and str(out / "users.parquet") in text
    assert "3 of 60 embedding rows hold NaN or inf" in text and repr(first) in text


def test_als_that_diverges_is_refused_before_anything_is_written(matrix_dir, tmp_path):
    out = tmp_path / "als"
    result = run(matrix_dir, "--out", out, "--model", "als", "--factors", 4,
                 "--als-iterations", 3, "--regularization", 0, "--alpha", 1e20, ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "ALS model 'als'" in errors[0], result.output
    assert "embedding rows hold NaN or inf (first: " in errors[0]
    assert not out.exists()


def test_without_lam_the_fit_validates_it_and_says_so(heldout_matrix_dir, tmp_path):
    out = tmp_path / "v"
    run(heldout_matrix_dir, "--out", out, "-k", 4, "--exact", "--all", "--no-svd-cache")
    sym = bigcos.load_model(out / "obj1-symmetric").manifest
    assert sym["parameters"]["lam_source"] == "validated"
    assert sym["parameters"]["lam"] == sym["parameters"]["lam_validated"]["dot"]
    data = load_matrix(heldout_matrix_dir)
    n_val = sym["counts"]["validation_users"]
    assert n_val > 0 and sym["counts"]["fit_users"] == (~data.heldout_users).sum() - n_val
    fixed = tmp_path / "f"
    run(heldout_matrix_dir, "--out", fixed, "-k", 4, "--exact", "--lam", "1:3", "--no-svd-cache")
    assert bigcos.load_model(fixed).manifest["parameters"]["lam_source"] == "fixed"
    assert bigcos.load_model(fixed).manifest["parameters"]["lam"] == 3.0
