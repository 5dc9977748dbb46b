"""Command line: ``python -m onecollector_logging {demo,collector,send,cache}``."""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import os
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from . import _cache, _config, _schema
from ._directives import KillWindow, RetryGate
from ._envelope import EnvelopeBuilder, os_identity
from ._record import RecordOptions, snapshot
from ._stats import Counters
from ._transport import (
    ACCEPTED,
    SDK_VERSION,
    TRANSIENT,
    Transport,
    deliver_stored,
    refuses_key,
)
from .exceptions import ConfigurationError
from .handler import OneCollectorHandler
from .testing import LocalCollector

#: A syntactically valid key for the local collector; no real tenant has it.
DEMO_KEY = "0123456789abcdef0123456789abcdef-01234567-89ab-4cde-8f01-23456789abcd-0001"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m onecollector_logging",
        description="Send Python log records to Microsoft OneCollector.",
    )
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser(
        "demo", help="log a small workload to a local collector and show the result"
    )
    demo.set_defaults(run=_demo)
    collector = commands.add_parser(
        "collector", help="run a local collector and print each accepted event"
    )
    collector.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default: %(default)s)",
    )
    collector.add_argument(
        "--port",
        type=_port,
        default=0,
        help="the port to listen on (default: a free one)",
    )
    collector.set_defaults(run=_collector)
    send = commands.add_parser(
        "send", help="send one probe event and print the collector's verdict"
    )
    _key_options(send)
    send.add_argument(
        "--name",
        default="Python.Log.Probe",
        help="the event name (default: %(default)s)",
    )
    send.add_argument(
        "--data", default="{}", help="extra data fields, as a JSON object"
    )
    send.set_defaults(run=_send)
    cache = commands.add_parser("cache", help="inspect, send or delete cached records")
    cache.add_argument(
        "action",
        choices=("stats", "flush", "purge"),
        help="show what is cached, send it now, or delete it",
    )
    cache.add_argument(
        "--cache-dir",
        default=None,
        help="the cache root (default: the per-user cache directory)",
    )
    cache.add_argument("--yes", action="store_true", help="purge without asking")
    _key_options(cache, used_by=", for flush")
    cache.set_defaults(run=_cache_command)
    return parser


def _key_options(parser: argparse.ArgumentParser, used_by: str = "") -> None:
    parser.add_argument(
        "--instrumentation-key",
        default=None,
        help=f"the full key{used_by} (default: ${_config.KEY_ENV})",
    )
    parser.add_argument(
        "--endpoint",
        default=_schema.DEFAULT_ENDPOINT,
        help=f"the collector URL{used_by} (default: %(default)s)",
    )


# -- demo ---------------------------------------------------------------------


def _demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    with LocalCollector() as collector, tempfile.TemporaryDirectory() as cache_dir:
        logging.config.dictConfig(_demo_config(collector.endpoint, cache_dir))
        expected = _demo_workload()
        logging.shutdown()
        handler_stats = _demo_stats()
        _print_demo(collector, expected, handler_stats, out)
        delivered = len(collector.events)
    return 0 if delivered == expected else 1


def _demo_config(endpoint: str, cache_dir: str) -> Dict[str, Any]:
    # Exactly what an application puts in its logging configuration.
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "onecollector": {
                "class": "onecollector_logging.OneCollectorHandler",
                "instrumentation_key": DEMO_KEY,
                "endpoint": endpoint,
                "event_name": "Contoso.Demo.Log",
                "level": "DEBUG",
                "cache_dir": cache_dir,
                "app": {"name": "contoso-demo", "ver": "1.0.0", "env": "demo"},
            },
        },
        "root": {"level": "DEBUG", "handlers": ["onecollector"]},
    }


def _demo_workload() -> int:
    """Log like a small application would; return how many records were logged."""
    app = logging.getLogger("contoso.app")
    db = logging.getLogger("contoso.app.db")
    orders = logging.getLogger("contoso.orders")
    app.debug("configuration loaded from %s", "settings.toml")
    app.info("service started on port %d", 8080, extra={"workers": 4})
    db.info("query took %.1f ms", 12.5, extra={"rows": 42, "table": "orders"})
    db.warning("slow query", extra={"duration_ms": 1503.0, "retries": 2})
    orders.info(
        "order %s shipped",
        "A-1001",
        extra={"event_name": "Contoso.App.OrderShipped", "order_id": "A-1001"},
    )
    app.info("café ☕ naïve façade – 日本語のログ ✓")
    try:
        {"sku": "X"}["quantity"]
    except KeyError:
        orders.exception("order could not be priced", extra={"order_id": "A-1002"})
    app.error("payment provider unavailable", extra={"provider": "contoso-pay"})
    app.critical("shutting down after %d errors", 2)
    return 9


