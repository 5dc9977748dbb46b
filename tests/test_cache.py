"""The on-disk spool: round trips, bounds, damaged files, permissions, processes."""

from __future__ import annotations

import gzip
import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import filelock
import platformdirs
import pytest
from freezegun import freeze_time

from onecollector_logging import _cache
from onecollector_logging._cache import Claim, DiskCache, default_cache_root, partitions
from onecollector_logging._compress import compress_lines
from onecollector_logging._stats import Counters
from onecollector_logging.exceptions import ConfigurationError

TENANT = "0123456789abcdef0123456789abcdef"
LOGGER = "onecollector_logging._cache"
JOIN_TIMEOUT_S = 60.0
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "spool")


@pytest.fixture
def counters() -> Counters:
    return Counters()


@pytest.fixture
def cache(root: str, counters: Counters) -> DiskCache:
    return _open(root, counters=counters)


def _warnings(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _open(root: Optional[str], tenant: str = TENANT, **options: Any) -> DiskCache:
    cache = DiskCache.open(root, tenant, **options)
    assert cache is not None
    return cache


def _lines(tag: str, count: int) -> List[bytes]:
    return [json.dumps({"tag": tag, "n": n}).encode() for n in range(count)]


def _noisy_lines(tag: str, count: int) -> List[bytes]:
    """Lines that do not compress, so that their size on disk is predictable."""
    return [
        json.dumps({"tag": tag, "n": n, "pad": os.urandom(48).hex()}).encode()
        for n in range(count)
    ]


def _drain(cache: DiskCache) -> List[List[bytes]]:
    batches: List[List[bytes]] = []
    while True:
        claim = cache.claim()
        if claim is None:
            return batches
        batches.append(claim.lines)
        claim.done()


def _files(cache: DiskCache, suffix: str) -> List[str]:
    return sorted(n for n in os.listdir(cache.path) if n.endswith(suffix))


def _disk_bytes(cache: DiskCache) -> int:
    return sum(
        os.path.getsize(os.path.join(cache.path, name))
        for name in os.listdir(cache.path)
        if name.endswith((".batch", ".claim"))
    )


def _batch_name(created_ns: int, records: int) -> str:
    return f"{created_ns:020d}-1-00000000-00000000-{records}.batch"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=JOIN_TIMEOUT_S)
    return child.pid


# -- round trips -------------------------------------------------------------


def test_put_claim_done_round_trip_leaves_nothing_behind(cache: DiskCache) -> None:
    lines = _lines("a", 3)
    created = time.time() - 60.25

    assert cache.put(lines, created=created)
    claim = cache.claim()

    assert claim is not None
    assert claim.lines == lines
    assert claim.created == created
    assert claim.path.endswith(".claim") and os.path.exists(claim.path)
    claim.done()
    assert cache.claim() is None
    assert sorted(os.listdir(cache.path)) == [".lock"]


def test_put_of_no_lines_writes_nothing(cache: DiskCache) -> None:
    assert cache.put([])

    assert cache.claim() is None


def test_a_batch_withdrawn_before_any_claim_is_gone(cache: DiskCache) -> None:
    name = cache.put_batch(_lines("a", 2))
    cache.put(_lines("b", 1))

    assert name is not None and cache.withdraw(name)

    claim = cache.claim()
    assert claim is not None and claim.lines == _lines("b", 1)
    claim.done()
    assert cache.claim() is None and cache.stats()["records"] == 0


def test_a_claimed_batch_cannot_be_withdrawn(cache: DiskCache) -> None:
    name = cache.put_batch(_lines("a", 2))
    claim = cache.claim()

    assert name is not None and claim is not None
    assert not cache.withdraw(name)
    assert claim.lines == _lines("a", 2)
    claim.done()
    assert sorted(os.listdir(cache.path)) == [".lock"]


def test_claims_come_oldest_first_by_creation_time(cache: DiskCache) -> None:
    now = time.time()
    for tag, age_s in (("c", 10.0), ("a", 30.0), ("b", 20.0)):
        cache.put(_lines(tag, 1), created=now - age_s)
    for tag in "def":
        cache.put(_lines(tag, 1))

    order = [json.loads(batch[0])["tag"] for batch in _drain(cache)]

    assert order == ["a", "b", "c", "d", "e", "f"]


