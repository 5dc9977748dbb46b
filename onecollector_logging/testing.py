"""A OneCollector on loopback for tests: it judges requests as the service does and
can be told to fail.

Point a handler at :attr:`LocalCollector.endpoint`, log, and look at what landed::

    with LocalCollector() as collector:
        collector.script(Answer(status=503))  # the first upload fails, a retry lands
        handler = OneCollectorHandler(KEY, endpoint=collector.endpoint)
        logging.getLogger("app").addHandler(handler)
        logging.getLogger("app").warning("disk full")
        assert collector.wait_for_events(1, timeout=30.0)

Under pytest, the ``onecollector`` fixture of :mod:`.pytest_plugin` gives each test a
started collector. Only the standard library is used, so the collector also serves
as an independent check of the package's own HTTP client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    Union,
    cast,
)
from urllib.parse import parse_qsl, urlsplit

from ._schema import (
    MAX_EVENTS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    envelope_problem,
    tenant_of,
)

__all__ = ["Answer", "Headers", "LocalCollector", "ReceivedRequest"]

_log = logging.getLogger(__name__)

COLLECTOR_PATH = "/OneCollector/1.0/"
_JSON_STREAM = "application/x-json-stream"
_USE_COLLECTOR_DELTA = "use-collector-delta"
#: How long the accept loop may take to notice :meth:`LocalCollector.stop`.
_ACCEPT_POLL_S = 0.05
#: Collector-Error texts are cut here so that a hostile value cannot bloat a header.
_MAX_PROBLEM_CHARS = 300
#: Both wrappings are tried after raw deflate because the C++ SDK labels gzip
#: (and some clients label zlib.compress output) as ``deflate``.
_DEFLATE_WBITS = (-zlib.MAX_WBITS, zlib.MAX_WBITS, zlib.MAX_WBITS | 16)
_GZIP_WBITS = (zlib.MAX_WBITS | 16,)
_UNPARSEABLE = object()
_KEY_IN_QUERY = re.compile(r"(apikey=)([^&\s]+)", re.IGNORECASE)
#: A scripted header name must be an HTTP token (RFC 9110, section 5.6.2).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: http.server writes header lines as strict Latin-1, and CR or LF would split
#: one header into two.
_BAD_HEADER_VALUE = re.compile(r"[\r\n\x00]|[^\x00-\xff]")
#: Statuses whose answers carry no body: one given to them could not be sent.
_NO_BODY = frozenset({204, 304})
#: The collector writes these itself; a second copy would garble the framing.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})

_Body = Union[None, Mapping[str, Any], str, bytes]
_HeaderPairs = List[Tuple[str, str]]


class Headers(Mapping[str, str]):
    """A read-only, case-insensitive view of HTTP headers.

    Iteration gives the names as they were sent; a header sent several times
    reads as its values joined by ``", "``.
    """

    def __init__(self, pairs: Iterable[Tuple[str, str]] = ()) -> None:
        merged: Dict[str, Tuple[str, str]] = {}
        for name, value in pairs:
            key = name.lower()
            if key in merged:
                merged[key] = (merged[key][0], merged[key][1] + ", " + value)
            else:
                merged[key] = (name, value)
        self._items = merged

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        # The key is a credential: a failing assertion must not print it.
        shown = {
            name: _masked(value) if name.lower() in _KEY_HEADERS else value
            for name, value in self.items()
        }
        return f"Headers({shown!r})"


@dataclass(frozen=True)
class Answer:
    """How to answer one request, in place of the collector's own verdict.

    An answer the collector could not serve is refused when it is made, with a
    :class:`TypeError` for a value of the wrong type and a :class:`ValueError`
    for a bad value, rather than failing later as a dropped connection.

    :param status: HTTP status, an ``int`` within 200-599.
    :param headers: extra answer headers, ``str`` names (HTTP tokens) to ``str``
        values (Latin-1, without CR, LF or NUL); they replace the collector's
        headers of the same name (``Content-Type``, ``time-delta-millis``, kill
        headers). ``Content-Length``, ``Transfer-Encoding`` and ``Connection``
        are refused: the collector sets them to frame the answer.
    :param body: ``None`` for ``{"acc":N}`` (``N`` = events parsed, 0 for a
        non-2xx status); a mapping is sent as JSON, so it must be serializable
        by :func:`json.dumps`, without NaN or infinity; ``str`` (as UTF-8) and
        ``bytes`` verbatim; any other type is refused, and any body for a 204
        or 304. On a 2xx, events listed by index in ``efi`` are
        not accepted, and ``efi`` ``"all"`` accepts none.
    :param delay_s: wait this long before answering (cut short by ``stop()``): a
        number of seconds from 0 to :data:`threading.TIMEOUT_MAX`.
    :param reset: ``True`` to close the connection abruptly (TCP reset) instead
        of answering.
    :param hang: ``True`` to never answer: hold the connection until the client
        closes it or the collector stops.
    """

    status: int = 200
    headers: Optional[Mapping[str, str]] = None
    body: _Body = None
    delay_s: float = 0.0
    reset: bool = False
    hang: bool = False

    def __post_init__(self) -> None:
        # Everything is checked here because a value the collector cannot serve
        # would otherwise fail only when served, on the connection thread, where
        # the client sees a dropped connection and no request is recorded.
        # bool is an int, but True as a status or a delay is surely a mistake.
        if not isinstance(self.status, int) or isinstance(self.status, bool):
            raise TypeError(f"status must be an int, not {type(self.status).__name__}")
        if not 200 <= self.status <= 599:
            raise ValueError(f"status must be within 200-599, not {self.status!r}")
        if not isinstance(self.delay_s, (int, float)) or isinstance(self.delay_s, bool):
            kind = type(self.delay_s).__name__
            raise TypeError(f"delay_s must be a number of seconds, not {kind}")
        if self.delay_s < 0:
            raise ValueError(f"delay_s must not be negative, not {self.delay_s!r}")
        # Event.wait() refuses a longer timeout; NaN fails the comparison too.
        if not self.delay_s <= threading.TIMEOUT_MAX:
            raise ValueError(
                f"delay_s must be at most threading.TIMEOUT_MAX, not {self.delay_s!r}"
            )
        for name in ("reset", "hang"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"{name} must be a bool, not {type(getattr(self, name)).__name__}"
                )
        if self.reset and self.hang:
            raise ValueError("an answer cannot both reset and hang")
        _check_answer_headers(self.headers)
        _check_answer_body(self.body)
        if self.body is not None and self.status in _NO_BODY:
            raise ValueError(f"a {self.status} answer has no body: body must be None")


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the collector received it, and what it answered.

    Its repr shows an API key, from a header or from the query, by its tenant
    id only.

    :param method: HTTP method.
    :param path: URL path, without the query.
    :param query: query parameters (the last value of a repeated name).
    :param headers: request headers.
    :param body: the body as received (still compressed).
    :param text: the decompressed body as text; ``""`` if it could not be decoded.
    :param events: the envelopes parsed from the body (JSON objects only), valid or
        not.
    :param status: the status answered; ``None`` when the script reset or held the
        connection.
    :param answer_headers: the headers answered.
    :param answer_body: the body answered.
    :param problem: why the service would refuse this request (its
        ``Collector-Error``), or ``None`` if it would accept it; judged even when a
        scripted answer was sent instead.
    :param scripted: whether a scripted :class:`Answer` was used.
    :param received_at: arrival time, from :func:`time.time`.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Headers
    body: bytes
    text: str
    events: List[Dict[str, Any]]
    status: Optional[int]
    answer_headers: Headers
    answer_body: bytes
    problem: Optional[str]
    scripted: bool
    received_at: float

    def __repr__(self) -> str:
        # A client may put the key in the query string as well as in a header;
        # a failing assertion must print it from neither.
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "path":
                value = _masked_path(value)
            elif item.name == "query":
                value = {
                    name: _masked(text) if name.lower() in _KEY_HEADERS else text
                    for name, text in value.items()
                }
            shown.append(f"{item.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


@dataclass(frozen=True)
class _Verdict:
    status: int
    problem: Optional[str] = None
    body: Mapping[str, Any] = field(default_factory=lambda: {"acc": 0})


@dataclass(frozen=True)
class _Incoming:
    method: str
    path: str
    query: Dict[str, str]
    headers: Headers
    raw: bytes
    framing: Optional[_Verdict]
    received_at: float


@dataclass(frozen=True)
class _Examination:
    text: str
    values: List[object]
    tenants: Dict[str, str]
    verdict: _Verdict


@dataclass(frozen=True)
class _Reply:
    status: Optional[int]
    headers: _HeaderPairs
    body: bytes
    accepted: List[Dict[str, Any]]
    rejected: int
    delay_s: float = 0.0
    reset: bool = False
    hang: bool = False


@dataclass(frozen=True)
class _Kill:
    tenant: str
    duration: str
    token_form: str
    duration_header: str


def _clean(text: str) -> str:
    """Make *text* safe as a header value: ASCII, one line, bounded."""
    ascii_text = text.encode("ascii", "backslashreplace").decode("ascii")
    one_line = ascii_text.replace("\r", " ").replace("\n", " ")
    return one_line[:_MAX_PROBLEM_CHARS]


def _invalid_format(problem: str) -> _Verdict:
    return _Verdict(
        400,
        _clean("No event accepted, the payload did not parse: " + problem),
        {"acc": 0, "efi": {"InvalidEventFormat": "all"}},
    )


def _invalid_tenant(problem: str) -> _Verdict:
    return _Verdict(
        401,
        _clean("Invalid tenant token: " + problem),
        {"acc": 0, "efi": {"InvalidTenantToken": "all"}},
    )


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


_KEY_HEADERS = frozenset({"x-apikey", "apikey"})


def _masked(keys: str) -> str:
    # Each key keeps its tenant id, the part before the first "-".
    return ",".join(f"{key.partition('-')[0]}-***" for key in keys.split(","))


def _masked_path(path: str) -> str:
    return _KEY_IN_QUERY.sub(lambda match: match[1] + _masked(match[2]), path)


def _api_keys(headers: Headers, query: Mapping[str, str]) -> List[str]:
    """Return the full keys of a request, wherever its client put them."""
    joined = headers.get("x-apikey") or headers.get("apikey") or query.get("apikey")
    return [key.strip() for key in (joined or "").split(",") if key.strip()]


def _check_route(method: str, path: str) -> Optional[_Verdict]:
    if method != "POST":
        return _Verdict(405, f"Method {method} not allowed; events are POSTed.")
    if path.rstrip("/") != COLLECTOR_PATH.rstrip("/"):
        shown = _masked_path(path)
        return _Verdict(404, _clean(f"Nothing at {shown}; post to {COLLECTOR_PATH}."))
    return None


def _check_content_type(incoming: _Incoming) -> Optional[_Verdict]:
    # The 1DS JS SDK's pre-flight-free form sends text/plain and names the real
    # type in the query string, which the service honours first.
    declared = incoming.query.get("content-type") or incoming.headers.get(
        "content-type", ""
    )
    if _media_type(declared) == _JSON_STREAM:
        return None
    return _Verdict(
        415, _clean(f"Content type {declared!r} not supported; send {_JSON_STREAM}.")
    )


def _check_keys(keys: List[str]) -> Optional[_Verdict]:
    if not keys:
        return _invalid_tenant("no API key in x-apikey, apikey or ?apikey=.")
    if any(tenant_of(key) is None for key in keys):
        return _invalid_tenant("an API key has no '<tenant>-' prefix.")
    return None


def _inflate(raw: bytes, wbits: int) -> Optional[bytes]:
    """Decompress *raw*, stopping just past the size limit; None if not this format."""
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(raw, MAX_REQUEST_BYTES + 1)
    except zlib.error:
        return None
    if len(data) > MAX_REQUEST_BYTES:
        return data
    if not inflater.eof or inflater.unused_data:
        return None
    return data


def _decompress(
    raw: bytes, encoding: str
) -> Tuple[Optional[bytes], Optional[_Verdict]]:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return raw, None
    attempts = {"deflate": _DEFLATE_WBITS, "gzip": _GZIP_WBITS, "x-gzip": _GZIP_WBITS}
    if name not in attempts:
        verdict = _Verdict(
            415,
            _clean(f"Content encoding {name!r} not supported; use deflate or gzip."),
        )
        return None, verdict
    for wbits in attempts[name]:
        data = _inflate(raw, wbits)
        if data is not None:
            return data, None
    return None, _invalid_format(f"the body is not valid {name} data.")


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _parse_lines(data: bytes) -> Tuple[str, List[object], Optional[_Verdict]]:
    """Split an NDJSON body into values (a marker for each unparseable line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"the body is not UTF-8 (byte {exc.start})."
        return data.decode("utf-8", "replace"), [], _invalid_format(problem)
    values: List[object] = []
    verdict: Optional[_Verdict] = None
    for index, line in enumerate(ln for ln in text.split("\n") if ln.strip()):
        try:
            values.append(json.loads(line, parse_constant=_refuse_constant))
        except (ValueError, RecursionError) as exc:
            values.append(_UNPARSEABLE)
            if verdict is None:
                verdict = _invalid_format(f"event {index} is not JSON ({exc}).")
    return text, values, verdict


def _check_size(data: Optional[bytes], values: List[object]) -> Optional[_Verdict]:
    if data is not None and len(data) > MAX_REQUEST_BYTES:
        return _Verdict(
            413, f"Request too large: over {MAX_REQUEST_BYTES} bytes uncompressed."
        )
    if len(values) > MAX_EVENTS_PER_REQUEST:
        return _Verdict(
            413,
            f"Request too large: {len(values)} events, at most "
            f"{MAX_EVENTS_PER_REQUEST}.",
        )
    return None


def _check_envelopes(
    values: List[object], tenants: Dict[str, str]
) -> Optional[_Verdict]:
    """Judge each envelope; a format fault outranks a tenant fault anywhere."""
    tenant_fault: Optional[_Verdict] = None
    for index, value in enumerate(values):
        if value is _UNPARSEABLE:
            continue
        ikey = value.get("iKey") if isinstance(value, dict) else None
        # A tenant id never holds "-", so one there means a full key leaked into
        # the envelope; the message must not echo it.
        if isinstance(ikey, str) and "-" in ikey:
            tenant_fault = tenant_fault or _invalid_tenant(
                f"event {index} has a full instrumentation key as iKey."
            )
            continue
        problem = envelope_problem(value)
        if problem:
            return _invalid_format(f"event {index}: {problem}.")
        tenant = cast(str, ikey)[2:]
        if tenant not in tenants and tenant_fault is None:
            tenant_fault = _invalid_tenant(
                f"event {index} is for tenant {tenant!r}, whose key was not given."
            )
    return tenant_fault


def _examine(incoming: _Incoming) -> _Examination:
    """Parse a request and judge it the way the service does, in the service's order."""
    keys = _api_keys(incoming.headers, incoming.query)
    tenants = {tenant_of(key) or "": key for key in keys}
    data, decode_verdict = _decompress(
        incoming.raw, incoming.headers.get("content-encoding", "")
    )
    text, values = "", cast(List[object], [])
    parse_verdict: Optional[_Verdict] = None
    if data is not None and len(data) <= MAX_REQUEST_BYTES:
        text, values, parse_verdict = _parse_lines(data)
    verdict = (
        incoming.framing
        or _check_route(incoming.method, incoming.path)
        or _check_content_type(incoming)
        or _check_keys(keys)
        or decode_verdict
        or _check_size(data, values)
        or parse_verdict
        or _check_envelopes(values, tenants)
        or _Verdict(200, None, {"acc": len(values)})
    )
    return _Examination(text, values, tenants, verdict)


def _refused_indexes(answer: object, count: int) -> Set[int]:
    """Return the event indexes that a 2xx answer body says were rejected."""
    if not isinstance(answer, dict):
        return set()
    efi = answer.get("efi")
    # "rej" is a count; only "efi" says which events were refused.
    entries = list(efi.values()) if isinstance(efi, dict) else []
    refused: Set[int] = set()
    for entry in entries:
        if entry == "all":
            return set(range(count))
        if isinstance(entry, list):
            refused.update(i for i in entry if isinstance(i, int))
    return refused


def _settle(
    values: List[object], status: int, answer: object
) -> Tuple[List[Dict[str, Any]], int]:
    """Split the events of an answered request into accepted ones and a reject count."""
    if not 200 <= status < 300:
        return [], len(values)
    refused = _refused_indexes(answer, len(values))
    accepted = [
        cast(Dict[str, Any], value)
        for index, value in enumerate(values)
        if isinstance(value, dict) and index not in refused
    ]
    return accepted, len(values) - len(accepted)


def _merge_headers(
    base: _HeaderPairs, extra: Optional[Mapping[str, str]]
) -> _HeaderPairs:
    if not extra:
        return base
    replaced = {name.lower() for name in extra}
    kept = [(name, value) for name, value in base if name.lower() not in replaced]
    return kept + list(extra.items())


def _encode_body(body: _Body) -> Tuple[bytes, object]:
    """Return the bytes to send and their JSON reading (None if not JSON)."""
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode("utf-8")
    else:
        reading = dict(body or {})
        # NaN and infinity are not JSON: no client could read such an answer.
        text = json.dumps(reading, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8"), reading
    try:
        return raw, json.loads(raw)
    # A verbatim body nested too deeply to read is sent all the same, unread.
    except (ValueError, RecursionError):
        return raw, None


def _check_answer_headers(headers: object) -> None:
    """Refuse scripted answer headers that cannot be written as they are given."""
    if headers is None:
        return
    if not isinstance(headers, Mapping):
        raise TypeError(
            f"headers must be None or a mapping, not {type(headers).__name__}"
        )
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(
                "headers must map str names to str values, not "
                f"{type(name).__name__} to {type(value).__name__}"
            )
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"headers: {name!r} is not an HTTP header name")
        if name.lower() in _FRAMING_HEADERS:
            raise ValueError(
                f"headers cannot set {name}: the collector sets it to frame the answer"
            )
        # The value is not shown: a Collector-Error may quote an API key.
        if _BAD_HEADER_VALUE.search(value):
            raise ValueError(
                f"headers: the value of {name} must be Latin-1 text without CR, LF "
                "or NUL"
            )


def _check_answer_body(body: object) -> None:
    """Refuse a scripted answer body of another type, or one that cannot be encoded."""
    if body is None:
        return
    if not isinstance(body, (Mapping, str, bytes)):
        raise TypeError(
            f"body must be None, a mapping, str or bytes, not {type(body).__name__}"
        )
    try:
        _encode_body(body)
    except TypeError as error:
        raise TypeError(f"body cannot be encoded: {error}") from error
    except (ValueError, RecursionError) as error:
        raise ValueError(f"body cannot be encoded: {error}") from error


def _verdict_reply(exam: _Examination, extra: _HeaderPairs) -> _Reply:
    verdict = exam.verdict
    headers: _HeaderPairs = [("Content-Type", "application/json")]
    if verdict.problem:
        headers.append(("Collector-Error", verdict.problem))
    accepted, rejected = _settle(exam.values, verdict.status, verdict.body)
    body = json.dumps(dict(verdict.body), separators=(",", ":")).encode("utf-8")
    return _Reply(verdict.status, headers + extra, body, accepted, rejected)


def _scripted_reply(exam: _Examination, answer: Answer, extra: _HeaderPairs) -> _Reply:
    if answer.reset or answer.hang:
        return _Reply(
            None, [], b"", [], 0, answer.delay_s, reset=answer.reset, hang=answer.hang
        )
    body = answer.body
    if body is None:
        success = 200 <= answer.status < 300
        body = {"acc": sum(isinstance(v, dict) for v in exam.values) if success else 0}
    raw, reading = _encode_body(body)
    if answer.status in _NO_BODY:
        raw = b""
    accepted, rejected = _settle(exam.values, answer.status, reading)
    headers = _merge_headers(
        [("Content-Type", "application/json"), *extra], answer.headers
    )
    return _Reply(answer.status, headers, raw, accepted, rejected, answer.delay_s)


class _Handler(BaseHTTPRequestHandler):
    """Reads one request at a time off a connection and hands it to the collector."""

    protocol_version = "HTTP/1.1"
    # Answers are small writes on kept-alive connections: without this, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every request.
    disable_nagle_algorithm = True
    server_version = "LocalCollector"
    sys_version = ""
    server: _Server

    def do_POST(self) -> None:
        received_at = time.time()
        raw, framing = self._read_body()
        if raw is None:
            self.close_connection = True
            return
        target = urlsplit(self.path)
        incoming = _Incoming(
            method=self.command,
            path=target.path,
            query=dict(parse_qsl(target.query, keep_blank_values=True)),
            headers=Headers(self.headers.items()),
            raw=raw,
            framing=framing,
            received_at=received_at,
        )
        if framing is not None:
            self.close_connection = True
        self.deliver(self.server.collector._exchange(incoming))

    do_GET = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_POST  # noqa: N815

    def _read_body(self) -> Tuple[Optional[bytes], Optional[_Verdict]]:
        """Return the body (None if the client went away) and any framing fault."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        declared = self.headers.get("Content-Length")
        if declared is None:
            if self.command == "POST":
                return b"", _Verdict(411, "Content-Length required.")
            return b"", None
        if not declared.strip().isdigit():
            return b"", _Verdict(400, "Content-Length is not a number.")
        length = int(declared)
        body = self.rfile.read(length)
        return (body if len(body) == length else None), None

    def _read_chunked(self) -> Tuple[Optional[bytes], Optional[_Verdict]]:
        parts: List[bytes] = []
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return b"", _Verdict(400, "Malformed chunked body.")
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass
                return b"".join(parts), None
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                return None, None
            parts.append(chunk)
            self.rfile.readline(1024)

    def deliver(self, reply: _Reply) -> None:
        if reply.delay_s and self.server.stopping.wait(reply.delay_s):
            self.close_connection = True
            return
        if reply.reset:
            self._reset()
            return
        if reply.hang:
            self._hold()
            return
        self.send_response(cast(int, reply.status))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _reset(self) -> None:
        # A zero linger makes close() send RST, which clients report as a
        # connection reset rather than as a clean end of stream.
        self.close_connection = True
        self.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.connection.close()

    def _hold(self) -> None:
        # recv() returns once the client closes, or once stop() shuts the socket
        # down, so a held connection never outlives the collector.
        self.close_connection = True
        try:
            while self.connection.recv(4096):
                pass
        except OSError:
            pass

    def log_request(
        self, code: Union[int, str] = "-", size: Union[int, str] = "-"
    ) -> None:
        # On a malformed request line neither the method nor the path is known.
        path = urlsplit(getattr(self, "path", "")).path
        _log.debug("%s %s answered %s", self.command or "-", path or "-", code)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line of the JS SDK's query-string form holds the full key.
        message = _KEY_IN_QUERY.sub(r"\1...", format % args)
        _log.debug("%s %s", self.address_string(), message)


class _Server(ThreadingHTTPServer):
    """A threading HTTP server whose connections can all be cut and joined."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: Tuple[str, int], collector: LocalCollector) -> None:
        self.collector = collector
        self.stopping = threading.Event()
        self._tracked_lock = threading.Lock()
        self._tracked: Dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS round trip that
        # can stall start() for seconds on a badly configured machine.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="onecollector-local-collector-connection",
            daemon=True,
        )
        with self._tracked_lock:
            self._tracked[request] = thread
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._tracked_lock:
                self._tracked.pop(request, None)

    def release_connections(self) -> List[threading.Thread]:
        """Shut every open connection down; return the threads serving them."""
        with self._tracked_lock:
            tracked = list(self._tracked.items())
        for connection, _ in tracked:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        return [thread for _, thread in tracked]

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("connection from %s ended badly", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class LocalCollector:
    """A OneCollector stand-in serving HTTP on a loopback port.

    Each request is judged as the service judges it (content type, API keys,
    encoding, NDJSON framing, Common Schema envelopes, tenants, size limits) and
    answered with the service's status, ``Collector-Error`` header and
    ``acc``/``efi`` body. :meth:`script` replaces verdicts with chosen
    :class:`Answer` objects, one per request, to rehearse failures.

    Threading contract: one daemon thread accepts connections and one daemon
    thread serves each connection; accepted events are recorded, and ``on_event``
    called, on that connection's thread before the answer is written, so a client
    that has its answer can already see its events here. Every other method may be
    called from any thread: shared state sits behind one condition variable, and
    the properties return copies. :meth:`stop` is idempotent and bounded: it cuts
    every open connection, held ones included, and joins the threads.

    :param host: address to listen on.
    :param port: port to listen on; 0 picks a free one (kept across restarts).
    :param on_event: called with each accepted envelope, on the connection's
        thread; it must not call :meth:`stop`.
    :param time_delta_millis: the ``time-delta-millis`` answered to a request
        carrying ``time-delta-to-apply-millis: use-collector-delta``; ``None``
        answers none.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
        time_delta_millis: Optional[int] = 0,
    ) -> None:
        self.host = host
        self.on_event = on_event
        self._port = port
        self._changed = threading.Condition(threading.Lock())
        self._events: List[Dict[str, Any]] = []
        self._requests: List[ReceivedRequest] = []
        self._rejected = 0
        self._script: Deque[Answer] = deque()
        self._default: Optional[Answer] = None
        self._kills: List[_Kill] = []
        self._time_delta_millis = time_delta_millis
        self._lifecycle = threading.Lock()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> LocalCollector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> LocalCollector:
        """Listen and serve in the background; return self.

        :raises RuntimeError: if already running.
        :raises OSError: if the address cannot be bound.
        """
        with self._lifecycle:
            if self._server is not None:
                raise RuntimeError("the local collector is already running")
            server_class = _Server6 if ":" in self.host else _Server
            server = server_class((self.host, self._port), self)
            self._port = server.server_port
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _ACCEPT_POLL_S},
                name="onecollector-local-collector",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        _log.debug("local collector listening on %s", self.endpoint)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving, cut open connections and join the threads.

        Does nothing if not running. Received data are kept, and :meth:`start`
        serves again on the same port.

        :param timeout_s: bound on the whole stop.
        """
        with self._lifecycle:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            self._server = self._thread = None
            deadline = time.monotonic() + timeout_s
            server.stopping.set()
            server.shutdown()
            connections = server.release_connections()
            for worker in [thread, *connections]:
                if worker is not threading.current_thread():
                    worker.join(max(0.0, deadline - time.monotonic()))
            server.server_close()
        stuck = sum(worker.is_alive() for worker in connections)
        _log.debug("local collector on port %d stopped (%d stuck)", self._port, stuck)

    @property
    def endpoint(self) -> str:
        """The URL to give a client, e.g. ``http://127.0.0.1:PORT/OneCollector/1.0/``.

        :raises RuntimeError: before the first :meth:`start` picked a port.
        """
        if not self._port:
            raise RuntimeError("the local collector has no port before start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}{COLLECTOR_PATH}"

    @property
    def port(self) -> int:
        """The port served (0 before the first :meth:`start` when asked for 0)."""
        return self._port

    @property
    def events(self) -> List[Dict[str, Any]]:
        """The accepted envelopes, in arrival order (a copy)."""
        with self._changed:
            return list(self._events)

    @property
    def requests(self) -> List[ReceivedRequest]:
        """Every request received, answered or not, in arrival order (a copy)."""
        with self._changed:
            return list(self._requests)

    @property
    def rejected_events(self) -> int:
        """How many events were refused: by a non-2xx answer or listed in a 2xx."""
        with self._changed:
            return self._rejected

    @property
    def time_delta_millis(self) -> Optional[int]:
        """The clock-skew answer to ``use-collector-delta``; ``None`` sends none."""
        with self._changed:
            return self._time_delta_millis

    @time_delta_millis.setter
    def time_delta_millis(self, value: Optional[int]) -> None:
        with self._changed:
            self._time_delta_millis = value

    @property
    def pending_answers(self) -> int:
        """How many scripted answers are still waiting for a request."""
        with self._changed:
            return len(self._script)

    def wait_for_events(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least *n* events were accepted; False on timeout.

        :param n: number of accepted events to wait for (since the last
            :meth:`clear`).
        :param timeout: seconds to wait at most.
        """
        with self._changed:
            return self._changed.wait_for(lambda: len(self._events) >= n, timeout)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least *n* requests were received; False on timeout.

        A request counts as soon as it is judged, before its answer (or its delay,
        reset or hang) is carried out.

        :param n: number of requests to wait for (since the last :meth:`clear`).
        :param timeout: seconds to wait at most.
        """
        with self._changed:
            return self._changed.wait_for(lambda: len(self._requests) >= n, timeout)

    def clear(self) -> None:
        """Forget received requests and events; scripts and pending kills stay."""
        with self._changed:
            self._events.clear()
            self._requests.clear()
            self._rejected = 0

    def script(self, *answers: Answer) -> None:
        """Queue answers for the next requests, one each, first in first out.

        :param answers: the answers, in the order requests will get them.
        """
        with self._changed:
            self._script.extend(answers)

    def script_always(self, answer: Optional[Answer]) -> None:
        """Answer every request with *answer* while the queue is empty.

        ``script_always(Answer(status=503))`` models an outage,
        ``script_always(Answer(reset=True))`` a dead host; ``None`` restores the
        collector's own verdicts.

        :param answer: the standing answer, or None.
        """
        with self._changed:
            self._default = answer

    def kill(
        self,
        tenant: str,
        duration_s: Union[float, str] = 60,
        *,
        token_form: str = "o:{tenant}:all",
        this_request_only: bool = False,
        duration_header: str = "kill-duration",
    ) -> None:
        """Put kill headers on the next answer to a request holding *tenant*'s key.

        :param tenant: the tenant id (a full key is cut to its tenant).
        :param duration_s: kill window in seconds; a string is sent verbatim.
        :param token_form: the ``kill-tokens`` entry; ``{tenant}`` and ``{key}``
            (the full key from the request) are filled in. The forms clients
            read: ``"o:{tenant}:all"``, ``"{tenant}"``, ``"{key}"``, ``"{key}:all"``.
        :param this_request_only: send ``kill-duration: this-request-only``.
        :param duration_header: ``kill-duration`` or ``kill-duration-seconds``.
        :raises ValueError: if *token_form* has other placeholders.
        """
        try:
            token_form.format(tenant="t", key="k")
        except (KeyError, IndexError, ValueError) as exc:
            problem = f"token_form {token_form!r} is not usable: {exc}"
            raise ValueError(problem) from None
        if this_request_only:
            duration = "this-request-only"
        elif isinstance(duration_s, str):
            duration = duration_s
        elif float(duration_s).is_integer():
            duration = str(int(duration_s))
        else:
            duration = repr(float(duration_s))
        kill = _Kill(tenant_of(tenant) or tenant, duration, token_form, duration_header)
        with self._changed:
            self._kills.append(kill)

    def _take_kills(self, tenants: Dict[str, str]) -> _HeaderPairs:
        """Remove and render the pending kills for *tenants* (caller holds the lock).

        Kills with another duration than the first match wait for a later answer,
        since one answer carries one duration.
        """
        matching = [kill for kill in self._kills if kill.tenant in tenants]
        if not matching:
            return []
        first = matching[0]
        chosen = [
            kill
            for kill in matching
            if (kill.duration, kill.duration_header)
            == (first.duration, first.duration_header)
        ]
        for kill in chosen:
            self._kills.remove(kill)
        tokens = ",".join(
            kill.token_form.format(tenant=kill.tenant, key=tenants[kill.tenant])
            for kill in chosen
        )
        return [("kill-tokens", tokens), (first.duration_header, first.duration)]

    def _exchange(self, incoming: _Incoming) -> _Reply:
        """Judge, answer and record one request; return how to answer it."""
        exam = _examine(incoming)
        asks_delta = _USE_COLLECTOR_DELTA in (
            incoming.headers.get("time-delta-to-apply-millis"),
            incoming.query.get("time-delta-to-apply-millis"),
        )
        with self._changed:
            answer = self._script.popleft() if self._script else self._default
            extra: _HeaderPairs = []
            if asks_delta and self._time_delta_millis is not None:
                extra.append(("time-delta-millis", str(self._time_delta_millis)))
            if answer is None or not (answer.reset or answer.hang):
                extra += self._take_kills(exam.tenants)
        if answer is None:
            reply = _verdict_reply(exam, extra)
        else:
            reply = _scripted_reply(exam, answer, extra)
        self._record(incoming, exam, reply, scripted=answer is not None)
        return reply

    def _record(
        self, incoming: _Incoming, exam: _Examination, reply: _Reply, scripted: bool
    ) -> None:
        request = ReceivedRequest(
            method=incoming.method,
            path=incoming.path,
            query=incoming.query,
            headers=incoming.headers,
            body=incoming.raw,
            text=exam.text,
            events=[value for value in exam.values if isinstance(value, dict)],
            status=reply.status,
            answer_headers=Headers(reply.headers),
            answer_body=reply.body,
            problem=exam.verdict.problem,
            scripted=scripted,
            received_at=incoming.received_at,
        )
        with self._changed:
            self._requests.append(request)
            self._events.extend(reply.accepted)
            self._rejected += reply.rejected
            self._changed.notify_all()
        callback = self.on_event
        if callback is not None:
            for event in reply.accepted:
                try:
                    callback(event)
                except Exception:
                    _log.exception("the on_event callback failed")
