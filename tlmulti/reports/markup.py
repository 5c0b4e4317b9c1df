"""Small HTML pieces of ``report.html``: escaping, numbers as a person reads them, tables with
score bars, inline PNG images and sections. Everything that comes from the user is escaped."""

from __future__ import annotations

import base64
import html
import math

import numpy as np


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def num(value) -> str:
    """A number as a person reads it: ints with separators, floats to 4 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "—"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(num(v) if isinstance(v, (int, float)) else str(v) for v in value) or "—"
    return str(value)


def cell(value) -> str:
    return esc(num(value))


def is_score(value) -> bool:
    return isinstance(value, (float, np.floating)) and not math.isnan(float(value)) and 0.0 <= value <= 1.0


def bar_cell(value) -> str:
    """A table cell with a light bar behind scores in [0, 1], so weak rows stand out."""
    if not is_score(value):
        return f"<td>{cell(value)}</td>"
    pct = round(100 * float(value), 1)
    return (f'<td class="bar" style="background:linear-gradient(90deg,#cfe3fb {pct}%,'
            f'transparent {pct}%)">{cell(value)}</td>')


def table(header: list[str], rows: list[str], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img(data: bytes, alt: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{esc(alt)}" src="{png_uri(data)}">'


def flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts as ``a.b.c`` keys; very long dicts are cut to their 8 largest entries."""
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and len(v) <= 12:
            rows.extend(flatten(v, key + "."))
        elif isinstance(v, dict) and v:
            top = sorted(v.items(), key=lambda kv: -kv[1] if isinstance(kv[1], (int, float)) else 0)[:8]
            rows.append((key, ", ".join(f"{a}: {num(b)}" for a, b in top) + f" (+{len(v) - 8} more)"))
        else:
            rows.append((key, v))
    return rows


def section(anchor: str, heading: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(heading)}</h2>{body}</section>'
