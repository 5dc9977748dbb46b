"""The :class:`OneCollectorHandler`, the face of the package."""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import logging
import os
import sys
import threading
import uuid
import weakref
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

from . import _cache, _config, _schema
from ._batcher import Pipeline, is_own_logger, own_activity
from ._directives import KillWindow, RetryGate, real_monotonic
from ._envelope import EnvelopeBuilder, os_identity, static_ext
from ._record import RecordOptions, Redactor, Snapshot, capture, redact_data
from ._stats import Counters
from ._transport import COMPRESSIONS, DEFAULT_MAX_ATTEMPTS, SDK_VERSION, Transport
from ._values import JSONValue
from .exceptions import ConfigurationError

log = logging.getLogger(__name__)

#: Enough for a burst of a few seconds at full speed while the sender catches up,
#: small enough to keep memory in the tens of MiB; beyond it records go to disk.
DEFAULT_MAX_QUEUE_RECORDS = 20_000
#: The 1DS JS SDK's near-real-time cadence sends within a few seconds; one
#: second keeps short scripts' records in one or two requests.
DEFAULT_FLUSH_INTERVAL_S = 1.0
#: How long close() (and so the exit of the application) may wait for the
#: network before what is left goes to the disk cache.
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
DEFAULT_REQUEST_TIMEOUT_S = 10.0

