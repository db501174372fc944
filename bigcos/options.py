"""One source for every option: a stage's frozen dataclass holds its defaults, validation and help.

The same dataclass feeds the three ways of setting an option:

- **Python**: construct it (``IngestOptions(min_user=5)``); ``__post_init__`` validates and
  raises :class:`bigcos.errors.UserError` naming the *parameter*;
- **TOML job files**: :func:`from_table` checks keys and types against the annotations;
- **the command line**: :func:`click_options` turns each field into a click option whose
  default and help text come from the field, and hands the command one dataclass instance.

A field declares its help text (and, optionally, its command-line spelling) with :func:`opt`::

    @dataclass(frozen=True)
    class NeighborsOptions:
        n: int = opt(50, "Neighbours per query.", flags=("-N",), minimum=1)

This module imports nothing of bigcos but :mod:`bigcos.errors`, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

from bigcos.errors import UserError

_META = "bigcos"


@dataclasses.dataclass(frozen=True)
class OptionMeta:
    """What the command line needs to know about one field.

    ``flags``: the option's spellings (default ``--field-name``); ``deprecated``: older
    spellings still accepted for one version, with a warning; ``speed_only``: the option
    changes speed or memory, never results (so it is not part of a stage's key).
    """

    help: str
    flags: tuple[str, ...] = ()
    deprecated: tuple[str, ...] = ()
    minimum: float | None = None
    speed_only: bool = False
    metavar: str | None = None


def opt(default: Any = dataclasses.MISSING, help: str = "", *, flags: Iterable[str] = (),
        deprecated: Iterable[str] = (), minimum: float | None = None, speed_only: bool = False,
        metavar: str | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its help text and command-line spelling.

    Parameters
    ----------
    default, default_factory
        As for :func:`dataclasses.field`.
    help
        One sentence for ``--help`` and ``bigcos run --show``.
    flags
        Command-line spellings; default ``--<name with dashes>``.
    deprecated
        Older spellings still accepted (with a deprecation warning).
    minimum
        Smallest allowed value of a number (checked by :func:`check_minimums`).
    speed_only
        True when the option changes speed or memory only, never results.
    metavar
        The value's placeholder in ``--help``.
    """
    meta = OptionMeta(help, tuple(flags), tuple(deprecated), minimum, speed_only, metavar)
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={_META: meta})


def meta(f: dataclasses.Field) -> OptionMeta:
    """The :class:`OptionMeta` of a field (an empty one for fields declared without opt)."""
    return f.metadata.get(_META) or OptionMeta("")


def help_of(cls: type, name: str) -> str:
    """The help text of field ``name`` of ``cls`` (for options declared by hand)."""
    return meta({f.name: f for f in dataclasses.fields(cls)}[name]).help


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of ``cls``."""
    return defaults(cls)[name]


def flag_of(cls: type, name: str) -> str:
    """The main command-line spelling of field ``name`` of ``cls``."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    flags = meta(f).flags
    long_flags = [x for x in flags if x.startswith("--")]
    return (long_flags or list(flags) or ["--" + name.replace("_", "-")])[0]


def defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of a dataclass whose fields all have defaults."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def check_minimums(obj: Any) -> None:
    """Raise a UserError naming the first field below its declared ``minimum``."""
    for f in dataclasses.fields(obj):
        low = meta(f).minimum
        value = getattr(obj, f.name)
        if low is not None and value is not None and value < low:
            raise UserError(f"{f.name} must be >= {low:g}, got {value!r}", parameter=f.name)


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6,
               "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """Bytes of a size like ``512MiB``, ``1GB`` or ``2e9`` (units as ``dask.utils.parse_bytes``).

    Raises
    ------
    ValueError
        Naming the text, when it is not a size.
    """
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"'{text}' is not a size like 512MiB or 1GB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


# --------------------------------------------------------------------------- TOML / dicts
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check a TOML value against a field annotation; lists become tuples."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in args:
            if alt is type(None):
                continue
            try:
                return coerce(value, alt, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if len(errors) == 1 else
                        f"{where}: {value!r} is none of {', '.join(map(_type_name, args))}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise UserError(f"{where}: expected a {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} at {where}")


def from_table(cls: type, table: Any, where: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from a TOML table; unknown keys and wrong types are UserErrors.

    ``base`` (an instance of ``cls``) supplies the values the table does not set.
    """
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {n: getattr(base, n) for n in names} if base is not None else {}
    for key, value in table.items():
        if key not in names:
            raise UserError(f"{where}: unknown key '{key}' (known: {', '.join(names)})")
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except UserError as exc:
        raise UserError(f"{where}: {exc}", parameter=exc.parameter) from None


