"""A small self-contained HTML page of the audit: verdicts first, then each table."""

from __future__ import annotations

import html
import math

import pyarrow as pa

_STYLE = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:90%}"
          "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
          "th{background:#f0f0f0}.warn{color:#a40}")


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def html_table(table: pa.Table, max_rows: int = 80) -> str:
    rows = table.slice(0, max_rows).to_pylist()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.column_names)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r.values()) + "</tr>"
                   for r in rows)
    more = (f"<p>{table.num_rows - max_rows:,} more rows in the Parquet file.</p>"
            if table.num_rows > max_rows else "")
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def render(title: str, intro: str, warnings: list[str], skipped: dict[str, str],
           sections: list[tuple[str, str, pa.Table]]) -> str:
    """The page: title, intro, warnings, then (heading, explanation, table) sections."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(intro)}</p>"]
    if warnings:
        parts.append("<ul class='warn'>" + "".join(f"<li>{html.escape(w)}</li>"
                                                   for w in warnings) + "</ul>")
    for heading, text, table in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>")
        parts.append(html_table(table))
    if skipped:
        parts.append("<h2>Not assessed</h2><ul>" + "".join(
            f"<li>{html.escape(name)}: {html.escape(why)}</li>" for name, why in skipped.items())
            + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
