from __future__ import annotations

import gc
import logging
import sys
import weakref
from typing import Any, Dict, Iterator, Optional

import pytest
from opentelemetry.sdk.trace import TracerProvider

from onecollector_logging._record import (
    RecordOptions,
    Snapshot,
    capture,
    plain_snapshot,
    severity_number,
    snapshot,
)
from onecollector_logging._stats import Counters
from onecollector_logging._values import JSONValue
from onecollector_logging.exceptions import ConfigurationError

EVENT = "Contoso.App.Log"


class AppError(Exception):
    class Inner(Exception):
        pass


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.fixture
def counters() -> Counters:
    return Counters()


def options(counters: Counters, **kwargs: Any) -> RecordOptions:
    return RecordOptions(event_name=EVENT, counters=counters, **kwargs)


def make_record(
    msg: object = "user %s did %d things",
    args: Any = ("bob", 3),
    *,
    name: str = "app.db",
    level: int = logging.INFO,
    exc_info: Any = None,
    extra: Optional[Dict[str, Any]] = None,
    sinfo: Optional[str] = None,
) -> logging.LogRecord:
    logger = logging.getLogger(name)
    return logger.makeRecord(
        name, level, "/src/app/db.py", 42, msg, args, exc_info, "query", extra, sinfo
    )


def take(record: logging.LogRecord, opts: RecordOptions, seq: int = 1) -> Snapshot:
    snap = snapshot(record, opts, seq)
    assert snap is not None
    return snap


def raised(error: BaseException) -> Any:
    try:
        raise error
    except BaseException:
        return sys.exc_info()


# -- data ---------------------------------------------------------------------


def test_a_plain_record_carries_message_severity_and_logger(counters: Counters) -> None:
    record = make_record()

    snap = take(record, options(counters), seq=7)

    assert snap.data == {
        "body": "user %s did %d things",
        "formattedMessage": "user bob did 3 things",
        "severityText": "INFO",
        "severityNumber": 9,
        "logger": "app.db",
    }
    assert (snap.name, snap.created, snap.seq) == (EVENT, record.created, 7)
    assert (snap.trace_id, snap.span_id) == (None, None)


def test_a_common_record_is_captured_as_the_plain_form_of_its_snapshot(
    counters: Counters,
) -> None:
    record = make_record()

    plain = capture(record, options(counters), 7)

    assert isinstance(plain, tuple)
    captured = plain_snapshot(plain)
    expected = take(record, options(counters), seq=7)
    assert (captured.name, captured.created, captured.seq, captured.data) == (
        expected.name,
        expected.created,
        expected.seq,
        expected.data,
    )


def test_a_formatter_gives_the_plain_form_its_formatted_message(
    counters: Counters,
) -> None:
    opts = options(counters, formatter=logging.Formatter("%(levelname)s %(message)s"))

    plain = capture(make_record(), opts, 1)

    assert isinstance(plain, tuple)
    message = plain_snapshot(plain).data["formattedMessage"]
    assert message == "INFO user bob did 3 things"