#: A close() this soon after a flush() is taken as one shutdown.
_FLUSH_THEN_CLOSE_S = 0.5


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The validated options the pipeline is built from (again after a fork)."""

    #: Left out of the repr: debuggers and error reports show reprs.
    key: str = dataclasses.field(repr=False)
    extensions: Dict[str, Dict[str, Any]]
    flush_interval_s: float
    max_batch_records: int
    max_queue_records: int
    request_timeout_s: float
    max_attempts: int
    compression: str
    cache: bool
    cache_dir: Optional[str]
    cache_max_bytes: int
    cache_max_age_s: float


#: The live handlers of the process, for fork and exit; weak, so that a handler
#: the application dropped is not kept.
_handlers: weakref.WeakSet[OneCollectorHandler] = weakref.WeakSet()

#: Set by an atexit hook: registered after logging's own, it runs before
#: logging.shutdown(). From then on flush() does not wait and the first close()
#: closes every handler. The hook itself closes nothing, since the atexit hooks
#: registered before it run after it and may still log.
_exiting = threading.Event()
atexit.register(_exiting.set)


class OneCollectorHandler(logging.Handler):
    """Send log records to a OneCollector endpoint as Common Schema 4.0 events.

    Threading contract: :meth:`emit` runs on the application's thread; it
    snapshots the record (formats the message, copies the extras as JSON
    values, keeps no reference to the record) and appends it to a bounded
    in-memory queue, without I/O and without waiting for any lock held by the
    background threads. Two daemon threads, started with the first record,
    serialize and send batches; when the collector is slow or unreachable they
    write batches to a disk cache shared by every process of the application,
    and deliver them later. Records are dropped (and counted, see
    :meth:`stats`) only when the collector rejects them, orders the tenant to
    stop, or when both the queue and the cache are full or unavailable.

    :meth:`flush` sends what is queued, or stores it on disk, within
    *shutdown_timeout* seconds. :meth:`close` does the same within
    *shutdown_timeout* and stops the threads; it is idempotent and safe from any
    thread. At exit, the first :meth:`close` that :func:`logging.shutdown` makes
    closes every live handler of the process at once, each within its own
    *shutdown_timeout*, so that the exit waits for the largest of them rather
    than for their sum; :meth:`flush` then only starts sending.

    Every argument may be given as a string (``dictConfig``, ``fileConfig``);
    a bad value raises :class:`~onecollector_logging.ConfigurationError`.

    :param instrumentation_key: the full key; defaults to the environment
        variable ``ONECOLLECTOR_INSTRUMENTATION_KEY``.
    :param endpoint: the collector URL.
    :param event_name: the event (table) name of records that name none.
    :param level: the handler's level.
    :param event_names: logger-name prefix to event name, longest prefix wins.
    :param flush_interval_s: the longest a record waits to be batched.
    :param max_batch_records: events per request (at most 500).
    :param max_queue_records: records held in memory before spilling to disk.
    :param shutdown_timeout: seconds that :meth:`close` and :meth:`flush` may take.
    :param request_timeout_s: seconds to wait for one answer of the collector.
    :param max_attempts: attempts per batch answered with a transient failure.
    :param compression: ``deflate`` (raw), ``gzip`` or ``none``.
    :param cache: whether to keep unsent records on disk.
    :param cache_dir: the cache root (a per-user cache directory by default).
    :param cache_max_bytes: the bound of the cache partition in bytes.
    :param cache_max_age_s: cached records older than this are dropped.
    :param app: ``ext.app`` fields (``name``, ``ver``, ``env``, ...).
    :param cloud: ``ext.cloud`` fields (``role``, ``roleInstance``, ...).
    :param device_local_id: ``ext.device.localId`` in ``<scope>:<id>`` form.
    :param user_local_id: ``ext.user.localId`` in ``<scope>:<id>`` form.
    :param ext: further Common Schema ``ext`` fields, checked against the schema.
    :param code_location: send ``code.filepath``, ``code.lineno``,
        ``code.function`` (off by default: paths can identify people).
    :param redact: a callable (or its import path) that receives each event's
        ``data`` and returns it, changed, or None to drop the event.
    """

    def __init__(
        self,
        instrumentation_key: Optional[str] = None,
        endpoint: str = _schema.DEFAULT_ENDPOINT,
        event_name: str = "Python.Log",
        level: Union[int, str] = logging.NOTSET,
        *,
        event_names: Union[str, Mapping[str, str], None] = None,
        flush_interval_s: Union[float, str] = DEFAULT_FLUSH_INTERVAL_S,
        max_batch_records: Union[int, str] = _schema.MAX_EVENTS_PER_REQUEST,
        max_queue_records: Union[int, str] = DEFAULT_MAX_QUEUE_RECORDS,
        shutdown_timeout: Union[float, str] = DEFAULT_SHUTDOWN_TIMEOUT_S,
        request_timeout_s: Union[float, str] = DEFAULT_REQUEST_TIMEOUT_S,
        max_attempts: Union[int, str] = DEFAULT_MAX_ATTEMPTS,
        compression: str = "deflate",
        cache: Union[bool, str] = True,
        cache_dir: Optional[str] = None,
        cache_max_bytes: Union[int, str] = _cache.DEFAULT_CACHE_MAX_BYTES,
        cache_max_age_s: Union[float, str] = _cache.DEFAULT_CACHE_MAX_AGE_S,
        app: Union[str, Mapping[str, Any], None] = None,
        cloud: Union[str, Mapping[str, Any], None] = None,
        device_local_id: Optional[str] = None,
        user_local_id: Optional[str] = None,
        ext: Union[str, Mapping[str, Mapping[str, Any]], None] = None,
        code_location: Union[bool, str] = False,
        redact: Union[str, Callable[[Dict[str, Any]], Any], None] = None,
    ) -> None:
        # Set before the base class registers the handler with logging: should
        # an option be refused below, logging.shutdown() still finds a handler
        # whose flush() and close() do nothing.
        self._pipeline: Optional[Pipeline] = None
        self._closed = False
        self._flush_started = self._flush_ended = -1e9
        self.counters = Counters()
        self.shutdown_timeout = DEFAULT_SHUTDOWN_TIMEOUT_S
        if isinstance(level, str):
            level = level.strip().upper()
            if level.lstrip("-").isdigit():
                level = int(level)
        try:
            super().__init__(level)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"level: {exc}") from None
        self.disabled_by_environment = _config.disabled_by_environment()
        self._after_close_reported = False
        # logging.shutdown() calls flush() before close() on Python < 3.12 (and
        # on later versions unless this is False); close() flushes itself.
        self.flushOnClose = False
        if self.disabled_by_environment and not (
            instrumentation_key or os.environ.get(_config.KEY_ENV)
        ):
            key, tenant = "", "disabled"
        else:
            key, tenant = _config.instrumentation_key(instrumentation_key)
        self.tenant = tenant
        self.endpoint = _config.endpoint(endpoint, key)
        self.event_name = _config.event_name("event_name", event_name)
        self.shutdown_timeout = _config.as_number(
            "shutdown_timeout", shutdown_timeout, minimum=0, maximum=3600
        )
        extensions = static_ext(
            app=_config.mapping("app", app),
            cloud=_config.mapping("cloud", cloud),
            device_local_id=device_local_id or None,
            user_local_id=user_local_id or None,
            ext=_config.mapping("ext", ext),
        )
        self._record_options = RecordOptions(
            event_name=self.event_name,
            event_names=_config.mapping("event_names", event_names) or {},
            code_location=_config.as_bool("code_location", code_location),
            redact=_without_feedback(_config.callable_option("redact", redact)),
            counters=self.counters,
        )
        #: Logger name -> event name, filled as the records come; the package's
        #: own loggers are never in it.
        self._event_names = self._record_options._names
        self._settings = _Settings(
            key=key,
            extensions=extensions,
            flush_interval_s=_config.as_number(
                "flush_interval_s", flush_interval_s, minimum=0.01, maximum=3600
            ),
            max_batch_records=_config.as_int(
                "max_batch_records",
                max_batch_records,
                minimum=1,
                maximum=_schema.MAX_EVENTS_PER_REQUEST,
            ),
            max_queue_records=_config.as_int(
                "max_queue_records", max_queue_records, minimum=1
            ),
            request_timeout_s=_config.as_number(
                "request_timeout_s", request_timeout_s, minimum=0.1, maximum=600
            ),
            max_attempts=_config.as_int("max_attempts", max_attempts, minimum=1),
            compression=_config.as_choice("compression", compression, COMPRESSIONS),
            cache=_config.as_bool("cache", cache),
            cache_dir=_config.directory("cache_dir", cache_dir),
            cache_max_bytes=_config.as_int(
                "cache_max_bytes", cache_max_bytes, minimum=4096
            ),
            cache_max_age_s=_config.as_number(
                "cache_max_age_s", cache_max_age_s, minimum=1
            ),
        )
        if not self.disabled_by_environment:
            if self._settings.cache and self._settings.cache_dir is not None:
                _config.check_creatable("cache_dir", self._settings.cache_dir)
            self._pipeline = self._build_pipeline()
            _handlers.add(self)

    def _build_pipeline(self) -> Pipeline:
        settings = self._settings
        self._epoch = str(uuid.uuid4())
        self._seq = itertools.count(1)
        os_name, os_ver = os_identity()
        builder = EnvelopeBuilder(
            tenant=self.tenant,
            epoch=self._epoch,
            sdk_version=SDK_VERSION,
            ext=settings.extensions,
            os_name=os_name,
            os_ver=os_ver,
            counters=self.counters,
        )
        transport = Transport(
            endpoint=self.endpoint,
            instrumentation_key=settings.key,
            tenant=self.tenant,
            compression=settings.compression,
            request_timeout_s=settings.request_timeout_s,
            kill_window=KillWindow(),
            gate=RetryGate(),
            counters=self.counters,
        )
        return Pipeline(
            serialize=builder.serialize,
            transport=transport,
            open_cache=self._open_cache,
            on_start=_watch_multiprocessing_exit,
            counters=self.counters,
            max_queue_records=settings.max_queue_records,
            max_batch_records=settings.max_batch_records,
            flush_interval_s=settings.flush_interval_s,
            max_attempts=settings.max_attempts,
            name=f"onecollector[{self.tenant}]",
        )

    def _open_cache(self) -> Optional[_cache.DiskCache]:
        settings = self._settings
        if not settings.cache:
            return None
        cache = _cache.DiskCache.open(
            settings.cache_dir,
            self.tenant,
            max_bytes=settings.cache_max_bytes,
            max_age_s=settings.cache_max_age_s,
            counters=self.counters,
        )
        if cache is not None and self._pipeline is not None:
            self._pipeline.transport.kill_window.attach(
                cache.kill_until, cache.set_kill_until
            )
        return cache

    # -- logging.Handler ----------------------------------------------------

    def handle(self, record: logging.LogRecord) -> Any:
        # emit() is thread-safe on its own; the handler lock that the base
        # class takes around it would only serialize the application's threads.
        if self.filters:
            result = self.filter(record)
            if not result:
                return result
            if isinstance(result, logging.LogRecord):
                record = result
        self.emit(record)
        return record

    def setFormatter(self, fmt: Optional[logging.Formatter]) -> None:  # noqa: N802
        """Use *fmt* for ``formattedMessage`` (by default the plain message)."""
        super().setFormatter(fmt)
        self._record_options.formatter = fmt

    def emit(self, record: logging.LogRecord) -> None:
        """Queue *record* for sending; never blocks, never raises."""
        pipeline = self._pipeline
        if pipeline is None:
            return
        try:
            if own_activity.active:
                return
            name = record.name
            try:
                event: Optional[str] = self._event_names[name]
            except (KeyError, TypeError):  # a new logger, or a name that is not text
                if type(name) is str and is_own_logger(name):
                    return
                event = None
            if self._closed and pipeline.closed_out:
                self._emit_after_close()
                return
            # While a close is still under way, the record goes with the rest.
            item = capture(record, self._record_options, next(self._seq), event)
            if item is not None:
                pipeline.put(item)
        except Exception:
            self.handleError(record)

    def submit(self, snap: Snapshot) -> None:
        """Queue an already built snapshot, as :meth:`emit` does for a record.

        The entry point of other front ends (the OpenTelemetry exporter): the
        snapshot gets this handler's sequence number and the same pipeline.
        """
        pipeline = self._pipeline
        if pipeline is None:
            return
        if self._closed and pipeline.closed_out:
            self._emit_after_close()
            return
        snap.seq = next(self._seq)
        if self._record_options.redact is not None:
            options = self._record_options
            assert options.redact is not None
            data = redact_data(options.redact, snap.data, options)
            if data is None:
                return
            snap.data = data
        pipeline.put(snap)

    def _emit_after_close(self) -> None:
        self.counters.add("dropped.after_close")
        if not self._after_close_reported:
            self._after_close_reported = True
            log.warning(
                "a record was logged to the closed OneCollector handler of tenant"
                " %s and dropped (counted as dropped.after_close)",
                self.tenant,
            )

    def flush(self) -> None:
        """Send what is queued (or store it on disk) within *shutdown_timeout*.

        At exit it only starts sending: the :meth:`close` that
        :func:`logging.shutdown` makes next waits, for every handler at once.
        Under the logging module's lock (``dictConfig()`` flushing the handlers
        it replaces) it does not wait either: see :meth:`close`.
        """
        if _exiting.is_set() or _logging_lock_held():
            self.flush_within(0.0)
        else:
            self.flush_within(self.shutdown_timeout)

    def flush_within(self, timeout_s: float) -> bool:
        """Like :meth:`flush`, within ``min(timeout_s, shutdown_timeout)``.

        :returns: whether everything queued was sent or stored in time.
        """
        if self._pipeline is None or self._closed:
            return True
        self._flush_started = real_monotonic()
        try:
            return self._pipeline.flush(min(timeout_s, self.shutdown_timeout))
        finally:
            self._flush_ended = real_monotonic()

    def close(self) -> None:
        """Send or store what is left within *shutdown_timeout*; idempotent.

        When called under the logging module's lock, as ``dictConfig()`` and
        ``fileConfig()`` close the handlers they replace, it returns at once:
        the pipeline threads may be waiting for that lock, so what is left goes
        to the disk cache, which the next handler of the tenant sends.
        """
        if self._closed:
            super().close()
        elif _exiting.is_set():
            # logging.shutdown() closes the handlers one after the other: each
            # would wait for its own stuck requests before the next one starts.
            _close_together([self, *_live_handlers()])
        else:
            _close_together([self])

    def _begin_close(self) -> bool:
        """Start closing the pipeline; False if the handler was already closed."""
        if self._closed:
            return False
        self._closed = True
        if self._pipeline is not None:
            # A flush() just before close() (as logging.shutdown() does on
            # older Pythons) shares the one shutdown budget.
            now = real_monotonic()
            start = now
            if now - self._flush_ended < _FLUSH_THEN_CLOSE_S:
                start = self._flush_started
            remaining = start + self.shutdown_timeout - now
            if _logging_lock_held():
                # dictConfig() and fileConfig() close the handlers they replace
                # holding logging's lock, which the pipeline threads may be
                # waiting for in any logging call (theirs, urllib3's...):
                # waiting for them would only use up the budget. What is left
                # goes to the disk cache now; the next handler sends it.
                return self._pipeline.begin_close(0.0, hurry=True)
            return self._pipeline.begin_close(max(0.0, remaining))
        return True

    def _end_close(self) -> None:
        try:
            if self._pipeline is not None:
                self._pipeline.end_close()
        finally:
            _handlers.discard(self)
            super().close()

    def stats(self) -> Dict[str, Any]:
        """A snapshot of the counters: accepted, rejected by reason, dropped by
        reason, retried, cached, and the records still queued."""
        result = self.counters.snapshot()
        result["queued"] = self._pipeline.queued() if self._pipeline else 0
        return result

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<{type(self).__name__} tenant={self.tenant} ({level})>"

    # -- fork --------------------------------------------------------------

    def _after_fork_child(self) -> None:
        self.counters = Counters()
        self._record_options.counters = self.counters
        if self._pipeline is not None and not self._closed:
            self._pipeline = self._build_pipeline()


def _without_feedback(redact: Optional[Callable[..., Any]]) -> Optional[Redactor]:
    """Wrap *redact* so that the records it logs are not sent by the handler.

    Such a record would come back through emit() to be redacted in its turn,
    without end. Other handlers still get it.
    """
    if redact is None:
        return None

    def call(data: Dict[str, JSONValue]) -> Any:
        previous = own_activity.active
        own_activity.active = True
        try:
            return redact(data)
        finally:
            own_activity.active = previous

    return call


def _live_handlers() -> List[OneCollectorHandler]:
    while True:
        try:
            return list(_handlers)
        except RuntimeError:
            # Another thread made a handler during the copy; it counts too.
            continue


def _close_together(handlers: Iterable[OneCollectorHandler]) -> None:
    """Close *handlers* as :meth:`~OneCollectorHandler.close` does, all at once:
    each gets its own *shutdown_timeout* from now, so the wait is the largest
    of them, not their sum. Handlers already closed are skipped."""
    closing: List[OneCollectorHandler] = [h for h in handlers if h._begin_close()]
    failure: Optional[Exception] = None
    for handler in closing:
        # One failure must not keep the others from storing what they hold.
        try:
            handler._end_close()
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def _logging_lock_held() -> bool:
    """Whether this thread holds the logging module's lock."""
    lock = getattr(logging, "_lock", None)
    is_owned = getattr(lock, "_is_owned", None)
    return bool(is_owned is not None and is_owned())


#: The process in which the multiprocessing finalizer below was registered.
_watched_pid: List[int] = []


def _watch_multiprocessing_exit() -> None:
    """In a process started by multiprocessing, close every handler when it
    ends: a child started by fork or forkserver leaves through os._exit(),
    which runs neither atexit hooks nor logging.shutdown(), only
    multiprocessing's own finalizers. Called when a pipeline starts its threads,
    so in the child after multiprocessing has cleared the parent's finalizers.
    """
    # Looked up, never imported: importing multiprocessing would make every
    # LogRecord of the application look up its process name.
    module = sys.modules.get("multiprocessing")
    util = sys.modules.get("multiprocessing.util")
    if module is None or util is None or _watched_pid == [os.getpid()]:
        return
    if module.parent_process() is None:
        return
    _watched_pid[:] = [os.getpid()]
    # Last of the finalizers, after any that may still log.
    util.Finalize(None, _close_all_at_exit, exitpriority=-100)


def _close_all_at_exit() -> None:
    _exiting.set()
    _close_together(_live_handlers())


def _reinit_after_fork() -> None:
    for handler in list(_handlers):
        try:
            handler._after_fork_child()
        except Exception:
            log.debug("could not reset a handler after fork", exc_info=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
