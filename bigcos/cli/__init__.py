"""The ``bigcos`` command line: a thin layer over the Python API.

Each command lives in its own module of this package and is registered in ``COMMANDS``.
A :class:`bigcos.errors.UserError` raised anywhere becomes a one-line ``Error: ...`` and exit
status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from bigcos import __version__
from bigcos.errors import UserError
from bigcos.redaction import RedactingFilter, redact_text

# (module in bigcos.cli, attribute): one entry per command, in the order of the pipeline.
COMMANDS = [
    ("ingest", "ingest"),
    ("fit", "fit"),
    ("neighbors", "neighbors"),
    ("neighbors", "similar"),
    ("simulate", "simulate"),
    ("figure1", "figure1"),
    ("report", "report"),
    ("audit", "audit"),
    ("init", "init"),
    ("run", "run"),
    ("bench", "bench"),
]


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise click.ClickException(redact_text(_with_flag(ctx, exc))) from None


def _with_flag(ctx: click.Context, exc: UserError) -> str:
    """The error's message, plus the command-line flag of the parameter it names."""
    from bigcos.options import flag_for_parameter

    command = ctx.command
    if isinstance(command, click.Group) and ctx.invoked_subcommand:
        command = command.get_command(ctx, ctx.invoked_subcommand)
    flag = flag_for_parameter(command, exc.parameter) if exc.parameter else None
    return f"{exc} (option {flag})" if flag else str(exc)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="bigcos")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def main(verbose: int, quiet: bool) -> None:
    """bigcos: is cosine similarity of your embeddings really about similarity?

    Sparse, large-scale batch jobs after Steck, Ekanadham & Kallus (2024): interaction logs
    to CSR, closed-form embeddings under every admissible rescaling, blocked top-N
    neighbours by cosine and dot product on Dask, and reports comparing them.
    """
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    level = logging.ERROR if quiet else levels[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # log lines never show a secret
        handler.addFilter(RedactingFilter())
    # Dask's own INFO chatter only with -vv (the commands print the dashboard link): for this
    # process's distributed loggers, and via the environment for worker processes it starts
    dask_level = level if verbose >= 2 else max(level, logging.WARNING)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", logging.getLevelName(dask_level).lower())
    if "dask" in sys.modules:  # imported already (by a library): let it read the variable
        import dask.config

        dask.config.refresh()
    for name in ["distributed", *logging.Logger.manager.loggerDict]:
        if name.startswith("distributed"):
            logging.getLogger(name).setLevel(dask_level)


for _module, _attr in COMMANDS:
    main.add_command(getattr(importlib.import_module(f"bigcos.cli.{_module}"), _attr))