def test_the_plain_form_takes_its_message_from_get_message(
    counters: Counters, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process-wide scrubber replaces LogRecord.getMessage: what is sent is
    # what every other handler of the process writes.
    monkeypatch.setattr(logging.LogRecord, "getMessage", lambda self: "scrubbed")

    plain = capture(make_record(), options(counters), 1)

    assert isinstance(plain, tuple)
    assert plain_snapshot(plain).data["formattedMessage"] == "scrubbed"


@pytest.mark.parametrize("case", ["formatted", "formatted_extra", "moved_extra"])
def test_what_a_formatter_leaves_on_a_record_is_not_an_extra(
    counters: Counters, case: str
) -> None:
    # A console handler that ran first leaves message and asctime behind.
    record = make_record(extra=None if case == "formatted" else {"order": 5})
    if case == "moved_extra":
        # An extra set before a standard attribute that was set again.
        args = record.args
        del record.args
        record.args = args
    logging.Formatter("%(asctime)s %(message)s").format(record)
    assert {"message", "asctime"} <= vars(record).keys()

    captured = capture(record, options(counters), 1)

    if case == "formatted":
        assert isinstance(captured, tuple)
        captured = plain_snapshot(captured)
    else:
        assert isinstance(captured, Snapshot)
        assert captured.data["order"] == 5
    assert captured.data == take(record, options(counters)).data
    assert "message" not in captured.data and "asctime" not in captured.data


@pytest.mark.parametrize(
    "case",
    ["extra", "exception", "stack", "redact", "code_location", "not_str", "fails"],
)
def test_records_beyond_the_common_kind_are_captured_as_snapshots(
    counters: Counters, case: str
) -> None:
    record = make_record(
        msg=12 if case == "not_str" else "%d things" if case == "fails" else "m %s",
        args=("x",),
        extra={"order": 5} if case == "extra" else None,
        exc_info=raised(ValueError("boom")) if case == "exception" else None,
        sinfo="Stack (most recent call last):" if case == "stack" else None,
    )
    opts = options(
        counters,
        redact=(lambda data: data) if case == "redact" else None,
        code_location=case == "code_location",
    )

    captured = capture(record, opts, 1)

    assert isinstance(captured, Snapshot)
    assert captured.data == take(record, opts).data


@pytest.mark.parametrize(
    ("level", "number"),
    [
        (0, 1),
        (5, 3),
        (logging.DEBUG, 5),
        (15, 7),
        (logging.INFO, 9),
        (25, 11),
        (logging.WARNING, 13),
        (logging.ERROR, 17),
        (45, 19),
        (logging.CRITICAL, 21),
        (55, 23),
        (60, 24),
        (1000, 24),
        (-5, 1),
    ],
)
def test_levels_map_onto_the_severity_bands(level: int, number: int) -> None:
    assert severity_number(level) == number


def test_a_custom_level_gets_its_band_number(counters: Counters) -> None:
    record = make_record(level=25)

    snap = take(record, options(counters))

    assert snap.data["severityNumber"] == 11
    assert snap.data["severityText"] == "Level 25"


def test_a_message_that_is_not_a_string_is_converted(counters: Counters) -> None:
    snap = take(make_record({"k": 1}, ()), options(counters))

    assert snap.data["body"] == snap.data["formattedMessage"] == "{'k': 1}"


def test_a_message_that_fails_to_format_keeps_the_record(counters: Counters) -> None:
    record = make_record("%d items", ("many",))

    snap = take(record, options(counters))

    assert snap.data["body"] == "%d items"
    message = snap.data["formattedMessage"]
    assert isinstance(message, str)
    assert message.startswith("%d items <formatting failed: TypeError")


def test_a_message_whose_str_raises_becomes_a_marker(counters: Counters) -> None:
    snap = take(make_record(BadRepr(), ()), options(counters))

    assert snap.data["body"] == "<unrepresentable BadRepr>"


def test_a_formatter_gives_the_formatted_message_with_exception_text(
    counters: Counters,
) -> None:
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    record = make_record(exc_info=raised(ValueError("bad")))

    snap = take(record, options(counters, formatter=formatter))

    message = snap.data["formattedMessage"]
    assert isinstance(message, str)
    assert message.startswith("INFO app.db: user bob did 3 things\nTraceback")
    assert message.endswith("ValueError: bad")
    assert snap.data["exceptionType"] == "ValueError"


# -- extras ---------------------------------------------------------------------


def test_extras_are_converted_in_their_order(counters: Counters) -> None:
    extra = {"orderId": 17, "amount": 6.0, "tags": {"b", "a"}, "when": None}

    snap = take(make_record(extra=extra), options(counters))

    extras = {k: v for k, v in snap.data.items() if k in extra}
    assert list(extras.items()) == [
        ("orderId", 17),
        ("amount", 6.0),
        ("tags", ["a", "b"]),
        ("when", None),
    ]


def test_extras_named_like_our_keys_get_the_extra_prefix(counters: Counters) -> None:
    extra = {"logger": "mine", "body": 1, "severityNumber": "x", "droppedKeys": 2}

    snap = take(make_record(extra=extra), options(counters))

    assert snap.data["logger"] == "app.db"
    assert snap.data["extra.logger"] == "mine"
    assert snap.data["extra.body"] == 1
    assert snap.data["extra.severityNumber"] == "x"
    assert snap.data["extra.droppedKeys"] == 2


def test_private_extras_and_trace_attributes_are_not_data(counters: Counters) -> None:
    extra = {
        "_internal": 1,
        "otelTraceID": "0",
        "otelSpanID": "0",
        "otelTraceSampled": False,
        "otelServiceName": "svc",
        "kept": True,
    }

    snap = take(make_record(extra=extra), options(counters))

    assert [k for k in snap.data if k not in ("body", "formattedMessage")] == [
        "severityText",
        "severityNumber",
        "logger",
        "kept",
    ]


def test_one_bad_extra_costs_only_itself(counters: Counters) -> None:
    extra = {"before": 1, "bad": BadRepr(), "after": "ok"}

    snap = take(make_record(extra=extra), options(counters))

    assert snap.data["before"] == 1
    assert snap.data["bad"] == "<unrepresentable BadRepr>"
    assert snap.data["after"] == "ok"


def test_extras_are_found_on_a_record_changed_after_it_was_made(
    counters: Counters,
) -> None:
    record = make_record(extra={"first": 1})
    del record.args
    record.args = ("bob", 3)
    record.added_later = "yes"

    snap = take(record, options(counters))

    assert snap.data["first"] == 1
    assert snap.data["added_later"] == "yes"
    assert "args" not in snap.data


def test_extras_with_keys_that_are_not_strings_are_skipped(
    counters: Counters,
) -> None:
    record = make_record(extra={"ok": 1})
    attrs: Dict[Any, Any] = record.__dict__
    attrs[5] = "five"

    snap = take(record, options(counters))

    assert snap.data["ok"] == 1
    assert "5" not in snap.data
    assert len(snap.data) == 6


def test_attributes_set_by_an_earlier_formatter_are_not_extras(
    counters: Counters,
) -> None:
    record = make_record(extra={"k": 1})
    logging.Formatter("%(asctime)s %(message)s").format(record)

    snap = take(record, options(counters))

    assert "message" not in snap.data
    assert "asctime" not in snap.data
    assert snap.data["k"] == 1


def test_the_snapshot_keeps_no_reference_to_the_applications_objects(
    counters: Counters,
) -> None:
    class Payload:
        def __repr__(self) -> str:
            return "Payload()"

    payload = Payload()
    items = [1, 2]
    record = make_record(extra={"payload": payload, "items": items})

    snap = take(record, options(counters))
    items.append(3)
    ref = weakref.ref(payload)
    del payload, record
    gc.collect()

    assert ref() is None
    assert snap.data["items"] == [1, 2]
    assert snap.data["payload"] == "Payload()"


# -- names ----------------------------------------------------------------------


def test_an_event_name_extra_names_the_event_and_is_not_data(
    counters: Counters,
) -> None:
    record = make_record(extra={"event_name": "Contoso.App.OrderShipped"})

    snap = take(record, options(counters))

    assert snap.name == "Contoso.App.OrderShipped"
    assert "event_name" not in snap.data
    assert counters.get("invalid") == 0


@pytest.mark.parametrize("bad", ["no", "Has Space", "a..b.c", "_lead", 42, None])
def test_an_invalid_event_name_falls_back_and_is_kept_and_counted(
    counters: Counters, bad: object
) -> None:
    opts = options(counters, event_names={"app": "Contoso.App.Mapped"})

    snap = take(make_record(extra={"event_name": bad}), opts)

    assert snap.name == "Contoso.App.Mapped"
    assert snap.data["invalidEventName"] == (bad if isinstance(bad, str) else repr(bad))
    assert counters.get("invalid.event_name") == 1


@pytest.mark.parametrize(
    ("logger", "event"),
    [
        ("app", "Contoso.App"),
        ("app.db", "Contoso.Db"),
        ("app.db.pool", "Contoso.Db"),
        ("app.db.pool.slow", "Contoso.Slow"),
        ("app.dbx", "Contoso.App"),
        ("other", EVENT),
        ("application", EVENT),
    ],
)
def test_the_longest_logger_prefix_on_a_dotted_boundary_names_the_event(
    counters: Counters, logger: str, event: str
) -> None:
    opts = options(
        counters,
        event_names={
            "app": "Contoso.App",
            "app.db": "Contoso.Db",
            "app.db.pool.slow": "Contoso.Slow",
        },
    )

    assert take(make_record(name=logger), opts).name == event


def test_the_name_cache_stays_bounded(counters: Counters) -> None:
    opts = options(counters, event_names={"app": "Contoso.App"})

    names = {opts.name_for(f"app.m{i}") for i in range(10_000)}

    assert names == {"Contoso.App"}
    assert len(opts._names) <= 4096


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event_name": "bad name"}, "event_name 'bad name'"),
        ({"event_names": {"app": "x"}}, "event_names['app']"),
        ({"event_names": {"": "Contoso.App"}}, "non-empty logger name"),
        ({"redact": "not callable"}, "redact must be callable"),
        ({"exception_max_chars": 10}, "exception_max_chars"),
    ],
)
def test_unusable_options_are_refused_naming_the_option(
    counters: Counters, kwargs: Dict[str, Any], message: str
) -> None:
    arguments: Dict[str, Any] = {"event_name": EVENT, "counters": counters}
    arguments.update(kwargs)

    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[")):
        RecordOptions(**arguments)


# -- code location and privacy --------------------------------------------------


def test_code_location_is_left_out_by_default(counters: Counters) -> None:
    snap = take(make_record(), options(counters))

    assert not [key for key in snap.data if key.startswith("code.")]
    assert "/src/app/db.py" not in repr(snap.data)


def test_code_location_is_added_when_enabled(counters: Counters) -> None:
    snap = take(make_record(), options(counters, code_location=True))

    assert snap.data["code.filepath"] == "/src/app/db.py"
    assert snap.data["code.lineno"] == 42
    assert snap.data["code.function"] == "query"


def test_a_hand_made_record_without_location_is_still_converted(
    counters: Counters,
) -> None:
    record = logging.makeLogRecord({"msg": "hand made"})

    snap = take(record, options(counters, code_location=True))

    assert snap.data["code.function"] is None
    assert snap.data["formattedMessage"] == "hand made"


# -- exceptions -----------------------------------------------------------------


def test_an_exception_gives_its_type_message_and_stack(counters: Counters) -> None:
    record = make_record(exc_info=raised(AppError.Inner("disk full")))

    snap = take(record, options(counters))

    assert snap.data["exceptionType"] == f"{__name__}.AppError.Inner"
    assert snap.data["exceptionMessage"] == "disk full"
    stack = snap.data["exceptionStack"]
    assert isinstance(stack, str)
    assert stack.startswith("Traceback (most recent call last):")
    assert stack.endswith("AppError.Inner: disk full")


def test_a_builtin_exception_type_has_no_module(counters: Counters) -> None:
    snap = take(make_record(exc_info=raised(KeyError("k"))), options(counters))

    assert snap.data["exceptionType"] == "KeyError"


def test_the_stack_includes_chained_causes(counters: Counters) -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError:
        record = make_record(exc_info=sys.exc_info())

    snap = take(record, options(counters))

    stack = snap.data["exceptionStack"]
    assert isinstance(stack, str)
    assert "KeyError: 'inner'" in stack
    assert "direct cause of the following exception" in stack
    assert snap.data["exceptionMessage"] == "outer"


def test_an_exception_whose_str_raises_gets_a_marker(counters: Counters) -> None:
    snap = take(make_record(exc_info=raised(Unprintable())), options(counters))

    assert snap.data["exceptionMessage"] == "<unrepresentable Unprintable>"
    assert isinstance(snap.data["exceptionStack"], str)


def test_a_long_stack_keeps_its_end_behind_a_marker(counters: Counters) -> None:
    error: Optional[BaseException] = None
    for step in range(100):
        try:
            raise ValueError(f"step {step}") from error
        except ValueError as caught:
            error = caught
    assert error is not None
    record = make_record(exc_info=(ValueError, error, error.__traceback__))

    snap = take(record, options(counters, exception_max_chars=2000))

    stack = snap.data["exceptionStack"]
    assert isinstance(stack, str)
    assert len(stack) <= 2000
    assert stack.startswith("…[truncated ")
    assert stack.endswith("ValueError: step 99")
    assert "step 0" not in stack


def test_exception_text_formatted_elsewhere_is_used(counters: Counters) -> None:
    record = make_record()
    record.exc_text = "Traceback ...\nValueError: earlier"

    snap = take(record, options(counters))

    assert snap.data["exceptionStack"] == "Traceback ...\nValueError: earlier"
    assert "exceptionType" not in snap.data


def test_an_exception_instance_as_exc_info_is_accepted(counters: Counters) -> None:
    record = logging.makeLogRecord({"msg": "m", "exc_info": ValueError("v")})

    snap = take(record, options(counters))

    assert snap.data["exceptionType"] == "ValueError"
    assert snap.data["exceptionMessage"] == "v"


def test_stack_info_is_kept(counters: Counters) -> None:
    record = make_record(sinfo="Stack (most recent call last):\n  here")

    snap = take(record, options(counters))

    assert snap.data["stackInfo"] == "Stack (most recent call last):\n  here"


# -- trace context --------------------------------------------------------------


def test_trace_ids_of_the_logging_instrumentation_are_used(
    counters: Counters,
) -> None:
    extra = {
        "otelTraceID": "0AF7651916CD43DD8448EB211C80319C",
        "otelSpanID": "b7ad6b7169203331",
    }

    snap = take(make_record(extra=extra), options(counters))

    assert snap.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert snap.span_id == "b7ad6b7169203331"
    assert "otelTraceID" not in snap.data


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [
        ("0", "0"),
        ("0" * 32, "0" * 16),
        ("xyz", "123"),
        ("g" * 32, "g" * 16),
        ("a" * 31, "b" * 17),
        (None, 5),
    ],
)
def test_invalid_instrumentation_ids_are_ignored(
    counters: Counters, trace_id: object, span_id: object
) -> None:
    extra = {"otelTraceID": trace_id, "otelSpanID": span_id}

    snap = take(make_record(extra=extra), options(counters))

    assert (snap.trace_id, snap.span_id) == (None, None)


