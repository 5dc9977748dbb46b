from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import json
import math
import pathlib
import uuid
from collections import OrderedDict, deque, namedtuple
from typing import Any, Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onecollector_logging._envelope import dumps_json
from onecollector_logging._values import (
    DEPTH_MARKER,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_TOTAL_ITEMS,
    RECURSION_MARKER,
    safe_repr,
    safe_str,
    to_json,
)


class Color(enum.Enum):
    RED = 1
    BLUE = "blue"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    LOW = 3


class Mode(str, enum.Enum):
    FAST = "fast"


class Flags(enum.Flag):
    A = 1
    B = 2


@dataclasses.dataclass
class Point:
    x: int
    y: float
    tags: List[str] = dataclasses.field(default_factory=list)


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "BadStr()"


class ReprNotStr:
    def __repr__(self) -> Any:
        return 42


class Meters(float):
    pass


class Count(int):
    pass


class Name(str):
    def __str__(self) -> str:
        return "overridden"


class BadLen(list):  # type: ignore[type-arg]
    def __len__(self) -> int:
        raise RuntimeError("no len")


Pair = namedtuple("Pair", "x y")


def round_trip(value: object) -> object:
    """What the collector reads back for *value*."""
    return json.loads(dumps_json({"v": to_json(value)}))["v"]


UTC = dt.timezone.utc
PLUS_2 = dt.timezone(dt.timedelta(hours=2))

