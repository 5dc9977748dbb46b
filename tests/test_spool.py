"""The handler and its disk cache across processes: nothing lost, nothing twice."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from support import KEY, OTHER_TENANT, TENANT, isolated_logger, wait_until

from onecollector_logging import OneCollectorHandler
from onecollector_logging._cache import DiskCache
from onecollector_logging.testing import Answer, LocalCollector

ROOT = Path(__file__).resolve().parent.parent
#: A loopback port with nothing listening: every connection is refused.
DEAD_ENDPOINT = "http://127.0.0.1:9/OneCollector/1.0/"

CHILD = """
import json, logging, os, sys, threading, time
from onecollector_logging import OneCollectorHandler
from onecollector_logging._cache import DiskCache

args = json.loads(sys.argv[1])
handler = OneCollectorHandler(
    args["key"], endpoint=args["endpoint"], cache_dir=args["cache_dir"],
    **args.get("options", {}))
logger = logging.getLogger("child")
logger.addHandler(handler)
logger.setLevel(logging.INFO)

def work(thread):
    pad = args.get("pad", 0)
    for i in range(args["records"]):
        logger.info("p%s t%s r%s", args["name"], thread, i,
                    extra={"pad": os.urandom(pad).hex()} if pad else None)

threads = [threading.Thread(target=work, args=(t,)) for t in range(args["threads"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
if args.get("drain"):
    cache = DiskCache.open(args["cache_dir"], args["tenant"])
    deadline = time.monotonic() + args["drain"]
    while cache.stats()["batches"] and time.monotonic() < deadline:
        time.sleep(0.05)
logging.shutdown()
print(json.dumps(handler.stats()))
"""


def _spawn(name: str, endpoint: str, cache_dir: Path, **args: Any) -> subprocess.Popen:
    spec = {
        "name": name,
        "key": KEY,
        "tenant": TENANT,
        "endpoint": endpoint,
        "cache_dir": str(cache_dir),
        "records": 0,
        "threads": 1,
        **args,
    }
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 120) -> Dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def _identities(events: List[Dict[str, Any]]) -> Counter[Tuple[str, int]]:
    return Counter((e["ext"]["sdk"]["epoch"], e["ext"]["sdk"]["seq"]) for e in events)


def _store_one_batch_each(cache_dir: Path, text: str, records: int) -> None:
    """Log *records* records while the collector is down, one cached batch each."""
    writer = OneCollectorHandler(
        KEY, endpoint=DEAD_ENDPOINT, cache_dir=str(cache_dir), shutdown_timeout=2
    )
    logger = isolated_logger("app.outage", writer)
    for i in range(records):
        logger.info("%s %d", text, i)
        writer.flush()
    writer.close()


def _cache_stats(cache_dir: Path) -> Dict[str, Any]:
    cache = DiskCache.open(str(cache_dir), TENANT)
    assert cache is not None
    return dict(cache.stats())


def test_records_of_a_process_that_could_not_send_are_delivered_by_the_next(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    stored = _finish(_spawn("a", DEAD_ENDPOINT, tmp_path, records=5000))
    assert stored["cached"] == 5000
    assert _cache_stats(tmp_path)["records"] == 5000

    drained = _finish(_spawn("b", onecollector.endpoint, tmp_path, records=1, drain=60))

    assert onecollector.wait_for_events(5001)
    identities = _identities(onecollector.events)
    assert len(identities) == 5001 and max(identities.values()) == 1
    assert drained["accepted"] == 5001
    assert _cache_stats(tmp_path)["records"] == 0


@pytest.mark.timeout(300)
def test_many_writers_then_several_drainers_deliver_each_record_once(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    writers = [
        _spawn(f"w{n}", DEAD_ENDPOINT, tmp_path, records=1000, threads=2)
        for n in range(8)
    ]
    for writer in writers:
        assert _finish(writer)["cached"] == 2000

    drainers = [
        _spawn(f"d{n}", onecollector.endpoint, tmp_path, records=1, drain=120)
        for n in range(3)
    ]
    for drainer in drainers:
        _finish(drainer, timeout=180)

    assert onecollector.wait_for_events(16_003, timeout=60)
    identities = _identities(onecollector.events)
    assert len(identities) == 16_003
    assert max(identities.values()) == 1
    texts = {e["data"]["formattedMessage"] for e in onecollector.events}
    assert len({t for t in texts if t.startswith("pw")}) == 16_000


def test_sixteen_processes_starting_at_once_on_a_fresh_cache(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "fresh" / "cache"
    processes = [
        _spawn(f"s{n}", onecollector.endpoint, cache_dir, records=1) for n in range(16)
    ]

    results = [_finish(p) for p in processes]

    assert sum(r.get("accepted", 0) for r in results) == 16
    assert onecollector.wait_for_events(16)


def test_bad_files_in_the_cache_do_not_stop_good_batches(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    _store_one_batch_each(tmp_path, "good", 3)
    partition = tmp_path / TENANT
    (partition / "0-empty.batch").write_bytes(b"")
    good = sorted(partition.glob("*.batch"))[0].read_bytes()
    (partition / "00000000000000000001-1-1-ab-1.batch").write_bytes(
        good[: len(good) // 2]
    )
    (partition / "00000000000000000002-1-1-cd-1.batch").write_bytes(os.urandom(300))

    reader = OneCollectorHandler(
        KEY, endpoint=onecollector.endpoint, cache_dir=str(tmp_path)
    )
    isolated_logger("app.mixed", reader).info("live")
    reader.flush()
    assert onecollector.wait_for_events(4)
    reader.close()

    assert sorted(e["data"]["formattedMessage"] for e in onecollector.events) == [
        "good 0",
        "good 1",
        "good 2",
        "live",
    ]
    assert _cache_stats(tmp_path)["batches"] == 0


def test_a_bounded_cache_keeps_the_newest_records_of_a_long_outage(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    bound = 1024 * 1024
    stored = _finish(
        _spawn(
            "outage",
            DEAD_ENDPOINT,
            tmp_path,
            records=20_000,
            pad=64,
            options={"cache_max_bytes": bound},
        )
    )
    on_disk = sum(
        f.stat().st_size for f in (tmp_path / TENANT).iterdir() if f.is_file()
    )
    assert on_disk <= bound
    evicted = stored["dropped"]["cache_full"]
    assert evicted > 0
    kept = _cache_stats(tmp_path)["records"]
    assert stored["cached"] - evicted == kept

    _finish(_spawn("after", onecollector.endpoint, tmp_path, records=1, drain=60))

    assert onecollector.wait_for_events(kept + 1)
    outage = [
        e for e in onecollector.events if "poutage" in e["data"]["formattedMessage"]
    ]
    seqs = set(e["ext"]["sdk"]["seq"] for e in outage)
    # The newest records all arrive. The batches the sender held when the
    # process closed (the one in its hands and two handed over to it, at most
    # 1,500 records) are stored last, so they may be kept although older.
    newest = set(range(20_001 - (len(seqs) - 1500), 20_001))
    assert newest <= seqs


def test_a_drainer_killed_mid_drain_leaves_the_rest_to_the_next(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    _finish(_spawn("w", DEAD_ENDPOINT, tmp_path, records=2000))
    batches = _cache_stats(tmp_path)["batches"]
    assert batches >= 4
    onecollector.script_always(Answer(delay_s=0.2))
    victim = _spawn("v", onecollector.endpoint, tmp_path, records=1, drain=60)
    assert onecollector.wait_for_requests(3, timeout=30)

    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    onecollector.script_always(None)
    _finish(_spawn("n", onecollector.endpoint, tmp_path, records=1, drain=60))

    writer_events = [
        e for e in onecollector.events if "pw " in e["data"]["formattedMessage"]
    ]
    identities = _identities(writer_events)
    assert len(identities) == 2000
    duplicates = sum(n - 1 for n in identities.values())
    assert duplicates <= 500


def test_a_kill_window_is_honoured_by_the_next_process(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    onecollector.kill(TENANT, 600)
    first = _finish(_spawn("k1", onecollector.endpoint, tmp_path, records=1))
    assert first["accepted"] == 1

    second = _finish(_spawn("k2", onecollector.endpoint, tmp_path, records=50))

    assert len(onecollector.requests) == 1
    assert second["dropped"]["killed"] == 50
    assert _cache_stats(tmp_path)["records"] == 0
    assert _cache_stats(tmp_path)["kill_until"] > 0


def _cli(*args: str, key: Optional[str] = KEY) -> str:
    """Run ``cache`` with *args*; return its exit status, a newline, its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if key:
        env["ONECOLLECTOR_INSTRUMENTATION_KEY"] = key
    result = subprocess.run(
        [sys.executable, "-m", "onecollector_logging", "cache", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return f"{result.returncode}\n{result.stdout}{result.stderr}"


def _tree(root: Path) -> List[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def _envelopes(first: int, count: int) -> List[bytes]:
    """Serialized envelopes the collector accepts, numbered from *first*."""
    return [
        json.dumps(
            {
                "ver": "4.0",
                "name": "Contoso.Spool.Log",
                "time": "2026-12-03T10:11:12.345Z",
                "iKey": f"o:{TENANT}",
                "data": {"n": n},
            }
        ).encode()
        for n in range(first, first + count)
    ]


def _store_batches(cache_dir: Path, *sizes: int) -> None:
    cache = DiskCache.open(str(cache_dir), TENANT)
    assert cache is not None
    first = 0
    for size in sizes:
        assert cache.put(_envelopes(first, size))
        first += size


def test_cache_command_line(onecollector: LocalCollector, tmp_path: Path) -> None:
    _finish(_spawn("cli", DEAD_ENDPOINT, tmp_path, records=30))

    stats = _cli("stats", "--cache-dir", str(tmp_path))
    assert stats.startswith("0\n") and TENANT in stats and "30" in stats
    refused = _cli("purge", "--cache-dir", str(tmp_path))
    assert refused.startswith("1\n")
    flushed = _cli(
        "flush", "--cache-dir", str(tmp_path), "--endpoint", onecollector.endpoint
    )
    assert flushed.startswith("0\n") and "30 record(s) sent" in flushed
    assert len(onecollector.events) == 30
    assert KEY not in stats + flushed

    _finish(_spawn("cli2", DEAD_ENDPOINT, tmp_path, records=5))
    purged = _cli("purge", "--yes", "--cache-dir", str(tmp_path))
    assert purged.startswith("0\n")
    assert _cache_stats(tmp_path)["records"] == 0


def test_cache_commands_create_nothing_for_a_tenant_with_nothing_cached(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    other = tmp_path / "other"
    other_cache = DiskCache.open(str(other), OTHER_TENANT)
    assert other_cache is not None and other_cache.put(_envelopes(0, 3))
    before = _tree(tmp_path)

    flushed = [
        _cli("flush", "--cache-dir", str(root), "--endpoint", onecollector.endpoint)
        for root in (missing, other)
    ]
    shown = [_cli("stats", "--cache-dir", str(root)) for root in (missing, other)]
    purged = [_cli("purge", "--yes", "--cache-dir", str(root)) for root in (missing,)]

    assert _tree(tmp_path) == before
    for output in flushed:
        assert output.startswith("0\n"), output
        assert f"nothing cached for tenant {TENANT}" in output
    assert f"tenants with a cache there: {OTHER_TENANT}" in flushed[1]
    assert "tenants with a cache there" not in flushed[0]
    assert all(output.startswith("0\n") for output in shown + purged)
    assert onecollector.requests == []


def test_cache_flush_sends_batches_larger_than_a_request_and_counts_all(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    _store_batches(tmp_path, 300, 700, 200)

    flushed = _cli(
        "flush", "--cache-dir", str(tmp_path), "--endpoint", onecollector.endpoint
    )

    assert flushed.startswith("0\n"), flushed
    assert f"tenant {TENANT}: 1200 record(s) sent, 0 not" in flushed
    assert [e["data"]["n"] for e in onecollector.events] == list(range(1200))
    assert all(len(r.events) <= 500 for r in onecollector.requests)
    assert _cache_stats(tmp_path)["records"] == 0


def test_cache_flush_counts_rejected_records_as_not_sent(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    _store_batches(tmp_path, 10)
    onecollector.script(
        Answer(200, body={"acc": 8, "efi": {"InvalidEventFormat": [0, 1]}})
    )

    flushed = _cli(
        "flush", "--cache-dir", str(tmp_path), "--endpoint", onecollector.endpoint
    )

    assert flushed.startswith("1\n"), flushed
    assert f"tenant {TENANT}: 8 record(s) sent, 2 not" in flushed
    assert len(onecollector.events) == 8


def test_cache_flush_stopped_by_a_failure_says_what_is_still_cached(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    _store_batches(tmp_path, 300, 200)
    onecollector.script_always(Answer(503))

    flushed = _cli(
        "flush", "--cache-dir", str(tmp_path), "--endpoint", onecollector.endpoint
    )

    assert flushed.startswith("1\n"), flushed
    assert "0 record(s) sent, 300 not; 500 still cached" in flushed


def test_cache_commands_refuse_a_file_as_the_cache_root(tmp_path: Path) -> None:
    a_file = tmp_path / "cache"
    a_file.write_text("not a directory", encoding="utf-8")

    shown = _cli("stats", "--cache-dir", str(a_file))

    assert shown.startswith("2\n"), shown
    assert "is not a directory" in shown


def test_a_cached_batch_larger_than_a_request_is_delivered_in_parts(
    onecollector: LocalCollector, make_handler: Any, tmp_path: Path
) -> None:
    _store_batches(tmp_path, 1200)
    handler = make_handler(cache_dir=str(tmp_path))
    logger = isolated_logger("app.drain", handler)

    logger.info("live")
    assert wait_until(
        lambda: len(onecollector.events) == 1201 or "dropped" in handler.stats(),
        timeout=30,
    )
    handler.close()

    drained = sorted(e["data"]["n"] for e in onecollector.events if "n" in e["data"])
    assert drained == list(range(1200))
    assert handler.stats()["accepted"] == 1201
    assert "dropped" not in handler.stats()
    assert _cache_stats(tmp_path)["records"] == 0


def test_draining_stops_at_the_first_failure_and_is_paced(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    _store_one_batch_each(tmp_path, "stored", 20)
    assert _cache_stats(tmp_path)["batches"] == 20
    onecollector.script(Answer(503))
    reader = OneCollectorHandler(
        KEY, endpoint=onecollector.endpoint, cache_dir=str(tmp_path)
    )
    live = isolated_logger("app.outage", reader)
    live.info("live 1")
    assert onecollector.wait_for_requests(1)

    def failed_at() -> int:
        statuses = [r.status for r in onecollector.requests]
        return statuses.index(503) if 503 in statuses else -1

    while failed_at() < 0:
        assert onecollector.wait_for_requests(len(onecollector.requests) + 1)
    live.info("live 2")
    reader.flush()
    assert onecollector.wait_for_events(22, timeout=30)
    reader.close()

    requests = onecollector.requests
    after_failure = requests[failed_at() + 1]
    assert all(
        e["data"]["formattedMessage"].startswith("live") for e in after_failure.events
    )
    drains = [
        r.received_at
        for r in requests
        if r.status == 200 and r.events[0]["data"]["formattedMessage"].startswith("st")
    ]
    assert len(drains) == 20
    gaps = [b - a for a, b in zip(drains, drains[1:])]
    assert min(gaps) >= 0.015


def test_an_unusable_cache_location_falls_back_to_memory_with_one_warning(
    onecollector: LocalCollector,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    handler = OneCollectorHandler(
        KEY, endpoint=onecollector.endpoint, cache_dir=str(link), flush_interval_s=0.05
    )
    logger = isolated_logger("app.nocache", handler)

    with caplog.at_level(logging.WARNING, logger="onecollector_logging"):
        for i in range(5):
            logger.info("n%d", i)
            handler.flush()
        handler.close()

    assert onecollector.wait_for_events(5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(link) in warnings[0].getMessage()
    assert list(real.iterdir()) == []


def test_a_kill_order_deletes_the_tenants_cached_batches(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    _store_one_batch_each(tmp_path, "stored", 5)
    onecollector.script(Answer(503))
    onecollector.kill(TENANT, 600)
    handler = OneCollectorHandler(
        KEY, endpoint=onecollector.endpoint, cache_dir=str(tmp_path)
    )
    logger = isolated_logger("app.killed", handler)

    logger.info("live")
    handler.flush()
    handler.close()

    assert _cache_stats(tmp_path)["batches"] == 0
    assert handler.stats()["dropped"]["killed"] == 6
    assert all(r.status != 200 for r in onecollector.requests)


def test_an_empty_cache_is_looked_at_once_not_after_every_delivered_batch(
    onecollector: LocalCollector, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims: List[int] = []
    claim = DiskCache.claim

    def counted_claim(self: DiskCache) -> Any:
        claims.append(1)
        return claim(self)

    monkeypatch.setattr(DiskCache, "claim", counted_claim)
    handler = make()
    logger = isolated_logger("app.steady", handler)

    for round_number in range(5):
        logger.info("round %d", round_number)
        assert handler.flush_within(10)

    assert onecollector.wait_for_events(5)
    assert len(onecollector.requests) == 5
    assert len(claims) <= 1


@pytest.mark.parametrize(
    "refusal",
    [
        Answer(
            401,
            headers={"Collector-Error": "Invalid Tenant Token"},
            body={"acc": 0, "efi": {"InvalidTenantToken": "all"}},
        ),
        Answer(400, headers={"Collector-Error": "Invalid Tenant Token"}),
        Answer(403),
    ],
)
def test_a_key_the_collector_refuses_leaves_the_cache_alone(
    onecollector: LocalCollector,
    make_handler: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    refusal: Answer,
) -> None:
    # What other processes of the tenant stored is not this key's to discard:
    # neither the handler nor cache flush drops it.
    _store_batches(tmp_path, 300, 200)
    onecollector.script_always(refusal)

    with caplog.at_level(logging.WARNING, logger="onecollector_logging"):
        handler = make_handler(cache_dir=str(tmp_path), flush_interval_s=0.05)
        isolated_logger("app.badkey", handler).info("live")
        assert onecollector.wait_for_requests(2)
        assert wait_until(lambda: _cache_stats(tmp_path)["claimed"] == 0)
        handler.close()
    flushed = _cli(
        "flush", "--cache-dir", str(tmp_path), "--endpoint", onecollector.endpoint
    )

    assert _cache_stats(tmp_path)["records"] == 500
    stats = handler.stats()
    assert sum(stats["rejected"].values()) == 1  # the live record
    assert "dropped" not in stats and "cached" not in stats
    assert any("refused this handler's key" in r.getMessage() for r in caplog.records)
    assert flushed.startswith("1\n"), flushed
    assert f"stopped: the collector refused the key (HTTP {refusal.status}" in flushed
    assert "0 record(s) sent, 300 not; 500 still cached" in flushed
