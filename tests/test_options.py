"""bigcos.options: one dataclass feeds Python, TOML and the command line."""

from dataclasses import dataclass
from typing import Literal

import click
import pytest
from click.testing import CliRunner

from bigcos.cli import _Group
from bigcos.errors import UserError
from bigcos.options import check_minimums, click_options, defaults, flag_of, from_table, opt


@dataclass(frozen=True)
class Toy:
    k: int = opt(64, "Dimensions.", flags=("-k",), deprecated=("--dims",), minimum=1)
    lam: float = opt(2.5, "Shrinkage.", minimum=0)
    kinds: tuple[Literal["a", "b", "c"], ...] = opt(("a", "b"), "Kinds.")
    name: str | None = opt(None, "A name.")
    exact: bool = opt(False, "Exact path.")
    mode: Literal["x", "y"] = opt("x", "Mode.")

    def __post_init__(self):
        check_minimums(self)


def _cli():
    @click.group(cls=_Group)
    def top():
        pass

    @top.command()
    @click_options(Toy, into="toy")
    def show(toy):
        click.echo(repr(toy))

    return top


def test_defaults_and_help_come_from_the_dataclass():
    result = CliRunner().invoke(_cli(), ["show", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for fragment in ("-k INTEGER", "Dimensions. [default: 64]", "[default: 2.5]",
                     "[default: (a,b)]", "--exact / --no-exact", "[default: x]"):
        assert fragment in text, fragment
    assert "--dims" not in text  # deprecated spellings are hidden
    result = CliRunner().invoke(_cli(), ["show"])
    assert result.output.strip() == repr(Toy())


def test_values_lists_and_choices():
    result = CliRunner().invoke(_cli(), ["show", "-k", "5", "--kinds", "c,a", "--kinds", "b",
                                         "--exact", "--mode", "y", "--name", "n1"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr(Toy(k=5, kinds=("c", "a", "b"), exact=True, mode="y",
                                             name="n1"))
    bad = CliRunner().invoke(_cli(), ["show", "--kinds", "a,z"])
    assert bad.exit_code == 2 and "'z' is not one of a, b, c" in bad.output


def test_deprecated_flag_still_works_and_warns():
    result = CliRunner().invoke(_cli(), ["show", "--dims", "7"])
    assert result.exit_code == 0, result.output
    assert repr(Toy(k=7)) in result.stdout
    assert "--dims is deprecated" in result.stderr and "use -k" in result.stderr


def test_validation_names_the_parameter_and_the_cli_adds_the_flag():
    with pytest.raises(UserError, match="^k must be >= 1, got 0$") as info:
        Toy(k=0)
    assert info.value.parameter == "k"
    result = CliRunner().invoke(_cli(), ["show", "-k", "0"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: k must be >= 1, got 0 (option -k)"


def test_toml_tables():
    assert from_table(Toy, {"k": 3, "kinds": ["c"]}, "[toy]") == Toy(k=3, kinds=("c",))
    with pytest.raises(UserError, match=r"\[toy\]: unknown key 'kk'"):
        from_table(Toy, {"kk": 3}, "[toy]")
    with pytest.raises(UserError, match=r"\[toy\].k: expected an integer, got 'x'"):
        from_table(Toy, {"k": "x"}, "[toy]")
    with pytest.raises(UserError, match=r"^\[toy\]: lam must be >= 0"):
        from_table(Toy, {"lam": -1}, "[toy]")
    assert defaults(Toy)["kinds"] == ("a", "b") and flag_of(Toy, "k") == "-k"


# --------------------------------------------------------------------------- one source
def _help_defaults(command: list[str]) -> dict[str, str]:
    """{option: the default shown in ``bigcos COMMAND --help``}."""
    from bigcos.cli import main

    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    entries: list[str] = []
    for line in result.output.splitlines():  # an option's entry may wrap over several lines
        if line.startswith("  -"):
            entries.append(line)
        elif entries and line.startswith("   "):
            entries[-1] += ("" if entries[-1].endswith("-") else " ") + line.strip()
    shown = {}
    for entry in entries:
        if "[default:" in entry:
            value = entry.split("[default:")[1].split("]")[0]
            shown[entry.split()[0].rstrip(",")] = value.split(";")[0].strip()
    return shown


def test_fit_help_run_show_and_the_dataclasses_agree(tmp_path):
    import dataclasses
    import json

    from bigcos.cli import main
    from bigcos.cluster import ClusterOptions
    from bigcos.column_remedies import Preprocessing
    from bigcos.cosine_fit import CosineOptions
    from bigcos.jobspec import FitConfig, NeighborsConfig
    from bigcos.models import ALSOptions, SVDOptions
    from bigcos.validation import Selection

    fit = FitConfig()
    # the job defaults are the library's own defaults
    assert fit.k == SVDOptions().k and fit.beta == Preprocessing().beta
    assert fit.gamma == Preprocessing().gamma and fit.seed == SVDOptions().seed
    assert fit.als_iterations == ALSOptions().iterations
    assert fit.als_regularization is None  # validated unless a job or flag fixes it
    assert fit.cosine_iterations == CosineOptions().iterations
    assert fit.validation_fraction == Selection().fraction == CosineOptions().validation_fraction
    assert fit.lam1 is None and fit.lam2 is None  # validated unless a job or flag fixes them
    # bigcos fit --help shows the same defaults
    shown = _help_defaults(["fit"])
    for flag, value in {"-k": fit.k, "--beta": fit.beta, "--gamma": fit.gamma,
                        "--seed": fit.seed, "--als-iterations": fit.als_iterations}.items():
        assert shown[flag] == str(value), flag
    # bigcos neighbors --help and the dask options too
    nb = NeighborsConfig()
    shown = _help_defaults(["neighbors"])
    assert "--regularization" not in _help_defaults(["fit"])  # unset: validated
    assert shown["-N"] == str(nb.n) and shown["--memory-budget"] == nb.memory_budget
    assert shown["--kind"] == ",".join(nb.kinds) and shown["--metric"] == ",".join(nb.metrics)
    assert shown["--threads-per-worker"] == str(ClusterOptions().threads_per_worker)
    assert shown["--memory-limit"] == ClusterOptions().memory_limit
    # bigcos ingest --help shows IngestOptions' defaults
    from bigcos.matrix import IngestOptions

    shown, ingest = _help_defaults(["ingest"]), IngestOptions()
    for name in ("user_col", "item_col", "value_col", "time_col", "duplicates", "min_user",
                 "min_item", "split", "test_fraction", "heldout_users", "seed"):
        assert shown["--" + name.replace("_", "-")] == str(getattr(ingest, name)), name
    # bigcos run --show prints the same dataclasses for a job that sets nothing
    job = tmp_path / "job.toml"
    job.write_text('[[dataset]]\nname = "d"\nlog = "log.parquet"\n')
    (tmp_path / "log.parquet").write_bytes(b"")  # only its existence is checked by --show
    result = CliRunner().invoke(main, ["run", str(job), "--show"])
    assert result.exit_code == 0, result.output
    shown_job = json.loads(result.output)
    assert shown_job["datasets"][0]["fit"] == json.loads(json.dumps(dataclasses.asdict(fit)))
    assert shown_job["neighbors"] == json.loads(json.dumps(dataclasses.asdict(nb)))
    assert shown_job["dask"] == json.loads(json.dumps(dataclasses.asdict(ClusterOptions())))


@pytest.mark.parametrize("text", ["512MiB", "1GiB", "2GB", "100", "1.5kB", "3e6", "4 GiB", "7b"])
def test_sizes_parse_as_dask_parses_them(text):
    from dask.utils import parse_bytes

    from bigcos.options import parse_size

    assert parse_size(text) == parse_bytes(text)


def test_a_bad_size_names_itself():
    from bigcos.options import parse_size

    with pytest.raises(ValueError, match="'12 parsecs' is not a size"):
        parse_size("12 parsecs")
