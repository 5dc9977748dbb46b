"""One benchmark scenario, run by :mod:`run` in a fresh process of its own.

A fresh process per scenario gives each one its own CPU clock, its own peak RSS
and no threads, pools or caches left over by another handler. The worker logs
a burst of records on one thread, waits until the sink has counted them (or a
deadline passes), closes the handler and writes one JSON object.

Usage (normally through ``run.py``)::

    python benchmarks/scenarios.py NAME --records N --port SINK_PORT --out FILE
"""

from __future__ import annotations

import argparse
import gc
import http.client
import importlib
import ipaddress
import json
import logging
import logging.handlers
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

#: A plausible application record: a %-format template, three arguments.
MESSAGE = "order %d shipped from %s in %.1f ms"
LOGGER_NAME = "shop.orders"
#: Well-formed but fake: the tenant is the part before the first "-".
FAKE_KEY = "0123456789abcdef0123456789abcdef-01234567-89ab-cdef-0123-456789abcdef-0123"
AZURE_IKEY = "00000000-0000-0000-0000-000000000000"
#: Keep the Azure exporter to the one endpoint it is given: no statsbeat, no
#: SDK stats, no remote-configuration polling.
AZURE_ENV = {
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
}
MIB = 1024 * 1024
#: The same call into a NullHandler, timed in every scenario's process just
#: before and just after its burst: the unit the targets are expressed in.
REFERENCE_LOGGER = "shop.reference"
REFERENCE_RECORDS = 20_000


class LoopbackOnlyError(PermissionError):
    """A handler under test tried to reach a host other than this machine."""


