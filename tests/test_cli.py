"""The command-line contract: help everywhere, one-line errors, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bigcos
from bigcos.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def all_commands(group=main, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if hasattr(cmd, "commands"):
            yield from all_commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    cmd = dict(all_commands())[path]
    if not hasattr(cmd, "commands"):
        assert "Example" in result.output, f"bigcos {' '.join(path)} --help shows no example"


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=" ".join)
def test_every_command_is_documented_in_readme(path):
    assert f"bigcos {' '.join(path)}" in README.read_text()


def test_version_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "bigcos", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert bigcos.__version__ in out


def run(args):
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def assert_one_line_error(code, output, *needles):
    assert code != 0
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def write(path: Path, **cols) -> Path:
    pq.write_table(pa.table(cols), path)
    return path


GOOD = dict(user_id=[1, 2, 2], item_id=[10, 10, 11], value=np.float32([1, 2, 3]),
            timestamp=[1, 2, 3])


@pytest.mark.parametrize("case, needles", [
    ("missing file", ["nope.parquet", "no such file"]),
    ("not parquet", ["junk.parquet", "cannot be read as Parquet"]),
    ("missing column", ["'user_id'", "not found", "columns are"]),
    ("mistyped column", ["'item_id'", "integer or string"]),
    ("null ids", ["'user_id'", "null ids"]),
    ("nan value", ["'value'", "non-finite", "nan"]),
    ("negative value", ["'value'", "negative value -1"]),
    ("empty log", ["empty.parquet", "no rows"]),
    ("empty directory", ["logdir", "holds no Parquet file"]),
    ("bad value type", ["'value'", "must be numeric"]),
    ("time split without timestamps", ["timestamp"]),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case, needles):
    extra = []
    if case == "missing file":
        log = tmp_path / "nope.parquet"
    elif case == "not parquet":
        log = tmp_path / "junk.parquet"
        log.write_text("user_id,item_id\n1,2\n")
    elif case == "missing column":
        log = write(tmp_path / "l.parquet", uid=[1], item_id=[1])
    elif case == "mistyped column":
        log = write(tmp_path / "l.parquet", user_id=[1], item_id=[1.5])
    elif case == "null ids":
        log = write(tmp_path / "l.parquet", user_id=[1, None], item_id=[1, 2])
    elif case == "nan value":
        log = write(tmp_path / "l.parquet", user_id=[1, 2], item_id=[1, 2], value=[1.0, np.nan])
    elif case == "negative value":
        log = write(tmp_path / "l.parquet", user_id=[1, 2], item_id=[1, 2], value=[1.0, -1.0])
    elif case == "empty log":
        log = tmp_path / "empty.parquet"
        pq.write_table(pa.table({"user_id": pa.array([], pa.int64()),
                                 "item_id": pa.array([], pa.int64())}), log)
    elif case == "empty directory":
        log = tmp_path / "logdir"
        log.mkdir()
    elif case == "bad value type":
        log = write(tmp_path / "l.parquet", user_id=[1], item_id=[1], value=["a"])
    else:
        log = write(tmp_path / "l.parquet", user_id=[1, 1], item_id=[1, 2])
        extra = ["--split", "time"]
    out = tmp_path / "out"
    code, output = run(["ingest", str(log), "--out", str(out), *extra])
    assert_one_line_error(code, output, *needles)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_output_needs_overwrite(tmp_path):
    log = write(tmp_path / "l.parquet", **GOOD)
    out = tmp_path / "out"
    assert run(["ingest", str(log), "--out", str(out)])[0] == 0
    before = (out / "manifest.json").read_text()
    code, output = run(["ingest", str(log), "--out", str(out)])
    assert_one_line_error(code, output, str(out), "--overwrite")
    assert (out / "manifest.json").read_text() == before
    code, output = run(["ingest", str(log), "--out", str(out), "--overwrite", "--threshold", "2"])
    assert code == 0, output
    assert bigcos.load_matrix(out).train.nnz == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.parquet", "out"]


def test_failure_while_writing_keeps_previous_output(tmp_path, monkeypatch):
    log = write(tmp_path / "l.parquet", **GOOD)
    out = tmp_path / "out"
    assert run(["ingest", str(log), "--out", str(out)])[0] == 0

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("bigcos.matrix.save", boom)
    with pytest.raises(OSError):
        bigcos.ingest(log, out, overwrite=True)
    assert bigcos.load_matrix(out).train.nnz == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.parquet", "out"]


def test_load_matrix_on_a_wrong_directory(tmp_path):
    with pytest.raises(bigcos.UserError, match="not a matrix directory"):
        bigcos.load_matrix(tmp_path)



def _commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_help_fits_80_columns_and_keeps_its_examples_verbatim():
    for path, command in _commands(main):
        result = CliRunner().invoke(main, [*path, "--help"], terminal_width=80)
        assert result.exit_code == 0, path
        long = [line for line in result.output.splitlines() if len(line) > 80]
        assert not long, (path, long)
        lines = {line.strip() for line in result.output.splitlines()}
        examples = [line.strip() for line in (command.help or "").splitlines()
                    if line.strip().startswith("bigcos ")]
        assert examples, f"bigcos {' '.join(path)} --help has no example"
        for example in examples:
            assert example in lines, (path, example)