def test_claimed_batch_is_not_claimed_again(cache: DiskCache) -> None:
    cache.put(_lines("a", 1))
    cache.put(_lines("b", 1))

    first = cache.claim()
    second = cache.claim()

    assert first is not None and second is not None
    assert first.lines != second.lines
    assert cache.claim() is None


def test_release_makes_the_batch_claimable_again_in_its_place(
    cache: DiskCache,
) -> None:
    cache.put(_lines("a", 2))
    cache.put(_lines("b", 2))
    claim = cache.claim()
    assert claim is not None

    claim.release()
    again = cache.claim()

    assert again is not None
    assert again.lines == _lines("a", 2)


def test_divide_puts_the_parts_in_the_batchs_place_evicting_nothing(
    root: str, counters: Counters
) -> None:
    batch, newer = _noisy_lines("a", 10), _noisy_lines("b", 2)
    writer = _open(root)
    writer.put(batch, created=time.time() - 60.25)
    writer.put(newer)
    # Full but for a few bytes: the parts may not push out the newer batch.
    cache = _open(root, counters=counters, max_bytes=_disk_bytes(writer) + 64)
    claim = cache.claim()
    assert claim is not None

    claim.divide([claim.lines[:4], claim.lines[4:]])

    assert _drain(cache) == [batch[:4], batch[4:], newer]
    assert _files(cache, ".claim") == []
    assert counters.snapshot() == {}


def test_settling_a_claim_twice_does_nothing(
    cache: DiskCache, counters: Counters
) -> None:
    cache.put(_lines("a", 2))
    claim = cache.claim()
    assert claim is not None

    claim.drop("rejected")
    claim.release()
    claim.drop("rejected")

    assert counters.get("dropped.rejected") == 2
    assert cache.claim() is None


def test_drop_deletes_and_counts_by_records(
    cache: DiskCache, counters: Counters
) -> None:
    cache.put(_lines("a", 4))
    claim = cache.claim()
    assert claim is not None

    claim.drop("killed")

    assert counters.get("dropped.killed") == 4
    assert _files(cache, ".claim") == [] and _files(cache, ".batch") == []


def test_line_with_a_newline_is_refused_and_counted(
    cache: DiskCache, counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    assert not cache.put([b'{"a":1}', b'{"b":\n2}'])

    assert counters.get("dropped.cache_error") == 2
    assert len(_warnings(caplog)) == 1
    assert cache.claim() is None


def test_batch_file_carries_a_checked_header(cache: DiskCache) -> None:
    cache.put([b'{"a":1}', b'{"b":2}'], created=1234.5)

    (name,) = _files(cache, ".batch")
    blob = Path(cache.path, name).read_bytes()

    header, _, payload = blob.partition(b"\n")
    assert zlib.decompress(payload, -15) == b'{"a":1}\n{"b":2}'
    assert header.split(b" ")[:4] == [b"ocl-spool", b"1", b"2", b"%d" % len(payload)]
    assert re.fullmatch(r"\d{20}-\d+-\d{8}-[0-9a-f]{8}-2\.batch", name)


# -- permissions and unusable locations ---------------------------------------


@posix_only
def test_directories_are_0700_and_files_0600_whatever_the_umask(root: str) -> None:
    previous = os.umask(0)
    try:
        cache = _open(root)
        cache.put(_lines("a", 1))
        cache.set_kill_until(10.0)
    finally:
        os.umask(previous)

    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o700
    for name in os.listdir(cache.path):
        assert stat.S_IMODE(os.stat(os.path.join(cache.path, name)).st_mode) == 0o600


@posix_only
def test_existing_partition_is_tightened_but_a_shared_root_is_left_alone(
    root: str,
) -> None:
    partition = os.path.join(root, TENANT)
    os.makedirs(partition)
    os.chmod(root, 0o755)
    os.chmod(partition, 0o755)

    _open(root)

    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(partition).st_mode) == 0o700


def _symlinked_root(tmp_path: Path) -> str:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    return str(tmp_path / "link")


def _symlinked_partition(tmp_path: Path) -> str:
    (tmp_path / "spool").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "spool" / TENANT).symlink_to(tmp_path / "elsewhere")
    return str(tmp_path / "spool")


def _file_as_root(tmp_path: Path) -> str:
    (tmp_path / "spool").write_text("not a directory")
    return str(tmp_path / "spool")


