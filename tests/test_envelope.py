from __future__ import annotations

import datetime as dt
import decimal
import getpass
import json
import logging
import math
import platform
import sys
import uuid
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onecollector_logging import _envelope, _schema
from onecollector_logging._envelope import (
    DROPPED_KEYS,
    EnvelopeBuilder,
    dumps_json,
    os_identity,
    static_ext,
)
from onecollector_logging._record import (
    RecordOptions,
    Snapshot,
    plain_snapshot,
    snapshot,
)
from onecollector_logging._stats import Counters
from onecollector_logging.exceptions import ConfigurationError

EVENT = "Contoso.App.Log"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
CREATED = 1796292672.345678  # 2026-12-03T10:11:12.345Z


def builder(**kwargs: Any) -> EnvelopeBuilder:
    arguments: Dict[str, Any] = {
        "tenant": "0123abcd",
        "epoch": "5b0f9c1e-epoch",
        "sdk_version": "onecollector-logging-py-1.2.3",
        "ext": {},
        "os_name": "Linux",
        "os_ver": "6.1.0",
    }
    arguments.update(kwargs)
    return EnvelopeBuilder(**arguments)


def snap(data: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Snapshot:
    fields: Dict[str, Any] = {
        "name": EVENT,
        "created": CREATED,
        "seq": 1,
        "data": {"body": "hello"} if data is None else data,
    }
    fields.update(kwargs)
    return Snapshot(**fields)


def parsed(line: bytes) -> Dict[str, Any]:
    envelope = json.loads(line.decode("utf-8"))
    assert _schema.envelope_problem(envelope) is None
    return envelope  # type: ignore[no-any-return]


# -- static ext -----------------------------------------------------------------


def test_configured_ext_is_validated_and_returned() -> None:
    ext = static_ext(
        app={"name": "shop", "ver": "2.0", "asId": "12"},
        cloud={"role": "web"},
        device_local_id="c:device-7",
        user_local_id="r:5b0f9c1e",
        ext={"loc": {"timezone": "+01:00"}, "net": {"type": "wifi"}},
    )

    assert ext == {
        "loc": {"timezone": "+01:00"},
        "net": {"type": "wifi"},
        "app": {"name": "shop", "ver": "2.0", "asId": 12},
        "cloud": {"role": "web"},
        "device": {"localId": "c:device-7"},
        "user": {"localId": "r:5b0f9c1e"},
    }


def test_empty_values_and_empty_slots_are_left_out() -> None:
    ext = static_ext(app={"name": "shop", "ver": "", "env": None}, cloud={"role": ""})

    assert ext == {"app": {"name": "shop"}}


def test_named_arguments_and_ext_fill_one_slot_together() -> None:
    ext = static_ext(
        app={"name": "shop", "env": ""},
        device_local_id="c:named",
        ext={"app": {"name": "shop", "ver": "1", "env": "prod"}},
    )

    assert ext == {
        "app": {"name": "shop", "ver": "1", "env": "prod"},
        "device": {"localId": "c:named"},
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"app": {"name": "named"}, "ext": {"app": {"name": "generic"}}},
            "ext.app.name is given twice with different values: 'generic' in ext"
            " and 'named' in app",
        ),
        (
            {"device_local_id": "c:a", "ext": {"device": {"localId": "c:b"}}},
            "ext.device.localId is given twice with different values: 'c:b' in ext"
            " and 'c:a' in device_local_id",
        ),
    ],
)
def test_a_field_given_two_different_values_is_refused(
    kwargs: Dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        static_ext(**kwargs)

    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ext": {"os": {"release": "x"}}}, "ext.os is filled by the handler"),
        ({"ext": {"sdk": {"ver": "x"}}}, "ext.sdk is filled by the handler"),
        ({"ext": {"dt": {"traceId": "x"}}}, "ext.dt is filled by the handler"),
        ({"ext": {"protocol": {"devMake": "x"}}}, "ext.protocol is not configurable"),
        ({"ext": {"ex": {"type": "x"}}}, "ext.ex is not a Common Schema slot"),
        ({"ext": {"web": {"browser": "x"}}}, "ext.web is not a Common Schema slot"),
        (
            {"ext": {"app": {"initTs": "x"}}},
            "ext.app.initTs is not a Common Schema field",
        ),
        ({"app": {"release": "x"}}, "ext.app.release is not a Common Schema field"),
        ({"device_local_id": "abc123"}, "device_local_id must have the form <scope>"),
        ({"user_local_id": "abc123"}, "user_local_id must have the form <scope>"),
        (
            {"ext": {"device": {"localId": "deadbeef"}}},
            "ext.device.localId must have the form <scope>:<id>",
        ),
        ({"app": {"ver": 2}}, "ext.app.ver must be a string, got int"),
        ({"app": {"asId": "1.5"}}, "ext.app.asId must be an integer"),
        ({"app": {"asId": True}}, "ext.app.asId must be an integer"),
        ({"app": {"asId": 2**64}}, "ext.app.asId is outside the int64 range"),
        ({"ext": {"device": {"authSecId": "s"}}}, "ext.device.authSecId is rejected"),
        ({"app": ["name"]}, "app must be a mapping"),
        ({"ext": {"app": "shop"}}, "ext.app must be a mapping"),
        ({"ext": "app"}, "ext must be a mapping"),
        ({"cloud": {1: "x"}}, "cloud has a field name 1"),
    ],
)
def test_fields_the_collector_would_refuse_are_refused_by_name(
    kwargs: Dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        static_ext(**kwargs)

    assert message in str(caught.value)


def test_the_local_id_error_shows_the_expected_form() -> None:
    with pytest.raises(ConfigurationError) as caught:
        static_ext(device_local_id="abc123")

    assert "device_local_id" in str(caught.value)
    assert "c:<your id>" in str(caught.value)
    assert "'abc123'" in str(caught.value)


def test_the_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"ext\.os"):
        static_ext(ext={"os": {"release": "x"}})


