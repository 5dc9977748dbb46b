"""How the handler obeys the collector: retries, kill windows, Retry-After, skew."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest
from freezegun import freeze_time
from support import KEY, OTHER_TENANT, TENANT, isolated_logger, messages, wait_until

from onecollector_logging import OneCollectorHandler
from onecollector_logging._batcher import Pipeline
from onecollector_logging._cache import DiskCache
from onecollector_logging._transport import Interrupted, request_sized
from onecollector_logging.testing import Answer, LocalCollector

Make = Callable[..., OneCollectorHandler]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tuple[Any, List[float]]]:
    """A frozen clock; every backoff wait is recorded and moves it instead of
    sleeping."""
    waits: List[float] = []
    with freeze_time("2026-12-03 10:00:00") as frozen:

        def sleep(self: Pipeline, seconds: float) -> None:
            if self._interrupt.is_set():
                raise Interrupted()
            waits.append(seconds)
            frozen.tick(seconds)

        monkeypatch.setattr(Pipeline, "_sleep", sleep)
        yield frozen, waits


def _cached_batches(tmp_path: Path) -> int:
    cache = DiskCache.open(str(tmp_path / "cache"), TENANT)
    assert cache is not None
    return int(cache.stats()["batches"])  # type: ignore[call-overload]


def test_two_503_then_200_arrive_once_after_two_recorded_retries(
    onecollector: LocalCollector, make: Make, clock: Any
) -> None:
    _, waits = clock
    onecollector.script(Answer(503), Answer(503))
    handler = make()
    logger = isolated_logger("app.retry", handler)

    logger.info("persistent")

    assert onecollector.wait_for_events(1)
    assert len(onecollector.requests) == 3
    assert messages(onecollector.events) == ["persistent"]
    assert handler.stats()["retried"] == 2
    assert len(waits) == 2 and 3 <= waits[0] <= 6 and 6 <= waits[1] <= 9


def test_retry_after_is_honoured_on_the_frozen_clock(
    onecollector: LocalCollector, make: Make, clock: Any
) -> None:
    _, waits = clock
    onecollector.script(Answer(429, headers={"Retry-After": "7"}))
    logger = isolated_logger("app.throttled", make())

    logger.info("later")

    assert onecollector.wait_for_events(1)
    first, second = onecollector.requests
    gap_ms = int(second.headers["Upload-Time"]) - int(first.headers["Upload-Time"])
    assert gap_ms >= 7000
    assert waits and waits[0] >= 7


@pytest.mark.parametrize(
    "token_form", ["o:{tenant}:all", "{key}", "{key}:all", "{tenant}"]
)
def test_kill_order_silences_the_tenant_until_the_window_ends(
    onecollector: LocalCollector,
    make: Make,
    clock: Any,
    tmp_path: Path,
    token_form: str,
) -> None:
    frozen, _ = clock
    onecollector.script(Answer(401))
    onecollector.kill(TENANT, 60, token_form=token_form)
    handler = make()
    logger = isolated_logger("app.killed", handler)
    logger.info("ordered to stop")
    handler.flush()
    assert onecollector.wait_for_requests(1)

    for i in range(100):
        logger.info("during the window %d", i)
    handler.flush()
    frozen.tick(59)
    logger.info("still in the window")
    handler.flush()

    assert len(onecollector.requests) == 1
    assert handler.stats()["dropped"]["killed"] == 102
    assert _cached_batches(tmp_path) == 0
    frozen.tick(2)
    logger.info("after the window")
    handler.flush()
    assert onecollector.wait_for_events(1)
    assert messages(onecollector.events) == ["after the window"]


@pytest.mark.parametrize(
    ("tenant", "duration"), [(OTHER_TENANT, "60"), (TENANT, "abc"), (TENANT, "0")]
)
def test_kill_orders_for_others_or_without_a_duration_are_ignored(
    onecollector: LocalCollector, make: Make, clock: Any, tenant: str, duration: str
) -> None:
    onecollector.script(
        Answer(
            503,
            headers={"kill-tokens": f"o:{tenant}:all", "kill-duration": duration},
        )
    )
    handler = make()
    logger = isolated_logger("app.notkilled", handler)

    logger.info("still sent")

    assert onecollector.wait_for_events(1)
    assert "killed" not in handler.stats().get("dropped", {})


def test_kill_on_a_success_answer_is_honoured(
    onecollector: LocalCollector, make: Make, clock: Any
) -> None:
    onecollector.kill(TENANT, 60)
    handler = make()
    logger = isolated_logger("app.killok", handler)
    logger.info("accepted, then stop")
    handler.flush()
    assert onecollector.wait_for_events(1)

    logger.info("dropped")
    handler.flush()

    assert len(onecollector.requests) == 1
    assert handler.stats()["accepted"] == 1
    assert handler.stats()["dropped"]["killed"] == 1


def test_this_request_only_drops_the_batch_but_not_the_next(
    onecollector: LocalCollector, make: Make, clock: Any
) -> None:
    onecollector.script(Answer(503))
    onecollector.kill(TENANT, this_request_only=True)
    handler = make()
    logger = isolated_logger("app.once", handler)
    logger.info("dropped once")
    handler.flush()
    assert onecollector.wait_for_requests(1)

    logger.info("sent")
    handler.flush()

    assert onecollector.wait_for_events(1)
    assert messages(onecollector.events) == ["sent"]
    assert handler.stats()["dropped"]["killed"] == 1


def test_whole_request_rejection_is_dropped_once_with_one_warning(
    onecollector: LocalCollector,
    make: Make,
    clock: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rejection = Answer(
        400,
        headers={"Collector-Error": "All events rejected due to parsing failure."},
        body={"acc": 0, "efi": {"InvalidEventFormat": "all"}},
    )
    onecollector.script(rejection, rejection)
    handler = make(flush_interval_s=30)
    logger = isolated_logger("app.poison", handler)

    with caplog.at_level(logging.DEBUG, logger="onecollector_logging"):
        for i in range(5):
            logger.info("poison %d", i)
        handler.flush()
        logger.info("poison again")
        handler.flush()

    assert len(onecollector.requests) == 2
    assert handler.stats()["rejected"]["InvalidEventFormat"] == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "InvalidEventFormat" in warnings[0].getMessage()
    assert KEY not in caplog.text and TENANT in warnings[0].getMessage()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("400" in m and "parsing failure" in m for m in debug)


def test_partial_rejection_counts_both_sides(
    onecollector: LocalCollector, make: Make, clock: Any
) -> None:
    onecollector.script(
        Answer(200, body={"acc": 8, "rej": 2, "efi": {"EventLevelThrottling": [3, 7]}})
    )
    handler = make(flush_interval_s=30)
    logger = isolated_logger("app.partial", handler)

    for i in range(10):
        logger.info("n%d", i)
    handler.flush()

    stats = handler.stats()
    assert stats["accepted"] == 8
    assert stats["rejected"] == {"EventLevelThrottling": 2}
    assert len(onecollector.events) == 8


def test_too_large_batches_are_halved_and_a_lone_event_dropped(
    onecollector: LocalCollector, make: Make, clock: Any
) -> None:
    onecollector.script(Answer(413))
    handler = make(flush_interval_s=30)
    logger = isolated_logger("app.split", handler)
    for i in range(100):
        logger.info("n%d", i)
    handler.flush()
    assert onecollector.wait_for_events(100)
    assert [len(r.events) for r in onecollector.requests] == [100, 50, 50]

    onecollector.script(Answer(413))
    logger.info("alone")
    handler.flush()

    assert handler.stats()["dropped"]["too_large"] == 1
    assert len(onecollector.events) == 100


def test_a_record_that_opens_the_next_request_is_written_once(
    onecollector: LocalCollector, make: Make
) -> None:
    # Each event is cut to the event bound: three fill a request, the fourth
    # is written for the first batch and sent in the second.
    handler = make(flush_interval_s=30)
    logger = isolated_logger("app.large", handler)
    for i in range(4):
        logger.info("large %d", i, extra={"blob": "x" * 1_500_000})

    assert handler.flush_within(60)

    assert [len(r.events) for r in onecollector.requests] == [3, 1]
    assert handler.stats()["shrunk"] == 4
    assert [e["data"]["body"] for e in onecollector.events] == ["large %d"] * 4


def test_a_cookie_the_collector_sets_is_never_sent_back(
    onecollector: LocalCollector, make: Make
) -> None:
    onecollector.script(Answer(headers={"Set-Cookie": "visitor=42; Path=/"}))
    handler = make()
    logger = isolated_logger("app.cookie", handler)

    logger.info("first")
    assert handler.flush_within(10)
    logger.info("second")
    assert handler.flush_within(10)

    assert len(onecollector.requests) == 2
    assert [r.headers.get("Cookie") for r in onecollector.requests] == [None, None]
    assert handler.stats()["accepted"] == 2


def test_request_sized_parts_keep_the_order_within_both_limits() -> None:
    lines = [b"x" * size for size in (5, 5, 5, 20, 5, 5, 5)]

    parts = request_sized(lines, max_records=3, max_bytes=18)

    assert parts == [lines[:3], lines[3:4], lines[4:7]]
    assert request_sized([]) == []


def test_a_flush_that_leaves_a_batch_in_memory_says_it_did_not_finish(
    onecollector: LocalCollector, make: Make
) -> None:
    # Without a disk cache, the batch whose retry the flush cut short waits
    # in memory for the collector: neither sent nor stored.
    onecollector.script(Answer(reset=True))
    handler = make(cache=False)
    logger = isolated_logger("app.unflushed", handler)

    logger.info("held")
    assert onecollector.wait_for_requests(1)
    assert not handler.flush_within(5)
    assert handler.stats()["queued"] == 1

    assert wait_until(lambda: handler.stats().get("accepted") == 1, timeout=20)
    assert messages(onecollector.events) == ["held"]


def test_connection_resets_back_off_and_everything_arrives_after(
    onecollector: LocalCollector, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: List[float] = []
    with freeze_time("2026-12-03 10:00:00") as frozen:
        onecollector.script_always(Answer(reset=True))

        def sleep(self: Pipeline, seconds: float) -> None:
            waits.append(seconds)
            frozen.tick(seconds)
            if sum(waits) >= 30:
                onecollector.script_always(None)

        monkeypatch.setattr(Pipeline, "_sleep", sleep)
        handler = make(max_attempts=2)
        logger = isolated_logger("app.resets", handler)

        for i in range(20):
            logger.info("n%d", i)

        assert onecollector.wait_for_events(20)
    assert waits == sorted(waits)
    assert waits[0] >= 3 and len(waits) <= 4
    assert len(onecollector.requests) == len(waits) + 1
    assert "dropped" not in handler.stats()


@pytest.mark.parametrize(("delta", "echoed"), [(250, "250"), (None, None)])
def test_clock_skew_handshake_asks_once_then_echoes_or_stops(
    onecollector: LocalCollector,
    make: Make,
    delta: Optional[int],
    echoed: Optional[str],
) -> None:
    onecollector.time_delta_millis = delta
    handler = make()
    logger = isolated_logger("app.skew", handler)

    logger.info("first")
    handler.flush()
    logger.info("second")
    handler.flush()

    assert onecollector.wait_for_events(2)
    headers = [
        r.headers.get("time-delta-to-apply-millis") for r in onecollector.requests
    ]
    assert headers == ["use-collector-delta", echoed]


def test_exhausted_attempts_drop_the_batch_with_a_count(
    onecollector: LocalCollector, make: Make, clock: Any
) -> None:
    onecollector.script(Answer(503), Answer(503), Answer(503))
    handler = make(max_attempts=3, cache=False)
    logger = isolated_logger("app.exhausted", handler)

    logger.info("lost")
    assert onecollector.wait_for_requests(3)
    handler.flush()

    assert handler.stats()["dropped"]["retries_exhausted"] == 1
    assert handler.stats()["retried"] == 2


@pytest.mark.parametrize("status", [200, 503])
def test_an_answer_whose_body_cannot_be_read_is_judged_by_its_status(
    onecollector: LocalCollector, make: Make, clock: Any, status: int
) -> None:
    # A body urllib3 cannot decode must neither stop the sender nor have an
    # accepted batch sent twice.
    garbled = {"Content-Encoding": "gzip"}
    onecollector.script(Answer(status=status, headers=garbled, body=b"not gzip"))
    handler = make(request_timeout_s=1)
    logger = isolated_logger("app.garbled", handler)

    logger.info("first")
    assert wait_until(lambda: handler.stats().get("accepted") == 1)
    logger.info("second")
    assert handler.flush_within(10)

    assert messages(onecollector.events) == ["first", "second"]
    assert len(onecollector.requests) == (2 if status == 200 else 3)
    assert handler.stats()["accepted"] == 2
    assert "dropped" not in handler.stats()

