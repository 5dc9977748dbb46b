"""What the collector tells a client to do: kill windows, Retry-After, clock skew.

These are small state holders read and written by the sending thread. Every time
decision reads :func:`time.time` at call time, so a frozen test clock
(``freezegun``) controls kill windows and Retry-After gates.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from typing import Callable, Mapping, Optional, Union

log = logging.getLogger(__name__)

# Deadlines that bound how long the application waits in flush() and close()
# use the real monotonic clock: a frozen test clock must not stretch them.
# (Kept in a dict so that freezegun, which swaps module-level references to the
# time functions, leaves this one alone.)
_REAL = {"monotonic": time.monotonic}


def real_monotonic() -> float:
    """The real monotonic clock, whatever a test has frozen."""
    return _REAL["monotonic"]()


#: A kill order that only concerns the request it answered.
THIS_REQUEST_ONLY = "this-request-only"

#: The C++ SDK clamps kill durations to about a century; a year is plenty for a
#: single process and keeps a malformed header from silencing a tenant forever.
MAX_KILL_DURATION_S = 365 * 24 * 3600.0
#: A longer Retry-After would only delay delivery past any batch's usefulness;
#: the batch waits in the cache instead.
MAX_RETRY_AFTER_S = 600.0

#: How often a window stored by other processes is read again.
_RELOAD_S = 1.0

_DIGITS = re.compile(r"\d+(\.\d+)?\Z")


def kill_order(
    headers: Mapping[str, str], instrumentation_key: str, tenant: str
) -> Union[float, str, None]:
    """Return the kill order that *headers* give our tenant.

    :returns: a duration in seconds (> 0), :data:`THIS_REQUEST_ONLY`, or None
        when the answer orders nothing for this tenant.
    """
    tokens = headers.get("kill-tokens")
    if not tokens:
        return None
    if not any(
        _token_matches(t, instrumentation_key, tenant) for t in tokens.split(",")
    ):
        return None
    raw = headers.get("kill-duration") or headers.get("kill-duration-seconds")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.lower() == THIS_REQUEST_ONLY:
        return THIS_REQUEST_ONLY
    if not _DIGITS.match(raw):
        return None
    seconds = float(raw)
    if seconds <= 0:
        return None
    return min(seconds, MAX_KILL_DURATION_S)


def _token_matches(token: str, instrumentation_key: str, tenant: str) -> bool:
    # Microsoft's clients disagree on the token form (full key, <full key>:all,
    # o:<tenant>[:suffix]), so every form is matched after its suffix is removed.
    token = token.strip().lower()
    if token.startswith("o:"):
        token = token[2:]
    name = token.split(":", 1)[0]
    return name in (tenant.lower(), instrumentation_key.lower())


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """Parse a ``Retry-After`` value (seconds or an HTTP date) into a delay.

    Unparseable values are ignored; the delay is capped at
    :data:`MAX_RETRY_AFTER_S`.
    """
    if not value:
        return None
    value = value.strip()
    if _DIGITS.match(value):
        delay = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        delay = when.timestamp() - time.time()
    return min(max(delay, 0.0), MAX_RETRY_AFTER_S)


class KillWindow:
    """The end of the current kill window of one tenant, optionally persisted.

    :param load: reads a window stored by any process (0 when none).
    :param store: persists a new window so other processes honour it too.
    """

    def __init__(
        self,
        load: Optional[Callable[[], float]] = None,
        store: Optional[Callable[[float], None]] = None,
    ) -> None:
        self._until = 0.0
        self._load = load
        self._store = store
        self._next_load = 0.0

    def attach(self, load: Callable[[], float], store: Callable[[float], None]) -> None:
        self._load = load
        self._store = store
        self._next_load = 0.0

    def until(self) -> float:
        if self._load is not None and time.monotonic() >= self._next_load:
            # Another process's order is seen within a second; reading the
            # stored window for every batch would cost a file read each.
            self._next_load = time.monotonic() + _RELOAD_S
            try:
                self._until = max(self._until, self._load())
            except OSError:
                pass
        return self._until

    def active(self) -> bool:
        return time.time() < self.until()

    def open(self, seconds: float) -> float:
        until = time.time() + seconds
        self._until = max(self._until, until)
        if self._store is not None:
            try:
                self._store(self._until)
            except OSError as exc:
                log.debug("could not persist the kill window: %s", exc)
        return self._until


class RetryGate:
    """``Retry-After``: no request to the endpoint before a point in time."""

    def __init__(self) -> None:
        self._not_before = 0.0
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Seconds left before the next request may be made."""
        return max(0.0, self._not_before - time.time())

    def push(self, seconds: float) -> None:
        with self._lock:
            self._not_before = max(self._not_before, time.time() + seconds)


class ClockSkew:
    """The 1DS clock-skew handshake (PROTOCOL section 5).

    The first request asks the collector for its delta; its answer decides what
    every later request carries, or that none carries the header at all.
    """

    ASK = "use-collector-delta"

    def __init__(self) -> None:
        self._value: Optional[str] = self.ASK

    def header(self) -> Optional[str]:
        return self._value

    def observe(self, headers: Mapping[str, str]) -> None:
        if self._value != self.ASK:
            return
        delta = headers.get("time-delta-millis")
        if delta is not None and re.fullmatch(r"-?\d+", delta.strip()):
            self._value = delta.strip()
        else:
            self._value = None
