"""JSON for record dataclasses, read from their fields' types: one codec instead of a ``to_json`` per class.

A record dataclass written with :func:`encode` and read with :func:`decode` needs no JSON
code of its own: field names are the keys, ``dict[int, ...]`` keys become strings and
back, nested dataclasses, lists and ``X | None`` follow their annotations, a float that
is absent or null reads as NaN, and a field absent from the JSON (a record written before
the field existed) takes its default. Every section of the round record is written and
read this way but one: :class:`~fedmi_flower.records.round_record.IoU` keeps its own
flat layout, whose keys are the model's circuit sites (``{"conv1": .., "mean": ..}``),
so a class with its own ``to_json``/``from_json`` is written and read by them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Union


def encode(value: Any) -> Any:
    """``value`` as JSON-able data: dataclasses as objects of their fields, mapping keys as strings (sorted)."""
    if callable(getattr(value, "to_json", None)):
        return value.to_json()  # a record class that keeps its own (older) layout, or a Coded one
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode_fields(value)
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in sorted(value.items(), key=lambda kv: _order(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def _order(key: Any) -> tuple[int, Any]:
    return (0, key) if isinstance(key, int) else (1, str(key))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(tp: Any, raw: Any) -> Any:
    """A value of type ``tp`` (a dataclass, or a ``dict``/``list``/``X | None`` of them) from :func:`encode`'s
    output; absent fields take their defaults."""
    return _decode(tp, raw)


def _decode(tp: Any, raw: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None:
            return None
        return _decode(options[0], raw)
    if tp is float:
        return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else math.nan
    if tp is int:
        return int(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else 0
    if tp is str:
        return str(raw) if raw is not None else ""
    if tp is bool:
        return bool(raw)
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        key = int if key_type is int else str
        return {key(k): _decode(value_type, v) for k, v in (raw or {}).items()}
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_decode(item, v) for v in raw or []]
    reader = getattr(tp, "from_json", None) if isinstance(tp, type) else None
    if callable(reader):
        return reader(raw or {})
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return decode_fields(tp, raw)
    return raw


def encode_fields(value: Any) -> dict[str, Any]:
    """A dataclass instance as an object of its fields, each :func:`encode`-d."""
    return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}


def decode_fields(cls: Any, raw: Any) -> Any:
    """An instance of the dataclass ``cls`` from :func:`encode_fields`' output (absent fields: their defaults)."""
    hints = _hints(cls)
    values = raw or {}
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name in values]
    return cls(**{f.name: _decode(hints[f.name], values[f.name]) for f in fields})


class Coded:
    """A record dataclass whose JSON is its fields (:func:`encode_fields`, :func:`decode_fields`): no layout code."""

    def to_json(self) -> dict[str, Any]:
        return encode_fields(self)

    @classmethod
    def from_json(cls, raw: Any) -> Any:
        return decode_fields(cls, raw)
