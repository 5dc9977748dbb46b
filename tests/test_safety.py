"""The handler inside programs it does not control: exit, fork, feedback, bounds."""

from __future__ import annotations

import collections
import gc
import http.client
import json
import logging
import logging.config
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
from support import KEY, OTHER_KEY, TENANT, isolated_logger, messages, wait_until

from onecollector_logging import OneCollectorHandler, _batcher
from onecollector_logging._cache import DiskCache
from onecollector_logging._directives import real_monotonic
from onecollector_logging._record import Snapshot
from onecollector_logging.testing import Answer, LocalCollector

Make = Callable[..., OneCollectorHandler]
# Python 3.12+ warns about fork() in a threaded process: that is the situation
# these tests put the handler in.
FORK_IN_THREADS = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)
ROOT = Path(__file__).resolve().parent.parent


def _cached_records(cache_dir: Path, tenant: str = TENANT) -> int:
    cache = DiskCache.open(str(cache_dir), tenant)
    assert cache is not None
    return int(cache.stats()["records"])  # type: ignore[call-overload]


def _total(stats: Dict[str, Any]) -> int:
    dropped = sum(stats.get("dropped", {}).values())
    rejected = sum(stats.get("rejected", {}).values())
    return int(stats.get("accepted", 0) + stats.get("cached", 0) + dropped + rejected)


def _run_python(code: str, env: Dict[str, str], timeout: float = 60) -> str:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_close_then_shutdown_with_a_silent_collector_is_bounded(
    onecollector: LocalCollector, make_handler: Make, tmp_path: Path
) -> None:
    onecollector.script_always(Answer(hang=True))
    handler = make_handler(shutdown_timeout=1.0, flush_interval_s=0.05)
    logger = isolated_logger("app.silent", handler)
    for i in range(50):
        logger.info("n%d", i)
    assert onecollector.wait_for_requests(1)

    started = time.monotonic()
    handler.close()
    closed = time.monotonic() - started
    logging.shutdown([weakref.ref(handler)])
    both = time.monotonic() - started

    assert closed < 1.0 + 1.0 and both < 1.0 + 1.0
    assert _cached_records(tmp_path / "cache") == 50
    assert handler.stats()["cached"] == 50


def test_flush_then_close_with_a_silent_collector_stores_every_batch(
    onecollector: LocalCollector, make_handler: Make, tmp_path: Path
) -> None:
    # What logging.shutdown() does before Python 3.12: flush() spends the
    # budget waiting for the stuck sender, then close() has none left, while
    # the batcher holds a full batch that the sender could not take.
    onecollector.script_always(Answer(hang=True))
    handler = make_handler(
        shutdown_timeout=1.0, flush_interval_s=0.05, max_batch_records=100
    )
    logger = isolated_logger("app.silent", handler)
    for i in range(600):
        logger.info("n%d", i)
    assert onecollector.wait_for_requests(1)

    handler.flush()
    handler.close()

    stats = handler.stats()
    assert stats["queued"] == 0
    assert stats["cached"] == 600 == _total(stats)
    assert _cached_records(tmp_path / "cache") == 600


@pytest.mark.parametrize("cache", [True, False])
def test_a_batch_stored_at_close_and_then_accepted_is_taken_back(
    onecollector: LocalCollector, make_handler: Make, tmp_path: Path, cache: bool
) -> None:
    # The request outlives close(), which stores its batch (or, without a
    # cache, counts it lost); then the collector accepts it after all.
    onecollector.script(Answer(delay_s=0.8))
    handler = make_handler(cache=cache, shutdown_timeout=0.2, flush_interval_s=0.05)
    logger = isolated_logger("app.late", handler)
    for i in range(50):
        logger.info("n%d", i)
    assert onecollector.wait_for_requests(1)

    handler.close()
    stored = handler.stats()
    assert wait_until(lambda: handler.stats().get("accepted") == 50)

    assert stored.get("cached", 0) + stored.get("dropped", {}).get("shutdown", 0) == 50
    stats = handler.stats()
    assert stats.get("cached", 0) == 0 and not any(stats.get("dropped", {}).values())
    assert len(onecollector.events) == 50
    if cache:
        assert _cached_records(tmp_path / "cache") == 0


