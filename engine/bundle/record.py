"""Typed JSON records: frozen dataclasses read from and written back to plain JSON objects.

A :class:`Record` subclass declares its JSON keys as dataclass fields with type hints (``str``,
``int``, ``float``, ``bool``, ``Any``, ``X | None``, ``tuple[X, ...]`` for lists,
``dict[str, X]``, or another record). :meth:`Record.from_dict` checks every key: a field without
a default is a required key (it may hold ``null`` when its type allows ``None``), a field with a
default an optional one. A missing key or a value of the wrong type raises a
:class:`RecordError` naming the key's path (``index.nprobe``, ``model.seeds[1]``).
:meth:`Record.to_dict` gives the JSON object back, leaving out optional keys whose value is the
default.

Keys a record does not declare are kept in ``extra`` and written back unchanged, so a record
read and rewritten by an engine that does not know them (an older one, within a format
version) loses nothing.
"""

from __future__ import annotations

import copy
import json
import numbers
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from functools import cache
from typing import Any, Self

import numpy as np

EXTRA = "extra"


class RecordError(ValueError):
    """A JSON object does not fit its record: ``problem`` is a sentence fragment naming the key at ``path``."""

    def __init__(self, problem: str, path: str):
        super().__init__(problem)
        self.problem, self.path = problem, path


@dataclass(frozen=True)
class Record:
    """Base of typed JSON records; ``extra`` holds the keys the record does not declare."""

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Read a JSON object (a ``dict``) into this record.

        Raises
        ------
        RecordError
            A required key is missing or a value has the wrong type.
        """
        return cls._read(data, "")

    @classmethod
    def _read(cls, data: Any, path: str) -> Self:
        if not isinstance(data, dict):
            raise RecordError(_wrong(path, data, "an object"), path)
        hints = _hints(cls)
        values: dict[str, Any] = {}
        for f in _fields(cls):
            key = _join(path, f.name)
            if f.name in data:
                values[f.name] = _read_value(data[f.name], hints[f.name], key)
            elif _required(f):
                raise RecordError(f"has no key '{key}'", key)
        known = {f.name for f in _fields(cls)}
        extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: declared keys in field order (optional ones only when set), then ``extra``."""
        out: dict[str, Any] = {}
        for f in _fields(type(self)):
            value = getattr(self, f.name)
            if _required(f) or value != _default(f):
                out[f.name] = _plain(value)
        out.update(_plain(self.extra))
        return out

    def to_checked_dict(self) -> dict[str, Any]:
        """:meth:`to_dict`, checked to read back into this record.

        Raises
        ------
        RecordError
            A value has the wrong type (records are built without checks).
        """
        data = self.to_dict()
        type(self)._read(data, "")
        return data


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _fields(cls: type) -> tuple[Field, ...]:
    return tuple(f for f in fields(cls) if f.name != EXTRA)


def _required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _default(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _read_value(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked against the type ``tp`` (records and tuples built, containers copied)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return copy.deepcopy(value)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(arms) < len(typing.get_args(tp)):
            return None
        if len(arms) != 1:
            raise TypeError(f"record fields support `X | None` unions only, not {tp}")
        try:
            return _read_value(value, arms[0], path)
        except RecordError as exc:
            if exc.path != path:  # deeper inside a record or list
                raise
            raise RecordError(_wrong(path, value, f"{_describe(arms[0])} or null"), path) from None
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp._read(value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise RecordError(_wrong(path, value, "a list"), path)
        item = typing.get_args(tp)[0]
        return tuple(_read_value(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(_wrong(path, value, "an object"), path)
        item = typing.get_args(tp)[1]
        return {k: _read_value(v, item, _join(path, k)) for k, v in value.items()}
    if not _is_instance(value, tp):
        raise RecordError(_wrong(path, value, _describe(tp)), path)
    return value


def _is_instance(value: Any, tp: type) -> bool:
    if tp is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if tp is int:
        return isinstance(value, numbers.Integral)
    if tp is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if tp in names:
        return names[tp]
    return "a list" if typing.get_origin(tp) is tuple else "an object"


def _wrong(path: str, value: Any, expected: str) -> str:
    shown = json.dumps(value, default=repr)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"has '{path}' = {shown}, not {expected}" if path else f"is {shown}, not {expected}"


def _plain(value: Any) -> Any:
    """A JSON-ready copy: records as objects, tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