# -- os identity ----------------------------------------------------------------


def test_the_os_identity_names_no_machine_and_no_user() -> None:
    name, version = os_identity()

    assert name
    assert version
    private = {platform.node(), getpass.getuser()} - {""}
    assert not private & {name, version}


# -- envelope -------------------------------------------------------------------


def test_the_envelope_is_one_compact_line_in_the_wire_order() -> None:
    line = builder().serialize(snap(seq=7))

    assert line == (
        b'{"ver":"4.0","name":"Contoso.App.Log","time":"2026-12-03T10:11:12.345Z",'
        b'"iKey":"o:0123abcd","data":{"body":"hello"},"ext":{"os":{"name":"Linux",'
        b'"ver":"6.1.0"},"sdk":{"ver":"onecollector-logging-py-1.2.3",'
        b'"epoch":"5b0f9c1e-epoch","seq":7}}}'
    )
    assert parsed(line)["time"] == _schema.format_time(CREATED)


def test_configured_ext_comes_before_the_handlers_slots() -> None:
    ext = static_ext(app={"name": "shop"}, device_local_id="c:7")

    envelope = parsed(builder(ext=ext).serialize(snap()))

    assert list(envelope["ext"]) == ["app", "device", "os", "sdk"]
    assert envelope["ext"]["app"] == {"name": "shop"}


def test_the_trace_context_goes_to_ext_dt_only() -> None:
    envelope = parsed(builder().serialize(snap(trace_id=TRACE_ID, span_id=SPAN_ID)))

    assert envelope["ext"]["dt"] == {"traceId": TRACE_ID, "spanId": SPAN_ID}
    assert list(envelope["ext"]) == ["os", "sdk", "dt"]
    assert envelope["data"] == {"body": "hello"}


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [("ABC", SPAN_ID.upper()), ("x" * 32, None), (None, "0" * 15)],
)
def test_malformed_trace_ids_are_not_sent(
    trace_id: Optional[str], span_id: Optional[str]
) -> None:
    envelope = parsed(builder().serialize(snap(trace_id=trace_id, span_id=span_id)))

    assert "dt" not in envelope["ext"]