def test_a_batch_accepted_while_close_is_storing_it_is_taken_back(
    onecollector: LocalCollector,
    make_handler: Make,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The answer comes after close() took the batch over but before it has
    # written it: the close itself takes it back once written.
    onecollector.script(Answer(delay_s=0.3))
    handler = make_handler(shutdown_timeout=0.1, flush_interval_s=0.05)
    pipeline = handler._pipeline
    assert pipeline is not None
    put_batch = DiskCache.put_batch

    def put_after_the_answer(cache: DiskCache, *args: Any, **kwargs: Any) -> Any:
        assert wait_until(lambda: bool(pipeline._late_outcomes), timeout=5)
        return put_batch(cache, *args, **kwargs)

    monkeypatch.setattr(DiskCache, "put_batch", put_after_the_answer)
    logger = isolated_logger("app.late", handler)
    for i in range(20):
        logger.info("n%d", i)
    assert onecollector.wait_for_requests(1)

    handler.close()

    stats = handler.stats()
    assert stats["accepted"] == 20 and stats.get("cached", 0) == 0
    assert _cached_records(tmp_path / "cache") == 0
    assert len(onecollector.events) == 20


def test_a_batch_stored_at_close_is_not_sent_again_by_the_next_handler(
    onecollector: LocalCollector, make_handler: Make, tmp_path: Path
) -> None:
    # As a second dictConfig() does: the replaced handler stores the batch
    # whose request is still under way, and a new handler of the same tenant
    # starts on the same cache before the answer comes.
    onecollector.script(Answer(delay_s=0.8))
    old = make_handler(shutdown_timeout=0.1, flush_interval_s=0.05)
    for i in range(20):
        isolated_logger("app.old", old).info("old %d", i)
    assert onecollector.wait_for_requests(1)
    old.close()
    assert old.stats()["cached"] == 20

    new = make_handler(flush_interval_s=0.05)
    isolated_logger("app.new", new).info("new")
    assert new.flush_within(10)
    assert wait_until(lambda: old.stats().get("accepted") == 20)
    assert new.flush_within(10)

    bodies = [e["data"]["formattedMessage"] for e in onecollector.events]
    assert sorted(bodies) == sorted(["new", *(f"old {i}" for i in range(20))])
    assert _cached_records(tmp_path / "cache") == 0


def test_a_kill_order_on_a_late_answer_is_obeyed(
    onecollector: LocalCollector, make_handler: Make, tmp_path: Path
) -> None:
    onecollector.kill(TENANT, 3600)
    onecollector.script(Answer(status=503, delay_s=0.5))
    handler = make_handler(shutdown_timeout=0.1, flush_interval_s=0.05)
    logger = isolated_logger("app.killed", handler)
    for i in range(10):
        logger.info("n%d", i)
    assert onecollector.wait_for_requests(1)

    handler.close()

    assert wait_until(lambda: handler.stats().get("dropped", {}).get("killed") == 10)
    cache = DiskCache.open(str(tmp_path / "cache"), TENANT)
    assert cache is not None
    assert cache.kill_until() > time.time() + 3000
    assert cache.stats()["records"] == 0


def _app_config(
    onecollector: LocalCollector, cache_dir: Path, **options: str
) -> Dict[str, Any]:
    """A dictConfig() configuration: the logger "app" with one of our handlers."""
    handler = {
        "class": "onecollector_logging.OneCollectorHandler",
        "instrumentation_key": KEY,
        "endpoint": onecollector.endpoint,
        "cache_dir": str(cache_dir),
        **options,
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"oc": handler},
        "loggers": {"app": {"level": "INFO", "handlers": ["oc"]}},
    }