# --------------------------------------------------------------------------- command line
def _click_param(f: dataclasses.Field, tp: Any, default: Any, flags: list[str],
                 hidden: bool = False):
    """(click option declarations, keyword arguments) for one field under ``flags``."""
    import click

    m = meta(f)
    kwargs: dict[str, Any] = {"help": m.help, "show_default": True, "metavar": m.metavar,
                              "hidden": hidden}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        long_flag = next(x for x in flags if x.startswith("--"))
        flags = [f"{long_flag}/--no-{long_flag[2:]}"]
        kwargs["default"] = None if hidden else default
    elif origin in (tuple, list):
        inner = args[0]
        choices = typing.get_args(inner) if typing.get_origin(inner) is Literal else None
        kwargs.update(multiple=True, default=None, callback=_comma_list(choices, inner),
                      show_default=",".join(map(str, default or ())) or "none")
        if m.metavar is None:
            kwargs["metavar"] = "A,B,..." if choices is None else ",".join(choices)
    elif origin is Literal:
        kwargs.update(type=click.Choice([str(a) for a in args]),
                      default=None if hidden else default)
    else:
        kwargs.update(type={int: int, float: float, str: str}[tp],
                      default=None if hidden else default)
        if default is None:
            kwargs["show_default"] = False
    if hidden:
        kwargs["show_default"] = False
    return flags, kwargs


def _comma_list(choices: tuple | None, inner: Any) -> Callable:
    def split(ctx, param, value):
        if not value:
            return None
        import click

        out = [v.strip() for chunk in value for v in str(chunk).split(",") if v.strip()]
        if choices is not None:
            bad = [v for v in out if v not in choices]
            if bad:
                raise click.BadParameter(f"{bad[0]!r} is not one of {', '.join(choices)}")
        try:
            return tuple(dict.fromkeys(inner(v) if inner in (int, float) else v for v in out))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return split


def _deprecated_dest(name: str, flag: str) -> str:
    return f"{name}__old_{flag.lstrip('-').replace('-', '_')}"


def click_options(cls: type, *, into: str, exclude: Iterable[str] = (),
                  overrides: dict[str, Any] | None = None) -> Callable:
    """Decorator: one click option per field of ``cls``; the command gets ``into=cls(...)``.

    Defaults and help come from the dataclass, so ``--help`` and the dataclass cannot
    disagree. A field's deprecated spellings are hidden options that still work and print a
    deprecation note on stderr.

    Parameters
    ----------
    cls
        A dataclass whose fields all have defaults.
    into
        Name of the command's keyword argument that receives the instance.
    exclude
        Fields not offered on the command line (they keep their defaults).
    overrides
        ``{field: default}`` for this command only.
    """
    import click

    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in set(exclude)]
    base = {**defaults(cls), **(overrides or {})}

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {}
            for f in fields:
                value = kwargs.pop(f.name)
                for old in meta(f).deprecated:
                    old_value = kwargs.pop(_deprecated_dest(f.name, old))
                    if old_value is not None:
                        click.echo(f"Warning: {old} is deprecated and will be removed in the "
                                   f"next version; use {flag_of(cls, f.name)}", err=True)
                        value = old_value
                if value is None and typing.get_origin(hints[f.name]) in (tuple, list):
                    value = base[f.name]
                values[f.name] = value
            try:
                kwargs[into] = cls(**{**base, **values})
            except UserError as exc:
                raise UserError(str(exc), parameter=exc.parameter) from None
            return command(*args, **kwargs)

        for f in reversed(fields):
            for old in meta(f).deprecated:
                decls, kw = _click_param(f, hints[f.name], base[f.name], [old], hidden=True)
                wrapper = click.option(*decls, _deprecated_dest(f.name, old), **kw)(wrapper)
            flags = list(meta(f).flags) or ["--" + f.name.replace("_", "-")]
            decls, kw = _click_param(f, hints[f.name], base[f.name], flags)
            wrapper = click.option(*decls, f.name, **kw)(wrapper)
        return wrapper

    return decorate


def flag_for_parameter(command: Any, parameter: str) -> str | None:
    """The command-line flag of a dataclass parameter on a click command (None if absent)."""
    for p in getattr(command, "params", []):
        if p.name == parameter and getattr(p, "opts", None):
            return max(p.opts, key=len)
    return None