def _is_loopback(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard(event: str, args: Any) -> None:
    # Benchmark traffic must stay on this machine, whatever a third-party
    # exporter decides to contact (statistics, remote configuration...).
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            raise LoopbackOnlyError(f"blocked a connection to {address[0]!r}")
    elif event == "socket.getaddrinfo" and not _is_loopback(args[0]):
        raise LoopbackOnlyError(f"blocked a name lookup of {args[0]!r}")


def peak_rss_mib() -> Optional[float]:
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def current_rss_mib() -> Optional[float]:
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


class Sink:
    """The sink's control endpoints, over one kept-alive connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str) -> Dict[str, Any]:
        self._conn.request("GET", path)
        answer = self._conn.getresponse()
        result: Dict[str, Any] = json.loads(answer.read())
        return result

    def wait(
        self, kind: str, target: int, start: float, deadline_s: float, stall_s: float
    ) -> Dict[str, Any]:
        """Wait until *kind* reaches *target* records, the deadline (from
        *start*, monotonic) passes, or the count stops moving for *stall_s*."""
        last_count, last_move = -1, time.monotonic()
        while True:
            left = start + deadline_s - time.monotonic()
            snap = self.get(f"/wait?kind={kind}&n={target}&timeout={min(1.0, left)}")
            count = snap["records"][kind]
            now = time.monotonic()
            snap["stalled"] = False
            snap["deadline_hit"] = False
            if count >= target:
                return snap
            if now >= start + deadline_s:
                snap["deadline_hit"] = True
                return snap
            if count != last_count:
                last_count, last_move = count, now
            elif now - last_move >= stall_s:
                snap["stalled"] = True
                return snap


class Subject:
    """A handler under test and what the worker needs to drive it.

    :param handler: attached to the benchmark logger.
    :param kind: the sink counter its records land in; None when the handler
        delivers nowhere (its records are done once handled locally).
    :param settle: waits until a local handler has handled every record.
    :param close: closes it; told whether every record was delivered (a
        third-party handler that fell behind is not waited for).
    :param report: extra facts for the result, read after close.
    """

    def __init__(
        self,
        handler: logging.Handler,
        *,
        kind: Optional[str] = None,
        settle: Callable[[], None] = lambda: None,
        close: Callable[[bool], None] = lambda complete: None,
        report: Callable[[], Dict[str, Any]] = dict,
    ) -> None:
        self.handler = handler
        self.kind = kind
        self.settle = settle
        self.close = close
        self.report = report


def make_null(args: argparse.Namespace) -> Subject:
    return Subject(logging.NullHandler())


def _queue_subject(target: logging.Handler, kind: Optional[str]) -> Subject:
    records: queue.Queue[Any] = queue.Queue()
    listener = logging.handlers.QueueListener(records, target)
    listener.start()

    def close(complete: bool) -> None:
        # stop() drains the queue first: only worth it when that is quick.
        if complete:
            listener.stop()
            target.close()

    return Subject(
        logging.handlers.QueueHandler(records),
        kind=kind,
        settle=records.join,
        close=close,
        report=lambda: {"left_in_queue": records.qsize()},
    )


def make_queue(args: argparse.Namespace) -> Subject:
    return _queue_subject(logging.NullHandler(), None)


def make_queue_http(args: argparse.Namespace) -> Subject:
    target = logging.handlers.HTTPHandler(
        f"127.0.0.1:{args.port}", "/log", method="POST"
    )
    return _queue_subject(target, "form")


def make_azure(args: argparse.Namespace) -> Subject:
    os.environ.update(AZURE_ENV)
    exporter_module = importlib.import_module("azure.monitor.opentelemetry.exporter")
    sdk_logs = importlib.import_module("opentelemetry.sdk._logs")
    sdk_export = importlib.import_module("opentelemetry.sdk._logs.export")
    exporter = exporter_module.AzureMonitorLogExporter(
        connection_string=(
            f"InstrumentationKey={AZURE_IKEY};"
            f"IngestionEndpoint=http://127.0.0.1:{args.port}/"
        ),
        disable_offline_storage=True,
    )
    provider = sdk_logs.LoggerProvider()
    provider.add_log_record_processor(sdk_export.BatchLogRecordProcessor(exporter))
    handler: logging.Handler = sdk_logs.LoggingHandler(
        level=logging.NOTSET, logger_provider=provider
    )

    def close(complete: bool) -> None:
        if complete:
            provider.shutdown()

    return Subject(handler, kind="track", close=close)


def make_onecollector(args: argparse.Namespace) -> Subject:
    if args.no_orjson:
        # An entry of None makes "import orjson" fail: the pure-Python path.
        sys.modules["orjson"] = None  # type: ignore[assignment]
    from onecollector_logging import OneCollectorHandler

    cache_dir = tempfile.mkdtemp(prefix="ocl-bench-cache-")
    port = args.down_port if args.down_port else args.port
    handler = OneCollectorHandler(
        FAKE_KEY,
        endpoint=f"http://127.0.0.1:{port}/OneCollector/1.0/",
        cache_dir=cache_dir,
    )
    facts: Dict[str, Any] = {}

    def close(complete: bool) -> None:
        handler.close()
        facts["stats"] = handler.stats()
        facts.update(_cache_accounting(cache_dir, handler.tenant, facts["stats"]))
        shutil.rmtree(cache_dir, ignore_errors=True)

    def report() -> Dict[str, Any]:
        module = sys.modules.get("orjson")
        facts["orjson_loaded"] = module is not None
        return facts

    return Subject(
        handler,
        kind=None if args.down_port else "onecollector",
        close=close,
        report=report,
    )


def _cache_accounting(
    cache_dir: str, tenant: str, stats: Dict[str, Any]
) -> Dict[str, Any]:
    from onecollector_logging._cache import DiskCache

    cache = DiskCache.open(cache_dir, tenant)
    in_cache: Dict[str, Any] = cache.stats() if cache is not None else {}
    dropped = stats.get("dropped") or {}
    return {
        "cache_records": int(in_cache.get("records", 0)),
        "cache_bytes": int(in_cache.get("bytes", 0)),
        "dropped_cache_bound": int(dropped.get("cache_full", 0)),
        "dropped_other": {k: v for k, v in dropped.items() if k != "cache_full"},
    }


#: Handlers with background features of their own (statistics, remote
#: configuration) get an audit hook that refuses any address off this machine.
#: The others connect only where they are told; the hook is left out for them
#: because it runs on every audit event, ``sys._getframe`` of each log call
#: included, and would inflate the cost of the baseline.
THIRD_PARTY_NETWORK = frozenset({"azure"})

SETUPS: Dict[str, Callable[[argparse.Namespace], Subject]] = {
    "null": make_null,
    "queue": make_queue,
    "queue+http": make_queue_http,
    "azure": make_azure,
    "onecollector": make_onecollector,
}


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def reference_burst(logger: logging.Logger, records: int) -> float:
    """Wall microseconds per record of the benchmark's call into *logger*."""
    info = logger.info
    gc.collect()
    wall0 = time.perf_counter()
    for i in range(records):
        info(MESSAGE, i, "warehouse-7", 12.5)
    return (time.perf_counter() - wall0) / records * 1e6


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Set up, burst, wait for delivery, close; return the measurements."""
    result: Dict[str, Any] = {"records": args.records, "down": bool(args.down_port)}
    subject = SETUPS[args.handler](args)
    logger = _logger(LOGGER_NAME, subject.handler)
    # The speed of this shared machine drifts between processes by a third or
    # more; a NullHandler call timed in this process, on both sides of the
    # burst, is the yardstick that drifts with it.
    reference = _logger(REFERENCE_LOGGER, logging.NullHandler())
    reference_records = min(args.records, REFERENCE_RECORDS)
    result["null_before_us"] = reference_burst(reference, reference_records)
    sink = Sink(args.port)
    info = logger.info
    gc.collect()
    result["baseline_rss_mib"] = peak_rss_mib()
    result["current_rss_mib_before"] = current_rss_mib()

    start = time.monotonic()
    result["start_at"] = start
    cpu0 = time.process_time()
    times0 = os.times()
    wall0 = time.perf_counter()
    thread0 = time.thread_time()
    for i in range(args.records):
        info(MESSAGE, i, "warehouse-7", 12.5)
    result["caller_s"] = time.perf_counter() - wall0
    result["caller_cpu_s"] = time.thread_time() - thread0

    result.update(_complete(subject, sink, args, start))
    result["cpu_s"] = time.process_time() - cpu0
    result.update(_cpu_split(times0))
    result["thread_cpu_s"] = thread_cpu()
    result["peak_rss_mib_before_close"] = peak_rss_mib()
    close0 = time.perf_counter()
    subject.close(result["complete"])
    result["close_s"] = time.perf_counter() - close0
    if args.down_port:
        # Nothing can be delivered: the work ends when close() has put the
        # records on disk, so its CPU is part of the cost per record.
        result["cpu_s"] = time.process_time() - cpu0
        result.update(_cpu_split(times0))
    result["peak_rss_mib"] = peak_rss_mib()
    result["subject"] = subject.report()
    result["null_after_us"] = reference_burst(reference, reference_records)
    return result


def thread_cpu() -> Dict[str, float]:
    """CPU seconds of each live thread since it started, by thread name."""
    clock_id = getattr(time, "pthread_getcpuclockid", None)
    if clock_id is None:
        return {}
    result: Dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            result[thread.name] = time.clock_gettime(clock_id(thread.ident))
        except OSError:
            continue
    return result


def _cpu_split(times0: os.times_result) -> Dict[str, float]:
    now = os.times()
    return {
        "cpu_user_s": now.user - times0.user,
        "cpu_sys_s": now.system - times0.system,
    }


def _complete(
    subject: Subject, sink: Sink, args: argparse.Namespace, start: float
) -> Dict[str, Any]:
    n = args.records
    if args.down_port:
        return {"delivered": None, "complete": True, "done_at": time.monotonic()}
    if subject.kind is None:
        subject.settle()
        return {"delivered": None, "complete": True, "done_at": time.monotonic()}
    snap = sink.wait(subject.kind, n, start, args.deadline_s, args.stall_s)
    delivered = int(snap["records"][subject.kind])
    return {
        "delivered": delivered,
        "complete": delivered >= n,
        # When the last counted request arrived; both clocks are the
        # machine's monotonic clock.
        "done_at": snap["last_at"] if delivered else time.monotonic(),
        "stalled": snap["stalled"],
        "deadline_hit": snap["deadline_hit"],
        "sink": {k: snap[k] for k in ("requests", "wire_bytes", "undecodable")},
    }


def stage_costs(args: argparse.Namespace) -> Dict[str, Any]:
    """Microseconds per record of each stage of our handler, run one after the
    other on one thread: what the work costs without any thread switching.

    Each stage is timed in three passes and the fastest is kept, since other
    processes on the machine can only slow a pass down. Uses the handler's
    private parts; run by ``run.py --profile`` only.
    """
    from onecollector_logging import OneCollectorHandler
    from onecollector_logging._cache import DiskCache
    from onecollector_logging._compress import compress_lines
    from onecollector_logging._record import capture

    n = args.records
    batch = 500
    cache_dir = tempfile.mkdtemp(prefix="ocl-bench-stages-")
    handler = OneCollectorHandler(
        FAKE_KEY,
        endpoint=f"http://127.0.0.1:{args.port}/OneCollector/1.0/",
        cache_dir=cache_dir,
    )
    pipeline = handler._pipeline
    cache = DiskCache.open(cache_dir, handler.tenant)
    assert pipeline is not None and cache is not None
    logger = _logger(LOGGER_NAME, logging.NullHandler())
    costs: Dict[str, float] = {}

    def log_all() -> None:
        for i in range(n):
            logger.info(MESSAGE, i, "warehouse-7", 12.5)

    costs["logger.info into a NullHandler"] = _best(log_all, n)
    records: List[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        records.append(record)
        return False

    logger.addFilter(keep)
    log_all()
    options = handler._record_options

    # Timed passes keep nothing: holding every result alive would make the
    # garbage collector, not the stage, dominate the figure.
    def capture_all() -> None:
        for i, record in enumerate(records):
            capture(record, options, i)

    costs["capture (in emit, caller's thread)"] = _best(capture_all, n)
    snaps = [capture(r, options, i) for i, r in enumerate(records)]
    del records[:]
    serialize = pipeline._serialize

    def serialize_all() -> None:
        for snap in snaps:
            serialize(snap)

    costs["serialize (envelope line)"] = _best(serialize_all, n)
    lines = [serialize(snap) for snap in snaps]
    del snaps[:]
    batches = [lines[i : i + batch] for i in range(0, n, batch)]

    def compress_all() -> None:
        for part in batches:
            compress_lines(part)

    costs["join + raw deflate"] = _best(compress_all, n)
    transport = pipeline.transport

    def post_all() -> None:
        for part in batches:
            transport.post(part)

    costs["HTTP POST incl. compression (Transport.post)"] = _best(post_all, n)

    def spill_all() -> None:
        for part in batches:
            cache.put(part)

    def drain_all() -> None:
        while True:
            claim = cache.claim()
            if claim is None:
                return
            claim.done()

    spill, drain = [], []
    for _ in range(3):
        spill.append(_best(spill_all, n, passes=1))
        drain.append(_best(drain_all, n, passes=1))
    costs["disk cache put (spill)"] = min(spill)
    costs["disk cache claim + done (drain)"] = min(drain)
    transport.close()
    shutil.rmtree(cache_dir, ignore_errors=True)
    return {"records": n, "batch": batch, "us_per_record": costs}


def _best(work: Callable[[], None], n: int, passes: int = 3) -> float:
    """The fastest of *passes* runs of *work*, in CPU microseconds per record."""
    best = float("inf")
    for _ in range(passes):
        gc.collect()
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="run one benchmark scenario")
    parser.add_argument("handler", choices=[*sorted(SETUPS), "stages"])
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--port", type=int, required=True, help="the sink's port")
    parser.add_argument(
        "--down-port",
        type=int,
        default=0,
        help="send to this port, where nothing listens (the collector is down)",
    )
    parser.add_argument("--deadline-s", type=float, default=120.0)
    parser.add_argument("--stall-s", type=float, default=35.0)
    parser.add_argument("--no-orjson", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.handler in THIRD_PARTY_NETWORK:
        sys.addaudithook(_guard)
    try:
        result = stage_costs(args) if args.handler == "stages" else run(args)
        result["ok"] = True
    except Exception as exc:
        logging.getLogger(__name__).exception("scenario %s failed", args.handler)
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(result, out, indent=1, default=str)
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave at once: a third-party handler that fell behind may hold exit for
    # minutes in its atexit hooks, and everything worth keeping is written.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
