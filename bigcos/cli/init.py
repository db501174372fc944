"""``bigcos init``: a starter job file for the user's own log, or a copy of a bundled example."""

from __future__ import annotations

import json
import os
import re
from importlib.resources import files
from pathlib import Path

import click

from bigcos import storage
from bigcos.errors import UserError

JOB_FILE = "job.toml"
PLACEHOLDER_LOG = "path/to/interactions.parquet"

STARTER = """\
# bigcos job file, written by `bigcos init`. Run it with:   bigcos run {job_file}
# `bigcos run {job_file} --show` prints every setting with its default; a commented line shows
# a setting's default. Relative paths are relative to this file; ${{VAR}} is expanded.
{todo}
[job]
name = {name}
out = "bigcos-out"                  # output root: bigcos-out/<dataset>/<stage>

# [dask]                            # default: a LocalCluster, one worker process per core
# scheduler = "tcp://host:8786"     # an existing cluster (its workers must see `out`)
# workers = 4
# memory_limit = "4GiB"             # per worker
# spill_dir = "/scratch/bigcos"

[fit]
k = 64                              # embedding dimension (rank of the truncated SVD)
lam1 = 100.0                        # objective 1 regulariser, acts on sigma^2
lam2 = 10.0                         # objective 2 regulariser, acts on sigma
# random_d = 3                      # random rescalings D in the D-sensitivity study
# remedies = ["standardize", "popularity"]
# als = true                        # implicit ALS beside the closed forms

[neighbors]
kinds = ["item-item", "user-item"]  # also "user-user"
n = 50                              # neighbours per query
# metrics = ["cos", "dot"]
# memory_budget = "512MiB"          # per block of the top-N kernel

# [report]
# depth = 10                        # N of Jaccard@N, RBO and precision@N

[[dataset]]
name = {name}
{log_line}
{items_line}

[dataset.ingest]                    # how the log becomes a users x items matrix
{user_col}
{item_col}
{value_col}
{time_col}
# threshold = 4.0                   # explicit ratings: keep value >= 4 as 1; omit if implicit
min_user = 5                        # drop users and items with fewer interactions
min_item = 5
split = "users"                     # hold out users to score neighbours (Recall@N)
heldout_users = 0.2
"""


def _toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(text, ensure_ascii=False)


def _setting(key: str, value: str, comment: str = "", commented: bool = False) -> str:
    """``key = "value"`` with its comment aligned like the template's other lines."""
    line = f"{'# ' if commented else ''}{key} = {_toml_string(value)}"
    return f"{line:<35} # {comment}" if comment else line


