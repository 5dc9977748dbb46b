"""The OpenTelemetry exporter: OTel log records on the handler's own pipeline."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from support import KEY, TENANT, isolated_logger

from onecollector_logging import OneCollectorHandler
from onecollector_logging._batcher import Pipeline
from onecollector_logging._cache import DiskCache
from onecollector_logging._transport import Interrupted
from onecollector_logging.testing import Answer, LocalCollector

pytest.importorskip("opentelemetry.sdk._logs")

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk import _logs as sdk_logs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from onecollector_logging.otel import (
    OneCollectorLogExporter,
    snapshot_of,
)

_SdkLogRecord = getattr(sdk_logs, "LogRecord", None)
_HAS_EVENT_NAME = "event_name" in inspect.signature(LogRecord).parameters

ROOT = Path(__file__).resolve().parent.parent
SHOP = {"service.name": "contoso-shop", "service.version": "2.3.0"}
SHOP_APP = {"name": "contoso-shop", "ver": "2.3.0"}
_OTEL_SEVERITY = {
    logging.DEBUG: SeverityNumber.DEBUG,
    logging.INFO: SeverityNumber.INFO,
    logging.WARNING: SeverityNumber.WARN,
    logging.ERROR: SeverityNumber.ERROR,
    logging.CRITICAL: SeverityNumber.FATAL,
}

Build = Callable[..., Tuple[LoggerProvider, OneCollectorLogExporter]]


@pytest.fixture
def otel(onecollector: LocalCollector, tmp_path: Path) -> Iterator[Build]:
    """Build a provider whose batch processor feeds a OneCollector exporter;
    every provider is shut down after the test."""
    providers: List[LoggerProvider] = []

    def build(
        resource: Optional[Resource] = None,
        collector: LocalCollector = onecollector,
        **options: Any,
    ) -> Tuple[LoggerProvider, OneCollectorLogExporter]:
        options.setdefault("cache_dir", str(tmp_path / "cache"))
        options.setdefault("shutdown_timeout", 5)
        exporter = OneCollectorLogExporter(KEY, endpoint=collector.endpoint, **options)
        provider = LoggerProvider(
            resource=resource if resource is not None else Resource(SHOP),
            shutdown_on_exit=False,
        )
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        providers.append(provider)
        return provider, exporter

    yield build
    for provider in providers:
        provider.shutdown()


def _deliver(provider: LoggerProvider, exporter: OneCollectorLogExporter) -> None:
    # The processor hands its queue to the exporter; the exporter's handler
    # then sends what it holds.
    provider.force_flush()
    exporter.force_flush()


def _emit(provider: LoggerProvider, scope: str, body: Any, **fields: Any) -> None:
    fields.setdefault("severity_number", SeverityNumber.INFO)
    fields.setdefault("timestamp", time.time_ns())
    if _SdkLogRecord is not None:
        # Older SDKs take the resource from the record, not from the logger.
        record = _SdkLogRecord(body=body, resource=provider.resource, **fields)
    else:
        record = LogRecord(body=body, **fields)
    provider.get_logger(scope).emit(record)


def _shape(event: Dict[str, Any]) -> Tuple[Dict[str, str], Dict[str, List[str]]]:
    data = {key: type(value).__name__ for key, value in event["data"].items()}
    ext = {slot: sorted(fields) for slot, fields in event["ext"].items()}
    return data, ext


def _by_seq(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return sorted(events, key=lambda e: e["ext"]["sdk"]["seq"])


def _raised(error: Exception) -> Exception:
    try:
        raise error
    except Exception as caught:
        return caught


def _exception_attributes(error: BaseException) -> Dict[str, str]:
    # What the SDK puts on a record emitted with an exception.
    kind = type(error)
    return {
        "exception.type": kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}",
        "exception.message": str(error),
        "exception.stacktrace": "".join(
            traceback.format_exception(kind, error, error.__traceback__)
        ),
    }


def test_the_same_records_give_the_same_data_and_ext_through_handler_and_exporter(
    onecollector: LocalCollector,
    make_handler: Callable[..., OneCollectorHandler],
    otel: Build,
) -> None:
    handler = make_handler(app=SHOP_APP, event_name="Contoso.Shop.Log")
    logger = isolated_logger("shop.orders", handler)
    with LocalCollector() as second:
        provider, exporter = otel(collector=second, event_name="Contoso.Shop.Log")
        tracer = TracerProvider().get_tracer("shop")

        for i in range(100):
            level = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                     logging.CRITICAL)[i % 5]  # fmt: skip
            extras: Dict[str, Any] = {
                "order": i,
                "amount": i * 1.5,
                "sku": f"S-{i}",
                "paid": i % 2 == 0,
                "tags": ["gift", "express"],
            }
            if i % 25 == 0:
                extras["event_name"] = "Contoso.Shop.Refund"
            error = (
                _raised(ValueError(f"order {i} has no items")) if i % 10 == 9 else None
            )
            attributes = dict(extras)
            if error is not None:
                attributes.update(_exception_attributes(error))
            within = tracer.start_as_current_span("checkout") if i % 3 == 0 else None
            with within or contextlib.nullcontext() as span:
                context = span.get_span_context() if span is not None else None
                logger.log(
                    level, "order %d: %s", i, f"S-{i}", extra=extras, exc_info=error
                )
                _emit(
                    provider,
                    "shop.orders",
                    f"order {i}: S-{i}",
                    severity_number=_OTEL_SEVERITY[level],
                    severity_text=logging.getLevelName(level),
                    attributes=attributes,
                    trace_id=context.trace_id if context else None,
                    span_id=context.span_id if context else None,
                )
        handler.flush()
        _deliver(provider, exporter)

        assert onecollector.wait_for_events(100)
        assert second.wait_for_events(100)
        from_handler = _by_seq(onecollector.events)
        from_exporter = _by_seq(second.events)
        assert second.rejected_events == 0 and onecollector.rejected_events == 0

    assert len(from_handler) == len(from_exporter) == 100
    same_values = (
        "formattedMessage", "severityText", "severityNumber", "logger", "order",
        "amount", "sku", "paid", "tags", "exceptionType", "exceptionMessage",
        "exceptionStack",
    )  # fmt: skip
    for ours, theirs in zip(from_handler, from_exporter):
        assert _shape(ours) == _shape(theirs)
        assert ours["name"] == theirs["name"]
        assert ours["ext"]["app"] == theirs["ext"]["app"] == SHOP_APP
        assert ours["ext"].get("dt") == theirs["ext"].get("dt")
        for key in same_values:
            assert ours["data"].get(key) == theirs["data"].get(key), key
    assert sum("dt" in e["ext"] for e in from_exporter) == 34
    assert sum(e["name"] == "Contoso.Shop.Refund" for e in from_exporter) == 4
    assert sum("exceptionStack" in e["data"] for e in from_exporter) == 10
    assert exporter.stats()["accepted"] == handler.stats()["accepted"] == 100


def test_resource_attributes_fill_documented_ext_fields_and_the_rest_goes_to_data(
    onecollector: LocalCollector, otel: Build
) -> None:
    resource = Resource.create(
        {
            **SHOP,
            "deployment.environment.name": "staging",
            "deployment.environment": "legacy-name",
            "cloud.region": "westeurope",
            "cloud.provider": "azure",
            "body": "a resource attribute named like one of our keys",
        }
    )
    provider, exporter = otel(resource=resource)

    _emit(provider, "shop", "started", attributes={"cloud.provider": "mine"})
    _deliver(provider, exporter)

    assert onecollector.wait_for_events(1)
    (event,) = onecollector.events
    assert event["ext"]["app"] == {**SHOP_APP, "env": "staging"}
    assert event["ext"]["cloud"] == {"location": "westeurope"}
    data = event["data"]
    assert data["body"] == "started"
    assert data["extra.body"] == "a resource attribute named like one of our keys"
    assert data["deployment.environment"] == "legacy-name"
    assert data["cloud.provider"] == "mine"  # the record's attribute wins
    assert data["telemetry.sdk.language"] == "python"
    assert "service.name" not in data and "cloud.region" not in data


def test_configured_ext_fields_win_and_the_resource_value_goes_to_data(
    onecollector: LocalCollector, otel: Build
) -> None:
    provider, exporter = otel(app={"name": "configured-name"})

    _emit(provider, "shop", "started")
    _deliver(provider, exporter)

    assert onecollector.wait_for_events(1)
    (event,) = onecollector.events
    assert event["ext"]["app"] == {"name": "configured-name", "ver": "2.3.0"}
    assert event["data"]["service.name"] == "contoso-shop"


def test_the_sdk_placeholder_service_name_is_not_an_app_name(
    onecollector: LocalCollector, otel: Build
) -> None:
    provider, exporter = otel(resource=Resource.create({}))

    _emit(provider, "shop", "started")
    _deliver(provider, exporter)

    assert onecollector.wait_for_events(1)
    (event,) = onecollector.events
    assert "app" not in event["ext"]
    assert event["data"]["service.name"].startswith("unknown_service")


def test_two_providers_with_different_resources_keep_their_own_ext(
    onecollector: LocalCollector, otel: Build
) -> None:
    provider, exporter = otel()
    other = LoggerProvider(
        resource=Resource({"service.name": "contoso-billing"}), shutdown_on_exit=False
    )
    other.add_log_record_processor(BatchLogRecordProcessor(exporter))

    _emit(provider, "shop", "from the shop")
    _emit(other, "billing", "from billing")
    other.force_flush()
    _deliver(provider, exporter)

    assert onecollector.wait_for_events(2)
    names = {e["data"]["body"]: e["ext"]["app"]["name"] for e in onecollector.events}
    assert names == {"from the shop": "contoso-shop", "from billing": "contoso-billing"}
    assert exporter.stats()["accepted"] == 2


@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)
def test_a_forked_child_exports_its_own_records_under_its_own_epoch(
    onecollector: LocalCollector, otel: Build
) -> None:
    provider, exporter = otel(flush_interval_s=0.05)
    _emit(provider, "shop", "parent")
    _deliver(provider, exporter)
    assert onecollector.wait_for_events(1)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            _emit(provider, "shop", "child")
            provider.shutdown()
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)

    assert status == 0
    assert onecollector.wait_for_events(2)
    epochs = {e["data"]["body"]: e["ext"]["sdk"] for e in onecollector.events}
    assert epochs["child"]["epoch"] != epochs["parent"]["epoch"]
    assert epochs["child"]["seq"] == 1
    assert len(onecollector.events) == 2


def test_shutdown_with_a_collector_that_never_answers_is_bounded_and_caches(
    onecollector: LocalCollector, otel: Build, tmp_path: Path
) -> None:
    onecollector.script_always(Answer(hang=True))
    provider, exporter = otel(shutdown_timeout=1, flush_interval_s=0.05)
    for i in range(20):
        _emit(provider, "shop", f"record {i}")
    provider.force_flush()
    assert onecollector.wait_for_requests(1)

    started = time.monotonic()
    provider.shutdown()
    elapsed = time.monotonic() - started

    assert elapsed < 3
    assert onecollector.events == []
    cache = DiskCache.open(str(tmp_path / "cache"), TENANT)
    assert cache is not None
    assert cache.stats()["records"] == 20
    assert exporter.stats()["cached"] == 20


def test_shutdown_closes_the_handlers_of_every_resource_at_once(
    onecollector: LocalCollector, otel: Build, tmp_path: Path
) -> None:
    onecollector.script_always(Answer(hang=True))
    provider, exporter = otel(shutdown_timeout=1, flush_interval_s=0.05)
    others = [
        LoggerProvider(
            resource=Resource({"service.name": name}), shutdown_on_exit=False
        )
        for name in ("contoso-billing", "contoso-stock")
    ]
    for other in others:
        other.add_log_record_processor(BatchLogRecordProcessor(exporter))
    try:
        for each in (provider, *others):
            for i in range(10):
                _emit(each, "shop", f"record {i}")
            each.force_flush()
        # One handler per resource, each held in a request that never ends.
        assert onecollector.wait_for_requests(3)

        started = time.monotonic()
        exporter.shutdown()
        elapsed = time.monotonic() - started
    finally:
        for other in others:
            other.shutdown()

    # One after the other, the three handlers would take three seconds.
    assert elapsed < 1 + 1
    cache = DiskCache.open(str(tmp_path / "cache"), TENANT)
    assert cache is not None
    assert cache.stats()["records"] == 30
    assert exporter.stats()["cached"] == 30


def test_a_transient_failure_is_retried_once_by_the_handler_pipeline(
    onecollector: LocalCollector, otel: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: List[float] = []

    def no_wait(self: Pipeline, seconds: float) -> None:
        if self._interrupt.is_set():
            raise Interrupted()
        waits.append(seconds)

    monkeypatch.setattr(Pipeline, "_sleep", no_wait)
    onecollector.script(Answer(503))
    provider, exporter = otel(flush_interval_s=0.05)

    _emit(provider, "shop", "persistent")
    provider.force_flush()

    assert onecollector.wait_for_events(1)
    assert len(onecollector.requests) == 2
    assert len(waits) == 1 and waits[0] >= 3
    assert exporter.stats()["retried"] == 1


def test_a_kill_order_drops_exported_records_without_caching(
    onecollector: LocalCollector, otel: Build, tmp_path: Path
) -> None:
    onecollector.script(Answer(401))
    onecollector.kill(TENANT, 60)
    provider, exporter = otel()
    _emit(provider, "shop", "ordered to stop")
    _deliver(provider, exporter)
    assert onecollector.wait_for_requests(1)

    for i in range(10):
        _emit(provider, "shop", f"during the window {i}")
    _deliver(provider, exporter)

    assert len(onecollector.requests) == 1
    assert exporter.stats()["dropped"]["killed"] == 11
    cache = DiskCache.open(str(tmp_path / "cache"), TENANT)
    assert cache is not None and cache.stats()["records"] == 0


def test_event_names_come_from_the_record_then_its_attributes_then_the_rules(
    onecollector: LocalCollector, otel: Build
) -> None:
    provider, exporter = otel(
        event_name="Contoso.Shop.Log", event_names={"shop.db": "Contoso.Shop.Db"}
    )

    if _HAS_EVENT_NAME:
        _emit(provider, "shop", "a", event_name="Contoso.Shop.Field")
    _emit(provider, "shop", "b", attributes={"event.name": "Contoso.Shop.Semconv"})
    _emit(provider, "shop", "c", attributes={"event_name": "Contoso.Shop.Extra"})
    _emit(provider, "shop.db.pool", "d")
    _emit(provider, "shop", "e", attributes={"event.name": "not-valid!"})
    _deliver(provider, exporter)

    assert onecollector.wait_for_events(4 + _HAS_EVENT_NAME)
    names = {e["data"]["body"]: e["name"] for e in onecollector.events}
    assert names == {
        **({"a": "Contoso.Shop.Field"} if _HAS_EVENT_NAME else {}),
        "b": "Contoso.Shop.Semconv",
        "c": "Contoso.Shop.Extra",
        "d": "Contoso.Shop.Db",
        "e": "Contoso.Shop.Log",
    }
    (invalid,) = [e for e in onecollector.events if e["data"]["body"] == "e"]
    assert invalid["data"]["invalidEventName"] == "not-valid!"
    assert "event.name" not in invalid["data"]
    assert exporter.stats()["invalid"]["event_name"] == 1


@pytest.mark.parametrize("code_location", [False, True])
def test_code_attributes_are_sent_only_with_code_location(
    onecollector: LocalCollector, otel: Build, code_location: bool
) -> None:
    provider, exporter = otel(code_location=code_location)
    code = {
        "code.file.path": "/home/alice/app.py",
        "code.line.number": 12,
        "code.function.name": "main",
        "code.column.number": 4,
    }

    _emit(provider, "shop", "located", attributes=code)
    _deliver(provider, exporter)

    assert onecollector.wait_for_events(1)
    data = onecollector.events[0]["data"]
    located = {k: v for k, v in data.items() if k.startswith("code.")}
    if code_location:
        assert located == {
            "code.filepath": "/home/alice/app.py",
            "code.lineno": 12,
            "code.function": "main",
        }
    else:
        assert located == {}


def test_redact_and_the_sequence_are_the_handlers(
    onecollector: LocalCollector, otel: Build
) -> None:
    def redact(data: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        if data.get("secret"):
            return None
        data.pop("card", None)
        return data

    provider, exporter = otel(redact=redact)
    _emit(provider, "shop", "kept", attributes={"card": "4111"})
    _emit(provider, "shop", "dropped", attributes={"secret": True})
    _emit(provider, "shop", "kept too")
    _deliver(provider, exporter)

    assert onecollector.wait_for_events(2)
    events = _by_seq(onecollector.events)
    assert [e["data"]["body"] for e in events] == ["kept", "kept too"]
    assert "card" not in events[0]["data"]
    assert [e["ext"]["sdk"]["seq"] for e in events] == [1, 3]
    assert exporter.stats()["dropped"]["redacted"] == 1


def test_records_of_the_package_own_loggers_are_not_exported(
    onecollector: LocalCollector, otel: Build
) -> None:
    provider, exporter = otel()

    _emit(provider, "onecollector_logging._batcher", "own diagnostics")
    _emit(provider, "onecollector_logging", "own too")
    _emit(provider, "onecollector_loggingX", "another package")
    _emit(provider, "shop", "application")
    _deliver(provider, exporter)

    assert onecollector.wait_for_events(2)
    bodies = [e["data"]["body"] for e in onecollector.events]
    assert sorted(bodies) == ["another package", "application"]


def test_export_after_shutdown_fails_and_sends_nothing(
    onecollector: LocalCollector, otel: Build
) -> None:
    _, exporter = otel()
    exporter.shutdown()
    exporter.shutdown()

    result = exporter.export([LogRecord(body="late")])

    assert result.name == "FAILURE"
    assert exporter.force_flush() is False
    assert onecollector.requests == []


def test_the_opt_out_variable_makes_the_exporter_a_no_op(
    onecollector: LocalCollector, otel: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONECOLLECTOR_LOGGING_DISABLED", "1")
    provider, exporter = otel()

    _emit(provider, "shop", "not sent")
    _deliver(provider, exporter)

    assert onecollector.requests == []
    assert exporter.stats().get("accepted", 0) == 0


def test_a_bad_option_fails_at_construction() -> None:
    from onecollector_logging import ConfigurationError

    with pytest.raises(ConfigurationError, match="flush_interval_s"):
        OneCollectorLogExporter(KEY, flush_interval_s="soon")
    with pytest.raises(ConfigurationError, match=r"ext\.app"):
        OneCollectorLogExporter(KEY, ext={"app": {"initTs": "1"}})


# -- the mapping of one record -------------------------------------------------


def _options() -> Any:
    from onecollector_logging._record import RecordOptions
    from onecollector_logging._stats import Counters

    return RecordOptions(event_name="Contoso.Test.Log", counters=Counters())


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("text", "text"),
        (None, ""),
        ({"order": 7, "tags": ("a", "b")}, '{"order":7,"tags":["a","b"]}'),
        (b"\x00\x01", "AAE="),
        (3.0, "3.0"),
    ],
)
def test_a_body_is_always_text_so_its_column_keeps_one_type(
    body: Any, expected: str
) -> None:
    snap = snapshot_of(LogRecord(body=body), "scope", {}, _options())

    assert snap.data["body"] == snap.data["formattedMessage"] == expected


@pytest.mark.parametrize(
    ("number", "text", "expected"),
    [
        (SeverityNumber.WARN2, None, (14, "WARN2")),
        (SeverityNumber.FATAL, "panic", (21, "panic")),
        (None, "ERROR", (17, "ERROR")),
        (None, "warning", (13, "warning")),
        (None, None, (0, "UNSPECIFIED")),
    ],
)
def test_severity_comes_from_the_number_and_the_text_fills_gaps(
    number: Optional[SeverityNumber], text: Optional[str], expected: Tuple[int, str]
) -> None:
    record = LogRecord(severity_number=number, severity_text=text, body="x")

    snap = snapshot_of(record, "scope", {}, _options())

    assert (snap.data["severityNumber"], snap.data["severityText"]) == expected


def test_trace_ids_become_lowercase_hex_and_zero_means_none() -> None:
    traced = LogRecord(body="x", trace_id=0xABC, span_id=0xDEF)
    untraced = LogRecord(body="x", trace_id=0, span_id=0)

    snap = snapshot_of(traced, "scope", {}, _options())
    bare = snapshot_of(untraced, "scope", {}, _options())

    assert snap.trace_id == "00000000000000000000000000000abc"
    assert snap.span_id == "0000000000000def"
    assert bare.trace_id is None and bare.span_id is None


def test_the_time_is_the_timestamp_else_the_observed_time() -> None:
    timed = LogRecord(body="x", timestamp=1_800_000_000_123_000_000)
    observed = LogRecord(body="x", observed_timestamp=1_700_000_000_000_000_000)

    created = snapshot_of(timed, "s", {}, _options()).created
    assert created == pytest.approx(1_800_000_000.123, abs=1e-6)
    assert snapshot_of(observed, "s", {}, _options()).created == 1_700_000_000.0


def test_attributes_named_like_our_keys_are_kept_aside() -> None:
    record = LogRecord(
        body="x",
        attributes={"logger": "theirs", "_private": 1, "otelSpanID": "abc"},
    )

    snap = snapshot_of(record, "scope", {"logger": "resource"}, _options())

    assert snap.data["logger"] == "scope"
    assert snap.data["extra.logger"] == "theirs"
    assert "_private" not in snap.data and "otelSpanID" not in snap.data


# -- installation ----------------------------------------------------------------


def test_importing_the_exporter_without_opentelemetry_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "onecollector_logging.otel")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk._logs", None)

    with pytest.raises(ImportError, match=r"onecollector-logging\[otel\]"):
        import onecollector_logging.otel  # noqa: F401


def test_the_base_package_works_without_opentelemetry(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import logging, onecollector_logging, onecollector_logging.consent\n"
        f"handler = onecollector_logging.OneCollectorHandler({KEY!r},"
        f" cache_dir={str(tmp_path)!r}, endpoint='http://127.0.0.1:9/')\n"
        "handler.close()\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
