"""The on-disk spool: batches of serialized envelopes kept for later delivery.

Every process of the application on the machine shares one spool per tenant::

    <root>/<tenant>/                      0700, the partition of one tenant
        .lock                             serializes listings and claim renames
        kill.json                         {"kill_until": <Unix seconds>}
        <id>.batch                        a batch waiting to be sent
        <id>.<pid>.<since>-<rand>.claim   a batch process <pid> is sending
        .tmp-<pid>-<since>-<rand>         a file being written, never claimed

``<id>`` is ``<created ns:020d>-<pid>-<seq:08d>-<rand>-<records>``, so names sort
by creation time across processes, and listing the names alone is enough to
count records, evict the oldest and expire old batches. A batch file is one
header line followed by the envelope lines joined by ``\\n``::

    ocl-spool 1 <records> <payload bytes> <payload crc32, 8 hex> <created>

Files only ever appear under a final name by :func:`os.replace` of a fully
written temp file, and batches move between states only by rename, so a process
killed at any instant leaves each batch either whole or absent, never half
written; a leftover temp file or a claim of a dead process is cleaned up or
taken over by the next claimer.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import math
import os
import re
import secrets
import stat
import threading
import time
import zlib
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import filelock
import platformdirs

from ._compress import compress_lines
from ._directives import real_monotonic
from ._stats import Counters
from .exceptions import ConfigurationError

_log = logging.getLogger(__name__)

#: Twenty full requests (3 MiB each): hours of a busy service's backlog, yet a
#: small share of any disk the application itself runs on.
DEFAULT_CACHE_MAX_BYTES = 64 * 1024 * 1024
#: A week outlasts an outage over a long weekend; older logs are seldom read.
DEFAULT_CACHE_MAX_AGE_S = 7 * 24 * 3600

#: A claim covers one request; a holder silent for ten minutes is stuck or is
#: not the process that claimed (its pid was reused), so the batch is freed.
DEFAULT_CLAIM_LEASE_S = 600.0
#: The lock guards a directory listing and a rename; a longer wait means the
#: holder is stuck, and the caller tries again on its next drain.
DEFAULT_LOCK_TIMEOUT_S = 5.0
#: Writing one batch takes milliseconds, so a temp file this old is an orphan.
#: Age alone decides: a writer in another pid namespace (a container sharing
#: the directory) would look dead, and deleting its temp file loses its batch.
_TEMP_STALE_S = 60.0
#: Each process re-measures the directory at least this often, which bounds
#: how far the writes of other processes can push the spool past max_bytes.
_RESCAN_EVERY_PUTS = 32
#: A claimer lists the directory once per this many claims and whenever its
#: list runs out, so draining thousands of batches stays linear; batches that
#: reappear meanwhile (released or taken over elsewhere) wait that long at most.
_RELIST_EVERY_CLAIMS = 64

_MAGIC = b"ocl-spool"
_VERSION = b"1"
#: No batch is larger than a request, and a request is at most 3 MiB of text.
_MAX_BATCH_TEXT = 4 * 1024 * 1024
_HEADER_MAX = 256
_NS = 1_000_000_000
#: Creation times must fit the 20 digits of a batch id.
_MAX_CREATED_S = 10**11

_TENANT = re.compile(r"[A-Za-z0-9_]{1,128}\Z")
_ID = r"(?P<ns>\d{20})-\d{1,10}-\d{8,}-[0-9a-f]{8}-(?P<records>\d{1,9})"
_BATCH_NAME = re.compile(rf"(?P<id>{_ID})\.batch\Z")
_CLAIM_NAME = re.compile(
    rf"(?P<id>{_ID})\.(?P<owner>\d{{1,10}})\.(?P<since>\d{{1,20}})-[0-9a-f]{{8}}\.claim\Z"
)
_TEMP_NAME = re.compile(r"\.tmp-(?P<owner>\d{1,10})-(?P<since>\d{1,20})-[0-9a-f]{8}\Z")

_O_EXTRA = (
    getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_REASONS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "it is not writable",
    errno.EPERM: "it is not writable",
    errno.ENOTDIR: "a file is in the way",
    errno.EEXIST: "a file is in the way",
    errno.ELOOP: "it is a symbolic link",
    errno.ENOSPC: "the disk is full",
}

_sequence = itertools.count()


class _Holds:
    """What this process notes about the batches in its partitions: files (by
    path) that no handler of the process claims before the real monotonic
    time given (see :meth:`DiskCache.put_batch`), and records a close left for
    the next handler of a partition (see :meth:`DiskCache.hand_down`)."""

    def __init__(self) -> None:
        self.until: Dict[str, float] = {}
        self.handed_down: Dict[str, int] = {}
        self.lock = threading.Lock()

    def add(self, path: str, seconds: float) -> None:
        with self.lock:
            self.until[path] = real_monotonic() + seconds

    def held(self, path: str) -> bool:
        with self.lock:
            until = self.until.get(path)
            if until is None:
                return False
            if real_monotonic() < until:
                return True
            del self.until[path]
            return False

    def remove(self, path: str) -> None:
        with self.lock:
            self.until.pop(path, None)

    def hand_down(self, path: str, records: int) -> None:
        with self.lock:
            self.handed_down[path] = self.handed_down.get(path, 0) + records

    def take_handed_down(self, path: str) -> int:
        with self.lock:
            return self.handed_down.pop(path, 0)

    def renew_lock(self) -> None:
        # A fork while another thread held the lock would leave the child's
        # copy locked for ever.
        self.lock = threading.Lock()


_holds = _Holds()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_holds.renew_lock)


def default_cache_root() -> str:
    """Return the per-user cache directory the spool uses when no root is given."""
    return platformdirs.user_cache_dir("onecollector-logging", appauthor=False)


def partitions(root: Optional[str]) -> List[str]:
    """Return the tenants that have a partition under *root*, sorted.

    A partition is a directory named like a tenant id that holds the lock file
    :meth:`DiskCache.open` creates in it. A plain word is a valid tenant id, so
    the name alone cannot tell a partition from a directory of someone else's
    that sits under the root (when the root was given by mistake).

    :param root: the spool root; None for :func:`default_cache_root`.
    """
    base = os.path.abspath(root if root is not None else default_cache_root())
    try:
        with os.scandir(base) as entries:
            return sorted(
                entry.name
                for entry in entries
                if _TENANT.match(entry.name)
                and entry.is_dir(follow_symlinks=False)
                and _holds_lock_file(entry.path)
            )
    except OSError:
        return []


def _holds_lock_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(os.path.join(path, ".lock")).st_mode)
    except OSError:
        return False


class _Batch(NamedTuple):
    name: str
    batch_id: str
    created_ns: int
    records: int
    size: int


class _Owned(NamedTuple):
    name: str
    owner: int
    since_ns: int


class _Listing(NamedTuple):
    batches: List[_Batch]
    claims: List[Tuple[_Batch, _Owned]]
    temps: List[_Owned]
    foreign: List[str]


class DiskCache:
    """A spool of batches for one tenant, shared by the processes of the machine.

    Obtain one with :meth:`open`. Every method may be called from any thread and
    none raises on I/O trouble: :meth:`put` reports failure by returning False,
    :meth:`claim` by returning None, and lost records are counted.

    Delivery is at least once: a batch whose sender died, or overran the claim
    lease, is claimed again by another process. Senders are told apart by pid,
    so a claim made from another pid namespace may be taken over early, which
    costs a duplicate, never a loss.
    """

    def __init__(
        self,
        path: str,
        tenant: str,
        *,
        max_bytes: int,
        max_age_s: float,
        counters: Counters,
        lock_timeout_s: float,
        claim_lease_s: float,
        fsync: bool,
    ) -> None:
        self.path = path
        self.tenant = tenant
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._counters = counters
        self._lease_ns = int(claim_lease_s * _NS)
        self._fsync = fsync
        self._lock = filelock.FileLock(
            os.path.join(path, ".lock"), timeout=lock_timeout_s, mode=0o600
        )
        self._state = threading.Lock()
        # Making room and writing are one step per process, or two threads
        # (spilling and storing a failed batch) could both fill the last room.
        self._writing = threading.Lock()
        self._estimate = 0
        self._puts_since_scan = _RESCAN_EVERY_PUTS
        self._failing: Set[str] = set()
        self._claiming = threading.Lock()
        self._lock_timeout_s = lock_timeout_s
        self._pending: List[_Batch] = []
        self._claims_since_listing = 0

    @classmethod
    def open(
        cls,
        root: Optional[str],
        tenant: str,
        *,
        max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
        max_age_s: float = DEFAULT_CACHE_MAX_AGE_S,
        counters: Optional[Counters] = None,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        claim_lease_s: float = DEFAULT_CLAIM_LEASE_S,
        fsync: bool = False,
    ) -> Optional[DiskCache]:
        """Open (creating it 0700 if needed) the partition of *tenant* under *root*.

        Return None, after one WARNING naming the path and the reason, when the
        location is unusable: a symbolic link, owned by another user, not
        writable, on a read-only file system, or a file stands in the way.

        :param root: the spool root; None for :func:`default_cache_root`.
        :param tenant: the tenant id (never the instrumentation key).
        :param max_bytes: bound on the bytes of all batches of the partition.
        :param max_age_s: batches older than this are deleted, not sent.
        :param counters: where lost records are counted.
        :param lock_timeout_s: longest wait for the partition lock in :meth:`claim`.
        :param claim_lease_s: a claim older than this is taken over.
        :param fsync: flush every batch to the device before it becomes visible;
            without it a process crash loses nothing, a power cut may cost the
            last batches (detected and counted as corrupt).
        :raises ConfigurationError: an option is out of range.
        """
        _check_options(tenant, max_bytes, max_age_s, lock_timeout_s, claim_lease_s)
        base = os.path.abspath(root if root is not None else default_cache_root())
        path = os.path.join(base, tenant)
        for where, private in ((base, False), (path, True)):
            reason = _prepare_dir(where, private=private)
            if reason is None and private:
                reason = _probe(where)
            if reason is not None:
                _log.warning(
                    "disk cache at %s is unusable (%s); records that cannot be sent"
                    " will be lost",
                    where,
                    reason,
                )
                return None
        _log.debug("disk cache opened at %s", path)
        return cls(
            path,
            tenant,
            max_bytes=max_bytes,
            max_age_s=max_age_s,
            counters=counters if counters is not None else Counters(),
            lock_timeout_s=lock_timeout_s,
            claim_lease_s=claim_lease_s,
            fsync=fsync,
        )

    def put(
        self,
        lines: Sequence[bytes],
        *,
        created: Optional[float] = None,
        evict: bool = True,
    ) -> bool:
        """Store *lines* as one batch; return whether it was written (see
        :meth:`put_batch`). Nothing is written for no lines."""
        if not lines:
            return True
        return self.put_batch(lines, created=created, evict=evict) is not None

    def put_batch(
        self,
        lines: Sequence[bytes],
        *,
        created: Optional[float] = None,
        evict: bool = True,
        hold_s: Optional[float] = None,
    ) -> Optional[str]:
        """Store *lines* as one batch; return its name for :meth:`withdraw`, or
        None when it was not written.

        Room is made by evicting the oldest batches (counted
        ``dropped.cache_full``); a batch larger than ``max_bytes`` is refused
        and counted the same way. A write failure is counted
        ``dropped.cache_error``.

        :param lines: serialized envelopes, each without a newline.
        :param created: Unix time of the batch, which orders it among the
            others; now when None.
        :param evict: make room first; False for lines whose room is already
            taken in the spool (a claimed batch stored again in parts).
        :param hold_s: keep the batch from the claims of this process for so
            many seconds, or until :meth:`withdraw` or :meth:`unhold`: lines
            whose request may still succeed, which a handler that replaces the
            one that stored them would otherwise send a second time.
        """
        count = len(lines)
        if not count:
            return None
        created_s = _created(created)
        created_ns = int(created_s * _NS)
        try:
            blob = _encode(lines, created_s)
        except (TypeError, ValueError) as exc:
            self._lose("write", "dropped.cache_error", count, "cannot encode: %s", exc)
            return None
        if len(blob) > self.max_bytes:
            self._lose(
                "full",
                "dropped.cache_full",
                count,
                "a batch of %d bytes exceeds max_bytes %d",
                len(blob),
                self.max_bytes,
            )
            return None
        with self._writing:
            name = self._store(blob, created_ns, count, evict)
        if name is not None and hold_s is not None:
            _holds.add(os.path.join(self.path, name), hold_s)
        return name

    def _store(
        self, blob: bytes, created_ns: int, count: int, evict: bool
    ) -> Optional[str]:
        if evict and not self._make_room(len(blob), created_ns):
            self._lose(
                "full",
                "dropped.cache_full",
                count,
                "full at max_bytes %d, and this batch is older than all it holds",
                self.max_bytes,
            )
            return None
        name = (
            f"{created_ns:020d}-{os.getpid()}-{next(_sequence):08d}"
            f"-{secrets.token_hex(4)}-{count}.batch"
        )
        try:
            self._write_new(name, blob)
        except OSError as exc:
            self._lose("write", "dropped.cache_error", count, "cannot write: %s", exc)
            return None
        with self._state:
            self._failing.discard("write")
            self._estimate += len(blob)
            self._puts_since_scan += 1
        return name

    def withdraw(self, name: str) -> bool:
        """Delete the batch *name* that :meth:`put_batch` stored, unless a
        process has claimed it since; return whether it was deleted.

        For a batch that turned out to be delivered after all: its records are
        then not sent a second time from here.
        """
        path = os.path.join(self.path, name)
        _holds.remove(path)
        try:
            size = os.stat(path).st_size
            # A claim renames the file first: then this finds nothing.
            os.unlink(path)
        except OSError:
            return False
        self._forget(size)
        return True

    def hand_down(self, records: int) -> None:
        """Note that a close stored *records* for the next handler of this
        partition in this process to send (see :meth:`take_handed_down`)."""
        _holds.hand_down(self.path, records)

    def take_handed_down(self) -> int:
        """Return, and forget, the records closes handed down to this partition."""
        return _holds.take_handed_down(self.path)

    def unhold(self, name: str) -> None:
        """Let this process claim the batch *name* again (see :meth:`put_batch`)."""
        _holds.remove(os.path.join(self.path, name))

    def claim(self) -> Optional[Claim]:
        """Take the oldest unclaimed batch for sending, or return None.

        None also when the partition lock is not obtained in time or the
        directory cannot be read; the caller tries again later. Expired,
        corrupt and foreign files met on the way are deleted and counted.
        """
        while True:
            if not self._claiming.acquire(timeout=self._lock_timeout_s):
                return None
            try:
                with self._lock:
                    taken = self._rename_next()
            except filelock.Timeout:
                _log.debug("disk cache %s: lock busy, no claim this time", self.path)
                return None
            except OSError as exc:
                _log.debug("disk cache %s: cannot claim: %s", self.path, exc)
                return None
            finally:
                self._claiming.release()
            if taken is None:
                return None
            claim = self._read_claim(*taken)
            if claim is not None:
                return claim

    def kill_until(self) -> float:
        """Return the end of the tenant's kill window (Unix time), 0 when none."""
        try:
            with open(os.path.join(self.path, "kill.json"), "rb") as file:
                data = json.loads(file.read(4096))
        except (OSError, ValueError):
            return 0.0
        value = data.get("kill_until") if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return 0.0
        return float(value) if math.isfinite(value) and value > 0 else 0.0

    def set_kill_until(self, epoch_seconds: float) -> None:
        """Record the end of the tenant's kill window for every process.

        :param epoch_seconds: Unix time until which nothing may be sent.
        """
        value = float(epoch_seconds) if math.isfinite(epoch_seconds) else 0.0
        blob = json.dumps({"kill_until": value}).encode("ascii")
        try:
            self._write_new("kill.json", blob)
        except OSError as exc:
            _log.debug(
                "disk cache %s: cannot store the kill window: %s", self.path, exc
            )

    def stats(self) -> Dict[str, object]:
        """Describe the partition.

        ``batches``, ``records`` and ``bytes`` cover every stored batch,
        ``claimed`` how many of them are being sent now; ``oldest_age_s`` is
        None when there are none.
        """
        try:
            listing = self._scan(sizes=True)
        except OSError:
            listing = _Listing([], [], [], [])
        stored = listing.batches + [batch for batch, _ in listing.claims]
        oldest = min((batch.created_ns for batch in stored), default=None)
        return {
            "batches": len(stored),
            "records": sum(batch.records for batch in stored),
            "bytes": sum(batch.size for batch in stored),
            "oldest_age_s": None if oldest is None else time.time() - oldest / _NS,
            "kill_until": self.kill_until(),
            "claimed": len(listing.claims),
        }

    def purge(self) -> int:
        """Delete every batch, claimed ones included; return how many went."""
        try:
            listing = self._scan(sizes=False)
        except OSError:
            return 0
        names = [batch.name for batch in listing.batches]
        names += [owned.name for _, owned in listing.claims]
        deleted = sum(self._unlink(name) for name in names)
        with self._state:
            self._puts_since_scan = _RESCAN_EVERY_PUTS
        return deleted

    def _write_new(self, name: str, blob: bytes) -> None:
        try:
            self._write_atomically(name, blob)
        except FileNotFoundError:
            if _prepare_dir(self.path, private=True) is not None:
                raise
            _log.debug("disk cache %s: partition re-created", self.path)
            self._write_atomically(name, blob)

    def _write_atomically(self, name: str, blob: bytes) -> None:
        temp = os.path.join(
            self.path,
            f".tmp-{os.getpid()}-{time.time_ns()}-{secrets.token_hex(4)}",
        )
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_EXTRA, 0o600)
        try:
            try:
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, 0o600)
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, os.path.join(self.path, name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def _make_room(self, size: int, created_ns: int) -> bool:
        """Evict the oldest batches until *size* more bytes fit; return False
        when the batch to store is itself older than what would be evicted."""
        with self._state:
            if (
                self._puts_since_scan < _RESCAN_EVERY_PUTS
                and self._estimate + size <= self.max_bytes
            ):
                return True
        try:
            listing = self._scan(sizes=True)
        except OSError as exc:
            _log.debug("disk cache %s: cannot measure: %s", self.path, exc)
            return True
        self._remove_stale_temps(listing.temps)
        total = sum(batch.size for batch, _ in listing.claims)
        kept = self._expire(listing.batches)
        total += sum(batch.size for batch in kept)
        evicted = 0
        fits = True
        for batch in kept:
            if total + size <= self.max_bytes:
                break
            if batch.created_ns > created_ns:
                fits = False
                break
            if self._unlink(batch.name):
                evicted += batch.records
            total -= batch.size
        with self._state:
            self._estimate = total
            self._puts_since_scan = 0
        if evicted:
            self._lose(
                "full",
                "dropped.cache_full",
                evicted,
                "full at max_bytes %d, oldest batches evicted",
                self.max_bytes,
            )
        return fits

    def _claimable(self) -> List[_Batch]:
        """List the claimable batches, newest first, tidying the directory."""
        self._claims_since_listing = 0
        listing = self._scan(sizes=False)
        self._remove_stale_temps(listing.temps)
        batches = listing.batches
        for name in listing.foreign:
            if self._unlink(name):
                self._corrupt(name, "not a batch name")
        now_ns = time.time_ns()
        for batch, owned in listing.claims:
            if _pid_alive(owned.owner) and now_ns - owned.since_ns <= self._lease_ns:
                continue
            with contextlib.suppress(OSError):
                os.replace(
                    os.path.join(self.path, owned.name),
                    os.path.join(self.path, batch.name),
                )
                batches.append(batch)
                _log.debug("disk cache %s: took over %s", self.path, owned.name)
        batches.sort()
        pending = self._expire(batches)
        pending.reverse()
        return pending

    def _rename_next(self) -> Optional[Tuple[_Batch, str]]:
        """Rename the oldest batch to a claim of ours; the caller holds the locks."""
        listed = False
        if not self._pending or self._claims_since_listing >= _RELIST_EVERY_CLAIMS:
            self._pending, listed = self._claimable(), True
        while True:
            while self._pending:
                batch = self._pending.pop()
                if _holds.until and _holds.held(os.path.join(self.path, batch.name)):
                    continue
                if not self._expire([batch]):
                    continue
                claim_name = (
                    f"{batch.batch_id}.{os.getpid()}"
                    f".{time.time_ns()}-{secrets.token_hex(4)}.claim"
                )
                claim_path = os.path.join(self.path, claim_name)
                try:
                    os.rename(os.path.join(self.path, batch.name), claim_path)
                except FileNotFoundError:
                    continue
                self._claims_since_listing += 1
                return batch, claim_path
            if listed:
                return None
            self._pending, listed = self._claimable(), True

    def _read_claim(self, batch: _Batch, claim_path: str) -> Optional[Claim]:
        try:
            with open(claim_path, "rb") as file:
                blob = file.read()
            lines, created = _decode(blob)
            if len(lines) != batch.records:
                raise ValueError("record count differs from the name")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(claim_path)
            self._corrupt(batch.name, str(exc))
            return None
        with self._state:
            self._failing.discard("corrupt")
        return Claim(
            self,
            batch.batch_id,
            claim_path,
            lines=lines,
            created=created,
            size=len(blob),
        )

    def _expire(self, batches: List[_Batch]) -> List[_Batch]:
        """Delete the batches older than max_age_s; return the others, in order."""
        horizon_ns = time.time_ns() - int(self.max_age_s * _NS)
        kept = [batch for batch in batches if batch.created_ns >= horizon_ns]
        expired = sum(
            batch.records
            for batch in batches
            if batch.created_ns < horizon_ns and self._unlink(batch.name)
        )
        if expired:
            self._lose(
                "too_old",
                "dropped.too_old",
                expired,
                "batches older than max_age_s %s deleted",
                self.max_age_s,
            )
        return kept

    def _remove_stale_temps(self, temps: List[_Owned]) -> None:
        horizon_ns = time.time_ns() - int(_TEMP_STALE_S * _NS)
        for temp in temps:
            if temp.since_ns < horizon_ns:
                self._unlink(temp.name)

    def _scan(self, *, sizes: bool) -> _Listing:
        listing = _Listing([], [], [], [])
        with os.scandir(self.path) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith((".batch", ".claim")):
                    is_batch = name.endswith(".batch")
                    match = (_BATCH_NAME if is_batch else _CLAIM_NAME).match(name)
                    size = _size(entry) if sizes else 0
                    if match is None:
                        listing.foreign.append(name)
                    elif size < 0:
                        continue
                    elif is_batch:
                        listing.batches.append(_batch(name, match, size))
                    else:
                        batch = _batch(match["id"] + ".batch", match, size)
                        owned = _Owned(name, int(match["owner"]), int(match["since"]))
                        listing.claims.append((batch, owned))
                elif name.startswith(".tmp-"):
                    match = _TEMP_NAME.match(name)
                    if match is not None:
                        listing.temps.append(
                            _Owned(name, int(match["owner"]), int(match["since"]))
                        )
        listing.batches.sort()
        return listing

    def _unlink(self, name: str) -> bool:
        try:
            os.unlink(os.path.join(self.path, name))
        except OSError:
            return False
        return True

    def _corrupt(self, name: str, why: str) -> None:
        self._counters.add("cache.corrupt")
        with self._state:
            first = "corrupt" not in self._failing
            self._failing.add("corrupt")
        if first:
            _log.warning(
                "disk cache %s: deleted unreadable file %s (%s); its records are lost",
                self.path,
                name,
                why,
            )

    def _lose(
        self, streak: str, counter: str, records: int, why: str, *args: object
    ) -> None:
        """Count *records* as lost; log a WARNING once per failure streak."""
        self._counters.add(counter, records)
        with self._state:
            first = streak not in self._failing
            self._failing.add(streak)
        if first:
            _log.warning(
                "disk cache %s: %d records dropped, " + why, self.path, records, *args
            )

    def _forget(self, size: int) -> None:
        with self._state:
            self._estimate = max(0, self._estimate - size)

    def _delivered(self) -> None:
        # The spool fills up and ages only while delivery fails, so a delivery
        # ends those streaks.
        with self._state:
            self._failing.difference_update(("full", "too_old"))


class Claim:
    """A batch taken from the spool by this process; settle it exactly once.

    Until :meth:`done`, :meth:`release`, :meth:`divide` or :meth:`drop` is
    called, no other process sends it, unless this process dies or exceeds the
    claim lease.
    """

    def __init__(
        self,
        cache: DiskCache,
        batch_id: str,
        path: str,
        *,
        lines: List[bytes],
        created: float,
        size: int,
    ) -> None:
        self.lines = lines
        self.created = created
        self.path = path
        self._cache = cache
        self._batch_path = os.path.join(cache.path, batch_id + ".batch")
        self._size = size
        self._settled = False

    def done(self) -> None:
        """The service accepted the batch: delete it."""
        if self._settle():
            self._delete()
            self._cache._delivered()

    def release(self) -> None:
        """The batch was not sent: make it claimable again, in its old place."""
        if not self._settle():
            return
        try:
            os.replace(self.path, self._batch_path)
        except OSError as exc:
            _log.debug("disk cache: cannot release %s: %s", self.path, exc)
        # The batch is the oldest again: the next claim must list to see it.
        self._cache._claims_since_listing = _RELIST_EVERY_CLAIMS

    def divide(self, parts: Sequence[Sequence[bytes]]) -> None:
        """Store *parts*, the batch's lines cut in order, as batches in its place.

        They keep the batch's creation time, so they are claimed next, and
        take the room it had: nothing is evicted for them. A part that cannot
        be written is counted lost, as by :meth:`DiskCache.put`.

        :param parts: every line of the batch, each in exactly one part.
        """
        if not self._settle():
            return
        for part in parts:
            self._cache.put(part, created=self.created, evict=False)
        self._delete()
        # The parts are the oldest batches: the next claim must list to see them.
        self._cache._claims_since_listing = _RELIST_EVERY_CLAIMS

    def drop(self, reason: str) -> None:
        """The batch will never be sent: delete it and count ``dropped.<reason>``.

        :param reason: why, e.g. ``rejected`` or ``killed``.
        """
        if self._settle():
            self._delete()
            self._cache._counters.add("dropped." + reason, len(self.lines))

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return True

    def _delete(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            # Another process took the claim over as stale and put the batch
            # back; deleting it there spares the service a duplicate.
            with contextlib.suppress(OSError):
                os.unlink(self._batch_path)
        except OSError as exc:
            _log.debug("disk cache: cannot delete %s: %s", self.path, exc)
        self._cache._forget(self._size)


def _check_options(
    tenant: str,
    max_bytes: int,
    max_age_s: float,
    lock_timeout_s: float,
    claim_lease_s: float,
) -> None:
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise ConfigurationError(
            f"tenant {tenant!r} cannot name a cache directory"
            " (1-128 letters, digits or _)"
        )
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigurationError(f"max_bytes must be a positive int, not {max_bytes!r}")
    for name, value in (
        ("max_age_s", max_age_s),
        ("lock_timeout_s", lock_timeout_s),
        ("claim_lease_s", claim_lease_s),
    ):
        if not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ConfigurationError(f"{name} must be a positive number, not {value!r}")


def _prepare_dir(path: str, *, private: bool) -> Optional[str]:
    """Create *path* if missing; return why it is unusable, or None.

    A directory this call creates is made 0700 whatever the umask. An existing
    one loses its group and other bits only when *private* (the root may be
    shared); the owner's own bits are left as the owner set them.
    """
    created = False
    if not os.path.lexists(path):
        try:
            os.makedirs(path, mode=0o700)
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            return _reason(exc)
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            return "it is a symbolic link"
        if not stat.S_ISDIR(info.st_mode):
            return "a file is in the way"
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            return f"it is owned by uid {info.st_uid}, not by this user"
        mode = stat.S_IMODE(info.st_mode)
        if created and mode != 0o700:
            os.chmod(path, 0o700)
        elif private and mode & 0o077:
            os.chmod(path, mode & 0o700)
    except OSError as exc:
        return _reason(exc)
    return None


def _probe(path: str) -> Optional[str]:
    """Create the lock file; return why the partition is not writable, or None."""
    try:
        fd = os.open(
            os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT | _O_EXTRA, 0o600
        )
        os.close(fd)
    except OSError as exc:
        return _reason(exc)
    # An existing lock file opens even in a directory we may no longer write.
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def _reason(exc: OSError) -> str:
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    return exc.strerror or str(exc)


def _created(created: Optional[float]) -> float:
    if (
        isinstance(created, (int, float))
        and not isinstance(created, bool)
        and 0 <= created < _MAX_CREATED_S
    ):
        return float(created)
    return time.time()


def _encode(lines: Sequence[bytes], created: float) -> bytes:
    if any(b"\n" in line for line in lines):
        raise ValueError("a line contains a newline")
    # Envelopes compress about twentyfold: the bound holds that many more
    # records, and a spill during a burst writes that much less.
    payload = compress_lines(lines)
    header = b"%s %s %d %d %08x %s\n" % (
        _MAGIC,
        _VERSION,
        len(lines),
        len(payload),
        zlib.crc32(payload),
        repr(created).encode("ascii"),
    )
    return header + payload


def _decode(blob: bytes) -> Tuple[List[bytes], float]:
    """Return the lines and creation time of a batch file; ValueError if damaged."""
    end = blob.find(b"\n", 0, _HEADER_MAX)
    fields = blob[:end].split(b" ") if end >= 0 else []
    if len(fields) != 6 or fields[0] != _MAGIC:
        raise ValueError("not a batch file")
    if fields[1] != _VERSION:
        raise ValueError("unknown batch format version")
    records, length, crc = int(fields[2]), int(fields[3]), int(fields[4], 16)
    created = float(fields[5])
    payload = blob[end + 1 :]
    if len(payload) != length:
        raise ValueError("truncated")
    if zlib.crc32(payload) != crc:
        raise ValueError("checksum mismatch")
    unpacker = zlib.decompressobj(-15)
    try:
        text = unpacker.decompress(payload, _MAX_BATCH_TEXT)
    except zlib.error as exc:
        raise ValueError(f"undecodable payload: {exc}") from None
    if unpacker.unconsumed_tail or not unpacker.eof:
        raise ValueError("payload larger than any batch")
    lines = text.split(b"\n")
    if len(lines) != records or not math.isfinite(created):
        raise ValueError("inconsistent header")
    return lines, created


def _batch(name: str, match: re.Match[str], size: int) -> _Batch:
    return _Batch(name, match["id"], int(match["ns"]), int(match["records"]), size)


def _size(entry: os.DirEntry[str]) -> int:
    """Return the size of *entry*, or -1 when it vanished."""
    try:
        return entry.stat(follow_symlinks=False).st_size
    except OSError:
        return -1


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    if os.name != "posix":
        # os.kill would terminate the process there; the lease decides alone.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