CASES = [
    ("text", "héllo 𝄞", "héllo 𝄞"),
    ("empty text", "", ""),
    ("true", True, True),
    ("none", None, None),
    ("int", 42, 42),
    ("negative int", -7, -7),
    ("whole float", 6.0, 6.0),
    ("fraction float", 0.1, 0.1),
    ("large float", 1e16, 1e16),
    ("small float", 1e-7, 1e-7),
    ("nan", math.nan, "NaN"),
    ("infinity", math.inf, "Infinity"),
    ("minus infinity", -math.inf, "-Infinity"),
    ("int64 max", 2**63 - 1, 2**63 - 1),
    ("int64 min", -(2**63), -(2**63)),
    ("above int64", 2**63, str(2**63)),
    ("below int64", -(2**63) - 1, str(-(2**63) - 1)),
    (
        "aware datetime",
        dt.datetime(2026, 12, 3, 12, 11, 12, 345678, tzinfo=PLUS_2),
        "2026-12-03T10:11:12.345678Z",
    ),
    (
        "naive datetime is taken as UTC",
        dt.datetime(2026, 12, 3, 10, 11, 12),
        "2026-12-03T10:11:12.000000Z",
    ),
    ("date", dt.date(2026, 1, 2), "2026-01-02"),
    ("time", dt.time(10, 11, 12), "10:11:12"),
    ("timedelta", dt.timedelta(minutes=1, milliseconds=500), 60.5),
    ("whole timedelta", dt.timedelta(seconds=3), 3.0),
    (
        "uuid",
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "12345678-1234-5678-1234-567812345678",
    ),
    ("path", pathlib.PurePosixPath("/var/log/app.log"), "/var/log/app.log"),
    ("decimal keeps its digits", decimal.Decimal("1.10"), "1.10"),
    ("decimal nan", decimal.Decimal("NaN"), "NaN"),
    ("enum with int value", Color.RED, 1),
    ("enum with str value", Color.BLUE, "blue"),
    ("enum with other value", Color.PAIR, "PAIR"),
    ("int enum", Level.LOW, 3),
    ("str enum", Mode.FAST, "fast"),
    ("flag", Flags.A | Flags.B, 3),
    ("bytes", b"\x00\xffab", "AP9hYg=="),
    ("bytearray", bytearray(b"ab"), "YWI="),
    ("memoryview", memoryview(b"ab"), "YWI="),
    ("set", {3, 1, 2}, [1, 2, 3]),
    ("frozenset", frozenset({"b", "a"}), ["a", "b"]),
    ("tuple", (1, "a"), [1, "a"]),
    ("named tuple", Pair(1, 2), [1, 2]),
    ("deque", deque([1, 2]), [1, 2]),
    ("range", range(3), [0, 1, 2]),
    ("nested dict", {"a": {"b": [1, {"c": 2.0}]}}, {"a": {"b": [1, {"c": 2.0}]}}),
    ("ordered dict", OrderedDict(b=1, a=2), {"b": 1, "a": 2}),
    (
        "dict keys that are not str",
        {1: "a", None: "b", False: "c", 2.5: "d", (1, 2): "e"},
        {"1": "a", "null": "b", "false": "c", "2.5": "d", "[1,2]": "e"},
    ),
    ("dataclass", Point(1, 2.0, ["t"]), {"x": 1, "y": 2.0, "tags": ["t"]}),
    ("float subclass", Meters(2.0), 2.0),
    ("int subclass", Count(5), 5),
    ("str subclass ignores its __str__", Name("plain"), "plain"),
    ("fraction", fractions.Fraction(1, 4), 0.25),
    ("complex", 1 + 2j, "(1+2j)"),
    ("object whose __repr__ raises", BadRepr(), "<unrepresentable BadRepr>"),
    ("object whose __str__ raises", BadStr(), "BadStr()"),
    ("repr returning a non-str", ReprNotStr(), "<unrepresentable ReprNotStr>"),
    ("container whose len raises", BadLen([1]), "<unrepresentable BadLen>"),
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_type_is_converted_to_its_stable_json_form(
    value: object, expected: object
) -> None:
    converted = to_json(value)

    assert converted == expected
    assert type(converted) is type(expected)
    assert round_trip(value) == expected


def test_whole_floats_stay_floats_in_the_serialized_bytes() -> None:
    line = dumps_json({"a": to_json(6.0), "b": to_json(-0.0), "c": to_json(1e15)})

    assert line == b'{"a":6.0,"b":-0.0,"c":1000000000000000.0}'


def test_an_int_too_long_for_a_decimal_string_becomes_a_marker() -> None:
    converted = to_json(10**5000)

    assert isinstance(converted, str)
    assert converted.startswith("<int of ")


def test_one_bad_value_in_a_container_costs_only_itself() -> None:
    value = [1, BadRepr(), {"ok": "yes", "bad": BadRepr()}, Point(1, 1.5)]

    assert to_json(value) == [
        1,
        "<unrepresentable BadRepr>",
        {"ok": "yes", "bad": "<unrepresentable BadRepr>"},
        {"x": 1, "y": 1.5, "tags": []},
    ]


def test_a_dataclass_field_that_cannot_be_read_costs_only_itself() -> None:
    point = Point(1, 2.0)
    del point.tags

    assert to_json(point) == {"x": 1, "y": 2.0, "tags": "<unreadable field tags>"}


def test_a_set_of_unorderable_items_keeps_all_of_them() -> None:
    converted = to_json({1, "a", None})

    assert isinstance(converted, list)
    assert sorted(map(repr, converted)) == sorted(map(repr, [1, "a", None]))


def test_a_list_that_contains_itself_is_cut_with_a_marker() -> None:
    value: List[object] = [1, "two"]
    value.append(value)

    assert to_json(value) == [1, "two", RECURSION_MARKER]


def test_a_dict_that_contains_itself_is_cut_with_a_marker() -> None:
    value: Dict[str, object] = {"a": 1}
    value["self"] = value
    value["list"] = [value]

    assert to_json(value) == {
        "a": 1,
        "self": RECURSION_MARKER,
        "list": [RECURSION_MARKER],
    }


def test_a_value_repeated_without_a_cycle_is_not_a_recursion() -> None:
    shared = [1]

    assert to_json([shared, shared, {"x": shared}]) == [[1], [1], {"x": [1]}]


def test_containers_deeper_than_the_limit_are_cut_with_a_marker() -> None:
    value: List[object] = ["leaf"]
    for _ in range(MAX_DEPTH + 3):
        value = [value]

    converted = to_json(value)

    depth = 0
    while isinstance(converted, list):
        converted = converted[0]
        depth += 1
    assert depth == MAX_DEPTH
    assert converted == DEPTH_MARKER


def test_long_containers_keep_their_first_items_and_say_how_many_are_left() -> None:
    converted = to_json(list(range(MAX_ITEMS + 5)))

    assert isinstance(converted, list)
    assert converted[:MAX_ITEMS] == list(range(MAX_ITEMS))
    assert converted[MAX_ITEMS:] == ["…[5 more items]"]


def test_large_mappings_keep_their_first_items_and_say_how_many_are_left() -> None:
    converted = to_json({f"k{i}": i for i in range(MAX_ITEMS + 2)})

    assert isinstance(converted, dict)
    assert len(converted) == MAX_ITEMS + 1
    assert converted["…"] == "[2 more items]"


def count_ints(value: object) -> int:
    if isinstance(value, list):
        return sum(count_ints(item) for item in value)
    return int(isinstance(value, int))


def test_a_wide_and_deep_value_is_bounded_in_total() -> None:
    value = [[list(range(MAX_ITEMS)) for _ in range(50)] for _ in range(50)]

    converted = to_json(value)

    assert count_ints(converted) <= MAX_TOTAL_ITEMS


def test_the_returned_value_holds_no_reference_to_the_given_containers() -> None:
    tags = ["a"]
    data = {"tags": tags}

    converted = to_json(data)
    tags.append("b")

    assert converted == {"tags": ["a"]}


def test_an_aware_datetime_at_the_edge_of_the_calendar_keeps_its_offset() -> None:
    value = dt.datetime(1, 1, 1, 0, 30, tzinfo=PLUS_2)

    assert to_json(value) == "0001-01-01T00:30:00.000000+02:00"


def test_safe_str_and_safe_repr_never_raise() -> None:
    assert safe_str(BadStr()) == "<unrepresentable BadStr>"
    assert safe_repr(BadRepr()) == "<unrepresentable BadRepr>"
    assert safe_str(3) == "3"


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary()
    | st.datetimes()
    | st.uuids()
    | st.decimals()
)
nested_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4)
        | st.tuples(children, children)
        | st.frozensets(st.integers() | st.text(max_size=3), max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(nested_values)
def test_every_converted_value_serializes_as_strict_json(value: object) -> None:
    converted = to_json(value)

    encoded = dumps_json(converted)

    assert json.loads(encoded) == converted


def json_type(value: object) -> str:
    return type(value).__name__


stable_kinds = st.sampled_from(
    [
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(),
        st.booleans(),
        st.binary(),
        st.datetimes(),
        st.dates(),
        st.times(),
        st.timedeltas(),
        st.uuids(),
        st.decimals(),
        st.lists(st.integers(), max_size=3),
        st.tuples(st.text(), st.floats()),
        st.sets(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
        st.from_type(Point),
        st.sampled_from(list(Color)[:1]),
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_values_of_one_python_type_get_one_json_type(data: st.DataObject) -> None:
    kind = data.draw(stable_kinds)
    first, second = data.draw(kind), data.draw(kind)

    assert json_type(round_trip(first)) == json_type(round_trip(second))
