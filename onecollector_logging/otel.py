"""An OpenTelemetry SDK log exporter that delivers through the handler's pipeline.

Applications that log through the OpenTelemetry SDK add
:class:`OneCollectorLogExporter` to their ``LoggerProvider``; each OpenTelemetry
log record becomes the same Common Schema envelope a
:class:`~onecollector_logging.OneCollectorHandler` makes of a :mod:`logging`
record, and travels the same way: one handler's queue, batching, retries, kill
windows, disk cache and counters. Needs the ``otel`` extra
(``pip install 'onecollector-logging[otel]'``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
import weakref
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)

try:
    from opentelemetry.sdk._logs import export as _otel_export
except ImportError as exc:
    raise ImportError(
        "onecollector_logging.otel needs the OpenTelemetry SDK; install the"
        " 'otel' extra: pip install 'onecollector-logging[otel]'"
    ) from exc

from . import _config, _schema
from ._batcher import is_own_logger
from ._directives import real_monotonic
from ._record import (
    EXTRA_PREFIX,
    OWN_KEYS,
    RecordOptions,
    Snapshot,
    anonymize_paths,
    keep_end,
    override_name,
)
from ._values import JSONValue, safe_str, to_json
from .handler import OneCollectorHandler, _close_together

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter as _ExporterBase
    from opentelemetry.sdk._logs.export import LogRecordExportResult as _Result
else:
    # Newer SDKs renamed both and keep the old names as deprecated aliases,
    # whose subclassing warns.
    _ExporterBase = getattr(_otel_export, "LogRecordExporter", None)
    if _ExporterBase is None:
        _ExporterBase = _otel_export.LogExporter
    _Result = getattr(_otel_export, "LogRecordExportResult", None)
    if _Result is None:
        _Result = _otel_export.LogExportResult

__all__ = ["RESOURCE_EXT", "OneCollectorLogExporter"]

log = logging.getLogger(__name__)

#: Resource attributes with a documented Common Schema ``ext`` field. Every
#: other resource attribute goes to ``data`` under its own name. When both
#: environment attributes are set, the first one listed wins.
RESOURCE_EXT: Mapping[str, Tuple[str, str]] = {
    "service.name": ("app", "name"),
    "service.version": ("app", "ver"),
    "deployment.environment.name": ("app", "env"),
    "deployment.environment": ("app", "env"),
    "cloud.region": ("cloud", "location"),
}
#: The SDK's placeholder when the application names no service; it names none.
_UNKNOWN_SERVICE = "unknown_service"
#: Distinct resource ``ext`` sets, each with its own handler (and so its own
#: threads). Beyond this the attributes of further resources go to ``data``.
_MAX_ROUTES = 8
_MAX_CACHED_RESOURCES = 64

_EVENT_NAME_ATTRIBUTES = ("event.name", "event_name")
_EXCEPTION_KEYS = {
    "exception.type": "exceptionType",
    "exception.message": "exceptionMessage",
}
_STACK_ATTRIBUTE = "exception.stacktrace"
#: Both generations of the semantic conventions' code attributes.
_CODE_KEYS = {
    "code.filepath": "code.filepath",
    "code.file.path": "code.filepath",
    "code.lineno": "code.lineno",
    "code.line.number": "code.lineno",
    "code.function": "code.function",
    "code.function.name": "code.function",
}
#: Trace fields that the OpenTelemetry logging instrumentation copies onto
#: records; the record's own trace context is what the envelope carries.
_TRACE_ATTRIBUTES = frozenset(
    {"otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName"}
)
_SEVERITY_BANDS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_SEVERITY_TEXT = (
    "UNSPECIFIED",
    *(
        band + ("" if step == 0 else str(step + 1))
        for band in _SEVERITY_BANDS
        for step in range(4)
    ),
)
_SEVERITY_OF_TEXT = {
    **{band: 1 + 4 * i for i, band in enumerate(_SEVERITY_BANDS)},
    "WARNING": 13,
    "CRITICAL": 21,
}
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

_ExtFields = Dict[str, Dict[str, str]]
_RouteKey = Tuple[Tuple[str, str, str], ...]


class _Route:
    """One handler and the naming rules of the records it receives."""

    def __init__(self, handler: OneCollectorHandler, options: RecordOptions) -> None:
        self.handler = handler
        self.options = options


class OneCollectorLogExporter(_ExporterBase):
    """Send OpenTelemetry log records to OneCollector as Common Schema 4.0 events.

    The exporter owns a :class:`~onecollector_logging.OneCollectorHandler`
    (attached to no logger) built from the same options, and hands it one
    snapshot per record: the envelopes, the requests, the retries, the kill
    windows, the disk cache and the counters are the handler's.

    A record maps onto ``data`` as a :mod:`logging` record does: ``body`` and
    ``formattedMessage`` (the body; a body that is not a string as its JSON
    text, so the column stays a string), ``severityText`` (from the number when
    the record has none), ``severityNumber`` (the OpenTelemetry number, already
    the handler's scale), ``logger`` (the instrumentation scope), the
    ``exception.*`` attributes as ``exceptionType``, ``exceptionMessage`` and
    ``exceptionStack``, the ``code.*`` attributes only with *code_location*,
    then every other attribute, then the resource attributes. An attribute
    named like one of those keys is kept as ``extra.<name>``, an attribute
    wins over a resource attribute of the same name, and private attributes
    (``_name``) are skipped as private extras are. The record's event name
    (or its ``event.name`` or ``event_name`` attribute) names the event when
    valid; otherwise the handler's rules apply (*event_names*, *event_name*).
    The trace and span ids go to ``ext.dt``.

    Resource attributes listed in :data:`RESOURCE_EXT` fill the documented
    ``ext`` fields (``service.name`` -> ``ext.app.name``, ``service.version``
    -> ``ext.app.ver``, ``deployment.environment[.name]`` -> ``ext.app.env``,
    ``cloud.region`` -> ``ext.cloud.location``) unless the *app*, *cloud* or
    *ext* option already sets that field; then, like every other resource
    attribute, they go to ``data`` under their own names. Each distinct set of
    such fields gets its own handler (one per ``LoggerProvider`` in practice).

    Threading contract: :meth:`export` runs on the processor's thread and only
    queues; it never waits for the network. :meth:`force_flush` and
    :meth:`shutdown` wait at most the handler's *shutdown_timeout*, whatever
    the collector does; what is not sent by then is kept in the disk cache.

    :param instrumentation_key: the full key; defaults to the environment
        variable ``ONECOLLECTOR_INSTRUMENTATION_KEY``.
    :param endpoint: the collector URL.
    :param event_name: the event (table) name of records that name none.
    :param options: any other keyword option of
        :class:`~onecollector_logging.OneCollectorHandler` (``event_names``,
        ``shutdown_timeout``, ``cache_dir``, ``app``, ``redact``, ...).
    :raises ConfigurationError: for a bad option, at construction.
    """

    def __init__(
        self,
        instrumentation_key: Optional[str] = None,
        endpoint: str = _schema.DEFAULT_ENDPOINT,
        event_name: str = "Python.Log",
        **options: Any,
    ) -> None:
        self._options: Dict[str, Any] = dict(
            options,
            instrumentation_key=instrumentation_key,
            endpoint=endpoint,
            event_name=event_name,
        )
        self._lock = threading.Lock()
        self._routes: Dict[_RouteKey, _Route] = {}
        self._resources: Dict[int, Tuple[object, _Route, Dict[str, JSONValue]]] = {}
        self._shut_down = False
        self._failure_reported = False
        # Built now so that a bad option fails here, not on the processor's
        # thread; it also serves records whose resource maps to no ext field.
        self._base = self._new_route({})
        self._routes[()] = self._base
        self._configured = self._configured_fields()
        if hasattr(os, "register_at_fork"):
            # A fork while a processor thread held the lock would leave the
            # child's copy locked for ever; the handlers renew themselves.
            renew = weakref.WeakMethod(self._renew_lock)
            os.register_at_fork(after_in_child=lambda: _call_if_alive(renew))

    # -- LogRecordExporter -------------------------------------------------

    def export(self, batch: Sequence[Any]) -> _Result:
        """Queue every record of *batch*; never waits for the network.

        :param batch: ``ReadableLogRecord`` objects (``LogData`` on older SDKs).
        """
        if self._shut_down:
            return _Result.FAILURE
        for item in batch:
            try:
                self._export_one(item)
            except Exception as exc:
                self._record_failed(exc)
        return _Result.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send (or store on disk) what was exported so far.

        Waits at most *timeout_millis*, and never longer than the handler's
        *shutdown_timeout*.

        :return: True when everything exported was sent or stored in time.
        """
        if self._shut_down:
            return False
        deadline = real_monotonic() + max(0.0, timeout_millis / 1000)
        done = True
        for route in self._all_routes():
            left = max(0.0, deadline - real_monotonic())
            done = route.handler.flush_within(left) and done
        return done

    def shutdown(self) -> None:
        """Send or store what is left and stop; bounded by *shutdown_timeout*.

        Idempotent. Later exports fail, and what they carry is not sent.
        """
        with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
            routes = list(self._routes.values())
        # Closed together, so that the wait is one shutdown_timeout however
        # many resources the exporter saw.
        _close_together([route.handler for route in routes])

    # -- introspection -------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """The counters of :meth:`OneCollectorHandler.stats`, summed over the
        exporter's handlers."""
        total: Dict[str, Any] = {}
        for route in self._all_routes():
            _add_counts(total, route.handler.stats())
        return total

    @property
    def handlers(self) -> List[OneCollectorHandler]:
        """The handlers that deliver this exporter's records (one per distinct
        resource ``ext`` set, plus the one for records whose resource sets
        none)."""
        return [route.handler for route in self._all_routes()]

    # -- internals ------------------------------------------------------------

    def _renew_lock(self) -> None:
        self._lock = threading.Lock()

    def _all_routes(self) -> List[_Route]:
        with self._lock:
            return list(self._routes.values())

    def _export_one(self, item: Any) -> None:
        # LogData (older SDKs) and ReadableLogRecord both wrap the record in
        # .log_record; the resource sits on the wrapper or, in older SDKs, on
        # the record itself.
        record = getattr(item, "log_record", item)
        resource = getattr(item, "resource", None)
        if resource is None:
            resource = getattr(record, "resource", None)
        scope = getattr(item, "instrumentation_scope", None)
        logger_name = getattr(scope, "name", None) or ""
        if not isinstance(logger_name, str):
            logger_name = safe_str(logger_name)
        if is_own_logger(logger_name):
            return
        route, resource_data = self._route_for(resource)
        handler = route.handler
        # A fork gives the handler new counters; the naming rules count there.
        route.options.counters = handler.counters
        handler.submit(snapshot_of(record, logger_name, resource_data, route.options))

    def _record_failed(self, error: BaseException) -> None:
        self._base.handler.counters.add("dropped.unmappable")
        if not self._failure_reported:
            self._failure_reported = True
            log.warning(
                "an OpenTelemetry log record could not be turned into an event"
                " (%s) and was dropped; such records are counted as"
                " dropped.unmappable",
                type(error).__name__,
            )

    def _route_for(self, resource: object) -> Tuple[_Route, Dict[str, JSONValue]]:
        if resource is None:
            return self._base, {}
        with self._lock:
            if self._shut_down:
                # A new handler now would outlive the exporter.
                return self._base, {}
            known = self._resources.get(id(resource))
            # The resource itself is kept in the entry, so its id is not reused.
            if known is not None and known[0] is resource:
                return known[1], known[2]
            fields, data = self._describe(resource, with_ext=True)
            key = _route_key(fields)
            route = self._routes.get(key)
            if route is None:
                if len(self._routes) < _MAX_ROUTES:
                    route = self._routes[key] = self._new_route(fields)
                else:
                    route = self._base
                    fields, data = self._describe(resource, with_ext=False)
            if len(self._resources) >= _MAX_CACHED_RESOURCES:
                self._resources.clear()
            self._resources[id(resource)] = (resource, route, data)
            return route, data

    def _describe(
        self, resource: object, *, with_ext: bool
    ) -> Tuple[_ExtFields, Dict[str, JSONValue]]:
        """Split the resource's attributes into ``ext`` fields and ``data``."""
        attributes = getattr(resource, "attributes", None) or {}
        fields: _ExtFields = {}
        used = set()
        for key, (slot, field) in RESOURCE_EXT.items() if with_ext else ():
            value = attributes.get(key)
            if (
                isinstance(value, str)
                and value.strip()
                and not (key == "service.name" and value.startswith(_UNKNOWN_SERVICE))
                and (slot, field) not in self._configured
                and field not in fields.get(slot, {})
            ):
                fields.setdefault(slot, {})[field] = value
                used.add(key)
        data: Dict[str, JSONValue] = {}
        for key, value in attributes.items():
            if isinstance(key, str) and key and key[:1] != "_" and key not in used:
                data[EXTRA_PREFIX + key if key in OWN_KEYS else key] = to_json(value)
        return fields, data

    def _configured_fields(self) -> frozenset[Tuple[str, str]]:
        configured = set()
        for slot in ("app", "cloud"):
            for field in _config.mapping(slot, self._options.get(slot)) or {}:
                configured.add((slot, field))
        ext = _config.mapping("ext", self._options.get("ext")) or {}
        for slot, values in ext.items():
            if isinstance(values, Mapping):
                configured.update((slot, str(field)) for field in values)
        return frozenset(configured)

    def _new_route(self, fields: _ExtFields) -> _Route:
        options = dict(self._options)
        for slot, values in fields.items():
            configured = _config.mapping(slot, options.get(slot)) or {}
            options[slot] = {**values, **configured}
        handler = OneCollectorHandler(**options)
        record_options = RecordOptions(
            event_name=handler.event_name,
            event_names=_config.mapping("event_names", options.get("event_names"))
            or {},
            code_location=_config.as_bool(
                "code_location", options.get("code_location", False)
            ),
            counters=handler.counters,
        )
        return _Route(handler, record_options)


def _call_if_alive(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()


def _route_key(fields: _ExtFields) -> _RouteKey:
    return tuple(
        sorted(
            (slot, field, value)
            for slot, values in fields.items()
            for field, value in values.items()
        )
    )


def _add_counts(total: Dict[str, Any], stats: Mapping[str, Any]) -> None:
    for name, value in stats.items():
        if isinstance(value, Mapping):
            _add_counts(total.setdefault(name, {}), value)
        else:
            total[name] = total.get(name, 0) + value


# -- one record ---------------------------------------------------------------


def snapshot_of(
    record: Any,
    logger_name: str,
    resource_data: Mapping[str, JSONValue],
    options: RecordOptions,
) -> Snapshot:
    """Reduce an OpenTelemetry log record to a :class:`Snapshot`.

    :param record: the SDK or API ``LogRecord``.
    :param logger_name: the instrumentation scope name.
    :param resource_data: the resource attributes that go to ``data``.
    :param options: the naming rules and limits of the handler.

    The sequence number is left to :meth:`OneCollectorHandler.submit`.
    """
    body = _body_text(record.body)
    number = _severity_number(record.severity_number, record.severity_text)
    severity_text = record.severity_text
    data: Dict[str, JSONValue] = {
        "body": body,
        "formattedMessage": body,
        "severityText": severity_text
        if isinstance(severity_text, str) and severity_text
        else _SEVERITY_TEXT[number],
        "severityNumber": number,
        "logger": logger_name,
    }
    attributes = record.attributes or {}
    event_name = getattr(record, "event_name", None) or None
    for key, value in attributes.items():
        if not isinstance(key, str) or not key:
            continue
        if key in _EVENT_NAME_ATTRIBUTES:
            if event_name is None:
                event_name = value
            continue
        _add_attribute(data, key, value, options)
    for key, value in resource_data.items():
        if key not in data:
            # Shared by every record of the resource: redact may change it.
            data[key] = (
                copy.deepcopy(value) if isinstance(value, (list, dict)) else value
            )

    name = options.name_for(logger_name)
    if event_name is not None:
        name = override_name(event_name, name, data, options)
    return Snapshot(
        name,
        _created(record),
        0,
        data,
        _hex_id(record.trace_id, 32),
        _hex_id(record.span_id, 16),
    )


def _add_attribute(
    data: Dict[str, JSONValue], key: str, value: object, options: RecordOptions
) -> None:
    if key in _EXCEPTION_KEYS:
        data[_EXCEPTION_KEYS[key]] = safe_str(value)
    elif key == _STACK_ATTRIBUTE:
        stack = keep_end(safe_str(value).rstrip("\n"), options.exception_max_chars)
        # As for records: paths name people unless locations were asked for.
        data["exceptionStack"] = (
            stack if options.code_location else anonymize_paths(stack)
        )
    elif key.startswith("code."):
        # Paths name people and machines: only on request, as for records.
        if options.code_location and key in _CODE_KEYS:
            data[_CODE_KEYS[key]] = to_json(value)
    elif key[:1] == "_" or key in _TRACE_ATTRIBUTES:
        return
    else:
        data[EXTRA_PREFIX + key if key in OWN_KEYS else key] = (
            value if type(value) is str else to_json(value)
        )


def _body_text(body: object) -> str:
    if type(body) is str:
        return body
    if body is None:
        return ""
    value = to_json(body)
    if type(value) is str:
        return value
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError):
        return safe_str(body)


def _severity_number(number: object, text: object) -> int:
    value = getattr(number, "value", number)
    if type(value) is int and 1 <= value <= 24:
        return value
    if isinstance(text, str):
        return _SEVERITY_OF_TEXT.get(text.upper(), 0)
    return 0


def _created(record: Any) -> float:
    for name in ("timestamp", "observed_timestamp"):
        nanoseconds = getattr(record, name, None)
        if isinstance(nanoseconds, int) and nanoseconds > 0:
            return nanoseconds / 1e9
    return time.time()


def _hex_id(value: object, digits: int) -> Optional[str]:
    if type(value) is not int or not 0 < value < 1 << (4 * digits):
        return None
    return f"{value:0{digits}x}"
