"""POST batches to the collector, read its answer, and the one retry policy.

:class:`Transport` makes exactly one request and turns whatever happens into an
:class:`Outcome`; it never raises. :func:`deliver` wraps it in the package's
only retry loop, built with ``tenacity``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Union,
)

import requests
import requests.adapters
import tenacity
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict

from . import _directives, _schema
from ._compress import compress_lines
from ._directives import ClockSkew, KillWindow, RetryGate, real_monotonic
from ._stats import Counters
from ._version import __version__

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
REJECTED = "rejected"
TRANSIENT = "transient"
SPLIT = "split"
KILLED = "killed"

SDK_VERSION = f"{_schema.SDK_NAME}-{__version__}"
#: 1DS C++ SDK's backoff: 3 s doubling to 300 s, with jitter.
BACKOFF_INITIAL_S = 3.0
BACKOFF_MAX_S = 300.0
#: The C++ SDK retries a record 5 times after its first attempt.
DEFAULT_MAX_ATTEMPTS = 6
#: Only the first bytes of an answer are read: the collector's bodies are tiny,
#: and an unbounded read of a hostile or broken answer is a memory hazard.
MAX_ANSWER_BYTES = 65_536
_EXCERPT_BYTES = 200
_TRANSIENT_STATUSES = frozenset({408, 429}) | (frozenset(range(500, 600)) - {501, 505})
COMPRESSIONS = ("deflate", "gzip", "none")
#: What a request can end in besides an answer. The answer body is read from
#: urllib3 directly, whose errors (an undecodable or truncated body) requests
#: does not translate.
_REQUEST_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,
)


class Outcome:
    """What became of one request, or of one attempt that made no request."""

    __slots__ = (
        "accepted",
        "answer",
        "connection_error",
        "deferred",
        "detail",
        "kill",
        "kind",
        "rejected",
        "retry_after",
        "status",
    )

    def __init__(
        self,
        kind: str,
        *,
        status: Optional[int] = None,
        accepted: int = 0,
        rejected: Optional[Dict[str, int]] = None,
        retry_after: Optional[float] = None,
        kill: Union[float, str, None] = None,
        detail: str = "",
        connection_error: bool = False,
        deferred: bool = False,
    ) -> None:
        self.kind = kind
        self.status = status
        self.accepted = accepted
        self.rejected = rejected or {}
        self.retry_after = retry_after
        self.kill = kill
        self.detail = detail
        self.connection_error = connection_error
        self.deferred = deferred
        #: The start of the collector's answer body, for diagnostics.
        self.answer = ""

    def __repr__(self) -> str:
        return (
            f"Outcome({self.kind}, status={self.status}, accepted={self.accepted},"
            f" rejected={self.rejected})"
        )


def classify(
    status: int, headers: Mapping[str, str], body: bytes, count: int
) -> Outcome:
    """Classify the collector's answer to a request of *count* events."""
    answer = _parse_answer(body)
    efi = answer.get("efi") if isinstance(answer.get("efi"), dict) else {}
    assert isinstance(efi, dict)
    retry_after = _directives.retry_after_seconds(headers.get("Retry-After"))
    for reason, where in efi.items():
        # "all" rejects the whole request whatever the status says.
        if where == "all":
            return Outcome(REJECTED, status=status, rejected={str(reason): count})
    if 200 <= status < 300:
        rejected = _rejected_by_index(efi, count)
        rej = answer.get("rej")
        if not rejected and isinstance(rej, int) and rej > 0:
            rejected = {"Unspecified": min(rej, count)}
        total = sum(rejected.values())
        return Outcome(
            ACCEPTED, status=status, accepted=count - total, rejected=rejected
        )
    if status == 413:
        return Outcome(SPLIT, status=status)
    if status in _TRANSIENT_STATUSES:
        return Outcome(TRANSIENT, status=status, retry_after=retry_after)
    reason = next(iter(efi), None) or f"HTTP{status}"
    return Outcome(REJECTED, status=status, rejected={str(reason): count})


