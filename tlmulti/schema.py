"""Dataclasses built from plain data (parsed YAML), with errors that name the key.

:func:`build` turns a mapping into a dataclass, recursing into nested dataclasses, lists and
mappings: an unknown key suggests the nearest valid one, a wrong type says what was expected,
fields declared with :func:`choice`, :func:`at_least` or :func:`above` are checked wherever they
sit, and a number must be finite (no ``.nan``, no ``.inf``). This is what validates recipes
(:mod:`tlmulti.recipe`).

Example::

    from dataclasses import dataclass
    from tlmulti.schema import build, choice

    @dataclass
    class Head:
        pooling: str = choice("avg", ("avg", "max"))
        dropout: float = 0.2

    build(Head, {"pooling": "max"}, "head")      # Head(pooling='max', dropout=0.2)
    build(Head, {"pooling": "min"}, "head")      # RecipeError: Key 'head.pooling' must be one of avg, max, ...
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import field
from typing import Any, Union

from tlmulti.errors import RecipeError


def choice(default, values):
    """A dataclass field that takes one of ``values`` (a tuple, or a function returning one).

    :func:`build` checks it wherever the field sits in the recipe and names the key and the
    valid values in its error."""
    return field(default=default, metadata={"choices": values})


def at_least(default, minimum, auto: bool = False):
    """A numeric dataclass field that must be ``>= minimum`` (checked by :func:`build`); with
    ``auto``, the word ``auto`` is accepted too (a value derived from the data at run time). A
    list default (e.g. ``[]`` of a size) makes a list field whose every item must be ``>= minimum``."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"minimum": minimum, "auto": auto})
    return field(default=default, metadata={"minimum": minimum, "auto": auto})


def above(default, bound):
    """A numeric dataclass field that must be ``> bound`` (a learning rate: more than 0)."""
    return field(default=default, metadata={"above": bound})


def located(source: str | None) -> str:
    return f" in {source}" if source else ""


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _convert(value, tp, key: str, source: str | None):
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except RecipeError as exc:
                errors.append(exc)
        raise RecipeError(f"Key '{key}'{located(source)} must be {_type_name(tp)}, got {value!r}.")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and item in (str, int, float):
            value = [value]
        if not isinstance(value, list):
            raise RecipeError(f"Key '{key}'{located(source)} must be {_type_name(tp)}, got {value!r}.")
        return [_convert(v, item, f"{key}.{i}", source) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise RecipeError(f"Key '{key}'{located(source)} must be a mapping, got {value!r}.")
        return {str(k): _convert(v, item, f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML reads 1e-3 as a string
            except ValueError:
                pass
        if number is not None and not math.isfinite(number):
            raise RecipeError(f"Key '{key}'{located(source)} must be a finite number, got {value!r}.")
        if number is not None:
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise RecipeError(f"Key '{key}'{located(source)} must be {_type_name(tp)}, got {value!r}.")


def build(cls, data, prefix: str = "", source: str | None = None):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    label = prefix or "recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"Key '{label}'{located(source)} must be a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields_ = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    names = list(fields_)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f" Did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            raise RecipeError(
                f"Unknown key '{full}'{located(source)}.{hint} Valid keys here: {', '.join(names)}."
            )
        kwargs[key] = _convert(value, hints[key], full, source)
        _check_field(fields_[key], kwargs[key], full, source)
    obj = cls(**kwargs)
    for name, f in fields_.items():
        if name not in kwargs:  # defaults are valid by construction, except choices read at run time
            _check_field(f, getattr(obj, name), f"{prefix}.{name}" if prefix else name, source)
    return obj


def field_choices(f) -> tuple | None:
    """The valid values of dataclass field ``f`` declared with :func:`choice`, or None."""
    values = f.metadata.get("choices")
    return tuple(values()) if callable(values) else values


def _check_field(f, value, key: str, source: str | None) -> None:
    values = field_choices(f)
    if values is not None and not any(value == v and type(value) is type(v) for v in values):
        shown = ", ".join("null" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for v in values)
        raise RecipeError(f"Key '{key}'{located(source)} must be one of {shown}, got {value!r}.")
    minimum = f.metadata.get("minimum")
    if f.metadata.get("auto") and isinstance(value, str):
        if value != "auto":
            raise RecipeError(f"Key '{key}'{located(source)} must be a number ({minimum} or more) or auto, got {value!r}.")
        return
    for i, item in enumerate(value) if isinstance(value, list) else ((None, value),):
        where = key if i is None else f"{key}.{i}"
        if minimum is not None and item is not None and item < minimum:
            raise RecipeError(f"Key '{where}'{located(source)} must be {minimum} or more, got {item!r}.")
        bound = f.metadata.get("above")
        if bound is not None and item is not None and not item > bound:
            raise RecipeError(f"Key '{where}'{located(source)} must be more than {bound}, got {item!r}.")