def test_empty_os_fields_are_left_out() -> None:
    envelope = parsed(builder(os_ver="").serialize(snap()))

    assert envelope["ext"]["os"] == {"name": "Linux"}


@pytest.mark.parametrize(
    ("ext", "message"),
    [
        ({"os": {"name": "x"}}, "ext.os is filled by the handler"),
        ({"app": {"initTs": "x"}}, "unknown key ext.app.initTs"),
        ({"device": {"localId": "bare"}}, "ext.device.localId"),
    ],
)
def test_the_builder_refuses_an_ext_the_collector_would_refuse(
    ext: Dict[str, Dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        builder(ext=ext)


def test_the_builder_refuses_a_size_limit_without_room_for_data() -> None:
    with pytest.raises(ConfigurationError, match="max_event_bytes must be at least"):
        builder(max_event_bytes=600)


def test_an_invalid_name_is_replaced_and_counted() -> None:
    counters = Counters()

    envelope = parsed(builder(counters=counters).serialize(snap(name="bad name")))

    assert envelope["name"] == _envelope.FALLBACK_EVENT_NAME
    assert counters.get("invalid.event_name") == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.floats(min_value=0, max_value=4e9)
        | st.integers(min_value=0, max_value=4 * 10**9).map(lambda n: n - 1e-9),
        min_size=1,
        max_size=5,
    )
)
def test_event_times_are_formatted_as_the_schema_says(times: List[float]) -> None:
    build = builder()

    for created in times:
        envelope = parsed(build.serialize(snap(created=created)))

        assert envelope["time"] == _schema.format_time(created)


@pytest.mark.parametrize("created", [float("nan"), 1e20, -1e20, "yesterday"])
def test_a_nonsensical_record_time_still_gives_a_valid_time(created: Any) -> None:
    plain = (EVENT, created, 1, "b", "m", "INFO", 9, "app", None, None)

    for item in (snap(created=created), plain):
        envelope = parsed(builder().serialize(item))

        assert _schema.is_valid_time(envelope["time"])


def test_data_that_is_not_json_is_coerced_when_serialized() -> None:
    data: Dict[Any, Any] = {
        "nan": math.nan,
        1: "int key",
        "obj": object,
        "when": dt.date(2026, 1, 2),
    }

    envelope = parsed(builder().serialize(snap(data)))

    assert envelope["data"]["nan"] == "NaN"
    assert envelope["data"]["1"] == "int key"
    assert envelope["data"]["obj"] == "<class 'object'>"
    assert envelope["data"]["when"] == "2026-01-02"


def test_lone_surrogates_become_replacement_characters() -> None:
    data = {"path": "/tmp/\udcff.txt", "pair": "\ud834\udd1e", "key\ud800": 1}

    line = builder().serialize(snap(data))

    envelope = parsed(line)
    assert envelope["data"] == {"path": "/tmp/\ufffd.txt", "pair": "𝄞", "key\ufffd": 1}


def test_whole_floats_keep_their_fraction_on_the_wire() -> None:
    record = logging.makeLogRecord({"msg": "m", "price": 6.0, "ratio": 1e16})
    options = RecordOptions(event_name=EVENT, counters=Counters())
    result = snapshot(record, options, 1)
    assert result is not None

    line = builder().serialize(result)

    assert b'"price":6.0,' in line
    assert b'"ratio":1e+16' in line


# -- orjson ---------------------------------------------------------------------

