"""Coercion of arbitrary Python values into JSON values with a stable type.

The backend creates a column from the first value it sees under a key, so a key
must keep one JSON type for as long as the application passes it one Python
type: every conversion below depends only on the value's type, never on its
content (a whole float stays a float, a set is always an array...). Two
exceptions are forced by the wire: integers outside the int64 column range and
non-finite floats, which JSON cannot hold, become strings.

:func:`to_json` never raises; a value that cannot be converted costs only
itself and becomes a short marker string.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import enum
import itertools
import json
import math
import numbers
import os
import uuid
from collections.abc import Mapping, Sequence, Set
from typing import Dict, List, Union

JSONValue = Union[
    None, bool, int, float, str, List["JSONValue"], Dict[str, "JSONValue"]
]

#: Containers nested deeper than this are replaced by a marker.
MAX_DEPTH = 8
#: Items kept from one container; the rest is summarised by a marker.
MAX_ITEMS = 1000
#: Items converted in one call across all containers, so that a wide and deep
#: structure cannot make the caller's thread walk millions of nodes.
MAX_TOTAL_ITEMS = 10_000

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_NONE_TYPE = type(None)
_isfinite = math.isfinite
_UTC = _dt.timezone.utc

RECURSION_MARKER = "<recursive reference>"
DEPTH_MARKER = "<max depth exceeded>"


def unrepresentable(value: object) -> str:
    """Return the marker used for *value* when it cannot be turned into text."""
    try:
        name = type(value).__qualname__
    except Exception:
        name = "object"
    return f"<unrepresentable {name}>"


def safe_repr(value: object) -> str:
    """Return ``repr(value)``, or a marker if that raises or is not a string."""
    try:
        text = repr(value)
    except Exception:
        return unrepresentable(value)
    return text if type(text) is str else unrepresentable(value)


def safe_str(value: object) -> str:
    """Return ``str(value)``, or a marker if that raises or is not a string."""
    if type(value) is str:
        return value
    try:
        text = str(value)
    except Exception:
        return unrepresentable(value)
    return text if type(text) is str else unrepresentable(value)


def to_json(value: object) -> JSONValue:
    """Convert *value* into a JSON value whose type depends only on ``type(value)``.

    - ``str``, ``bool``, ``None``: unchanged; ``int``: unchanged inside the
      int64 range, else its decimal string; ``float``: unchanged when finite,
      else ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``.
    - ``datetime``: ISO-8601 in UTC with microseconds and ``Z``. A naive
      datetime is taken to be UTC already (as the Olive client does), because
      converting from local time would make the result depend on the host.
    - ``date``, ``time``: ``isoformat()``; ``timedelta``: total seconds (float).
    - ``UUID``: canonical string; ``Decimal``: its exact string; a path
      (``os.PathLike``, such as ``pathlib.Path``): its file-system string.
    - ``Enum`` member: its value when that is a ``str``, ``int``, ``float`` or
      ``bool`` (coerced as above), otherwise its name.
    - Other :class:`numbers.Integral` / :class:`numbers.Real`: ``int`` / ``float``.
    - ``bytes``, ``bytearray``, ``memoryview``: standard base64 string.
    - ``set``, ``frozenset``: array, sorted when the items are comparable.
    - ``list``, ``tuple`` and other sequences: array.
    - ``dict`` and other mappings: object; keys that are not strings are
      converted and then written as their JSON text (``1`` -> ``"1"``).
    - dataclass instances: object of their fields.
    - anything else: ``repr()``; if that raises, ``"<unrepresentable Type>"``.

    Containers are cut at :data:`MAX_DEPTH` levels, :data:`MAX_ITEMS` items each
    and :data:`MAX_TOTAL_ITEMS` items in all, with marker strings; a container
    that contains itself is cut with :data:`RECURSION_MARKER`.
    """
    kind = type(value)
    if kind is str or kind is bool or kind is _NONE_TYPE:
        return value  # type: ignore[return-value]
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            return value  # type: ignore[return-value]
        return _wide_int(value)  # type: ignore[arg-type]
    if kind is float:
        if _isfinite(value):  # type: ignore[arg-type]
            return value  # type: ignore[return-value]
        return _non_finite(value)  # type: ignore[arg-type]
    return _Walk().convert(value, 0)


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _int(value: int) -> JSONValue:
    return value if _INT64_MIN <= value <= _INT64_MAX else _wide_int(value)


def _wide_int(value: int) -> str:
    # The backend's integer columns are int64; a wider value keeps its digits
    # as text rather than being rejected or rounded.
    try:
        return str(value)
    except ValueError:
        # beyond sys.get_int_max_str_digits()
        return f"<int of {value.bit_length()} bits>"


def _field(owner: object, name: str) -> object:
    try:
        return getattr(owner, name)
    except Exception:
        return f"<unreadable field {name}>"


def _float(value: float) -> JSONValue:
    return value if _isfinite(value) else _non_finite(value)


def _datetime(value: _dt.datetime) -> str:
    if value.tzinfo is not None and value.utcoffset() is not None:
        try:
            value = value.astimezone(_UTC)
        except (OverflowError, ValueError):
            # At the ends of the calendar the UTC instant is not representable;
            # keep the offset rather than lose the value.
            return value.isoformat(timespec="microseconds")
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _enum(value: enum.Enum) -> JSONValue:
    inner = value.value
    if isinstance(inner, (str, int, float)):
        return to_json(inner)
    return value.name


class _Walk:
    """State of one :func:`to_json` call over a nested value."""

    __slots__ = ("budget", "path")

    def __init__(self) -> None:
        self.budget = MAX_TOTAL_ITEMS
        # ids of the containers being converted, from the top to the current one
        self.path: set[int] = set()

    def convert(self, value: object, depth: int) -> JSONValue:
        try:
            return self._convert(value, depth)
        except Exception:
            return unrepresentable(value)

    def _convert(self, value: object, depth: int) -> JSONValue:
        kind = type(value)
        if kind is str or kind is bool or kind is _NONE_TYPE:
            return value  # type: ignore[return-value]
        if kind is int:
            return _int(value)  # type: ignore[arg-type]
        if kind is float:
            return _float(value)  # type: ignore[arg-type]
        if kind is list or kind is tuple or kind is dict:
            return self._container(value, depth)
        scalar = _scalar(value)
        if scalar is not _NOT_SCALAR:
            return scalar  # type: ignore[return-value]
        if isinstance(value, (Mapping, Sequence, Set)) or (
            dataclasses.is_dataclass(value) and not isinstance(value, type)
        ):
            return self._container(value, depth)
        return safe_repr(value)

    def _container(self, value: object, depth: int) -> JSONValue:
        if depth >= MAX_DEPTH:
            return DEPTH_MARKER
        key = id(value)
        if key in self.path:
            return RECURSION_MARKER
        self.path.add(key)
        try:
            if isinstance(value, Mapping):
                return self._mapping(value.items(), len(value), depth)
            if isinstance(value, (Set, Sequence)):
                return self._array(value, depth)
            fields = dataclasses.fields(value)  # type: ignore[arg-type]
            pairs = [(f.name, _field(value, f.name)) for f in fields]
            return self._mapping(pairs, len(pairs), depth)
        finally:
            self.path.discard(key)

    def _take(self, size: int) -> int:
        take = min(size, MAX_ITEMS, self.budget)
        self.budget -= take
        return take

    def _array(self, value: object, depth: int) -> List[JSONValue]:
        size = len(value)  # type: ignore[arg-type]
        take = self._take(size)
        items: object = value
        if isinstance(value, Set) and size <= MAX_ITEMS:
            items = _sorted_if_possible(value)
        out = [
            self.convert(item, depth + 1)
            for item in itertools.islice(items, take)  # type: ignore[call-overload]
        ]
        if size > take:
            out.append(f"…[{size - take} more items]")
        return out

    def _mapping(self, pairs: object, size: int, depth: int) -> Dict[str, JSONValue]:
        take = self._take(size)
        out: Dict[str, JSONValue] = {}
        for key, item in itertools.islice(pairs, take):  # type: ignore[call-overload]
            out[self._key(key)] = self.convert(item, depth + 1)
        if size > take:
            out["…"] = f"[{size - take} more items]"
        return out

    def _key(self, key: object) -> str:
        if type(key) is str:
            return key
        converted = self.convert(key, MAX_DEPTH - 1)
        if isinstance(converted, str):
            return converted
        return _key_text(converted)


def _key_text(value: JSONValue) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _sorted_if_possible(items: Set[object]) -> object:
    try:
        return sorted(items)  # type: ignore[type-var]
    except Exception:
        return items


_NOT_SCALAR = object()


def _scalar(value: object) -> object:
    """Convert a value of a known non-container type, else return _NOT_SCALAR."""
    if isinstance(value, enum.Enum):
        return _enum(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, _dt.datetime):
        return _datetime(value)
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, numbers.Integral):
        return _int(int(value))
    if isinstance(value, numbers.Real):
        return _float(float(value))
    return _NOT_SCALAR