def _parse_answer(body: bytes) -> Dict[str, object]:
    if not body:
        return {}
    try:
        answer = json.loads(body)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _rejected_by_index(efi: Mapping[str, object], count: int) -> Dict[str, int]:
    seen: set[int] = set()
    rejected: Dict[str, int] = {}
    for reason, where in efi.items():
        if not isinstance(where, list):
            continue
        indexes = {
            i for i in where if isinstance(i, int) and 0 <= i < count and i not in seen
        }
        if indexes:
            seen |= indexes
            rejected[str(reason)] = len(indexes)
    return rejected


class Transport:
    """One HTTP request per call to :meth:`post`, to one endpoint, for one key."""

    def __init__(
        self,
        *,
        endpoint: str,
        instrumentation_key: str,
        tenant: str,
        compression: str = "deflate",
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 10.0,
        kill_window: KillWindow,
        gate: RetryGate,
        counters: Counters,
    ) -> None:
        self.endpoint = endpoint
        self.tenant = tenant
        self._key = instrumentation_key
        self._compression = compression
        self._connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.kill_window = kill_window
        self.gate = gate
        self.skew = ClockSkew()
        self._counters = counters
        self._session: Optional[requests.Session] = None
        self._template: Optional[requests.PreparedRequest] = None
        #: When the request in progress started (real monotonic), or None.
        self.busy_since: Optional[float] = None
        #: How long the last request took, answer included (seconds).
        self.last_request_s = 0.0

    def close(self) -> None:
        self._template = None
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def post(
        self, lines: Sequence[bytes], *, timeout_s: Optional[float] = None
    ) -> Outcome:
        """Send *lines* (serialized envelopes) as one request."""
        headers = {"Upload-Time": str(int(time.time() * 1000))}
        skew = self.skew.header()
        if skew is not None:
            headers["time-delta-to-apply-millis"] = skew
        read_timeout = self.request_timeout_s
        if timeout_s is not None:
            read_timeout = max(0.05, min(read_timeout, timeout_s))
        connect_timeout = min(self._connect_timeout_s, read_timeout)
        if self._session is None:
            self._session = self._new_session()
        session = self._session
        started = self.busy_since = real_monotonic()
        try:
            body = compress_lines(lines, self._compression)
            request = self._prepare(session, body, headers)
            # Straight to the adapter: a Session would merge cookies, hooks and
            # settings that never change for this endpoint, on every request.
            response = session.get_adapter(self.endpoint).send(
                request,
                stream=True,
                timeout=(connect_timeout, read_timeout),
                verify=True if session.verify is None else session.verify,
                proxies=session.proxies,
            )
            try:
                answer = _read_answer(response, read_timeout)
            except _REQUEST_ERRORS as exc:
                # The status line came: the collector has decided. Sending the
                # batch again because its answer was garbled or cut short
                # would deliver an accepted batch twice.
                log.debug(
                    "answer %s from %s unreadable: %s",
                    response.status_code,
                    self.endpoint,
                    self._mask(str(exc)),
                )
                answer = b""
            finally:
                response.close()
        except _REQUEST_ERRORS as exc:
            detail = self._mask(str(exc))
            log.debug("request to %s failed: %s", self.endpoint, detail)
            return Outcome(TRANSIENT, connection_error=True, detail=detail)
        finally:
            self.last_request_s = real_monotonic() - started
            self.busy_since = None
        return self._read(response.status_code, response.headers, answer, len(lines))

    def _prepare(
        self, session: requests.Session, body: bytes, headers: Mapping[str, str]
    ) -> requests.PreparedRequest:
        if self._template is None:
            fixed = {
                "Content-Type": _schema.CONTENT_TYPE,
                "x-apikey": self._key,
                "Client-Id": "NO_AUTH",
                "sdk-version": SDK_VERSION,
            }
            if self._compression != "none":
                fixed["Content-Encoding"] = self._compression
            request = requests.Request("POST", self.endpoint, headers=fixed)
            self._template = session.prepare_request(request)
        prepared = self._template.copy()
        prepared.headers.update(headers)
        prepared.prepare_body(body, None)
        return prepared

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # requests would read the proxy variables and ~/.netrc again for every
        # request; the environment is read once per session instead.
        session.proxies = dict(requests.utils.get_environ_proxies(self.endpoint))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get(
            "CURL_CA_BUNDLE"
        )
        if bundle:
            session.verify = bundle
        session.trust_env = False
        for prefix in ("https://", "http://"):
            session.mount(prefix, _Adapter())
        return session

    def _mask(self, text: str) -> str:
        """Hide the key should the collector quote it back: it is a credential."""
        if self._key and self._key in text:
            return text.replace(self._key, f"{self.tenant}-***")
        return text

    def _read(
        self, status: int, headers: Mapping[str, str], answer: bytes, count: int
    ) -> Outcome:
        self.skew.observe(headers)
        outcome = classify(status, headers, answer, count)
        outcome.kill = _directives.kill_order(headers, self._key, self.tenant)
        error = self._mask(headers.get("Collector-Error", ""))
        text = self._mask(answer.decode("utf-8", "replace"))
        outcome.detail = error
        outcome.answer = text[:4096]
        if outcome.kind != ACCEPTED or outcome.rejected:
            excerpt = text[:_EXCERPT_BYTES]
            log.debug(
                "collector answered %s (Collector-Error: %r) for tenant %s: %s",
                status,
                error,
                self.tenant,
                excerpt,
            )
        return outcome


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with answers that keep no cookies.

    Requests go to the adapter directly, not through the session, so no
    cookie of an answer is ever sent back; copying them into every response
    cost a tenth of a request's CPU.
    """

    def build_response(
        self, req: requests.PreparedRequest, resp: Any
    ) -> requests.Response:
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = str(req.url)
        response.request = req
        response.connection = self
        return response


def _read_answer(response: requests.Response, timeout_s: float) -> bytes:
    """Read the start of an answer body within *timeout_s* in all.

    The read timeout bounds each wait for data; a collector that trickles its
    answer a byte at a time would pass every one of them.
    """
    deadline = real_monotonic() + timeout_s
    # read1() returns what one receive brings (urllib3 2); read() would wait
    # for the whole chunk, however slowly it came.
    read = getattr(response.raw, "read1", None) or response.raw.read
    chunks: List[bytes] = []
    size = 0
    while size < MAX_ANSWER_BYTES:
        chunk = read(min(8192, MAX_ANSWER_BYTES - size), decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if real_monotonic() > deadline:
            raise requests.Timeout(f"the answer took longer than {timeout_s:g} s")
    return b"".join(chunks)


class Interrupted(Exception):
    """A retry wait was cut short by flush, close or fork."""


class _Attempts:
    """Counts the attempts that count: answers from a server, not lost connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counted = 0


