"""``--set`` overrides: ``key.path=value`` strings applied to plain recipe data before validation.

Keys are dotted paths; list items are addressed by index, or ``*`` for every item of a list.
Values are parsed as YAML (``1e-5`` as a number).

Example::

    from tlmulti.overrides import apply_overrides
    apply_overrides({"phases": [{"name": "head"}]}, ["phases.*.epochs=3", "data.batch_size=16"])
    # {'phases': [{'name': 'head', 'epochs': 3}], 'data': {'batch_size': 16}}
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from tlmulti.errors import RecipeError


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"Override '{text}' must look like key.path=value, e.g. phases.0.epochs=3.")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise RecipeError(f"Override '{text}' has no key before '='.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-5 as a string
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides) -> dict:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied; list items by index, or
    ``*`` for every item of a list (``phases.*.epochs=3``)."""
    data = copy.deepcopy(data)
    for text in overrides or ():
        parts, value = parse_override(text)
        if "*" in parts:
            star = parts.index("*")
            items = _node_at(data, parts[:star], text)
            if not isinstance(items, list):
                raise RecipeError(f"Override '{text}': '{'.'.join(parts[:star])}' is not a list, so '*' does not apply.")
            head = ".".join(parts[:star])
            rest = ".".join(parts[star + 1:])
            raw = text.partition("=")[2]
            data = apply_overrides(data, [f"{head}.{k}{'.' + rest if rest else ''}={raw}" for k in range(len(items))])
            continue
        node = data
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = _list_item(node, part, where, text)
                continue
            if node.get(part) is None:
                node[part] = [] if part == "phases" else {}
            node = node[part]
            if not isinstance(node, (dict, list)):
                raise RecipeError(f"Override '{text}': '{where}' is a value, not a section.")
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(last, node, text)
            if idx == len(node):
                node.append(value)
            else:
                node[idx] = value
        else:
            node[last] = value
    return data


def _node_at(data, parts, text):
    """The value at ``parts`` of plain recipe data (None where a key is missing)."""
    node = data
    for part in parts:
        if isinstance(node, list):
            idx = _index(part, node, text)
            node = node[idx] if idx < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def _index(part: str, node: list, text: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise RecipeError(f"Override '{text}': '{part}' must be a list index (0, 1, ...).") from None
    if not 0 <= idx <= len(node):
        raise RecipeError(f"Override '{text}': index {idx} is out of range (the list has {len(node)} items).")
    return idx


def _list_item(node: list, part: str, where: str, text: str):
    idx = _index(part, node, text)
    if idx == len(node):
        node.append({})
    item = node[idx]
    if item is None:
        item = node[idx] = {}
    return item
