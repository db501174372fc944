"""Keep credentials out of everything bigcos writes: manifests, stage files, logs, messages.

A value is a *secret* when it is the value of an environment variable whose name matches
:data:`SECRET_NAME` (``KEY``, ``SECRET``, ``TOKEN``, ``PASSWORD``, ``PASSWD``, ``CREDENTIAL``,
any case): whether a job file expanded it (``${AWS_SECRET_ACCESS_KEY}``, remembered by
:func:`expandvars`) or a shell put it on the command line. Values shorter than
:data:`MIN_SECRET_CHARS` and values that are existing absolute paths (``GOOGLE_APPLICATION_
CREDENTIALS=/etc/creds.json`` names where a credential lives, it is not one) are left alone,
so that redaction never garbles ordinary text. Besides those values, :func:`redact_text`
removes the password of a URL (``scheme://user:password@host``) and the value of a URL query
parameter named like a secret (``?token=…``, ``&sig=…``), and :func:`redact_argv` the value
after a command-line flag named like one (``--api-token X``, ``--password=X``).

The writers call :func:`redact` on what they serialise; the run itself keeps the real values.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
MASK = "***"
MIN_SECRET_CHARS = 6

_expanded: set[str] = set()  # secret values a job file expanded in this process
_ENV_VAR = re.compile(r"\$(\w+)|\$\{([^}]*)\}")
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s\"']*):[^@/\s\"']*@")
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:[^=&\s\"'#]*(?:key|secret|token|password|passwd|credential)"
    r"[^=&\s\"'#]*|sig|signature)=)[^&\s\"'#]+", re.IGNORECASE)


def _is_secret_value(value: str) -> bool:
    return len(value) >= MIN_SECRET_CHARS and not (os.path.isabs(value)
                                                  and os.path.exists(value))


def expandvars(text: str) -> str:
    """``os.path.expandvars(text)``, remembering the values of secret-named variables it
    expanded so that every later output of this process redacts them."""
    for match in _ENV_VAR.finditer(text):
        name = match.group(1) or match.group(2)
        value = os.environ.get(name)
        if value and SECRET_NAME.search(name) and _is_secret_value(value):
            _expanded.add(value)
    return os.path.expandvars(text)


def secret_values() -> list[str]:
    """The values to redact, longest first: those :func:`expandvars` remembered and those of
    secret-named variables in the environment now."""
    values = set(_expanded)
    values.update(v for k, v in os.environ.items()
                  if SECRET_NAME.search(k) and _is_secret_value(v))
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with secret values, URL passwords and secret URL parameters replaced by
    :data:`MASK`. ``secrets``: :func:`secret_values` unless given (for repeated calls)."""
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(rf"\g<head>:{MASK}@", text)
    return _QUERY_SECRET.sub(rf"\g<head>{MASK}", text)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a JSON-like ``obj`` (dicts, lists, tuples, strings, numbers) with every string
    passed through :func:`redact_text`; keys too, other values unchanged."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    if isinstance(obj, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact(v, secrets) for v in obj]
    return obj


def redact_argv(argv: list[str]) -> list[str]:
    """A command line safe to record: :func:`redact_text` on every argument, and the value of
    every flag named like a secret (``--token X``, ``--db-password=X``) masked."""
    secrets = secret_values()
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("-"):
            out.append(MASK)
            hide_next = False
            continue
        hide_next = False
        flag, eq, _ = arg.partition("=")
        if arg.startswith("-") and SECRET_NAME.search(flag):
            if eq:
                out.append(f"{flag}={MASK}")
                continue
            hide_next = True
        out.append(redact_text(arg, secrets))
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's formatted message (for log handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