@pytest.fixture
def tracer() -> Iterator[Any]:
    provider = TracerProvider()
    yield provider.get_tracer(__name__)
    provider.shutdown()


def test_the_active_span_gives_the_trace_context(
    counters: Counters, tracer: Any
) -> None:
    with tracer.start_as_current_span("work") as span:
        record = make_record()
        snap = take(record, options(counters))
    context = span.get_span_context()

    assert snap.trace_id == f"{context.trace_id:032x}"
    assert snap.span_id == f"{context.span_id:016x}"


def test_a_plain_record_made_in_a_span_carries_its_trace_context(
    counters: Counters, tracer: Any
) -> None:
    with tracer.start_as_current_span("work") as span:
        plain = capture(make_record(), options(counters), 1)
    context = span.get_span_context()

    assert isinstance(plain, tuple)
    captured = plain_snapshot(plain)
    assert captured.trace_id == f"{context.trace_id:032x}"
    assert captured.span_id == f"{context.span_id:016x}"


def test_instrumentation_ids_win_over_the_active_span(
    counters: Counters, tracer: Any
) -> None:
    with tracer.start_as_current_span("work"):
        record = make_record(extra={"otelTraceID": "0", "otelSpanID": "0"})
        snap = take(record, options(counters))

    assert (snap.trace_id, snap.span_id) == (None, None)