FLOATS = [6.0, -0.0, 0.1, 1e-4, 1e-5, 1e-7, 1e15, 1e16, 1e17, 1.5e300, 5e-324]
CORPUS: List[Dict[str, Any]] = [
    {"body": "hello", "n": 1},
    {f"f{index}": value for index, value in enumerate(FLOATS)},
    *({"f": value, "nested": [value, {"g": value}]} for value in FLOATS),
    {"big": 2**63 - 1, "small": -(2**63), "zero": 0},
    {"wider than int64": 2**70, "tuple": (1, 2.5)},
    {"text": 'é𝄞 \u2028\u2029 "quoted" \\ / \x00\x1f\x7f <tag>'},
    {"nested": {"a": [True, False, None, [], {}], "b": "x" * 1000}},
    {"k\u00e9y": "v", "": "empty key"},
]


@pytest.mark.parametrize("data", CORPUS, ids=lambda d: json.dumps(d)[:30])
def test_the_default_encoder_matches_the_standard_library_byte_for_byte(
    data: Dict[str, Any],
) -> None:
    standard = builder(dumps=dumps_json)
    default = builder()

    line = default.serialize(snap(data, trace_id=TRACE_ID))

    assert line == standard.serialize(snap(data, trace_id=TRACE_ID))


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=1e-4, max_value=1e16, exclude_max=True)
    | st.floats(min_value=-1e16, max_value=-1e-4, exclude_min=True)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text()
)
def test_orjson_agrees_with_the_standard_library_where_it_is_used(
    value: Any,
) -> None:
    orjson_module = pytest.importorskip("orjson")

    encoded = orjson_module.dumps({"v": value})

    assert encoded == dumps_json({"v": value})
    assert _envelope._default_dumps()({"v": value}) == encoded


def test_floats_outside_the_plain_range_are_encoded_as_json_does() -> None:
    # orjson releases have written these as 1e16 and 0.00001.
    pytest.importorskip("orjson")

    assert _envelope._default_dumps()({"f": 1e16}) == b'{"f":1e+16}'
    assert _envelope._default_dumps()({"f": [1e-5]}) == b'{"f":[1e-05]}'


# -- size limit -----------------------------------------------------------------


def test_a_huge_multibyte_message_is_cut_to_fit_with_a_marker() -> None:
    counters = Counters()
    limit = 200_000
    message = "é𝄞" * 350_000  # 2.1 MB of UTF-8
    data = {"body": message, "formattedMessage": message, "severityText": "INFO"}

    line = builder(max_event_bytes=limit, counters=counters).serialize(snap(data))

    assert len(line) <= limit
    envelope = parsed(line)
    for key in ("body", "formattedMessage"):
        value = envelope["data"][key]
        assert value.endswith(" bytes]")
        kept, marker = value.split("…[truncated ")
        assert message.startswith(kept)
        assert len(kept.encode()) > limit // 4
        assert int(marker.split()[0]) == len(message.encode()) - len(kept.encode())
    assert envelope["data"]["severityText"] == "INFO"
    assert counters.get("shrunk") == 1


def test_a_two_megabyte_message_fits_the_default_limit() -> None:
    message = "é" * 600_000 + "𝄞" * 250_000

    line = builder().serialize(snap({"body": message}))

    assert len(line) <= _schema.MAX_EVENT_BYTES
    assert "…[truncated " in parsed(line)["data"]["body"]


def test_a_cut_stack_keeps_its_end() -> None:
    stack = "Traceback\n" + "  frame\n" * 100_000 + "ValueError: last"

    line = builder(max_event_bytes=50_000).serialize(snap({"exceptionStack": stack}))

    value = parsed(line)["data"]["exceptionStack"]
    assert value.startswith("[truncated ")
    assert value.endswith("ValueError: last")


def test_text_full_of_escapes_is_cut_to_fit() -> None:
    data = {"body": "\x01" * 100_000, "other": "\n" * 100_000}

    line = builder(max_event_bytes=20_000).serialize(snap(data))

    assert len(line) <= 20_000
    assert set(parsed(line)["data"]["body"].split("…")[0]) == {"\x01"}


