"""A loopback HTTP sink that counts the records each kind of client delivers.

It runs in its own process, so its CPU is not charged to the handler being
measured; it still shares the machine's cores, which is why it parses only what
it needs to count and answers at once.

Counted per kind:

``onecollector``
    ``POST /OneCollector/...``: newline-separated envelopes, raw deflate, zlib or
    gzip. Answered ``{"acc": n}``.
``track``
    ``POST .../track`` (the Azure Monitor exporter): a JSON array of telemetry
    items, maybe gzip; each item has exactly one ``"iKey"`` key. Answered
    ``{"itemsReceived": n, "itemsAccepted": n, "errors": []}``.
``form``
    ``POST /log`` (``logging.handlers.HTTPHandler``): one record per request.

Control endpoints: ``GET /count`` gives the counters as JSON; ``GET
/wait?kind=K&n=N&timeout=T`` answers as soon as kind ``K`` has ``N`` records, or
after ``T`` seconds; ``POST /reset`` zeroes everything. ``last_at`` in the
answers is :func:`time.monotonic` of the last counted request, comparable with
the same clock in other processes of the machine.

Run: ``python benchmarks/sink.py [--port 0]``; the first line printed is
``PORT <n>``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

KINDS = ("onecollector", "track", "form")
_MAX_WAIT_S = 600.0
#: Raw deflate first (what OneCollector means by ``deflate``), then the zlib
#: and gzip wrappings that some clients send under the same label.
_DEFLATE_WBITS = (-zlib.MAX_WBITS, zlib.MAX_WBITS, zlib.MAX_WBITS | 16)


class Tally:
    """Counters shared by the request threads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._reset_locked()

    def _reset_locked(self) -> None:
        self.records: Dict[str, int] = dict.fromkeys(KINDS, 0)
        self.requests: Dict[str, int] = dict.fromkeys(KINDS, 0)
        self.wire_bytes = 0
        self.undecodable = 0
        self.last_at = 0.0

    def reset(self) -> None:
        with self._cond:
            self._reset_locked()
            self._cond.notify_all()

    def add(self, kind: str, records: int, wire_bytes: int) -> None:
        with self._cond:
            self.records[kind] += records
            self.requests[kind] += 1
            self.wire_bytes += wire_bytes
            self.last_at = time.monotonic()
            self._cond.notify_all()

    def bad(self) -> None:
        with self._cond:
            self.undecodable += 1

    def wait(self, kind: str, target: int, timeout_s: float) -> Dict[str, Any]:
        deadline = time.monotonic() + min(max(timeout_s, 0.0), _MAX_WAIT_S)
        with self._cond:
            while self.records.get(kind, 0) < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._snapshot_locked()

    def snapshot(self) -> Dict[str, Any]:
        with self._cond:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> Dict[str, Any]:
        return {
            "records": dict(self.records),
            "requests": dict(self.requests),
            "wire_bytes": self.wire_bytes,
            "undecodable": self.undecodable,
            "last_at": self.last_at,
            "sink_cpu_s": time.process_time(),
        }


def _inflate(body: bytes, encoding: str) -> Optional[bytes]:
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        try:
            return gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            return None
    if encoding == "deflate":
        for wbits in _DEFLATE_WBITS:
            try:
                return zlib.decompress(body, wbits)
            except zlib.error:
                continue
    return None


def count_lines(data: bytes) -> int:
    """Envelopes in a OneCollector body: one per line, trailing newline or not."""
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The status line and headers go out in one write and the body in another:
    # with Nagle's algorithm the body would wait for the client's delayed ACK
    # (up to 40 ms on Linux) on every kept-alive request.
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        if body is None:
            self._answer(411, b"{}")
            return
        if path == "/reset":
            self.server.tally.reset()
            self._answer(200, b"{}")
        elif path.startswith("/OneCollector/"):
            self._onecollector(body)
        elif path.endswith("/track"):
            self._track(body)
        elif path == "/log":
            self.server.tally.add("form", 1, len(body))
            # HTTPHandler opens a connection per record and never closes it.
            self.close_connection = True
            self._answer(200, b"ok", close=True)
        else:
            self._answer(404, b"{}")

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        tally = self.server.tally
        if parts.path == "/count":
            self._answer(200, json.dumps(tally.snapshot()).encode())
        elif parts.path == "/wait":
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            result = tally.wait(
                query.get("kind", "onecollector"),
                int(query.get("n", "0")),
                float(query.get("timeout", "1")),
            )
            self._answer(200, json.dumps(result).encode())
        else:
            self._answer(404, b"{}")

    def _onecollector(self, wire: bytes) -> None:
        data = _inflate(wire, self.headers.get("Content-Encoding", "").strip().lower())
        if data is None:
            self.server.tally.bad()
            self._answer(400, b'{"acc":0,"efi":{"InvalidEncoding":"all"}}')
            return
        count = count_lines(data)
        self.server.tally.add("onecollector", count, len(wire))
        self._answer(200, b'{"acc":%d}' % count)

    def _track(self, wire: bytes) -> None:
        data = _inflate(wire, self.headers.get("Content-Encoding", "").strip().lower())
        if data is None:
            self.server.tally.bad()
            self._answer(400, b"{}")
            return
        count = data.count(b'"iKey"')
        self.server.tally.add("track", count, len(wire))
        answer = {"itemsReceived": count, "itemsAccepted": count, "errors": []}
        self._answer(200, json.dumps(answer).encode())

    def _read_body(self) -> Optional[bytes]:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._read_chunked()
            return b""
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes:
        parts: List[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _answer(self, status: int, body: bytes, *, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], tally: Tally) -> None:
        super().__init__(address, _Handler)
        self.tally = tally

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A measured process leaves without closing its connections.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = _Server(("127.0.0.1", args.port), Tally())
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