def test_without_opentelemetry_imported_there_is_no_trace_context(
    counters: Counters, tracer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)

    with tracer.start_as_current_span("work"):
        snap = take(make_record(), options(counters))

    assert (snap.trace_id, snap.span_id) == (None, None)


# -- redaction ------------------------------------------------------------------


def test_redact_may_rewrite_the_data_in_place(counters: Counters) -> None:
    def redact(data: Dict[str, JSONValue]) -> Dict[str, JSONValue]:
        data["email"] = "***"
        return data

    snap = take(make_record(extra={"email": "a@b.c"}), options(counters, redact=redact))

    assert snap.data["email"] == "***"


def test_redact_may_return_a_new_dict_whose_values_are_converted(
    counters: Counters,
) -> None:
    kept = {"body": "hidden", "score": 6.0, "tags": {"x"}}

    snap = take(make_record(), options(counters, redact=lambda data: kept))
    kept["body"] = "changed later"

    assert snap.data == {"body": "hidden", "score": 6.0, "tags": ["x"]}


def test_redact_returning_none_drops_the_record(counters: Counters) -> None:
    snap = snapshot(make_record(), options(counters, redact=lambda data: None), 1)

    assert snap is None
    assert counters.get("dropped.redacted") == 1


@pytest.mark.parametrize(
    "result", [["not", "a", "dict"], {1: "int key"}, "text"], ids=repr
)
def test_redact_returning_something_else_drops_the_record(
    counters: Counters, result: object
) -> None:
    opts = options(counters, redact=lambda data: result)

    assert snapshot(make_record(), opts, 1) is None
    assert counters.get("dropped.redact_error") == 1


