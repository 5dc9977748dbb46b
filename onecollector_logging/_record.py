"""Turn a :class:`logging.LogRecord` into a :class:`Snapshot` on the caller's thread.

A snapshot holds only JSON values and strings, never a reference to an object of
the application, so the record can be handed to the worker thread while the
application goes on mutating its own objects. This runs inside
``Handler.emit`` for every record, so the common path (a ``%``-format message
and a few extras) is kept to dictionary work: no regex, no import, no
formatting beyond ``getMessage()``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

from . import _schema
from ._stats import Counters
from ._values import JSONValue, safe_repr, safe_str, to_json
from .exceptions import ConfigurationError

log = logging.getLogger(__name__)

Redactor = Callable[[Dict[str, JSONValue]], Optional[Dict[str, JSONValue]]]

#: Data keys the snapshot fills itself. An extra with one of these names is kept
#: under ``extra.<name>`` so it can neither overwrite them nor change the type of
#: their column.
OWN_KEYS = frozenset(
    {
        "body",
        "formattedMessage",
        "severityText",
        "severityNumber",
        "logger",
        "exceptionType",
        "exceptionMessage",
        "exceptionStack",
        "stackInfo",
        "code.filepath",
        "code.lineno",
        "code.function",
        "invalidEventName",
        "droppedKeys",  # set by the envelope builder on an event cut to fit
    }
)
EXTRA_PREFIX = "extra."

#: Attributes every record has, the ones formatters add, the trace fields of
#: the OpenTelemetry logging instrumentation and our ``event_name``: none of
#: them is copied into data as an extra.
_INIT_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_INIT_COUNT = len(_INIT_ATTRS)
#: What ``Formatter.format()`` adds to a record, after the attributes above:
#: left behind when another handler formatted the record first.
_FORMATTED_ATTRS = frozenset({"message", "asctime"})
_STANDARD_ATTRS = frozenset(
    _INIT_ATTRS
    | {"message", "asctime", "taskName", "event_name"}
    | {"otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName"}
)

_MAX_CACHED_LOGGERS = 4096
#: The OpenTelemetry tracing API, looked up only once the application has
#: imported it: otherwise there is no current span to find.
_TRACING = "opentelemetry.trace"
_HEX = frozenset("0123456789abcdef")


def severity_number(levelno: int) -> int:
    """Map a :mod:`logging` level onto the OpenTelemetry severity numbers.

    Each stdlib band of ten levels maps linearly onto a band of four numbers:
    DEBUG (10) -> 5, INFO (20) -> 9, WARNING (30) -> 13, ERROR (40) -> 17,
    CRITICAL (50) -> 21, so 25 -> 11 and 45 -> 19. Below 10 gives 1-4 (TRACE),
    above 50 gives 21-24 (FATAL).
    """
    if levelno <= 0:
        return 1
    band, offset = divmod(levelno, 10)
    if band >= 5:
        return min(21 + (levelno - 50) * 4 // 10, 24)
    return 1 + band * 4 + offset * 4 // 10


_SEVERITY = tuple(severity_number(level) for level in range(61))


class RecordOptions:
    """What :func:`snapshot` needs to know, prepared once per handler.

    :param event_name: event name of records that no mapping or override names.
    :param event_names: logger-name prefix -> event name. The longest prefix
        that matches on a dotted boundary wins: ``"app.db"`` matches the
        loggers ``app.db`` and ``app.db.pool``, not ``app.dbx``.
    :param code_location: add ``code.filepath``, ``code.lineno`` and
        ``code.function``. Off by default: paths can name users and machines.
    :param redact: called with each record's data; returns the data to send
        (the same dict, changed, or a new one) or None to drop the record. A
        call that raises drops only that record.
    :param formatter: when given, ``formattedMessage`` is ``formatter.format()``
        of the record, exactly the text a file handler would write, exception
        text included; otherwise it is ``record.getMessage()``.
    :param counters: where invalid names and dropped records are counted.
    :param exception_max_chars: longest ``exceptionStack``/``stackInfo`` kept;
        the end of a longer one is kept, since the innermost frames and the
        exception line are there.
    :raises ConfigurationError: if a name or prefix is not usable.
    """

    def __init__(
        self,
        *,
        event_name: str,
        event_names: Mapping[str, str] = {},
        code_location: bool = False,
        redact: Optional[Redactor] = None,
        formatter: Optional[logging.Formatter] = None,
        counters: Counters,
        exception_max_chars: int = 32768,
    ) -> None:
        if not _schema.is_valid_event_name(event_name):
            raise ConfigurationError(
                f"event_name {event_name!r} is not a valid event name: 4-100 "
                "characters of A-Z a-z 0-9 _ . starting with a letter"
            )
        for prefix, name in event_names.items():
            if not isinstance(prefix, str) or not prefix:
                raise ConfigurationError(
                    f"event_names key {prefix!r} must be a non-empty logger name"
                )
            if not _schema.is_valid_event_name(name):
                raise ConfigurationError(
                    f"event_names[{prefix!r}] = {name!r} is not a valid event name"
                )
        if redact is not None and not callable(redact):
            raise ConfigurationError(f"redact must be callable, got {redact!r}")
        if exception_max_chars < 100:
            raise ConfigurationError(
                f"exception_max_chars must be at least 100, got {exception_max_chars}"
            )
        self.event_name = event_name
        self.event_names: Dict[str, str] = dict(event_names)
        self.code_location = bool(code_location)
        self.redact = redact
        self.formatter = formatter
        self.counters = counters
        self.exception_max_chars = exception_max_chars
        #: Whether a record without extras, exception or stack may be queued
        #: as a :data:`PlainRecord`.
        self.plain = redact is None and not code_location
        self._names: Dict[str, str] = {}
        self._redact_warned = False

    def name_for(self, logger_name: str) -> str:
        """Return the event name of records of the logger *logger_name*."""
        name = self._names.get(logger_name)
        if name is None:
            name = self._resolve(logger_name)
            if len(self._names) >= _MAX_CACHED_LOGGERS:
                self._names.clear()
            self._names[logger_name] = name
        return name

    def _resolve(self, logger_name: str) -> str:
        candidate = logger_name
        while True:
            name = self.event_names.get(candidate)
            if name is not None:
                return name
            cut = candidate.rfind(".")
            if cut < 0:
                return self.event_name
            candidate = candidate[:cut]

    def redact_failed(self, error: BaseException) -> None:
        self.counters.add("dropped.redact_error")
        if not self._redact_warned:
            # Set first: the warning may come back through this very handler.
            self._redact_warned = True
            # Only the type: the message could quote the data being redacted.
            log.warning(
                "redact raised %s; every record it fails on is dropped",
                type(error).__name__,
            )


class Snapshot:
    """A record reduced to what the envelope needs; holds only JSON values.

    :ivar name: the event name, already valid.
    :ivar created: ``record.created``, Unix seconds.
    :ivar seq: the sequence number given by the caller.
    :ivar data: the ``data`` object of the envelope.
    :ivar trace_id: 32 lowercase hex digits, or None.
    :ivar span_id: 16 lowercase hex digits, or None.
    """

    __slots__ = ("created", "data", "name", "seq", "span_id", "trace_id")

    # Positional: made for every record on the caller's thread.
    def __init__(  # noqa: PLR0917
        self,
        name: str,
        created: float,
        seq: int,
        data: Dict[str, JSONValue],
        trace_id: Optional[str] = None,
        span_id: Optional[str] = None,
    ) -> None:
        self.name = name
        self.created = created
        self.seq = seq
        self.data = data
        self.trace_id = trace_id
        self.span_id = span_id

    def __repr__(self) -> str:
        return f"<Snapshot {self.name} seq={self.seq} keys={len(self.data)}>"


#: The common record as :func:`capture` queues it: (event name, created, seq,
#: body, formattedMessage, levelname, levelno, logger, trace id, span id), the
#: record's own values as they are. A plain tuple costs the application's
#: thread less to make than a :class:`Snapshot` and its data dict, and the
#: worker less to read and free; the envelope builder writes the same line from
#: either, checking the level and logger names once per logger and level.
PlainRecord = Tuple[
    str, float, int, str, str, str, int, str, Optional[str], Optional[str]
]

_MODULES = sys.modules


def capture(
    record: logging.LogRecord,
    options: RecordOptions,
    seq: int,
    event: Optional[str] = None,
) -> Union[PlainRecord, Snapshot, None]:
    """What ``emit`` queues for *record*: a :data:`PlainRecord` when the record
    has a str template and nothing beyond the standard attributes (no extras,
    exception or stack) and no ``redact`` or code location is configured;
    otherwise :func:`snapshot`'s result.

    :param event: the event name of the record's logger, when the caller has
        looked it up already.
    """
    msg = record.msg
    attrs = record.__dict__
    if (
        type(msg) is str
        and options.plain
        and not (record.exc_info or record.exc_text or record.stack_info)
        and _no_extras(attrs)
    ):
        logger_name = record.name
        if event is None and type(logger_name) is str:
            event = options._names.get(logger_name) or options.name_for(logger_name)
        formatter = options.formatter
        try:
            message = (
                record.getMessage() if formatter is None else formatter.format(record)
            )
        except Exception:
            message = None  # snapshot() formats again and says what failed
        if type(message) is str and event is not None:
            trace_id = span_id = None
            if _TRACING in _MODULES:
                trace_id, span_id = _trace_context(attrs)
            return (
                event,
                record.created,
                seq,
                msg,
                message,
                record.levelname,
                record.levelno,
                logger_name,
                trace_id,
                span_id,
            )
    return snapshot(record, options, seq)


def plain_snapshot(plain: PlainRecord) -> Snapshot:
    """The :class:`Snapshot` that *plain* stands for."""
    name, created, seq, body, message, level, levelno, logger, trace, span = plain
    data: Dict[str, JSONValue] = {
        "body": body,
        "formattedMessage": message,
        "severityText": level if type(level) is str else safe_str(level),
        "severityNumber": _severity_of(levelno),
        "logger": logger if type(logger) is str else safe_str(logger),
    }
    return Snapshot(name, created, seq, data, trace, span)


def snapshot(
    record: logging.LogRecord, options: RecordOptions, seq: int
) -> Optional[Snapshot]:
    """Reduce *record* to a :class:`Snapshot`, or None if ``redact`` drops it.

    ``data`` holds ``body`` (the message template), ``formattedMessage``,
    ``severityText``, ``severityNumber``, ``logger``, the code location when
    enabled, the exception and stack fields when present, then the record's
    extras converted by :func:`to_json`. An extra named like one of our keys
    (:data:`OWN_KEYS`) is stored as ``extra.<name>``; the extra ``event_name``
    names the event instead of being stored (when it is not a valid name it is
    kept as ``invalidEventName`` and the configured name is used). Private
    extras (``_name``) are skipped.
    """
    attrs = record.__dict__
    msg = record.msg
    body = msg if type(msg) is str else safe_str(msg)
    levelno = record.levelno
    levelname = record.levelname
    logger_name = record.name
    if type(logger_name) is not str:
        logger_name = safe_str(logger_name)
    formatter = options.formatter
    try:
        message = record.getMessage() if formatter is None else formatter.format(record)
    except Exception as exc:
        message = _format_failed(body, exc)
    data: Dict[str, JSONValue] = {
        "body": body,
        "formattedMessage": message if type(message) is str else safe_str(message),
        "severityText": levelname if type(levelname) is str else safe_str(levelname),
        "severityNumber": _severity_of(levelno),
        "logger": logger_name,
    }
    if options.code_location:
        data["code.filepath"] = to_json(record.pathname)
        data["code.lineno"] = to_json(record.lineno)
        data["code.function"] = to_json(record.funcName)
    if record.exc_info or record.exc_text:
        _add_exception(data, record, options.exception_max_chars)
        if not options.code_location and "exceptionStack" in data:
            data["exceptionStack"] = anonymize_paths(str(data["exceptionStack"]))
    if record.stack_info:
        stack_info = safe_str(record.stack_info)
        if not options.code_location:
            stack_info = anonymize_paths(stack_info)
        data["stackInfo"] = keep_end(stack_info, options.exception_max_chars)
    if not _no_extras(attrs):
        extras = _extra_keys(attrs)
        if extras:
            _add_extras(data, attrs, extras)

    name = options._names.get(logger_name) or options.name_for(logger_name)
    if "event_name" in attrs:
        name = override_name(attrs["event_name"], name, data, options)
    if "otelTraceID" in attrs or "otelSpanID" in attrs or _TRACING in sys.modules:
        trace_id, span_id = _trace_context(attrs)
    else:
        trace_id = span_id = None

    if options.redact is not None:
        redacted = redact_data(options.redact, data, options)
        if redacted is None:
            return None
        data = redacted
    return Snapshot(name, record.created, seq, data, trace_id, span_id)


def _format_failed(body: str, error: Exception) -> str:
    # What the stdlib would print through handleError and then lose; the
    # template and the reason are worth more than nothing.
    return f"{body} <formatting failed: {type(error).__name__}: {safe_str(error)}>"


def _severity_of(levelno: object) -> int:
    if type(levelno) is int and 0 <= levelno <= 60:
        return _SEVERITY[levelno]
    try:
        return severity_number(int(levelno))  # type: ignore[call-overload]
    except Exception:
        return 9


def _no_extras(attrs: Dict[str, object]) -> bool:
    """Whether *attrs* (a record's ``__dict__``) certainly holds no extras: the
    attributes ``LogRecord()`` sets, the last one last, followed by nothing or
    by what a formatter adds. Cheaper than :func:`_extra_keys`, which gives the
    answer for every other record."""
    added = len(attrs) - _INIT_COUNT
    if added == 0:
        return next(reversed(attrs)) in _INIT_ATTRS
    if not 0 < added <= len(_FORMATTED_ATTRS):
        return False
    for key in reversed(attrs):
        if key not in _FORMATTED_ATTRS:
            return added == 0 and key in _INIT_ATTRS
        added -= 1
    return False


def _extra_keys(attrs: Dict[str, object]) -> List[str]:
    # LogRecord.__init__ sets the standard attributes first and makeRecord()
    # adds the extras after them, so a backward walk that stops at the last
    # standard attribute finds the extras in a few steps, in their order. If
    # the keys before that point are not as many as the standard ones (an
    # attribute deleted or set again, a record subclass), all are checked.
    keys = []
    position = len(attrs)
    for key in reversed(attrs):
        position -= 1
        if key in _INIT_ATTRS:
            break
        if key not in _STANDARD_ATTRS:
            keys.append(key)
    if position != _INIT_COUNT - 1:
        return [key for key in attrs if key not in _STANDARD_ATTRS]
    keys.reverse()
    return keys


def _add_extras(
    data: Dict[str, JSONValue], attrs: Dict[str, object], keys: List[str]
) -> None:
    for key in keys:
        # makeRecord() copies whatever keys it is given, not only str
        if type(key) is not str or key[:1] == "_":
            continue
        value = attrs[key]
        data[EXTRA_PREFIX + key if key in OWN_KEYS else key] = (
            value if type(value) is str else to_json(value)
        )


_TRACEBACK_FILE = re.compile(r'File "([^"]+)"')


def anonymize_paths(stack: str) -> str:
    """Cut the file paths of a formatted stack to their import-relative part.

    Absolute paths name the user (``/home/alice/...``) and the machine's
    layout; ``requests/api.py`` says as much about the failure. A file outside
    every ``sys.path`` entry keeps its base name only.
    """
    roots = sorted(
        (os.path.join(os.path.abspath(p), "") for p in sys.path if p),
        key=len,
        reverse=True,
    )

    def shorten(match: re.Match[str]) -> str:
        path = match.group(1)
        if not os.path.isabs(path):
            return match.group(0)
        for root in roots:
            if path.startswith(root):
                return f'File "{path[len(root) :]}"'
        return f'File "{os.path.basename(path)}"'

    return _TRACEBACK_FILE.sub(shorten, stack)


def _add_exception(
    data: Dict[str, JSONValue], record: logging.LogRecord, max_chars: int
) -> None:
    error = _exception_of(record.exc_info)
    if error is None:
        exc_info = record.exc_info
        if isinstance(exc_info, tuple) and isinstance(exc_info[0], type):
            # A class without an instance still names what went wrong.
            data["exceptionType"] = _qualified_name(exc_info[0])
        if record.exc_text:
            data["exceptionStack"] = keep_end(safe_str(record.exc_text), max_chars)
        return
    kind = type(error)
    data["exceptionType"] = _qualified_name(kind)
    data["exceptionMessage"] = safe_str(error)
    try:
        stack = "".join(traceback.format_exception(kind, error, error.__traceback__))
    except Exception:
        stack = safe_str(record.exc_text) if record.exc_text else safe_repr(error)
    data["exceptionStack"] = keep_end(stack.rstrip("\n"), max_chars)


def _qualified_name(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    qualname = getattr(kind, "__qualname__", kind.__name__)
    return str(qualname if module in (None, "builtins") else f"{module}.{qualname}")


def _exception_of(exc_info: object) -> Optional[BaseException]:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        error = exc_info[1]
        if isinstance(error, BaseException):
            return error
    return None


def keep_end(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    # The marker is at most 34 characters for any realistic length.
    cut = len(text) - max_chars + 34
    return f"…[truncated {cut} chars]\n" + text[cut:]


def override_name(
    value: object, fallback: str, data: Dict[str, JSONValue], options: RecordOptions
) -> str:
    if _schema.is_valid_event_name(value):
        return value  # type: ignore[return-value]
    data["invalidEventName"] = value if type(value) is str else safe_repr(value)
    options.counters.add("invalid.event_name")
    return fallback


def redact_data(
    redact: Redactor, data: Dict[str, JSONValue], options: RecordOptions
) -> Optional[Dict[str, JSONValue]]:
    try:
        result = redact(data)
        if result is None:
            options.counters.add("dropped.redacted")
            return None
        if not isinstance(result, dict):
            raise TypeError(f"redact returned {type(result).__name__}, not dict")
        # Re-coerced: the callback may have put any object in, or kept a
        # reference to the dict it returned.
        clean: Dict[str, JSONValue] = {}
        for key, value in result.items():
            if type(key) is not str:
                raise TypeError(f"redact returned a {type(key).__name__} key")
            clean[key] = to_json(value)
    except Exception as exc:
        options.redact_failed(exc)
        return None
    return clean


def _trace_context(attrs: Mapping[str, object]) -> Tuple[Optional[str], Optional[str]]:
    if "otelTraceID" in attrs or "otelSpanID" in attrs:
        # Set by the OpenTelemetry logging instrumentation when the record was
        # made; "0" and all zeros mean there was no span.
        return (
            _hex_id(attrs.get("otelTraceID"), 32),
            _hex_id(attrs.get("otelSpanID"), 16),
        )
    # Only a module the application has already imported: if it has not
    # imported the tracing API there is no span to find, and importing it here
    # would cost the first caller a package import for nothing.
    trace = sys.modules.get(_TRACING)
    if trace is None:
        return None, None
    try:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None, None
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"
    except Exception:
        return None, None


def _hex_id(value: object, digits: int) -> Optional[str]:
    if not isinstance(value, str) or len(value) != digits:
        return None
    lowered = value.lower()
    if not _HEX.issuperset(lowered) or lowered.count("0") == digits:
        return None
    return lowered