def deliver(
    transport: Transport,
    lines: Sequence[bytes],
    *,
    sleep: Callable[[float], None],
    stop_event: threading.Event,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout_s: Optional[Callable[[], Optional[float]]] = None,
    on_retry: Optional[Callable[[Outcome, float], None]] = None,
) -> Outcome:
    """Send *lines*, retrying transient failures; return the final outcome.

    :param sleep: waits between attempts; raises :class:`Interrupted` when the
        wait is cut short, which ends the retries with the last transient outcome.
    :param stop_event: once set, no further attempt is started.
    :param timeout_s: returns the time left for a request (shutdown deadline).
    """
    attempts = _Attempts(max_attempts)

    def attempt() -> Outcome:
        if transport.kill_window.active():
            return Outcome(KILLED)
        pause = transport.gate.delay()
        if pause > 0:
            return Outcome(TRANSIENT, deferred=True, retry_after=pause)
        outcome = transport.post(lines, timeout_s=timeout_s() if timeout_s else None)
        if outcome.kind == TRANSIENT and not outcome.connection_error:
            attempts.counted += 1
        if outcome.retry_after:
            transport.gate.push(outcome.retry_after)
        return outcome

    first = attempt()
    if not _needs_retry(first):
        return first
    # Only a batch that needs another attempt pays for the retry machinery;
    # the loop starts by taking the attempt already made as its first.
    made = [first]

    def replay_then_attempt() -> Outcome:
        return made.pop() if made else attempt()

    def should_stop(state: tenacity.RetryCallState) -> bool:
        return stop_event.is_set() or attempts.counted >= attempts.limit

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action:
            on_retry(state.outcome.result(), state.next_action.sleep)

    def give_up(state: tenacity.RetryCallState) -> Outcome:
        last = state.outcome.result() if state.outcome is not None else None
        outcome = last if isinstance(last, Outcome) else Outcome(TRANSIENT)
        # Stopped from outside: the batch was not given its chances, so it is
        # kept (on disk) rather than counted as exhausted.
        exhausted = attempts.counted >= attempts.limit
        outcome.deferred = outcome.deferred or (stop_event.is_set() and not exhausted)
        return outcome

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(_needs_retry),
        stop=should_stop,
        wait=_wait,
        sleep=sleep,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
        reraise=False,
    )
    try:
        result: Outcome = retrying(replay_then_attempt)
    except Interrupted:
        return Outcome(TRANSIENT, deferred=True, detail="interrupted")
    return result