def test_a_large_nested_extra_is_cut_as_text() -> None:
    data = {"body": "short", "rows": [{"id": i, "name": "x" * 50} for i in range(5000)]}

    line = builder(max_event_bytes=20_000).serialize(snap(data))

    envelope = parsed(line)
    assert len(line) <= 20_000
    assert envelope["data"]["body"] == "short"
    assert envelope["data"]["rows"].startswith('[{"id":0,')


def test_too_many_keys_leave_only_our_keys_and_a_count() -> None:
    data: Dict[str, Any] = {"body": "kept", "severityNumber": 9}
    data.update({f"k{i}": "v" * 60 for i in range(20_000)})

    line = builder(max_event_bytes=10_000).serialize(snap(data))

    assert len(line) <= 10_000
    assert parsed(line)["data"] == {
        "body": "kept",
        "severityNumber": 9,
        DROPPED_KEYS: 20_000,
    }


def test_the_smallest_limit_still_gives_a_valid_event() -> None:
    big = "ü" * 10_000
    data = {key: big for key in ("body", "formattedMessage", "exceptionStack")}
    data.update({f"extra{i}": big for i in range(10)})
    limit = 1100

    build = builder(max_event_bytes=limit, ext=static_ext(app={"name": "a" * 40}))

    line = build.serialize(snap(data, trace_id=TRACE_ID, span_id=SPAN_ID))

    assert len(line) <= limit
    envelope = parsed(line)
    assert envelope["data"][DROPPED_KEYS] == 10


def test_the_snapshot_is_not_changed_by_shrinking() -> None:
    data = {"body": "x" * 10_000}

    builder(max_event_bytes=2000).serialize(snap(data))

    assert data == {"body": "x" * 10_000}


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=300),
    st.integers(min_value=0, max_value=1200),
    st.booleans(),
)
def test_a_cut_never_splits_a_character(text: str, keep: int, keep_end: bool) -> None:
    raw = text.encode("utf-8")

    cut = _envelope._cut_utf8(raw, keep, keep_end)

    if keep >= len(raw):
        assert cut == text
        return
    if keep_end:
        marker, _, kept = cut.partition("…")
        assert text.endswith(kept)
    else:
        kept, _, marker = cut.rpartition("…")
        assert text.startswith(kept)
    removed = len(raw) - len(kept.encode("utf-8"))
    assert marker == f"[truncated {removed} bytes]"
    assert len(kept.encode("utf-8")) <= keep


# -- properties -----------------------------------------------------------------

names = st.sampled_from([EVENT, "Contoso.Orders.Shipped", "App_1.x"]) | st.text(
    max_size=12
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(exclude_categories=()))
    | st.binary(max_size=20)
    | st.datetimes(timezones=st.none() | st.just(dt.timezone.utc))
    | st.uuids()
    | st.decimals()
    | st.builds(object)
)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers(), children, max_size=4)
        | st.tuples(children)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=15,
)
extra_keys = st.text(max_size=10).filter(
    lambda key: (
        key not in logging.makeLogRecord({}).__dict__
        and key not in ("message", "asctime")
    )
)
exceptions = st.none() | st.sampled_from(
    [ValueError("bad value"), KeyError("k"), RuntimeError("é" * 3000), OSError(2, "x")]
)