def _demo_stats() -> Dict[str, Any]:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, OneCollectorHandler):
            return handler.stats()
    return {}


def _print_demo(
    collector: LocalCollector, expected: int, stats: Dict[str, Any], out: TextIO
) -> None:
    events = collector.events
    refused = sum(1 for r in collector.requests if (r.status or 600) >= 300)
    print(f"records logged:            {expected}", file=out)
    print(f"events accepted:           {len(events)}", file=out)
    print(f"events rejected:           {collector.rejected_events}", file=out)
    print(f"requests refused:          {refused}", file=out)
    print(f"handler counters:          {json.dumps(stats, sort_keys=True)}", file=out)
    names = sorted({str(e.get("name")) for e in events})
    print(f"event names:               {', '.join(names)}", file=out)
    sample = next((e for e in events if "exceptionType" in e.get("data", {})), None)
    if sample is None and events:
        sample = events[0]
    if sample is not None:
        print("one accepted envelope:", file=out)
        print(json.dumps(sample, indent=2, ensure_ascii=False), file=out)


# -- collector ---------------------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


def _collector(args: argparse.Namespace) -> int:
    lock = threading.Lock()

    def show(envelope: Dict[str, Any]) -> None:
        with lock:
            print(json.dumps(envelope, ensure_ascii=False), flush=True)

    collector = LocalCollector(host=args.host, port=args.port, on_event=show)
    try:
        collector.start()
    except OSError as exc:
        reason = exc.strerror or exc
        print(
            f"error: cannot listen on {args.host} port {args.port}: {reason}",
            file=sys.stderr,
        )
        return 1
    try:
        print(f"collector listening on {collector.endpoint}", flush=True)
        print("press Ctrl-C to stop", file=sys.stderr, flush=True)
        threading.Event().wait()
    finally:
        collector.stop()
    return 0


# -- send --------------------------------------------------------------------


def _transport(args: argparse.Namespace, counters: Counters) -> Transport:
    key, tenant = _config.instrumentation_key(args.instrumentation_key)
    return Transport(
        endpoint=_config.endpoint(args.endpoint, key),
        instrumentation_key=key,
        tenant=tenant,
        kill_window=KillWindow(),
        gate=RetryGate(),
        counters=counters,
    )