def test_dict_config_replacing_the_handler_during_a_send_is_bounded(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    onecollector.script_always(Answer(hang=True))
    config = _app_config(
        onecollector, tmp_path, flush_interval_s="0.05", shutdown_timeout="1"
    )
    logging.config.dictConfig(config)
    handler = logging.getLogger("app").handlers[0]
    for i in range(20):
        logging.getLogger("app").info("n%d", i)
    assert onecollector.wait_for_requests(1)
    replaced = threading.Event()

    def reconfigure() -> None:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        replaced.set()

    started = time.monotonic()
    thread = threading.Thread(target=reconfigure)
    thread.start()
    thread.join(5)

    assert replaced.is_set() and time.monotonic() - started < 1.0 + 1.0
    assert isinstance(handler, OneCollectorHandler)
    assert _cached_records(tmp_path) == 20
    logging.getLogger("app").handlers.clear()


_MULTIPROCESSING_APP = """
import json, logging, multiprocessing, sys
from onecollector_logging import OneCollectorHandler, _batcher

ARGS = json.loads(sys.argv[1])


def configure():
    handler = OneCollectorHandler(
        ARGS["key"],
        endpoint=ARGS["endpoint"],
        cache_dir=ARGS["cache_dir"],
        flush_interval_s=0.05,
    )
    logger = logging.getLogger("mp")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)


def work(worker):
    logger = logging.getLogger("mp")
    if not logger.handlers:
        configure()  # a forkserver child starts from a fresh interpreter
    for i in range(ARGS["records"]):
        logger.info("worker %d record %d", worker, i)


if __name__ == "__main__":
    configure()
    context = multiprocessing.get_context(ARGS["method"])
    workers = [context.Process(target=work, args=(n,)) for n in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join()
    print(json.dumps([process.exitcode for process in workers]))
"""


# A child that multiprocessing starts by fork or forkserver ends with
# os._exit(): no atexit hook and no logging.shutdown() run there.
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_records_of_multiprocessing_children_are_sent_before_they_exit(
    onecollector: LocalCollector, tmp_path: Path, method: str
) -> None:
    app = tmp_path / "app.py"
    app.write_text(_MULTIPROCESSING_APP, encoding="utf-8")
    args = {
        "key": KEY,
        "endpoint": onecollector.endpoint,
        "cache_dir": str(tmp_path / "cache"),
        "records": 20,
        "method": method,
    }

    done = subprocess.run(
        [sys.executable, str(app), json.dumps(args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [0, 0]
    assert onecollector.wait_for_events(40, timeout=10)
    sent = sorted(messages(onecollector.events))
    assert sent == sorted(f"worker {n} record {i}" for n in range(2) for i in range(20))


_EXIT_CHILD = """
import json, logging.config, sys
args = json.loads(sys.argv[1])
names = [f"oc{n}" for n in range(args["handlers"])]
handler = {
    "class": "onecollector_logging.OneCollectorHandler",
    "instrumentation_key": args["key"],
    "endpoint": args["endpoint"],
    "cache_dir": args["cache_dir"],
    "flush_interval_s": "0.05",
    "shutdown_timeout": args["shutdown_timeout"],
}
logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {name: dict(handler) for name in names},
    "loggers": {name: {"level": "INFO", "handlers": [name]} for name in names},
})
for name in names:
    logger = logging.getLogger(name)
    logger.handlers[0].flushOnClose = args["flush_on_close"]
    for i in range(args["records"]):
        logger.info("%s record %d", name, i)
print("logged", flush=True)
sys.stdin.readline()
"""


# flushOnClose=True makes logging.shutdown() flush each handler before closing
# it, as it always does before Python 3.12.
@pytest.mark.parametrize(
    "flush_on_close",
    [
        True,
        pytest.param(
            False,
            marks=pytest.mark.skipif(
                sys.version_info < (3, 12), reason="flushOnClose needs Python 3.12"
            ),
        ),
    ],
)
def test_exit_with_several_handlers_on_a_silent_collector_waits_one_timeout(
    onecollector: LocalCollector, tmp_path: Path, flush_on_close: bool
) -> None:
    onecollector.script_always(Answer(hang=True))
    timeout, handlers, records = 2.0, 3, 20
    args = {
        "key": KEY,
        "endpoint": onecollector.endpoint,
        "cache_dir": str(tmp_path),
        "shutdown_timeout": str(timeout),
        "handlers": handlers,
        "records": records,
        "flush_on_close": flush_on_close,
    }
    with subprocess.Popen(
        [sys.executable, "-c", _EXIT_CHILD, json.dumps(args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin and child.stdout and child.stderr
        try:
            assert child.stdout.readline() == "logged\n"
            # Every handler's sender is then held in a request that never ends.
            assert onecollector.wait_for_requests(handlers)

            started = time.monotonic()
            child.stdin.close()
            child.wait(60)
            elapsed = time.monotonic() - started
        finally:
            if child.poll() is None:
                child.kill()
        errors = child.stderr.read()

    # One line per handler says where its records went, and nothing else.
    assert child.returncode == 0, errors
    said = errors.splitlines()
    assert len(said) == handlers, errors
    assert all("wait in the disk cache" in s for s in said), errors
    # One after the other, the handlers would take handlers * timeout.
    assert elapsed < 2 * timeout
    assert onecollector.events == []
    assert _cached_records(tmp_path) == handlers * records


def test_only_the_package_logger_and_those_below_it_count_as_its_own(
    onecollector: LocalCollector, make: Make
) -> None:
    handler = make()
    names = ["onecollector_logging", "onecollector_logging.x", "onecollector_loggingX"]
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger.handlers[:], logger.propagate, logger.level) for logger in loggers]

    try:
        for name in names:
            isolated_logger(name, handler).warning("from %s", name)
        assert handler.flush_within(10)
    finally:
        # The package's loggers must reach the root again, for other tests.
        for logger, (handlers, propagate, level) in zip(loggers, saved):
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.setLevel(level)

    assert messages(onecollector.events) == ["from onecollector_loggingX"]


def test_own_and_library_records_never_reach_the_collector(
    onecollector: LocalCollector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http.client.HTTPConnection, "debuglevel", 1)
    handler = OneCollectorHandler(
        KEY,
        endpoint=onecollector.endpoint,
        cache_dir=str(tmp_path),
        flush_interval_s=0.05,
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    try:
        for i in range(100):
            logging.getLogger("user").debug("user record %d", i)
            if i % 25 == 0:
                handler.flush()
        handler.flush()
        assert onecollector.wait_for_events(100)
        handler.flush()
    finally:
        handler.close()
    assert sorted(messages(onecollector.events)) == sorted(
        f"user record {i}" for i in range(100)
    )
    assert {e["data"]["logger"] for e in onecollector.events} == {"user"}


def test_a_tiny_queue_with_a_stalled_collector_spills_and_accounts_for_all(
    onecollector: LocalCollector, make_handler: Make, tmp_path: Path
) -> None:
    onecollector.script_always(Answer(hang=True))
    handler = make_handler(
        max_queue_records=10, shutdown_timeout=1.0, flush_interval_s=0.05
    )
    logger = isolated_logger("app.burst", handler)

    for i in range(10_000):
        logger.info("n%d", i)
    handler.close()

    stats = handler.stats()
    assert _total(stats) == 10_000
    assert stats["cached"] > 0
    assert _cached_records(tmp_path / "cache") == stats["cached"]


def test_a_request_that_hangs_sends_the_next_batches_to_disk_at_once(
    onecollector: LocalCollector, make_handler: Make
) -> None:
    onecollector.script_always(Answer(hang=True))
    handler = make_handler(
        max_batch_records=10, flush_interval_s=0.05, shutdown_timeout=1.0
    )
    logger = isolated_logger("app.hang", handler)

    for i in range(100):
        logger.info("n%d", i)

    # At most one batch in the request and two waiting for the sender; the
    # rest is spilled although the queue is far from full.
    assert wait_until(lambda: handler.stats().get("cached", 0) >= 70, timeout=5)
    assert onecollector.wait_for_requests(1) and len(onecollector.requests) == 1


def test_a_sender_that_keeps_pace_is_waited_for_rather_than_spilled_to_disk(
    make_handler: Make,
) -> None:
    # The batcher's rule, with the queue and the sender set by hand: a burst
    # keeps the sender from the interpreter but not from getting batches
    # through, and writing those to disk would only cost more.
    handler = make_handler(max_queue_records=1000)
    pipeline = handler._pipeline
    assert pipeline is not None
    assert pipeline._cache_ready()  # as the sender does when it starts
    now = real_monotonic()

    def spills(queued: int, accepted_s_ago: float, busy_s: Optional[float]) -> bool:
        pipeline._queue.clear()
        pipeline._queue.extend([None] * queued)
        pipeline._accepted_at = now - accepted_s_ago
        pipeline.transport.busy_since = None if busy_s is None else now - busy_s
        return pipeline._should_spill()

    try:
        assert not spills(800, 0.02, 0.05)  # past 3/4, but keeping pace
        assert spills(800, 0.5, 0.05)  # past 3/4, and nothing through lately
        assert not spills(700, 5.0, None)  # below 3/4: the queue absorbs it
        assert spills(950, 0.02, None)  # past 9/10: whatever the pace
        assert spills(10, 0.02, 0.3)  # a request that hangs
    finally:
        pipeline._queue.clear()
        pipeline.transport.busy_since = None


def test_the_batcher_never_opens_the_cache_holding_the_pipeline_lock(
    make_handler: Make,
) -> None:
    # Opening logs; a log call may wait for the logging module's lock, which a
    # dictConfig() holds while it waits for the pipeline lock to flush: the
    # batcher decides to spill under that lock, so it must not open the cache.
    handler = make_handler()
    pipeline = handler._pipeline
    assert pipeline is not None and not pipeline._cache_opened
    pipeline._queue.extend([None] * pipeline._max_queue)
    try:
        with pipeline._cond:
            spills = pipeline._should_spill()
    finally:
        pipeline._queue.clear()

    assert not spills and not pipeline._cache_opened


def test_a_close_that_stores_a_split_batch_sends_neither_half_after_it(
    onecollector: LocalCollector, make_handler: Make, tmp_path: Path
) -> None:
    onecollector.script(Answer(status=413), Answer(delay_s=1.0))
    handler = make_handler(shutdown_timeout=0.3, flush_interval_s=0.05)
    logger = isolated_logger("app.split", handler)
    for i in range(10):
        logger.info("n%d", i)
    assert onecollector.wait_for_requests(2)

    handler.close()

    assert handler.stats()["cached"] == 10
    assert _cached_records(tmp_path / "cache") == 10
    # The first half's answer comes; the second half is not sent after it.
    assert not onecollector.wait_for_requests(3, timeout=1.5)


def test_records_left_at_close_are_stored_in_request_sized_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As during interpreter shutdown: no thread starts, so close() itself
    # stores everything that was queued.
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    handler = OneCollectorHandler(
        KEY, endpoint="http://127.0.0.1:9/OneCollector/1.0/", cache_dir=str(tmp_path)
    )
    logger = isolated_logger("app.exit", handler)
    for i in range(1200):
        logger.info("n%d", i)

    handler.close()

    cache = DiskCache.open(str(tmp_path), TENANT)
    assert cache is not None
    sizes = []
    while True:
        claim = cache.claim()
        if claim is None:
            break
        sizes.append(len(claim.lines))
        claim.done()
    assert sorted(sizes) == [200, 500, 500]
    assert handler.stats()["cached"] == 1200


@FORK_IN_THREADS
def test_a_forked_child_sends_its_own_records_under_its_own_epoch(
    onecollector: LocalCollector, make_handler: Make
) -> None:
    handler = make_handler(flush_interval_s=0.05)
    logger = isolated_logger("app.fork", handler)
    logger.info("parent before fork")

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            logger.info("child record")
            handler.close()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    logger.info("parent after fork")
    handler.flush()

    assert status == 0
    assert onecollector.wait_for_events(3)
    by_message = {e["data"]["formattedMessage"]: e for e in onecollector.events}
    assert sorted(by_message) == [
        "child record",
        "parent after fork",
        "parent before fork",
    ]
    assert len(onecollector.events) == 3
    epochs = {m: e["ext"]["sdk"]["epoch"] for m, e in by_message.items()}
    assert epochs["child record"] != epochs["parent before fork"]
    assert epochs["parent after fork"] == epochs["parent before fork"]
    assert by_message["child record"]["ext"]["sdk"]["seq"] == 1


@FORK_IN_THREADS
def test_forking_while_other_threads_log_never_hangs_a_child(
    onecollector: LocalCollector, make_handler: Make
) -> None:
    handler = make_handler(flush_interval_s=0.05)
    logger = isolated_logger("app.forks", handler)
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            logger.info("thread record")

    threads = [threading.Thread(target=chatter) for _ in range(4)]
    for thread in threads:
        thread.start()
    durations: List[float] = []
    try:
        for _ in range(20):
            started = time.monotonic()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                logger.info("child")
                logging.shutdown()
                os._exit(0)
            waiter = threading.Thread(target=os.waitpid, args=(pid, 0))
            waiter.start()
            waiter.join(5)
            if waiter.is_alive():
                os.kill(pid, 9)
                waiter.join(5)
            durations.append(time.monotonic() - started)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)

    assert max(durations) < 5


def test_a_script_that_exits_at_once_delivers_its_record(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    _run_python(
        f"""
        import logging
        from onecollector_logging import OneCollectorHandler
        logger = logging.getLogger("script")
        logger.addHandler(OneCollectorHandler(
            {KEY!r}, endpoint={onecollector.endpoint!r}, cache_dir={str(tmp_path)!r}))
        logger.warning("the only record")
        """,
        {},
    )

    assert onecollector.wait_for_events(1)
    assert messages(onecollector.events) == ["the only record"]


def test_the_opt_out_variable_makes_every_path_a_no_op(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    out = _run_python(
        f"""
        import logging, socket, sys
        from onecollector_logging import OneCollectorHandler
        opened = []
        real = socket.socket.connect
        def connect(self, address):
            opened.append(address)
            return real(self, address)
        socket.socket.connect = connect
        handler = OneCollectorHandler(
            {KEY!r}, endpoint={onecollector.endpoint!r},
            cache_dir={str(tmp_path / "cache")!r})
        logger = logging.getLogger("optout")
        logger.addHandler(handler)
        for i in range(100):
            logger.error("nothing %d", i)
        handler.flush()
        import threading
        print(len(opened), threading.active_count())
        logging.shutdown()
        print(len(opened))
        """,
        {"ONECOLLECTOR_LOGGING_DISABLED": " Yes "},
    )

    assert out.split() == ["0", "1", "0"]
    assert not (tmp_path / "cache").exists()
    assert onecollector.requests == []


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_opt_out_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ONECOLLECTOR_LOGGING_DISABLED", value)

    handler = OneCollectorHandler(KEY)

    assert handler.disabled_by_environment
    handler.close()


def test_a_closed_handler_is_garbage_collected(make_handler: Make) -> None:
    handler = OneCollectorHandler(KEY, endpoint="http://127.0.0.1:9/", cache=False)
    logger = isolated_logger("app.gc", handler)
    logger.info("one")
    handler.close()
    logger.handlers.clear()
    ref = weakref.ref(handler)
    del handler

    gc.collect()

    assert ref() is None


def test_handlers_with_different_keys_and_endpoints_are_independent(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    with LocalCollector() as stalled:
        stalled.script_always(Answer(hang=True))
        good = OneCollectorHandler(
            KEY,
            endpoint=onecollector.endpoint,
            cache_dir=str(tmp_path / "a"),
            flush_interval_s=0.05,
        )
        stuck = OneCollectorHandler(
            OTHER_KEY,
            endpoint=stalled.endpoint,
            cache_dir=str(tmp_path / "b"),
            flush_interval_s=0.05,
            shutdown_timeout=0.5,
        )
        logger = logging.getLogger("app.two")
        logger.handlers[:] = [good, stuck]
        logger.propagate = False
        try:
            for i in range(10):
                logger.info("n%d", i)
            assert onecollector.wait_for_events(10)
            assert stalled.wait_for_requests(1)
        finally:
            stuck.close()
            good.close()
            logger.handlers.clear()
    assert {r.headers["x-apikey"] for r in onecollector.requests} == {KEY}
    assert stuck.stats()["cached"] == 10


def test_without_a_cache_a_hung_send_at_close_is_counted_not_lost(
    onecollector: LocalCollector, make_handler: Make
) -> None:
    onecollector.script_always(Answer(hang=True))
    handler = make_handler(
        cache=False, request_timeout_s=1, shutdown_timeout=2, flush_interval_s=0.05
    )
    logger = isolated_logger("app.nocache", handler)
    for i in range(100):
        logger.info("first %d", i)
    handler.flush()
    for i in range(100):
        logger.info("second %d", i)

    handler.close()

    assert _total(handler.stats()) == 200


def test_a_collector_that_always_answers_413_costs_counted_records_only(
    onecollector: LocalCollector, make_handler: Make
) -> None:
    onecollector.script_always(Answer(413))
    handler = make_handler(flush_interval_s=30, shutdown_timeout=10)
    logger = isolated_logger("app.toolarge", handler)
    for i in range(300):
        logger.info("n%d", i)

    handler.flush()
    handler.close()

    stats = handler.stats()
    assert _total(stats) == 300
    assert stats["dropped"]["too_large"] + stats.get("cached", 0) == 300
    assert stats["queued"] == 0


def test_an_answer_that_trickles_in_is_cut_at_the_request_timeout(
    make_handler: Make, tmp_path: Path
) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = server.accept()
        with connection:
            connection.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(65536)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n"
            )
            while not stop.wait(0.05):
                connection.sendall(b" ")

    serving = threading.Thread(target=trickle)
    serving.start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}/OneCollector/1.0/"
    handler = make_handler(endpoint=endpoint, request_timeout_s=0.5, shutdown_timeout=3)
    logger = isolated_logger("app.trickle", handler)
    try:
        for i in range(10):
            logger.info("n%d", i)
        started = time.monotonic()
        done = handler.flush_within(3)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        serving.join(10)
        server.close()

    # Cut short all the same; the status line said the batch was taken.
    assert done and elapsed < 2.5
    assert handler.stats() == {"accepted": 10, "queued": 0}


class _Unreadable(Snapshot):
    """A snapshot from a front end gone wrong: reading its name raises."""

    @property  # type: ignore[override]
    def name(self) -> str:
        raise RuntimeError("broken front end")

    @name.setter
    def name(self, value: str) -> None:
        pass


def test_a_snapshot_that_cannot_be_serialized_is_counted_and_the_batch_goes_on(
    onecollector: LocalCollector, make: Make
) -> None:
    handler = make()
    logger = isolated_logger("app.front", handler)

    logger.info("before")
    handler.submit(_Unreadable("Broken.Event", time.time(), 0, {"body": "x"}))
    logger.info("after")

    assert handler.flush_within(10)
    assert onecollector.wait_for_events(2)
    assert messages(onecollector.events) == ["before", "after"]
    assert handler.stats()["dropped"] == {"unserializable": 1}


def test_a_fault_in_the_sender_does_not_stop_delivery(
    onecollector: LocalCollector,
    make_handler: Make,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Without a disk cache the failed batch is kept in memory and sent again
    # once the sender is back.
    real_deliver = _batcher.deliver
    faults = []

    def faulty(*args: Any, **kwargs: Any) -> Any:
        if len(faults) < 2:
            faults.append(1)
            raise RuntimeError("a fault of the handler's own")
        return real_deliver(*args, **kwargs)

    monkeypatch.setattr(_batcher, "deliver", faulty)
    handler = make_handler(cache=False, flush_interval_s=0.05)
    logger = isolated_logger("app.faulty", handler)

    with caplog.at_level(logging.DEBUG, logger="onecollector_logging"):
        logger.info("before")
        assert wait_until(lambda: len(faults) == 2)
        logger.info("after")
        # The batch kept in memory goes when the sender has nothing newer.
        assert wait_until(lambda: handler.stats().get("accepted") == 2)

    assert sorted(messages(onecollector.events)) == ["after", "before"]
    failures = [r for r in caplog.records if r.getMessage().endswith("sender failed")]
    assert [r.levelno for r in failures] == [logging.ERROR, logging.DEBUG]


def _replace_and_close(
    config: Dict[str, Any], records: int, before_replacing: Callable[..., Any]
) -> Dict[str, Any]:
    """Log *records* to "app", call *before_replacing* with its handler, apply
    *config* again, log one more record to the new handler and close it.

    :returns: the replaced handler's stats.
    """
    app = logging.getLogger("app")
    try:
        logging.config.dictConfig(config)
        old = app.handlers[0]
        assert isinstance(old, OneCollectorHandler) and old._pipeline is not None
        for i in range(records):
            app.info("old %d", i)
        before_replacing(old)
        logging.config.dictConfig(config)
        # Its threads finish storing once dictConfig has let the lock go.
        for thread in old._pipeline._threads or []:
            thread.join(10)
            assert not thread.is_alive()
        new = app.handlers[0]
        app.info("new")
        new.close()
        return old.stats()
    finally:
        for handler in app.handlers:
            handler.close()
        app.handlers.clear()


def _missing(onecollector: LocalCollector, records: int) -> List[str]:
    """The records _replace_and_close logged that the collector did not get
    exactly once."""
    got = collections.Counter(messages(onecollector.events))
    expected = ["new", *(f"old {i}" for i in range(records))]
    return [message for message in expected if got[message] != 1]


def test_what_a_second_dict_config_left_in_the_cache_is_sent_by_the_new_handler(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    # The replaced handler cannot wait for its threads under dictConfig's
    # lock: what it held goes to disk, and the handler that replaces it sends
    # it, at the latest at its own close.
    config = _app_config(onecollector, tmp_path, flush_interval_s="60")

    old = _replace_and_close(config, 3000, lambda handler: None)

    assert old["cached"] > 0
    assert _missing(onecollector, 3000) == []
    assert _cached_records(tmp_path) == 0


def test_what_the_replaced_handler_spilled_while_it_ran_is_sent_by_the_new_one(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    # A slow answer sends the replaced handler's batches to disk while it
    # runs; the second dictConfig gives it no time to send them.
    onecollector.script(Answer(delay_s=0.6))
    config = _app_config(
        onecollector, tmp_path, flush_interval_s="0.05", max_batch_records="100"
    )

    def spilled(handler: OneCollectorHandler) -> None:
        assert wait_until(lambda: handler.stats().get("cached", 0) >= 500)

    _replace_and_close(config, 1000, spilled)

    assert _missing(onecollector, 1000) == []
    assert _cached_records(tmp_path) == 0


def test_a_close_sends_no_cached_batch_it_has_no_time_to_see_answered(
    onecollector: LocalCollector, make_handler: Make, tmp_path: Path
) -> None:
    # Cut off by the deadline, the request may have been taken all the same;
    # on disk, the batch is safe, and it would arrive twice.
    handler = make_handler()
    pipeline = handler._pipeline
    assert pipeline is not None and pipeline._cache_ready()
    assert pipeline._store([b'{"n":1}'], reason="spill") is not None
    pipeline._spilled = 1
    pipeline.transport.last_request_s = 1.0
    pipeline._deadline = real_monotonic() + 1.5

    pipeline._drain_at_close()

    assert onecollector.requests == []
    assert _cached_records(tmp_path / "cache") == 1