def test_redact_raising_drops_only_that_record_and_warns_once(
    counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    def redact(data: Dict[str, JSONValue]) -> Dict[str, JSONValue]:
        if data.get("secret"):
            raise ValueError("contains a@b.c")
        return data

    opts = options(counters, redact=redact)
    caplog.set_level(logging.WARNING, logger="onecollector_logging")

    results = [
        snapshot(make_record(extra={"secret": True}), opts, 1),
        snapshot(make_record(extra={"secret": False}), opts, 2),
        snapshot(make_record(extra={"secret": True}), opts, 3),
    ]

    assert [r is None for r in results] == [True, False, True]
    assert counters.get("dropped.redact_error") == 2
    warnings = [r for r in caplog.records if r.name == "onecollector_logging._record"]
    assert len(warnings) == 1
    assert "ValueError" in warnings[0].getMessage()
    assert "a@b.c" not in warnings[0].getMessage()


def test_each_handler_warns_once_about_its_redact(
    counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    def redact(data: Dict[str, JSONValue]) -> Dict[str, JSONValue]:
        raise KeyError("x")

    first, second = options(counters, redact=redact), options(counters, redact=redact)
    caplog.set_level(logging.WARNING, logger="onecollector_logging")

    for opts in (first, second, first, second):
        snapshot(make_record(), opts, 1)

    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_an_exception_class_without_an_instance_still_names_its_type(
    counters: Counters,
) -> None:
    record = logging.LogRecord(
        "app", logging.ERROR, __file__, 1, "failed", (), (ValueError, None, None)
    )

    snap = snapshot(
        record, RecordOptions(event_name="Python.Log", counters=counters), 1
    )

    assert snap is not None
    assert snap.data["exceptionType"] == "ValueError"