def record_of(
    name: Any,
    message: str,
    args: Any,
    extras: Dict[str, Any],
    error: Optional[BaseException],
) -> logging.LogRecord:
    exc_info = None
    if error is not None:
        try:
            raise error
        except BaseException:
            exc_info = sys.exc_info()
    fields = {"event_name": name} if name is not None else {}
    fields.update(extras)
    logger = logging.getLogger("app.property")
    return logger.makeRecord(
        "app.property",
        logging.WARNING,
        "f.py",
        1,
        message,
        args,
        exc_info,
        extra=fields,
    )


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        record_of,
        names | st.none(),
        st.text(alphabet=st.characters(exclude_categories=()), max_size=200),
        st.tuples() | st.tuples(values),
        st.dictionaries(extra_keys, values, max_size=5),
        exceptions,
    ),
    st.sampled_from([_envelope.MIN_EVENT_BYTES * 2, _schema.MAX_EVENT_BYTES]),
)
def test_any_record_gives_an_envelope_the_collector_accepts(
    record: logging.LogRecord, limit: int
) -> None:
    counters = Counters()
    options = RecordOptions(event_name=EVENT, counters=counters)

    result = snapshot(record, options, 1)
    assert result is not None
    line = builder(max_event_bytes=limit, counters=counters).serialize(result)

    assert len(line) <= limit
    assert b"\n" not in line
    envelope = parsed(line)
    assert set(envelope["data"]) >= {"body", "formattedMessage", "severityNumber"}


typed_values = st.sampled_from(
    [
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(),
        st.booleans(),
        st.binary(),
        st.datetimes(),
        st.uuids(),
        st.decimals(),
        st.from_type(decimal.Decimal),
        st.from_type(uuid.UUID),
        st.lists(st.floats(allow_nan=False), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_an_extra_keeps_one_json_type_across_events(data: st.DataObject) -> None:
    kind = data.draw(typed_values)
    first, second = data.draw(kind), data.draw(kind)
    options = RecordOptions(event_name=EVENT, counters=Counters())
    build = builder()

    types = set()
    for seq, value in enumerate((first, second), 1):
        result = snapshot(record_of(None, "m", (), {"k": value}, None), options, seq)
        assert result is not None
        types.add(type(parsed(build.serialize(result))["data"]["k"]))

    assert len(types) == 1


# -- plain records ---------------------------------------------------------------

_TEXT = st.text() | st.sampled_from(["", "order %d", "é𝄞\u2028\x00\"\\", "\ud800 lone"])


@settings(max_examples=300, deadline=None)
@given(
    body=_TEXT,
    message=_TEXT,
    level=_TEXT,
    logger=_TEXT,
    created=st.floats(min_value=0, max_value=2e11) | st.just(CREATED),
    seq=st.integers(min_value=-5, max_value=2**64),
    trace=st.none() | st.just(TRACE_ID) | st.text(max_size=40),
    span=st.none() | st.just(SPAN_ID),
    standard=st.booleans(),
)
def test_a_plain_record_gives_the_same_line_as_its_snapshot(  # noqa: PLR0917
    body: str,
    message: str,
    level: str,
    logger: str,
    created: float,
    seq: int,
    trace: Optional[str],
    span: Optional[str],
    standard: bool,
) -> None:
    plain = (EVENT, created, seq, body, message, level, 9, logger, trace, span)
    encoder = builder(dumps=dumps_json) if standard else builder()

    line = encoder.serialize(plain)

    assert line == encoder.serialize(plain_snapshot(plain))
    # The second time, the repeated strings come from the builder's cache.
    assert line == encoder.serialize(plain)


def test_a_plain_record_too_large_for_one_event_is_cut_like_its_snapshot() -> None:
    message = "m" * 3000
    plain = (EVENT, CREATED, 7, message, message, "INFO", 9, "app", None, None)
    encoder = builder(max_event_bytes=2048, counters=Counters())

    line = encoder.serialize(plain)

    assert len(line) <= 2048
    assert line == builder(max_event_bytes=2048).serialize(plain_snapshot(plain))
    assert "truncated" in parsed(line)["data"]["formattedMessage"]


def test_a_message_without_arguments_is_encoded_once_for_body_and_message() -> None:
    message = "no arguments here"
    plain = (EVENT, CREATED, 1, message, message, "INFO", 9, "app", None, None)

    data = parsed(builder().serialize(plain))["data"]

    assert data["body"] == data["formattedMessage"] == message