def _send(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    name = _config.event_name("--name", args.name)
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        raise ConfigurationError(f"--data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError("--data must be a JSON object")
    counters = Counters()
    transport = _transport(args, counters)
    record = logging.LogRecord(
        "onecollector_logging.probe", logging.INFO, __file__, 0, "probe", (), None
    )
    record.__dict__.update({str(k): v for k, v in data.items()})
    options = RecordOptions(event_name=name, counters=counters)
    snap = snapshot(record, options, 1)
    if snap is None:
        raise ConfigurationError("--data produced no event")
    os_name, os_ver = os_identity()
    builder = EnvelopeBuilder(
        tenant=transport.tenant,
        epoch="probe",
        sdk_version=SDK_VERSION,
        ext={},
        os_name=os_name,
        os_ver=os_ver,
    )
    line = builder.serialize(snap)
    print(f"tenant:          {transport.tenant}", file=out)
    print(f"endpoint:        {transport.endpoint}", file=out)
    print(f"event:           {line.decode('utf-8')}", file=out)
    outcome = transport.post([line])
    transport.close()
    if outcome.status is None:
        print(f"no answer:       {outcome.detail}", file=out)
        return 1
    print(f"status:          {outcome.status}", file=out)
    print(f"Collector-Error: {outcome.detail or '-'}", file=out)
    print(f"body:            {outcome.answer or '-'}", file=out)
    print(f"verdict:         {outcome.kind}", file=out)
    ok = outcome.kind == ACCEPTED and not outcome.rejected
    return 0 if ok else 1


# -- cache -------------------------------------------------------------------


def _cache_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    root = args.cache_dir or _cache.default_cache_root()
    if os.path.exists(root) and not os.path.isdir(root):
        print(f"error: the cache root {root} is not a directory", file=sys.stderr)
        return 2
    if args.action == "stats":
        return _cache_stats(root, out)
    if args.action == "purge":
        return _cache_purge(root, args.yes, out)
    return _cache_flush(root, args, out)


def _open_partitions(root: str, out: TextIO) -> List[_cache.DiskCache]:
    """Open the partition of each tenant under *root*; say so when there is none."""
    # Only what partitions() recognizes is opened: opening creates a lock file
    # and takes the group's and others' permissions away, which must not happen
    # to a directory of someone else's under a root given by mistake.
    tenants = _cache.partitions(root)
    if not tenants:
        print(f"no cache found in {root}", file=out)
    caches = []
    for tenant in tenants:
        cache = _cache.DiskCache.open(root, tenant)
        if cache is not None:
            caches.append(cache)
    return caches


def _cache_stats(root: str, out: TextIO) -> int:
    print(f"cache root: {root}", file=out)
    for cache in _open_partitions(root, out):
        stats = cache.stats()
        print(f"tenant {cache.tenant}:", file=out)
        for name in ("batches", "records", "bytes", "oldest_age_s", "claimed"):
            print(f"  {name:<13} {stats.get(name)}", file=out)
        print(
            f"  {'kill_until':<13} {_describe_kill(stats.get('kill_until'))}", file=out
        )
    return 0


def _describe_kill(until: object) -> str:
    if not isinstance(until, (int, float)) or until <= time.time():
        return "none"
    return f"{until - time.time():.0f} s left"


def _cache_purge(root: str, yes: bool, out: TextIO) -> int:
    caches = _open_partitions(root, out)
    if not caches:
        return 0
    if not yes:
        if not sys.stdin.isatty():
            print("refusing to purge without --yes (no terminal to ask)", file=out)
            return 1
        answer = input(f"delete every cached record under {root}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=out)
            return 1
    for cache in caches:
        print(f"tenant {cache.tenant}: {cache.purge()} batch(es) deleted", file=out)
    return 0


def _no_wait(seconds: float) -> None:
    """The command makes one attempt per batch and never waits between them."""


def _cache_flush(root: str, args: argparse.Namespace, out: TextIO) -> int:
    counters = Counters()
    transport = _transport(args, counters)
    tenants = _cache.partitions(root)
    if transport.tenant not in tenants:
        # Opening the partition would create it, only to find it empty.
        print(f"nothing cached for tenant {transport.tenant} under {root}", file=out)
        if tenants:
            # Most likely the key of another application, or a mistyped one.
            print(f"tenants with a cache there: {', '.join(tenants)}", file=out)
        return 0
    cache = _cache.DiskCache.open(root, transport.tenant, counters=counters)
    if cache is None:
        print(f"the cache under {root} cannot be used", file=out)
        return 1
    transport.kill_window.attach(cache.kill_until, cache.set_kill_until)
    sent = failed = 0
    while not transport.kill_window.active():
        claim = cache.claim()
        if claim is None:
            break
        accepted, refused, stopped = _flush_claim(transport, claim, out)
        sent += accepted
        failed += refused
        if stopped:
            break
    transport.close()
    left = cache.stats().get("records", 0)
    print(
        f"tenant {transport.tenant}: {sent} record(s) sent, {failed} not;"
        f" {left} still cached",
        file=out,
    )
    return 0 if failed == 0 else 1


def _flush_claim(
    transport: Transport, claim: _cache.Claim, out: TextIO
) -> Tuple[int, int, bool]:
    """Send one claimed batch; return the records sent, those not sent, and
    whether flushing stops here."""
    stop = threading.Event()
    stop.set()  # one attempt per batch: the command reports, it does not wait
    outcome = deliver_stored(transport, claim, sleep=_no_wait, stop_event=stop)
    if outcome is None:
        return 0, 0, False  # stored again in parts, claimed next
    if outcome.kind == ACCEPTED:
        claim.done()
        refused = sum(outcome.rejected.values())
        if refused:
            print(f"rejected: {outcome.rejected}", file=out)
        return outcome.accepted, refused, False
    answer = f"HTTP {outcome.status}" if outcome.status else "no answer"
    if outcome.detail:
        answer += f" ({outcome.detail})"
    if outcome.kind == TRANSIENT:
        claim.release()
        print(f"stopped: {answer}", file=out)
        return 0, len(claim.lines), True
    if refuses_key(outcome):
        claim.release()
        print(
            f"stopped: the collector refused the key ({answer}); the cached"
            " records are left for a valid key",
            file=out,
        )
        return 0, len(claim.lines), True
    claim.done()
    print(f"dropped {len(claim.lines)} record(s): {outcome.kind}, {answer}", file=out)
    return 0, len(claim.lines), False


if __name__ == "__main__":
    sys.exit(main())