def _file_as_partition(tmp_path: Path) -> str:
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / TENANT).write_text("not a directory")
    return str(tmp_path / "spool")


def _file_above_root(tmp_path: Path) -> str:
    (tmp_path / "plain").write_text("not a directory")
    return str(tmp_path / "plain" / "spool")


def _root_of_another_user(tmp_path: Path) -> str:
    (tmp_path / "spool").mkdir()
    os.chown(tmp_path / "spool", 65534, 65534)
    return str(tmp_path / "spool")


def _partition_of_another_user(tmp_path: Path) -> str:
    (tmp_path / "spool" / TENANT).mkdir(parents=True)
    os.chown(tmp_path / "spool" / TENANT, 65534, 65534)
    return str(tmp_path / "spool")


_needs_root = pytest.mark.skipif(not IS_ROOT, reason="chown needs root")


@posix_only
@pytest.mark.parametrize(
    ("make_root", "reason"),
    [
        (_symlinked_root, "symbolic link"),
        (_symlinked_partition, "symbolic link"),
        (_file_as_root, "a file is in the way"),
        (_file_as_partition, "a file is in the way"),
        (_file_above_root, "a file is in the way"),
        pytest.param(_root_of_another_user, "owned by uid 65534", marks=_needs_root),
        pytest.param(
            _partition_of_another_user, "owned by uid 65534", marks=_needs_root
        ),
    ],
)
def test_unusable_location_gives_none_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make_root: Any, reason: str
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    root = make_root(tmp_path)

    cache = DiskCache.open(root, TENANT)

    assert cache is None
    (warning,) = _warnings(caplog)
    assert reason in warning
    assert str(tmp_path) in warning


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "ro"
    target.mkdir()
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a read-only file system needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount tmpfs: {mounted.stderr!r}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_read_only_file_system_gives_none_and_one_warning(
    read_only_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    cache = DiskCache.open(str(read_only_dir / "spool"), TENANT)

    assert cache is None
    (warning,) = _warnings(caplog)
    assert "read-only" in warning


def test_existing_partition_remounted_read_only_is_unusable(
    read_only_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    subprocess.run(["mount", "-o", "remount,rw", str(read_only_dir)], check=True)
    _open(str(read_only_dir))
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_dir)], check=True)

    cache = DiskCache.open(str(read_only_dir), TENANT)

    assert cache is None
    (warning,) = _warnings(caplog)
    assert "read-only" in warning


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _open_as(uid: int, root: str, results: Any) -> None:
    if os.geteuid() != uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    handler = _Collect()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    cache = DiskCache.open(root, "tenant")
    warnings = [r.getMessage() for r in handler.records if r.levelno >= logging.WARNING]
    results.send((cache is None, warnings))


@posix_only
@pytest.mark.parametrize("state", ["no partition", "no lock file", "lock file"])
def test_directory_without_write_permission_gives_none_and_one_warning(
    state: str,
) -> None:
    # Permission bits do not bind root, so as root the check runs in a child
    # process that has dropped to the unprivileged uid 65534.
    uid = 65534 if IS_ROOT else os.getuid()
    base = tempfile.mkdtemp()
    spool = os.path.join(base, "spool")
    partition = os.path.join(spool, "tenant")
    receiver, sender = multiprocessing.get_context("spawn").Pipe(duplex=False)
    try:
        os.chmod(base, 0o755)
        os.makedirs(spool if state == "no partition" else partition)
        if state == "lock file":
            Path(partition, ".lock").touch()
        for dirpath, _, names in os.walk(spool):
            for path in [dirpath, *(os.path.join(dirpath, n) for n in names)]:
                os.chown(path, uid, uid)
        os.chmod(spool if state == "no partition" else partition, 0o500)

        codes = _spawn([(_open_as, (uid, spool, sender))])
        assert receiver.poll(JOIN_TIMEOUT_S)
        is_none, warnings = receiver.recv()
    finally:
        for path in (spool, partition):
            if os.path.isdir(path):
                os.chmod(path, 0o700)
        shutil.rmtree(base)

    assert codes == [0]
    assert is_none
    assert len(warnings) == 1
    assert "not writable" in warnings[0]


