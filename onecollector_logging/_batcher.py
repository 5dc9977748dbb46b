"""The background pipeline: queue, batching, sending, spilling, flush and close.

Two daemon threads per handler, started with the first record:

* the *batcher* takes snapshots from the queue, serializes them and forms
  batches (by count, bytes and a flush interval). It hands each batch to the
  sender, or writes it to the disk cache when the sender is stuck behind a slow
  or failing collector, so that memory stays bounded during an outage;
* the *sender* posts batches through :func:`._transport.deliver` (the one retry
  loop), settles each outcome, and drains the disk cache when the collector is
  healthy.

The application's threads only append to a deque; they never wait for either.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple, Union

from . import _schema
from ._directives import real_monotonic
from ._stats import Counters
from ._transport import (
    ACCEPTED,
    DEFAULT_MAX_ATTEMPTS,
    KILLED,
    REJECTED,
    SPLIT,
    TRANSIENT,
    Interrupted,
    Outcome,
    Transport,
    deliver,
    deliver_stored,
    refuses_key,
    request_sized,
    split,
)

log = logging.getLogger(__name__)

#: Set on threads while they do the handler's own work: records they produce
#: (from urllib3, requests, filelock, this package) are never sent.
class _OwnActivity(threading.local):
    # A class default: emit() reads this for every record, and a missing
    # thread-local attribute costs an exception inside getattr().
    active = False


own_activity = _OwnActivity()

#: The package's own loggers (its modules' ``logging.getLogger(__name__)``).
_PACKAGE = __name__.partition(".")[0]


def is_own_logger(name: str) -> bool:
    """Whether records of the logger *name* are the package's own diagnostics,
    which the handler never sends: sending them would feed it with itself."""
    return name == _PACKAGE or name.startswith(_PACKAGE + ".")


#: The sender never holds more than this many batches ahead of the network;
#: everything else waits in the queue or goes to disk.
_HANDOFF_BATCHES = 2
#: Slice of a backoff wait after which the clock is read again, so that a test
#: moving a frozen clock ends the wait promptly.
_WAIT_SLICE_S = 0.2
#: How long the batcher waits for the sender before looking at the queue again;
#: a burst fills the queue by a few hundred records in that time.
_HANDOFF_WAIT_S = 0.005
#: A request that has taken this long is slow, not just waiting for the
#: interpreter during a burst: the batcher then spills instead of waiting.
_SLOW_S = 0.25
#: Past three quarters of the queue, the batcher waits for the sender only if
#: the collector accepted a batch this recently: a sender held back by a burst
#: still gets one through every few dozen milliseconds.
_PACE_S = 0.1
#: How long past its request's timeout a batch stored at close, while its
#: request went on, is held from this process's claims (the sender ends the
#: hold when the request ends; this is for a sender that never gets there).
_HOLD_MARGIN_S = 5.0
#: A close sends a cached batch only with at least this much time left, and
#: twice what the last request took.
_CLOSE_DRAIN_MIN_S = 0.1
#: After an unexpected failure, the sender starts again this much later.
_RECOVER_S = 0.5
#: How long a close that took over the pipeline's batches still waits for the
#: batcher, which may have taken records from the queue that no one else can
#: see: it writes them to the disk cache itself, in a moment.
_BATCHER_GRACE_S = 0.5
#: How often an idle sender looks for batches other processes left on disk.
_IDLE_DRAIN_CHECK_S = 30.0
#: After a failed drain, the next one waits this long unless a live batch
#: succeeds first (which proves the collector is back).
_FAILED_DRAIN_PAUSE_S = 30.0


_ONE_ATTEMPT = threading.Event()
_ONE_ATTEMPT.set()


class Lines(List[bytes]):
    """A batch of serialized envelopes, with the creation time of its first
    record (the disk cache orders batches by it, so eviction takes the oldest)."""

    __slots__ = ("created",)

    def __init__(self, lines: Sequence[bytes] = (), created: float = 0.0) -> None:
        super().__init__(lines)
        self.created = created


class _Written(bytes):
    """The line of a record that did not fit the batch it was written for, put
    back at the head of the queue: the next batch starts with it as it is,
    rather than writing (and counting) the record again."""

    created = 0.0


def _created(lines: Sequence[bytes]) -> Optional[float]:
    created = getattr(lines, "created", 0.0)
    return created or None


#: A batch a close has taken over but not stored yet.
_NOT_YET: Any = object()


def _pop_for(
    pairs: List[Tuple[List[bytes], Any]], lines: Sequence[bytes], missing: Any = None
) -> Any:
    """Remove the pair of the batch *lines* (by identity) and return its value."""
    for index, (batch, value) in enumerate(pairs):
        if batch is lines:
            del pairs[index]
            return value
    return missing


class _FlushMarker:
    __slots__ = ("generation",)

    def __init__(self, generation: int) -> None:
        self.generation = generation


_Item = Union[List[bytes], _FlushMarker]


class Pipeline:
    """Queue, threads and delivery for one handler.

    :param serialize: turns a snapshot into one envelope line (batcher thread).
    :param open_cache: opens the disk cache (or returns None); called once, on a
        pipeline thread, never on the application's (but by a close that must
        not wait for the pipeline threads).
    :param on_start: called on the application's thread once the pipeline's
        threads have started.
    """

    def __init__(
        self,
        *,
        serialize: Callable[[Any], bytes],
        transport: Transport,
        open_cache: Callable[[], Any],
        counters: Counters,
        on_start: Callable[[], None] = lambda: None,
        max_queue_records: int,
        max_batch_records: int = _schema.MAX_EVENTS_PER_REQUEST,
        max_batch_bytes: int = _schema.MAX_REQUEST_BYTES,
        flush_interval_s: float = 1.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        drain_interval_s: float = 0.02,
        name: str = "onecollector",
    ) -> None:
        self._serialize = serialize
        self.transport = transport
        self._open_cache = open_cache
        self._on_start = on_start
        self._counters = counters
        self._max_queue = max_queue_records
        self._yield_mark = max(1, max_queue_records * 3 // 4)
        #: Queued records beyond which the batcher spills what the sender
        #: cannot take, however fast the sender is going.
        self._spill_mark = max(self._yield_mark, max_queue_records * 9 // 10)
        #: Queued records that wake the batcher before the interval is over.
        self._wake_mark = max(1, min(max_batch_records, max_queue_records // 2))
        #: Records already queued when a put() reaches the wake mark.
        self._wake_before = self._wake_mark - 1
        self._max_batch_records = max_batch_records
        self._max_batch_bytes = max_batch_bytes
        self._flush_interval_s = flush_interval_s
        self._max_attempts = max_attempts
        self._drain_interval_s = drain_interval_s
        self._name = name
        self._reset_state()

    def _reset_state(self) -> None:
        self._queue: Deque[Any] = collections.deque()
        self._ready: Deque[_Item] = collections.deque()
        self._held: Deque[List[bytes]] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._interrupt = threading.Event()
        self._closing = threading.Event()
        #: Set while the sender waits between attempts: the batcher then spills.
        self.backing_off = threading.Event()
        self._threads: Optional[List[threading.Thread]] = None
        #: Whether the threads run and close() has not stored what is left.
        self._running = False
        #: Set by put() when it sets _wake, cleared by the batcher with it: a
        #: burst checks a plain attribute rather than the Event for every record.
        self._woken = False
        self._batcher_done = False
        self._flush_requested = 0
        self._flushed = 0
        #: Whether batches were left in memory (no disk cache) at the last flush.
        self._held_at_flush = False
        #: Batches the sender has taken and not yet settled: what close()
        #: stores when the sender is stuck in a request.
        self._owned: List[List[bytes]] = []
        #: Those batches once close() has stored them, with what it did (see
        #: _take_back), and the outcomes of requests that ended first.
        self._stored_in_flight: List[Tuple[List[bytes], Optional[str]]] = []
        self._late_outcomes: List[Tuple[List[bytes], Outcome]] = []
        #: The batch the batcher holds while it waits for the sender, and its
        #: number of records.
        self._in_hand: Optional[List[bytes]] = None
        self._holding = 0
        self._handed_over = False
        self._cache: Any = None
        self._cache_opened = False
        #: Held by the thread that opens the cache.
        self._opening = threading.Lock()
        #: Set by a close that must not wait for the pipeline threads.
        self._hurry = False
        self._deadline = 0.0
        #: The dropped count when close began.
        self._dropped_before_close = 0
        #: When the sender may next look at the disk cache (real monotonic).
        self._next_drain_at = 0.0
        #: When the collector last accepted a batch (real monotonic).
        self._accepted_at = 0.0
        #: Whether the disk cache may hold batches: unknown at start (another
        #: process may have left some), known empty after a claim found none.
        self._cache_may_hold = True
        self._giving_up = False
        self._loss_streak = False
        self._queue_full_reported = False
        self._key_refusal_reported = False
        #: Records this pipeline wrote to the disk cache and has not sent since.
        self._spilled = 0
        #: Set once close has stored what was left: a record put later (by a
        #: thread that passed the handler's closed check just before) is
        #: counted rather than left in a queue nobody reads.
        self._closed_out = False
        self._late_reported = False

    # -- application side -------------------------------------------------

    def put(self, snapshot: Any) -> None:
        """Queue *snapshot*; called from ``emit`` on any thread. Never blocks."""
        queue = self._queue
        queued = len(queue)
        if queued >= self._yield_mark:
            self._put_crowded(snapshot)
            return
        queue.append(snapshot)
        if not self._running:
            self._not_running()
        elif queued >= self._wake_before and not self._woken:
            self._woken = True
            self._wake.set()

    def _put_crowded(self, snapshot: Any) -> None:
        queue = self._queue
        if self._cache is not None or not self._cache_opened:
            # The background threads are behind and can spill to disk: give
            # them the interpreter for a moment rather than drop records. No
            # lock and no I/O is waited on here.
            time.sleep(0)
        if len(queue) >= self._max_queue:
            self._counters.add("dropped.queue_full")
            if not self._queue_full_reported:
                self._queue_full_reported = True
                log.warning(
                    "%s: queue full (%d records): the background threads cannot"
                    " keep up and records are being dropped",
                    self._name,
                    self._max_queue,
                )
            return
        queue.append(snapshot)
        if not self._running:
            self._not_running()
        elif not self._woken:
            self._woken = True
            self._wake.set()

    def _not_running(self) -> None:
        # Checked after the append: a record put while close() stores what is
        # left is either seen by it or dropped here, never left behind.
        if self._closed_out:
            self._drop_late()
        elif self._threads is None:
            self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._threads is not None or self._closing.is_set():
                return
            threads = [
                threading.Thread(
                    target=self._run_batcher, name=f"{self._name}-batcher", daemon=True
                ),
                threading.Thread(
                    target=self._run_sender, name=f"{self._name}-sender", daemon=True
                ),
            ]
            try:
                for thread in threads:
                    thread.start()
            except RuntimeError:
                # Interpreter shutdown refuses new threads; close() will put the
                # queued records in the cache instead.
                log.debug("%s: could not start the pipeline threads", self._name)
                self._threads = []
                return
            self._threads = threads
            self._running = True
        self._on_start()

    @property
    def closed_out(self) -> bool:
        """Whether a close has stored what was left: a record put now is
        counted as ``dropped.after_close``."""
        return self._closed_out

    def queued(self) -> int:
        """Records in memory: queued, batched for the sender, or being sent."""
        with self._cond:
            batches = [b for b in self._ready if isinstance(b, list)]
            held = sum(map(len, batches)) + sum(map(len, self._held))
            held += sum(map(len, self._owned)) + self._holding
        return len(self._queue) + held

    def flush(self, timeout_s: float) -> bool:
        """Send or store everything queued so far; wait at most *timeout_s*.

        A retry wait in progress is cut short: the batch goes to the disk cache.

        :returns: whether everything was sent or stored in time; without a disk
            cache, a batch whose retry was cut short stays in memory, and the
            flush is not complete.
        """
        threads = self._threads
        if not threads or self._closing.is_set():
            return not self._queue
        with self._cond:
            self._flush_requested += 1
            generation = self._flush_requested
        self._interrupt.set()
        self._wake.set()
        deadline = real_monotonic() + timeout_s
        with self._cond:
            self._cond.notify_all()
            while self._flushed < generation:
                remaining = deadline - real_monotonic()
                if remaining <= 0 or not any(t.is_alive() for t in threads):
                    return False
                self._cond.wait(remaining)
            return not self._held_at_flush

    def begin_close(self, timeout_s: float, *, hurry: bool = False) -> bool:
        """Give the threads *timeout_s* to stop; return at once.

        :meth:`end_close` then waits: pipelines that all begin before any ends
        close in the time of the slowest, not in the sum of their times.

        :param hurry: the threads may be blocked until this close is over:
            store what is left without waiting for any lock they may hold.
        :returns: False when the pipeline was already closing.
        """
        with self._start_lock:
            if self._closing.is_set():
                return False
            self._hurry = hurry
            self._deadline = real_monotonic() + timeout_s
            self._dropped_before_close = self._dropped_by_pipeline()
            self._closing.set()
        self._interrupt.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        return True

    def end_close(self) -> None:
        """Wait for the threads until the deadline that :meth:`begin_close` set;
        what is not sent by then goes to the cache."""
        deadline = self._deadline
        for thread in self._threads or []:
            thread.join(max(0.0, deadline - real_monotonic()))
        # Records put while the threads were finishing are still queued; a
        # sender that stopped unexpectedly may have left batches behind.
        if (
            any(t.is_alive() for t in self._threads or [])
            or self._queue
            or self._holds_batches()
        ):
            self._hand_over()
            if self._threads and not self._hurry:
                self._threads[0].join(_BATCHER_GRACE_S)  # the batcher
        if self._hurry and self._cache is not None and self._spilled:
            # What it wrote to disk while it ran goes to the next handler's
            # close too, this one having no time to send it.
            self._cache.hand_down(self._spilled)
            self._spilled = 0
        self._running = False
        self._closed_out = True
        self._drop_late()
        self.transport.close()
        self._report_close()

    def _report_close(self) -> None:
        # The streak rule logs the first loss only, and storing is not a loss
        # at all: at the exit of a short-lived program, one line says where
        # the records that did not reach the collector are. The cache is
        # counted as it stands, with what was stored before the close.
        dropped = self._dropped_by_pipeline() - self._dropped_before_close
        waiting = 0
        if self._cache_opened and self._cache is not None:
            try:
                waiting = int(self._cache.stats()["records"])
            except Exception:  # a diagnostic must not fail the close
                log.debug("%s: cannot count the disk cache", self._name, exc_info=True)
        where = []
        if waiting > 0:
            where.append(
                f"{waiting} record(s) of tenant {self.transport.tenant} wait in the"
                " disk cache, which the next handler of the tenant to start sends"
            )
        if dropped > 0:
            where.append(f"{dropped} record(s) were dropped (see stats())")
        if where:
            log.warning("%s: closed: %s", self._name, "; ".join(where))

    def _dropped_by_pipeline(self) -> int:
        # Records logged after the close are counted, and warned about, apart:
        # they were never the close's to deliver.
        counters = self._counters
        return counters.get("dropped") - counters.get("dropped.after_close")

    def _holds_batches(self) -> bool:
        with self._cond:
            return bool(
                self._owned
                or self._held
                or self._in_hand is not None
                or any(isinstance(item, list) for item in self._ready)
            )

    def _drop_late(self) -> None:
        late = 0
        while True:
            try:
                self._queue.popleft()
            except IndexError:
                break
            late += 1
        if not late:
            return
        self._counters.add("dropped.after_close", late)
        if not self._late_reported:
            self._late_reported = True
            log.warning(
                "%s: a record arrived while the handler was closing and was"
                " dropped (counted as dropped.after_close)",
                self._name,
            )

    def _hand_over(self) -> None:
        # The sender is stuck in a request that outlived the deadline: what it
        # holds, and what is still queued, goes to disk from this thread. Should
        # the request still succeed, that one batch may be delivered twice.
        own_activity.active = True
        try:
            self._store_leftovers()
        finally:
            own_activity.active = False

    def _store_leftovers(self) -> None:
        with self._cond:
            self._handed_over = True
            in_flight = list(self._owned)
            self._owned.clear()
            batches: List[Sequence[bytes]] = [
                b for b in self._ready if isinstance(b, list)
            ]
            batches.extend(self._held)
            if self._in_hand is not None:
                batches.append(self._in_hand)
                self._in_hand = None
                self._holding = 0
            self._ready.clear()
            self._held.clear()
        # Cut as the batcher cuts: a stored batch is read back whole, and the
        # spool reads none larger than a request.
        batches.extend(
            request_sized(
                self._serialize_all(), self._max_batch_records, self._max_batch_bytes
            )
        )
        for lines in in_flight:
            # Held from this process's own claims until the request ends: a
            # handler that replaces this one must not send the lines again.
            hold_s = self.transport.request_timeout_s + _HOLD_MARGIN_S
            name = self._store(lines, reason="shutdown", hold_s=hold_s)
            with self._cond:
                outcome = _pop_for(self._late_outcomes, lines)
                if outcome is None:
                    self._stored_in_flight.append((lines, name))
            if outcome is not None:
                self._take_back(lines, name, outcome)
        for batch in batches:
            self._store(batch, reason="shutdown")

    def _take_back(
        self, lines: Sequence[bytes], name: Optional[str], outcome: Outcome
    ) -> None:
        """*lines* were stored by a close while their request went on, as the
        batch *name* of the disk cache: if the collector accepted them after
        all, the stored copy is withdrawn, so that they are neither sent again
        nor counted as lost."""
        cache = self._cache
        if outcome.kind == ACCEPTED:
            if cache is None:  # counted as lost, there being no cache
                self._counters.add("dropped.shutdown", -len(lines))
            elif name is not None and cache.withdraw(name):
                self._counters.add("cached", -len(lines))
            else:
                # Refused by the cache, or claimed by another process since.
                self._obey_late_kill(outcome)
                return
            self._settle(lines, outcome)
            log.debug(
                "%s: %d record(s) stored at close were accepted after all",
                self._name,
                len(lines),
            )
            return
        if cache is not None and name is not None:
            cache.unhold(name)  # to be sent again, by whichever handler
        self._obey_late_kill(outcome)

    def _obey_late_kill(self, outcome: Outcome) -> None:
        # The stored copy is in the cache now: a kill order in the answer
        # drops it there, with whatever else the tenant has stored.
        if outcome.kill is not None:
            self._obey_kill(outcome.kill)

    def _serialize_all(self) -> List[bytes]:
        lines: List[bytes] = []
        while True:
            try:
                snapshot = self._queue.popleft()
            except IndexError:
                return lines
            line = self._serialize_one(snapshot)
            if line is not None:
                lines.append(line)

    # -- batcher thread ----------------------------------------------------

    def _run_batcher(self) -> None:
        own_activity.active = True
        try:
            self._batcher_loop()
        except Exception:
            log.exception("%s: batcher stopped unexpectedly", self._name)
        finally:
            with self._cond:
                self._batcher_done = True
                self._cond.notify_all()

    def _batcher_loop(self) -> None:
        while True:
            woken = self._wake.wait(self._flush_interval_s)
            self._wake.clear()
            self._woken = False
            with self._cond:
                generation = self._flush_requested
            # Woken by a full batch, only full batches go: the rest waits for
            # the interval, so that a burst is sent in few large requests.
            partial = not woken or generation > self._flushed
            while self._queue and (
                partial or self._closing.is_set() or len(self._queue) >= self._wake_mark
            ):
                batch = self._take_batch()
                if batch:
                    self._hand_to_sender(batch)
            with self._cond:
                if generation > self._flushed and not any(
                    isinstance(i, _FlushMarker) and i.generation >= generation
                    for i in self._ready
                ):
                    self._ready.append(_FlushMarker(generation))
                    self._cond.notify_all()
            if self._closing.is_set() and not self._queue:
                return

    def _take_batch(self) -> Lines:
        # Runs for every record: the loop keeps its names local.
        queue = self._queue
        first = queue[0]
        # A plain record (a tuple) holds its creation time second.
        created = first[1] if type(first) is tuple else getattr(first, "created", 0.0)
        lines = Lines(created=created)
        append, popleft, serialize = lines.append, queue.popleft, self._serialize
        room = self._max_batch_bytes
        size = 0
        for _ in range(min(len(queue), self._max_batch_records)):
            try:
                snapshot = popleft()
            except IndexError:
                break  # a close took the rest
            try:
                line = snapshot if type(snapshot) is _Written else serialize(snapshot)
            except Exception:
                self._unserializable()
                continue
            size += len(line) + 1
            if size > room and lines:
                written = _Written(line)
                written.created = (
                    snapshot[1]
                    if type(snapshot) is tuple
                    else getattr(snapshot, "created", 0.0)
                )
                queue.appendleft(written)  # the first of the next batch
                break
            append(line)
        return lines

    def _serialize_one(self, snapshot: Any) -> Optional[bytes]:
        if type(snapshot) is _Written:
            return snapshot
        try:
            return self._serialize(snapshot)
        except Exception:
            self._unserializable()
            return None

    def _unserializable(self) -> None:
        self._counters.add("dropped.unserializable")
        log.debug("%s: could not serialize a record", self._name, exc_info=True)

    def _hand_to_sender(self, batch: List[bytes]) -> None:
        with self._cond:
            self._holding = len(batch)
            # Visible to close(), which stores it if the sender is stuck.
            self._in_hand = batch
            while True:
                if self._in_hand is not batch:
                    return  # close() took it over
                pending = sum(isinstance(i, list) for i in self._ready)
                if (
                    pending < _HANDOFF_BATCHES
                    and not self.backing_off.is_set()
                    and not self._giving_up
                    and not self._handed_over
                ):
                    self._ready.append(batch)
                    self._holding = 0
                    self._in_hand = None
                    self._cond.notify_all()
                    return
                if self._handed_over or self._should_spill():
                    break
                # Short: the queue may cross the spill mark meanwhile.
                self._cond.wait(_HANDOFF_WAIT_S)
            self._in_hand = None
        try:
            self._spill(batch)
        finally:
            with self._cond:
                self._holding = 0

    def _should_spill(self) -> bool:
        # Called with the lock held. Without a cache there is nowhere to spill:
        # the batch waits for the sender and the queue absorbs the burst. The
        # sender opens the cache as it starts; not here, under the lock, where
        # the opening's diagnostics could wait for the logging module's lock
        # held by a dictConfig() that waits for this lock in turn.
        if not self._cache_opened or self._cache is None:
            return self._closing.is_set() and self._giving_up
        # A sender that is merely behind (a burst keeps it from the
        # interpreter, or a close came right after one) catches up within a
        # few requests: writing batches to disk then costs more than sending
        # them, and at close they would stay there until the application runs
        # again. One stuck in a slow request, or not keeping pace once the
        # queue is three quarters full, or a queue about to overflow, is
        # another matter; what a close cannot send by its deadline goes to
        # disk all the same (see end_close).
        queued = len(self._queue)
        busy_since = self.transport.busy_since
        now = real_monotonic()
        return (
            self.backing_off.is_set()
            or self._giving_up
            or queued > self._spill_mark
            or (busy_since is not None and now - busy_since > _SLOW_S)
            or (queued > self._yield_mark and now - self._accepted_at > _PACE_S)
        )

    def _spill(self, batch: List[bytes]) -> None:
        if self.transport.kill_window.active():
            self._counters.add("dropped.killed", len(batch))
            return
        if self._store(batch, reason="shutdown" if self._closing.is_set() else "spill"):
            self._spilled += len(batch)

    # -- sender thread -----------------------------------------------------

    def _run_sender(self) -> None:
        own_activity.active = True
        failures = 0
        try:
            self._cache_ready()
            while True:
                try:
                    self._sender_loop()
                    return
                except Exception:
                    # A fault of ours must not stop delivery for the rest of
                    # the handler's life: the batch goes to disk, and on.
                    failures += 1
                    if failures == 1:
                        log.exception("%s: sender failed", self._name)
                    else:
                        log.debug("%s: sender failed", self._name, exc_info=True)
                    self._recover_owned()
                    if self._closing.wait(_RECOVER_S):
                        return
        finally:
            with self._cond:
                self._flushed = self._flush_requested
                self._cond.notify_all()

    def _recover_owned(self) -> None:
        with self._cond:
            owned = list(self._owned)
            self._owned.clear()
        for lines in owned:
            try:
                self._settle_unsent(lines)
            except Exception:
                self._counters.add("dropped.cache_error", len(lines))
                self._report_loss("the sender failed to store them", len(lines))

    def _sender_loop(self) -> None:
        while True:
            item = self._next_item()
            if item is None:
                self._drop_held()
                self._drain_at_close()
                return
            if isinstance(item, _FlushMarker):
                self._finish_flush(item)
                continue
            if item:
                self._send(item)
                continue
            if self._held and not self._interrupt.is_set():
                with self._cond:
                    lines = self._held.popleft()
                    self._owned.append(lines)
                self._send(lines)
            elif self._cache_has_work() and self._drain_one():
                # Draining is paced so that recovery cannot cause a request storm.
                self._interrupt.wait(self._drain_interval_s)

    def _next_item(self) -> Optional[_Item]:
        """The next batch or marker; an empty list means: time for other work."""
        with self._cond:
            while not self._ready:
                if self._batcher_done:
                    return None
                if self._closing.is_set():
                    self._cond.wait(_WAIT_SLICE_S)
                    continue
                if (self._held and not self._interrupt.is_set()) or (
                    self._cache_has_work()
                ):
                    return []
                wait = self._flush_interval_s
                if self._cache is not None:
                    wait = min(wait, max(0.0, self._next_drain_at - real_monotonic()))
                self._cond.wait(max(wait, 0.01))
                if not self._ready:
                    return []
            item = self._ready.popleft()
            if isinstance(item, list) and item:
                self._owned.append(item)
            self._cond.notify_all()
            return item

    def _cache_has_work(self) -> bool:
        return (
            self._cache is not None
            and not self._closing.is_set()
            and real_monotonic() >= self._next_drain_at
        )

    def _drop_held(self) -> None:
        # Reported outside the lock: a log call may wait for logging's lock.
        with self._cond:
            held = list(self._held)
            self._held.clear()
        for lines in held:
            self._counters.add("dropped.shutdown", len(lines))
            self._report_loss("no disk cache at shutdown", len(lines))

    def _finish_flush(self, marker: _FlushMarker) -> None:
        with self._cond:
            self._flushed = max(self._flushed, marker.generation)
            # Read now: the sender goes on to send them once the flush is over.
            self._held_at_flush = bool(self._held)
            if self._flushed >= self._flush_requested and not self._closing.is_set():
                self._interrupt.clear()
            self._cond.notify_all()

    def _send(self, lines: List[bytes]) -> None:
        """Deliver a batch the sender owns, and settle what became of it."""
        if self._handed_over:
            return  # a close stored it (the second half of a split, say)
        if self._giving_up:
            outcome = Outcome(TRANSIENT, deferred=True)
        else:
            outcome = deliver(
                self.transport,
                lines,
                sleep=self._sleep,
                stop_event=self._interrupt,
                max_attempts=self._max_attempts,
                timeout_s=self._time_left,
                on_retry=self._on_retry,
            )
            if (
                outcome.deferred
                and self._closing.is_set()
                and not self._giving_up
                and outcome.retry_after is None
                and real_monotonic() < self._deadline
            ):
                # The close cut a wait between attempts short: one attempt
                # more, within the close's time, before the batch goes to disk
                # (or is lost without one) after a failure the collector may
                # have recovered from since.
                outcome = deliver(
                    self.transport,
                    lines,
                    sleep=self._sleep,
                    stop_event=_ONE_ATTEMPT,
                    timeout_s=self._time_left,
                )
        halves: List[List[bytes]] = []
        stored = _NOT_YET
        with self._cond:
            handed_over = self._handed_over
            if handed_over:
                # A close took the batch over while it was being sent: of the
                # request and the close, the one that ends second settles it.
                stored = _pop_for(self._stored_in_flight, lines, _NOT_YET)
                if stored is _NOT_YET:
                    self._late_outcomes.append((lines, outcome))
            else:
                self._owned = [b for b in self._owned if b is not lines]
                if outcome.kind == SPLIT and len(lines) > 1 and outcome.kill is None:
                    # Owned before they are sent, so close() never loses a half.
                    created = getattr(lines, "created", 0.0)
                    halves = [Lines(half, created) for half in split(lines)]
                    self._owned.extend(halves)
        if handed_over:
            if stored is not _NOT_YET:
                self._take_back(lines, stored, outcome)
            return
        for half in halves:
            self._send(half)
        if not halves:
            self._settle(lines, outcome)

    def _settle(self, lines: Sequence[bytes], outcome: Outcome) -> None:
        if outcome.kill is not None:
            self._obey_kill(outcome.kill)
        if outcome.kind == ACCEPTED:
            self._accepted_at = real_monotonic()
            self._counters.add("accepted", outcome.accepted)
            self._count_rejected(outcome)
            if self._cache_may_hold:
                # The collector takes batches again: drain the backlog now.
                # An empty cache is not scanned after every batch; batches
                # other processes store are found by the periodic check.
                self._next_drain_at = 0.0
            if not outcome.rejected:
                self._loss_streak = False
            return
        if outcome.kind == KILLED or outcome.kill is not None:
            self._counters.add("dropped.killed", len(lines))
            self._report_loss("the collector ordered this tenant to stop", len(lines))
        elif outcome.kind == REJECTED:
            self._count_rejected(outcome)
        elif outcome.kind == SPLIT:
            self._counters.add("dropped.too_large", len(lines))
            self._report_loss("the collector refused an event as too large", 1)
        elif outcome.deferred:
            self._settle_unsent(list(lines))
        else:
            self._counters.add("dropped.retries_exhausted", len(lines))
            self._report_loss(
                f"no answer but failures after {self._max_attempts} attempts"
                f" ({outcome.status or outcome.detail})",
                len(lines),
            )

    def _count_rejected(self, outcome: Outcome) -> None:
        for reason, count in outcome.rejected.items():
            self._counters.add(f"rejected.{reason}", count)
        if outcome.rejected:
            total = sum(outcome.rejected.values())
            self._report_loss(
                f"the collector rejected {total} event(s) "
                f"(HTTP {outcome.status}, {outcome.detail or 'no Collector-Error'}, "
                f"reasons {sorted(outcome.rejected)})",
                total,
            )

    def _obey_kill(self, kill: Union[float, str]) -> None:
        if isinstance(kill, str):  # this-request-only: nothing beyond the batch
            return
        until = self.transport.kill_window.open(kill)
        log.debug("%s: kill window open until %s", self._name, until)
        cache = self._cache
        while cache is not None:
            claim = cache.claim()
            if claim is None:
                break
            claim.drop("killed")

    def _settle_unsent(self, lines: List[bytes]) -> None:
        """A batch that could not be sent now: to disk, or held in memory."""
        if self.transport.kill_window.active():
            self._counters.add("dropped.killed", len(lines))
            return
        if self._cache_ready():
            self._store(lines, reason="retry")
        elif self._closing.is_set():
            self._counters.add("dropped.shutdown", len(lines))
            self._report_loss("no disk cache at shutdown", len(lines))
        elif sum(map(len, self._held)) + len(lines) <= self._max_queue:
            self._held.append(lines)
        else:
            self._counters.add("dropped.queue_full", len(lines))
            self._report_loss(
                "the collector is unreachable and no disk cache", len(lines)
            )
        if self._closing.is_set():
            # One failure at shutdown is enough: the rest goes straight to disk.
            self._giving_up = True

    def _drain_at_close(self) -> None:
        """Send, in the close's time, as many cached records as this pipeline
        wrote to disk while it ran.

        Batches spilled during a burst, or left by the handler this one
        replaced, would otherwise wait for the next run of the application;
        the backlog of an outage, and other processes' batches beyond that
        count, are left to the spool's paced draining.
        """
        if self._cache is None or self._handed_over or self._giving_up:
            return  # what is handed down is left for a close that can send
        self._spilled += self._cache.take_handed_down()
        while (
            self._spilled > 0
            and not self._giving_up
            and not self._handed_over
            # A request cut off by the deadline may have been taken all the
            # same, and the batch, safe on disk, would arrive twice.
            and self._deadline - real_monotonic()
            > max(_CLOSE_DRAIN_MIN_S, 2 * self.transport.last_request_s)
        ):
            before = self._spilled
            if not self._drain_one(at_close=True) or self._spilled >= before:
                return  # none left, or refused, failed or divided: no more now

    def _drain_one(self, *, at_close: bool = False) -> bool:
        """Send the oldest cached batch; return whether one was claimed.

        :param at_close: the close's interruption does not stop this one.
        """
        if self.transport.kill_window.active():
            return False
        if self._interrupt.is_set() and not at_close:
            return False
        claim = self._cache.claim()
        if claim is None:
            # Other processes may store batches too; look again later.
            self._cache_may_hold = False
            self._next_drain_at = real_monotonic() + _IDLE_DRAIN_CHECK_S
            return False
        # A stored batch gets one attempt per claim: it waits on disk, not in a
        # retry loop, so draining stops at the first failure.
        outcome = deliver_stored(
            self.transport,
            claim,
            sleep=self._sleep,
            stop_event=_ONE_ATTEMPT,
            timeout_s=self._time_left,
        )
        if outcome is None:
            pass  # stored again in parts, claimed next
        elif refuses_key(outcome) and not outcome.kill:
            claim.release()
            self._next_drain_at = real_monotonic() + _FAILED_DRAIN_PAUSE_S
            if not self._key_refusal_reported:
                self._key_refusal_reported = True
                log.warning(
                    "%s: the collector refused this handler's key (HTTP %s, %s):"
                    " the disk cache of tenant %s is left for a handler with a"
                    " valid key",
                    self._name,
                    outcome.status,
                    outcome.detail or "no Collector-Error",
                    self.transport.tenant,
                )
        elif outcome.kind in (ACCEPTED, REJECTED, SPLIT, KILLED) or outcome.kill:
            claim.done()
            self._settle(claim.lines, outcome)
            if outcome.kind == ACCEPTED:
                self._spilled = max(0, self._spilled - len(claim.lines))
        else:
            self._next_drain_at = real_monotonic() + _FAILED_DRAIN_PAUSE_S
            claim.release()
        return True

    # -- waits, storage, reports --------------------------------------------

    def _sleep(self, seconds: float) -> None:
        """Wait between attempts: ends at *seconds* of the (freezable) clock."""
        self.backing_off.set()
        with self._cond:
            self._cond.notify_all()
        try:
            end_clock = time.time() + seconds
            end_real = real_monotonic() + seconds
            while True:
                if self._interrupt.is_set():
                    raise Interrupted()
                left = min(end_clock - time.time(), end_real - real_monotonic())
                if left <= 0:
                    return
                self._interrupt.wait(min(left, _WAIT_SLICE_S))
        finally:
            self.backing_off.clear()

    def _on_retry(self, outcome: Outcome, wait_s: float) -> None:
        if not outcome.deferred:
            self._counters.add("retried")
        log.debug(
            "%s: attempt failed (%s); next in %.1f s", self._name, outcome, wait_s
        )

    def _time_left(self) -> Optional[float]:
        if not self._closing.is_set():
            return None
        return max(0.05, getattr(self, "_deadline", 0.0) - real_monotonic())

    def _cache_ready(self) -> bool:
        if self._cache_opened:
            return self._cache is not None
        wait = -1.0
        if self._closing.is_set():
            # Another thread may be opening it and stuck: a close waits for
            # it no longer than its deadline.
            wait = 0.0 if self._hurry else max(0.0, self._deadline - real_monotonic())
        if self._opening.acquire(timeout=wait):
            try:
                if not self._cache_opened:
                    self._cache = self._try_open_cache()
                    self._cache_opened = True
            finally:
                self._opening.release()
        elif self._hurry:
            # The thread opening it may be waiting for the logging lock that
            # the closing thread holds: a cache of this close's own takes
            # what is left.
            self._cache = self._try_open_cache()
            self._cache_opened = True
        return self._cache is not None

    def _try_open_cache(self) -> Any:
        try:
            return self._open_cache()
        except Exception:
            log.warning("%s: disk cache unavailable", self._name, exc_info=True)
            return None

    def _store(
        self, lines: Sequence[bytes], *, reason: str, hold_s: Optional[float] = None
    ) -> Optional[str]:
        """Write *lines* to the disk cache, or count them lost without one.

        :param hold_s: see :meth:`~._cache.DiskCache.put_batch`.
        :returns: the cache's name of the batch; None when they are not in the
            cache (refused, and counted, by it; or counted here).
        """
        if not lines:
            return None
        if self._cache_ready():
            name: Optional[str] = self._cache.put_batch(
                lines, created=_created(lines), hold_s=hold_s
            )
            if name is None:
                return None
            if self._hurry and reason == "shutdown":
                # Left by a close that could not wait (a second dictConfig):
                # the handler that replaces this one sends them at its close.
                self._cache.hand_down(len(lines))
            self._counters.add("cached", len(lines))
            self._cache_may_hold = True
            self._next_drain_at = min(
                self._next_drain_at, real_monotonic() + _FAILED_DRAIN_PAUSE_S
            )
            return name
        dropped = "shutdown" if reason == "shutdown" else "no_cache"
        self._counters.add(f"dropped.{dropped}", len(lines))
        self._report_loss(
            "they could not be sent and there is no disk cache", len(lines)
        )
        return None

    def _report_loss(self, why: str, count: int) -> None:
        if self._loss_streak or (self._closing.is_set() and not self._closed_out):
            # A close sums up its losses in one warning (_report_close).
            log.debug("%s: %d record(s) lost: %s", self._name, count, why)
            return
        self._loss_streak = True
        log.warning(
            "%s: %d record(s) lost for tenant %s: %s (further losses in this "
            "streak are logged at DEBUG)",
            self._name,
            count,
            self.transport.tenant,
            why,
        )