def _path_from(job_dir: Path, path: Path | storage.StorePath) -> str:
    """``path`` as the job file should name it: relative when it lies under ``job_dir``
    (a URL as it is)."""
    if isinstance(path, storage.StorePath):
        return str(path)
    path = path.resolve()
    try:
        return path.relative_to(job_dir.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def bundled_jobs() -> Path:
    """The example jobs folder: package data when installed, else the checkout's ``jobs/``."""
    installed = files("bigcos") / "jobs"
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "jobs"


def _examples() -> list[str]:
    return sorted(p.stem for p in bundled_jobs().glob("*.toml"))


def _check_columns(log: Path, columns: dict[str, str], given: set[str]) -> None:
    """User and item columns must be in the log, and so must value/time columns named by hand."""
    from bigcos.io import open_dataset

    names = open_dataset(log).schema.names
    for role, column in columns.items():
        if column not in names and (role in ("user_col", "item_col") or role in given):
            flag = "--" + role.replace("_", "-")
            raise UserError(f"{log}: column '{column}' ({flag}) not found; "
                            f"columns are {', '.join(names)}")


def starter_job(job_dir: Path, log: Path | None, items: Path | None, name: str | None,
                columns: dict[str, str], given: set[str]) -> str:
    """The text of a commented starter job for ``log`` (a placeholder when ``log`` is None)."""
    if log is not None:
        if not log.exists():
            raise UserError(f"log: {log} does not exist")
        _check_columns(log, columns, given)
    if items is not None and not items.exists():
        raise UserError(f"items: {items} does not exist")
    default_name = storage.resolve(log).stem if log is not None else "my-data"
    dataset = (name or default_name).replace("/", "-")
    todo = ("" if log is not None else
            f"# TODO: set `log` below to your interaction log (now a placeholder: "
            f"{PLACEHOLDER_LOG})\n# and the column names in `ingest`.\n")
    log_value = _path_from(job_dir, log) if log is not None else PLACEHOLDER_LOG
    items_value = _path_from(job_dir, items) if items is not None else "path/to/items.parquet"
    comments = {"value_col": "interaction strength; if absent every row counts 1",
                "time_col": 'needed only by split = "time" and duplicates = "last"'}
    return STARTER.format(
        job_file=JOB_FILE, todo=todo, name=_toml_string(dataset),
        log_line=_setting("log", log_value, "Parquet file or folder of Parquet files"),
        items_line=_setting("items", items_value, "item metadata (titles, labels): optional",
                            commented=items is None),
        **{k: _setting(k, v, comments.get(k, "")) for k, v in columns.items()})


def example_job(example: str) -> str:
    """A bundled example job with its relative ``log``/``items`` paths made absolute and its
    output root put beside the new job file (``bigcos-out/<name>``)."""
    source = bundled_jobs() / f"{example}.toml"

    def rewrite(match: re.Match) -> str:
        indent, key, value = match.groups()
        if key == "out":
            value = f"bigcos-out/{Path(value).name}"
        elif not value.startswith(("/", "~", "$")):
            value = Path(os.path.normpath(source.parent / value)).as_posix()
        return f"{indent}{key} = {_toml_string(value)}"

    text = re.sub(r'^(\s*)(log|items|out) = "([^"]*)"', rewrite, source.read_text(),
                  flags=re.MULTILINE).replace(f"jobs/{example}.toml", JOB_FILE)
    return f"# Written by `bigcos init --example {example}` from {source}\n{text}"


def _write_validated(target: Path, text: str, validate: bool) -> None:
    """Write ``text`` to ``target`` atomically, after loading it with bigcos.pipeline.load_job."""
    from bigcos.pipeline import load_job

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    try:
        if validate:
            load_job(tmp)
    except UserError as exc:
        tmp.unlink()
        raise UserError(str(exc).replace(str(tmp), str(target))) from None
    os.replace(tmp, target)


@click.command()
@click.argument("directory", required=False, default=".",
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--log", "log_path", type=click.Path(path_type=str), default=None,
              help="Your interaction log (Parquet file or folder); the job is then checked.")
@click.option("--items", "items_path", type=click.Path(path_type=str), default=None,
              help="Item metadata Parquet (titles, labels) for reports.")
@click.option("--name", default=None, help="Dataset name (default: from the log's name).")
@click.option("--user-col", default=None, help="Column of user ids [user_id].")
@click.option("--item-col", default=None, help="Column of item ids [item_id].")
@click.option("--value-col", default=None,
              help="Column of interaction strengths [value; if absent every row counts 1].")
@click.option("--time-col", default=None, help="Column of timestamps [timestamp].")
@click.option("--example", type=click.Choice(_examples()), default=None, metavar="NAME",
              help="Write this bundled example job instead (paths made to work from "
                   f"DIRECTORY): {', '.join(_examples())}.")
@click.option("--force", is_flag=True, help="Overwrite an existing DIRECTORY/job.toml.")
def init(directory, log_path, items_path, name, user_col, item_col, value_col, time_col,
         example, force):
    """Write DIRECTORY/job.toml (DIRECTORY defaults to .): a commented starter job for your
    own interaction log, to edit and run with `bigcos run`.

    With --log the job names that log and the columns given (or the defaults user_id, item_id,
    value, timestamp), and is checked: the log and its columns exist and `bigcos run` would
    load it. Without --log the log is a placeholder to fill in. Refuses to overwrite an
    existing job file unless --force.

    \b
    Example:
      bigcos init myjob --log events.parquet --user-col uid --item-col sku \\
          --value-col clicks
      bigcos run myjob/job.toml
    """
    log_path, items_path = (None if p is None else storage.as_path(p)  # a path or a URL
                            for p in (log_path, items_path))
    target = directory / JOB_FILE
    if target.exists() and not force:
        raise UserError(f"{target} exists; use --force to overwrite it")
    columns = {"user_col": user_col or "user_id", "item_col": item_col or "item_id",
               "value_col": value_col or "value", "time_col": time_col or "timestamp"}
    given = {k for k, v in zip(columns, (user_col, item_col, value_col, time_col), strict=True)
             if v}
    if example and (log_path or items_path or name or given):
        raise UserError("--example writes a bundled job as it is; give it without "
                        "--log/--items/--name/--*-col")
    directory.mkdir(parents=True, exist_ok=True)
    if example:
        text = example_job(example)
    else:
        text = starter_job(directory, log_path, items_path, name, columns, given)
    _write_validated(target, text, validate=log_path is not None)
    click.echo(f"wrote {target}")
    if log_path is None and example is None:
        click.echo(f"next: set `log` (and the columns) in {target}, then: bigcos run {target}")
    else:
        click.echo(f"next: bigcos run {target}")