def _needs_retry(outcome: Outcome) -> bool:
    return outcome.kind == TRANSIENT and not outcome.kill


_backoff = tenacity.wait_exponential(
    multiplier=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S
) + tenacity.wait_random(0, BACKOFF_INITIAL_S)


def _wait(state: tenacity.RetryCallState) -> float:
    outcome = state.outcome.result() if state.outcome is not None else None
    asked = outcome.retry_after if isinstance(outcome, Outcome) else None
    if isinstance(outcome, Outcome) and outcome.deferred:
        # Waiting for a gate another batch opened is not a failure of this batch.
        return asked or 0.0
    backoff = float(_backoff(state))
    return max(backoff, asked or 0.0)


def split(lines: Sequence[bytes]) -> List[Sequence[bytes]]:
    middle = len(lines) // 2
    return [lines[:middle], lines[middle:]]


def request_sized(
    lines: Sequence[bytes],
    max_records: int = _schema.MAX_EVENTS_PER_REQUEST,
    max_bytes: int = _schema.MAX_REQUEST_BYTES,
) -> List[Sequence[bytes]]:
    """Cut *lines* into consecutive parts that each fit one request.

    :param max_records: events per part at most.
    :param max_bytes: bytes per part at most, newlines included; a longer line
        makes a part of its own.
    """
    parts: List[Sequence[bytes]] = []
    start = size = 0
    for index, line in enumerate(lines):
        size += len(line) + 1
        if index > start and (index - start >= max_records or size > max_bytes):
            parts.append(lines[start:index])
            start, size = index, len(line) + 1
    if start < len(lines):
        parts.append(lines[start:])
    return parts


class StoredBatch(Protocol):
    """A batch claimed from the disk cache (:class:`~._cache.Claim`)."""

    @property
    def lines(self) -> Sequence[bytes]: ...

    def divide(self, parts: Sequence[Sequence[bytes]]) -> None: ...


def refuses_key(outcome: Outcome) -> bool:
    """Whether *outcome* refuses the key that sent the batch, not its records.

    A stored batch may have been written by any process of the tenant; one
    process with a mistyped key must not throw away what the others stored.
    The collector says so with 401 or 403, or with "Invalid Tenant Token"
    (400 as well): the records' ``iKey`` is the tenant's, the same in every
    process, so it is the key that is wrong.
    """
    if outcome.kind != REJECTED:
        return False
    return (
        outcome.status in (401, 403)
        or "InvalidTenantToken" in outcome.rejected
        or "invalid tenant token" in outcome.detail.lower()
    )


def deliver_stored(
    transport: Transport,
    batch: StoredBatch,
    *,
    sleep: Callable[[float], None],
    stop_event: threading.Event,
    timeout_s: Optional[Callable[[], Optional[float]]] = None,
) -> Optional[Outcome]:
    """Send a batch claimed from the disk cache, as :func:`deliver` does.

    A batch larger than one request (the cache is shared and outlives
    processes: what it holds is not trusted to fit), or one of several events
    answered 413, is stored again in parts in its place instead: then None is
    returned. Otherwise the outcome, by which the caller settles the claim.
    """
    parts = request_sized(batch.lines)
    if len(parts) > 1:
        batch.divide(parts)
        return None
    outcome = deliver(
        transport,
        batch.lines,
        sleep=sleep,
        stop_event=stop_event,
        timeout_s=timeout_s,
    )
    if outcome.kind == SPLIT and len(batch.lines) > 1 and outcome.kill is None:
        batch.divide(split(batch.lines))
        return None
    return outcome