def test_invalid_tenant_or_bound_raises_configuration_error(root: str) -> None:
    for tenant in ("", "..", "a/b", "x" * 129, "o:abc"):
        with pytest.raises(ConfigurationError):
            DiskCache.open(root, tenant)
    with pytest.raises(ConfigurationError, match="max_bytes"):
        DiskCache.open(root, TENANT, max_bytes=0)
    with pytest.raises(ConfigurationError, match="max_age_s"):
        DiskCache.open(root, TENANT, max_age_s=float("nan"))


def test_default_root_is_the_per_user_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = platformdirs.user_cache_dir("onecollector-logging", appauthor=False)

    cache = _open(None)

    assert default_cache_root() == expected
    assert cache.path == os.path.join(expected, TENANT)
    assert partitions(None) == [TENANT]


# -- damaged files -------------------------------------------------------------


def test_damaged_and_foreign_files_are_counted_removed_and_skipped(
    cache: DiskCache, counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    for tag in "abc":
        cache.put(_lines(tag, 2))
    good = Path(cache.path, _files(cache, ".batch")[0]).read_bytes()
    older_ns = time.time_ns() - 10**9
    noise = random.Random(1).randbytes(300)
    bad = {
        _batch_name(older_ns, 2): b"",
        _batch_name(older_ns + 1, 2): good[: len(good) - 5],
        _batch_name(older_ns + 2, 2): noise,
        _batch_name(older_ns + 3, 2): b'{"ver":"4.0","name":"Some.Event"}\n{"x":1}',
        _batch_name(older_ns + 4, 2): good[:-3] + bytes([good[-3] ^ 0xFF]) + good[-2:],
        _batch_name(older_ns + 5, 3): good,
        "notes.batch": good,
        "stray.claim": good,
    }
    for name, blob in bad.items():
        Path(cache.path, name).write_bytes(blob)
    Path(cache.path, "README").write_text("left alone")

    tags = [json.loads(batch[0])["tag"] for batch in _drain(cache)]

    assert tags == ["a", "b", "c"]
    assert counters.get("cache.corrupt") == len(bad)
    assert sorted(os.listdir(cache.path)) == [".lock", "README"]
    assert len(_warnings(caplog)) == 1


def test_temp_files_are_never_claimed_and_removed_after_a_minute(
    cache: DiskCache,
) -> None:
    with freeze_time("2030-01-01") as frozen:
        cache.put(_lines("a", 1))
        good = Path(cache.path, _files(cache, ".batch")[0]).read_bytes()
        old = f".tmp-{_dead_pid()}-{time.time_ns()}-0000abcd"
        frozen.tick(30)
        recent = f".tmp-{_dead_pid()}-{time.time_ns()}-0000cafe"
        for name in (old, recent):
            Path(cache.path, name).write_bytes(good)
        frozen.tick(31)

        batches = _drain(cache)

    assert len(batches) == 1
    assert [n for n in os.listdir(cache.path) if n.startswith(".tmp")] == [recent]


# -- bounds ----------------------------------------------------------------------


def test_max_bytes_holds_evicting_the_oldest_and_counting_them(
    root: str, counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    max_bytes = 200_000
    cache = _open(root, max_bytes=max_bytes, counters=counters)
    records = 0
    for put in range(400):
        assert cache.put(_noisy_lines(f"p{put:03d}", 50))
        records += 50
        assert _disk_bytes(cache) <= max_bytes

    batches = _drain(cache)

    tags = [json.loads(batch[0])["tag"] for batch in batches]
    kept = sum(len(batch) for batch in batches)
    assert tags[-1] == "p399" and "p000" not in tags
    assert tags == sorted(tags)
    assert kept + counters.get("dropped.cache_full") == records == 20_000
    assert kept > 20_000 * 0.05
    assert len(_warnings(caplog)) == 1


def test_batch_larger_than_max_bytes_is_refused_and_counted(
    root: str, counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    cache = _open(root, max_bytes=1_000, counters=counters)
    cache.put(_lines("small", 1))

    assert not cache.put([os.urandom(2_000).hex().encode(), b"y"])

    assert counters.get("dropped.cache_full") == 2
    assert len(_warnings(caplog)) == 1
    assert [json.loads(b[0])["tag"] for b in _drain(cache)] == ["small"]


def test_batches_older_than_max_age_are_deleted_and_counted(
    root: str, counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    cache = _open(root, max_age_s=3600, counters=counters)
    with freeze_time("2030-01-01 00:00:00") as frozen:
        cache.put(_lines("old", 3))
        frozen.tick(1800)
        cache.put(_lines("new", 2))
        frozen.tick(1801)

        batches = _drain(cache)

    assert [json.loads(b[0])["tag"] for b in batches] == ["new"]
    assert counters.get("dropped.too_old") == 3
    assert len(_warnings(caplog)) == 1


def test_stats_describe_the_partition(cache: DiskCache) -> None:
    with freeze_time("2030-01-01 00:00:00") as frozen:
        cache.put(_lines("a", 3))
        frozen.tick(10)
        cache.put(_lines("b", 2))
        claim = cache.claim()
        frozen.tick(5)

        stats = cache.stats()

    assert claim is not None
    assert stats == {
        "batches": 2,
        "records": 5,
        "bytes": _disk_bytes(cache),
        "oldest_age_s": pytest.approx(15.0),
        "kill_until": 0.0,
        "claimed": 1,
    }


def test_purge_deletes_every_batch(cache: DiskCache) -> None:
    for tag in "abc":
        cache.put(_lines(tag, 1))
    assert cache.claim() is not None

    assert cache.purge() == 3

    assert cache.stats()["batches"] == 0
    assert cache.claim() is None


def test_partitions_lists_tenant_directories_only(root: str) -> None:
    _open(root, "tenantb")
    _open(root, "tenanta")
    Path(root, "file").write_text("x")
    os.symlink(os.path.join(root, "tenanta"), os.path.join(root, "linked"))

    assert partitions(root) == ["tenanta", "tenantb"]
    assert partitions(os.path.join(root, "missing")) == []


def test_partitions_skip_tenant_named_directories_the_cache_did_not_make(
    root: str,
) -> None:
    _open(root, "tenanta")
    Path(root, "photos").mkdir()
    Path(root, "photos", "a.jpg").write_bytes(b"\xff\xd8\xff")
    Path(root, "odd", ".lock").mkdir(parents=True)

    assert partitions(root) == ["tenanta"]


# -- failures while running --------------------------------------------------------


def test_write_failures_return_false_count_and_warn_once_per_streak(
    cache: DiskCache, counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    shutil.rmtree(cache.path)
    Path(cache.path).write_text("in the way")

    assert not cache.put(_lines("a", 2))
    assert not cache.put(_lines("b", 3))
    os.unlink(cache.path)
    assert cache.put(_lines("c", 1))
    shutil.rmtree(cache.path)
    Path(cache.path).write_text("in the way")
    assert not cache.put(_lines("d", 1))

    assert counters.get("dropped.cache_error") == 6
    assert len(_warnings(caplog)) == 2


def test_put_recreates_a_deleted_partition(cache: DiskCache) -> None:
    shutil.rmtree(cache.path)

    assert cache.put(_lines("a", 1))

    assert [json.loads(b[0])["tag"] for b in _drain(cache)] == ["a"]


def test_claim_returns_none_while_the_lock_is_held_elsewhere(root: str) -> None:
    cache = _open(root, lock_timeout_s=0.05)
    cache.put(_lines("a", 1))
    other = filelock.FileLock(os.path.join(cache.path, ".lock"))

    with other:
        blocked = cache.claim()
    claimed = cache.claim()

    assert blocked is None
    assert claimed is not None


def test_claim_after_the_partition_vanished_returns_none(cache: DiskCache) -> None:
    shutil.rmtree(cache.path)

    assert cache.claim() is None


# -- kill window ------------------------------------------------------------------


def test_kill_window_is_read_by_another_instance(root: str) -> None:
    with freeze_time("2030-01-01 00:00:00"):
        first = _open(root)
        until = time.time() + 3600
        first.set_kill_until(until)

        second = _open(root)

        assert second.kill_until() == until
        assert second.stats()["kill_until"] == until


@pytest.mark.parametrize(
    "content", [None, b"", b"{", b"[]", b'{"kill_until": "soon"}', b'{"x": 1}']
)
def test_missing_or_corrupt_kill_file_reads_as_zero(
    cache: DiskCache, content: Optional[bytes]
) -> None:
    if content is not None:
        Path(cache.path, "kill.json").write_bytes(content)

    assert cache.kill_until() == 0.0


# -- stale claims -------------------------------------------------------------------


def _rename_owner(claim: Claim, pid: int) -> None:
    directory, name = os.path.split(claim.path)
    batch_id, _owner, token, suffix = name.split(".")
    os.rename(claim.path, os.path.join(directory, f"{batch_id}.{pid}.{token}.{suffix}"))


def test_claim_of_a_dead_process_is_taken_over(root: str) -> None:
    first = _open(root)
    first.put(_lines("a", 2))
    claim = first.claim()
    assert claim is not None
    _rename_owner(claim, _dead_pid())

    taken = _open(root).claim()

    assert taken is not None
    assert taken.lines == _lines("a", 2)


def test_claim_of_a_live_process_is_left_alone(root: str) -> None:
    first = _open(root)
    first.put(_lines("a", 2))
    assert first.claim() is not None

    assert _open(root).claim() is None


def test_claim_past_its_lease_is_taken_over_and_not_sent_twice(root: str) -> None:
    with freeze_time("2030-01-01 00:00:00") as frozen:
        first = _open(root, claim_lease_s=600)
        first.put(_lines("a", 1))
        first.put(_lines("b", 1))
        slow = first.claim()
        assert slow is not None
        frozen.tick(601)

        second = _open(root, claim_lease_s=600)
        taken = second.claim()
        assert taken is not None
        taken.release()
        slow.done()
        remaining = _drain(second)

    assert taken.lines == _lines("a", 1)
    assert remaining == [_lines("b", 1)]


# -- several processes ------------------------------------------------------------


def _spawn(
    targets: Sequence[Tuple[Any, Tuple[Any, ...]]],
) -> List[Optional[int]]:
    """Run each (function, args) in its own spawned process; return exit codes."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=fn, args=args) for fn, args in targets]
    for process in processes:
        process.start()
    for process in processes:
        process.join(JOIN_TIMEOUT_S)
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(JOIN_TIMEOUT_S)
    return [process.exitcode for process in processes]


def _barrier(parties: int) -> Any:
    return multiprocessing.get_context("spawn").Barrier(parties, timeout=JOIN_TIMEOUT_S)


def _writer(root: str, writer: int, puts: int, barrier: Any) -> None:
    cache = _open(root)
    barrier.wait()
    for n in range(puts):
        line = json.dumps({"w": writer, "n": n}).encode()
        assert cache.put([line, line])


def _claimer(root: str, out: str, barrier: Any) -> None:
    cache = _open(root)
    barrier.wait()
    seen = []
    while True:
        claim = cache.claim()
        if claim is None:
            break
        seen.append(json.loads(claim.lines[0]))
        claim.done()
    Path(out).write_text(json.dumps(seen))


def _opener(root: str, out: str, barrier: Any) -> None:
    barrier.wait()
    cache = DiskCache.open(root, TENANT)
    stored = cache is not None and cache.put([json.dumps({"out": out}).encode()])
    Path(out).write_text(json.dumps(stored))


def test_concurrent_writers_and_claimers_handle_every_batch_exactly_once(
    root: str, tmp_path: Path
) -> None:
    barrier = _barrier(8)
    codes = _spawn([(_writer, (root, w, 50, barrier)) for w in range(8)])
    assert codes == [0] * 8
    outs = [str(tmp_path / f"claimed-{c}.json") for c in range(4)]
    barrier = _barrier(4)

    codes = _spawn([(_claimer, (root, out, barrier)) for out in outs])

    assert codes == [0] * 4
    seen = [
        (item["w"], item["n"])
        for out in outs
        for item in json.loads(Path(out).read_text())
    ]
    assert len(seen) == 400
    assert set(seen) == {(w, n) for w in range(8) for n in range(50)}


def test_sixteen_processes_opening_a_fresh_root_at_once_all_succeed(
    tmp_path: Path,
) -> None:
    root = str(tmp_path / "fresh" / "spool")
    outs = [str(tmp_path / f"opened-{i}.json") for i in range(16)]
    barrier = _barrier(16)

    codes = _spawn([(_opener, (root, out, barrier)) for out in outs])

    assert codes == [0] * 16
    assert all(json.loads(Path(out).read_text()) is True for out in outs)
    cache = _open(root)
    assert len(_drain(cache)) == 16
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o700


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def _kill_self_after(seed: int, most_s: float) -> None:
    delay = random.Random(seed).uniform(0.0, most_s)
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL))
    timer.daemon = True
    timer.start()


def _doomed_writer(root: str, writer: int, seed: int, acks: str) -> None:
    cache = _open(root)
    _kill_self_after(seed, 0.2)
    for n in range(100_000):
        item = json.dumps({"w": writer, "n": n})
        if cache.put([item.encode()] * (1 + n % 7)):
            _append(acks, item)


def _doomed_drainer(root: str, seed: int, log: str) -> None:
    cache = _open(root)
    _kill_self_after(seed, 0.1)
    while True:
        claim = cache.claim()
        if claim is None:
            break
        _append(log, "claimed " + claim.lines[0].decode())
        claim.done()
        _append(log, "done " + claim.lines[0].decode())


def _drainer_killed_before_done(root: str, claims: int, log: str) -> None:
    cache = _open(root)
    for _ in range(claims):
        claim = cache.claim()
        assert claim is not None
        _append(log, claim.lines[0].decode())
        claim.done()
    last = cache.claim()
    assert last is not None
    _append(log, last.lines[0].decode())
    os.kill(os.getpid(), signal.SIGKILL)


def _read_lines(path: Path) -> List[str]:
    return path.read_text().splitlines() if path.exists() else []


@posix_only
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_while_writing_and_draining_loses_no_written_batch(
    root: str, tmp_path: Path, counters: Counters, seed: int
) -> None:
    rng = random.Random(seed)
    acks = [tmp_path / f"acks-{w}.log" for w in range(4)]
    writers = _spawn(
        [
            (_doomed_writer, (root, w, rng.randrange(10**6), str(acks[w])))
            for w in range(4)
        ]
    )
    assert writers == [-signal.SIGKILL] * 4
    written = {line for path in acks for line in _read_lines(path)}
    logs = [tmp_path / f"drain-{d}.log" for d in range(2)]
    drainers = _spawn(
        [(_doomed_drainer, (root, rng.randrange(10**6), str(p))) for p in logs]
    )
    assert set(drainers) <= {0, -signal.SIGKILL}

    survivor = _open(root, counters=counters)
    drained = [batch[0].decode() for batch in _drain(survivor)]

    entries = [line.split(" ", 1) for path in logs for line in _read_lines(path)]
    done = [item for kind, item in entries if kind == "done"]
    claimed = {item for kind, item in entries if kind == "claimed"}
    undecided = claimed - set(done)
    assert len(undecided) <= len(logs)
    assert written
    assert written <= set(done) | set(drained) | undecided
    assert len(done) + len(drained) == len(set(done) | set(drained))
    assert counters.get("cache.corrupt") == 0
    assert _files(survivor, ".batch") == _files(survivor, ".claim") == []


@posix_only
def test_batch_claimed_by_a_killed_drainer_is_taken_over(
    root: str, tmp_path: Path
) -> None:
    cache = _open(root)
    for n in range(10):
        cache.put([json.dumps({"n": n}).encode()])
    log = tmp_path / "drain.log"

    codes = _spawn([(_drainer_killed_before_done, (root, 3, str(log)))])

    assert codes == [-signal.SIGKILL]
    assert [json.loads(line)["n"] for line in _read_lines(log)] == [0, 1, 2, 3]
    assert [json.loads(b[0])["n"] for b in _drain(cache)] == list(range(3, 10))


def test_several_threads_claim_distinct_batches(cache: DiskCache) -> None:
    for n in range(200):
        cache.put([json.dumps({"n": n}).encode()])
    seen: List[int] = []
    guard = threading.Lock()

    def drain() -> None:
        for batch in _drain(cache):
            with guard:
                seen.append(json.loads(batch[0])["n"])

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)

    assert not any(thread.is_alive() for thread in threads)
    assert sorted(seen) == list(range(200))


@pytest.mark.parametrize("count", [0, 1, 127, 128, 129, 257, 500])
def test_compressed_lines_inflate_to_the_lines_joined_by_newlines(count: int) -> None:
    lines = [b'{"n":%d,"pad":"%s"}' % (i, b"y" * (i % 7)) for i in range(count)]
    joined = b"\n".join(lines)

    assert zlib.decompress(compress_lines(lines), -15) == joined
    assert gzip.decompress(compress_lines(lines, "gzip")) == joined
    assert compress_lines(lines, "none") == joined


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_a_hold_is_being_recorded_can_claim() -> None:
    # The lock of the batches held from claims, taken by another thread at
    # the moment of the fork, is free in the child.
    with _cache._holds.lock:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os._exit(0 if _cache._holds.lock.acquire(timeout=2) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
