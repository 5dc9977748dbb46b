"""The walking skeleton: records logged by an application reach a collector."""

from __future__ import annotations

import datetime as dt
import logging
import logging.config
import logging.handlers
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
from support import KEY, TENANT, isolated_logger, messages, wait_until

from onecollector_logging import ConfigurationError, OneCollectorHandler
from onecollector_logging._batcher import Pipeline, own_activity
from onecollector_logging.testing import Answer, LocalCollector

Make = Callable[..., OneCollectorHandler]


def _dict_config(endpoint: str, cache_dir: Path, **options: Any) -> dict:
    handler = {
        "class": "onecollector_logging.OneCollectorHandler",
        "instrumentation_key": KEY,
        "endpoint": endpoint,
        "cache_dir": str(cache_dir),
        "flush_interval_s": "0.2",
        "max_batch_records": "100",
        **options,
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"oc": handler},
        "loggers": {"app": {"level": "DEBUG", "handlers": ["oc"], "propagate": False}},
    }


def _close_app_handlers() -> None:
    for handler in list(logging.getLogger("app").handlers):
        handler.close()
        logging.getLogger("app").removeHandler(handler)


def test_records_from_four_threads_arrive_once_with_gapless_seq(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    logging.config.dictConfig(_dict_config(onecollector.endpoint, tmp_path))
    logger = logging.getLogger("app")

    def work(worker: int) -> None:
        for i in range(250):
            logger.info("worker %d record %d", worker, i)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    logger.handlers[0].flush()
    try:
        assert onecollector.wait_for_events(1000, timeout=30)
        events = onecollector.events
        seqs = sorted(e["ext"]["sdk"]["seq"] for e in events)
        assert seqs == list(range(1, 1001))
        assert len({e["ext"]["sdk"]["epoch"] for e in events}) == 1
        assert len(set(messages(events))) == 1000
        assert all(r.status == 200 and r.problem is None for r in onecollector.requests)
    finally:
        _close_app_handlers()


def test_reconfiguring_returns_at_once_and_keeps_the_old_handlers_records(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    logging.config.dictConfig(
        _dict_config(onecollector.endpoint, tmp_path, shutdown_timeout="5")
    )
    old = logging.getLogger("app").handlers[0]
    assert isinstance(old, OneCollectorHandler)
    for i in range(50):
        logging.getLogger("app").info("before reconfiguring %d", i)

    started = time.monotonic()
    # dictConfig() flushes and closes the handler it replaces holding
    # logging's lock, which the handler's threads wait for when they log.
    logging.config.dictConfig(
        _dict_config(onecollector.endpoint, tmp_path, shutdown_timeout="5")
    )
    elapsed = time.monotonic() - started

    try:
        stats = old.stats()
        assert elapsed < 2.5  # waiting for the threads took the whole 5 s
        assert "dropped" not in stats
        assert stats.get("accepted", 0) + stats.get("cached", 0) == 50
        assert stats["queued"] == 0
    finally:
        _close_app_handlers()


def test_full_key_only_in_the_header_and_ikey_is_the_tenant(
    onecollector: LocalCollector, make: Make
) -> None:
    logger = isolated_logger("app.keys", make())

    for i in range(20):
        logger.warning("event %d", i)
    logger.handlers[0].flush()

    assert onecollector.wait_for_events(20)
    for request in onecollector.requests:
        assert request.headers["x-apikey"] == KEY
        assert KEY not in request.text
        assert TENANT in request.text
        assert request.headers["Content-Encoding"] == "deflate"
        assert request.headers["Client-Id"] == "NO_AUTH"
        assert request.headers["sdk-version"].startswith("onecollector-logging-py-")
    assert {e["iKey"] for e in onecollector.events} == {f"o:{TENANT}"}


def test_an_envelope_has_the_documented_shape(
    onecollector: LocalCollector, make: Make
) -> None:
    logger = isolated_logger("app.shape", make(app={"name": "shop", "ver": "1.2"}))

    logger.warning("stock low: %d left", 3, extra={"sku": "X-1"})
    logger.handlers[0].flush()

    assert onecollector.wait_for_events(1)
    event = onecollector.events[0]
    assert event["ver"] == "4.0"
    assert event["name"] == "Python.Log"
    assert event["time"].endswith("Z") and len(event["time"]) == 24
    data = event["data"]
    assert data["body"] == "stock low: %d left"
    assert data["formattedMessage"] == "stock low: 3 left"
    assert (data["severityText"], data["severityNumber"]) == ("WARNING", 13)
    assert data["logger"] == "app.shape"
    assert data["sku"] == "X-1"
    assert set(event["ext"]) == {"sdk", "os", "app"}
    assert set(event["ext"]["sdk"]) == {"ver", "epoch", "seq"}
    assert event["ext"]["sdk"]["ver"] == onecollector.requests[0].headers["sdk-version"]
    assert event["ext"]["app"] == {"name": "shop", "ver": "1.2"}


@pytest.mark.parametrize(
    ("level", "number"),
    [("debug", 5), ("info", 9), ("warning", 13), ("error", 17), ("critical", 21)],
)
def test_severity_numbers(
    onecollector: LocalCollector, make: Make, level: str, number: int
) -> None:
    logger = isolated_logger("app.levels", make())

    getattr(logger, level)("message")
    logger.handlers[0].flush()

    assert onecollector.wait_for_events(1)
    assert onecollector.events[0]["data"]["severityNumber"] == number


def test_exceptions_and_per_record_event_names(
    onecollector: LocalCollector, make: Make
) -> None:
    logger = isolated_logger("app.errors", make())

    try:
        raise KeyError("quantity")
    except KeyError:
        logger.exception("pricing failed")
    logger.info("shipped", extra={"event_name": "Contoso.App.OrderShipped"})
    logger.handlers[0].flush()

    assert onecollector.wait_for_events(2)
    failed, shipped = onecollector.events
    assert failed["data"]["exceptionType"] == "KeyError"
    assert failed["data"]["exceptionMessage"] == "'quantity'"
    assert "raise KeyError" in failed["data"]["exceptionStack"]
    assert shipped["name"] == "Contoso.App.OrderShipped"
    assert "event_name" not in shipped["data"]


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_awkward_extras_cost_nothing_to_the_record_or_its_neighbours(
    onecollector: LocalCollector, make: Make
) -> None:
    logger = isolated_logger("app.values", make())
    when = dt.datetime(2026, 12, 3, 10, 11, 12, 345678, tzinfo=dt.timezone.utc)

    logger.info("before")
    logger.info(
        "odd",
        extra={
            "obj": _Unprintable(),
            "when": when,
            "raw": b"\x00\xff",
            "nan": float("nan"),
            "six": 6.0,
        },
    )
    logger.info("after")
    logger.handlers[0].flush()

    assert onecollector.wait_for_events(3)
    assert messages(onecollector.events) == ["before", "odd", "after"]
    data = onecollector.events[1]["data"]
    assert data["when"].startswith("2026-12-03T10:11:12")
    assert data["raw"] == "AP8="
    assert data["nan"] == "NaN"
    assert isinstance(data["six"], float) and b'"six":6.0' in (
        onecollector.requests[0].text.encode()
    )
    assert isinstance(data["obj"], str)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"instrumentation_key": "0123456789abcdef"}, "instrumentation_key"),
        ({"instrumentation_key": "-abc"}, "instrumentation_key"),
        ({"event_name": "bad name!"}, "event_name"),
        ({"event_name": "abc"}, "event_name"),
        ({"flush_interval_s": "soon"}, "flush_interval_s"),
        ({"max_batch_records": "501"}, "max_batch_records"),
        ({"max_queue_records": "0"}, "max_queue_records"),
        ({"shutdown_timeout": "-1"}, "shutdown_timeout"),
        ({"compression": "brotli"}, "compression"),
        ({"cache": "perhaps"}, "cache"),
        ({"code_location": ""}, "code_location"),
        ({"endpoint": "ftp://example.com"}, "endpoint"),
        ({"event_names": {"app": "x"}}, "event_names"),
        ({"redact": "no.such.module:function"}, "redact"),
    ],
)
def test_bad_options_fail_at_construction_naming_the_option(
    options: dict, named: str
) -> None:
    options.setdefault("instrumentation_key", KEY)

    with pytest.raises(ConfigurationError, match=named) as caught:
        OneCollectorHandler(**options)

    assert isinstance(caught.value, ValueError)


def test_a_bad_key_is_described_without_being_echoed() -> None:
    secret = "0123456789abcdef0123456789abcdefNOHYPHEN"

    with pytest.raises(ConfigurationError) as caught:
        OneCollectorHandler(secret)

    assert secret not in str(caught.value)


def test_string_options_from_dict_config_are_coerced(tmp_path: Path) -> None:
    handler = OneCollectorHandler(
        KEY,
        flush_interval_s="2.5",
        max_queue_records="100",
        shutdown_timeout="3",
        cache="false",
        code_location="yes",
        level="warning",
        cache_dir=str(tmp_path),
    )
    try:
        assert handler.shutdown_timeout == 3.0
        assert handler.level == logging.WARNING
    finally:
        handler.close()


def test_the_key_can_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, onecollector: LocalCollector, tmp_path: Path
) -> None:
    monkeypatch.setenv("ONECOLLECTOR_INSTRUMENTATION_KEY", KEY)
    handler = OneCollectorHandler(
        endpoint=onecollector.endpoint, cache_dir=str(tmp_path)
    )
    logger = isolated_logger("app.env", handler)

    logger.info("from env")
    handler.close()

    assert onecollector.wait_for_events(1)
    assert onecollector.requests[0].headers["x-apikey"] == KEY


def test_missing_key_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONECOLLECTOR_INSTRUMENTATION_KEY", raising=False)

    with pytest.raises(ConfigurationError, match="ONECOLLECTOR_INSTRUMENTATION_KEY"):
        OneCollectorHandler()


def test_file_config_ini_builds_a_working_handler(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    ini = tmp_path / "logging.ini"
    kwargs = {
        "instrumentation_key": KEY,
        "endpoint": onecollector.endpoint,
        "cache_dir": str(tmp_path / "c"),
        "flush_interval_s": "0.1",
    }
    ini.write_text(
        textwrap.dedent(
            f"""\
            [loggers]
            keys=root,app

            [handlers]
            keys=oc

            [formatters]
            keys=

            [logger_root]
            handlers=

            [logger_app]
            level=INFO
            handlers=oc
            qualname=app
            propagate=0

            [handler_oc]
            class=onecollector_logging.OneCollectorHandler
            level=INFO
            args=()
            kwargs={kwargs!r}
            """
        )
    )
    logging.config.fileConfig(ini, disable_existing_loggers=False)
    try:
        logging.getLogger("app").info("from an INI file")
        logging.getLogger("app").handlers[0].flush()

        assert onecollector.wait_for_events(1)
        assert messages(onecollector.events) == ["from an INI file"]
    finally:
        _close_app_handlers()


def test_close_twice_then_flush_returns_at_once(make: Make) -> None:
    handler = make()
    isolated_logger("app.close", handler).info("one")

    handler.close()
    started = time.monotonic()
    handler.close()
    handler.flush()

    assert time.monotonic() - started < 0.5


def test_close_sends_what_is_queued_to_a_healthy_collector(
    onecollector: LocalCollector, make_handler: Make
) -> None:
    # Records still queued at close go to the collector, not to a disk cache
    # that only a later run of the application would send from.
    handler = make_handler(flush_interval_s=60)
    logger = isolated_logger("app.closing", handler)
    for i in range(5000):
        logger.info("n%d", i)

    handler.close()

    assert handler.stats() == {"accepted": 5000, "queued": 0}
    assert len(onecollector.events) == 5000


@pytest.mark.parametrize("cache", [True, False])
def test_close_during_a_wait_between_attempts_tries_once_more(
    onecollector: LocalCollector, make: Make, cache: bool
) -> None:
    # The connection was lost once; the collector answers again by the time
    # the application closes the handler, in the middle of the backoff.
    onecollector.script(Answer(reset=True))
    handler = make(cache=cache, shutdown_timeout=3)
    logger = isolated_logger("app.recovered", handler)
    logger.info("one")
    logger.info("two")
    assert onecollector.wait_for_requests(1)
    assert wait_until(lambda: handler.stats().get("retried") == 1)

    handler.close()

    assert handler.stats() == {"accepted": 2, "retried": 1, "queued": 0}
    assert messages(onecollector.events) == ["one", "two"]


def test_shutdown_with_a_collector_that_never_answers_is_bounded(
    onecollector: LocalCollector, make: Make
) -> None:
    onecollector.script_always(Answer(hang=True))
    handler = make(shutdown_timeout=1.0)
    logger = isolated_logger("app.hang", handler)
    logger.info("into the void")
    assert onecollector.wait_for_requests(1)

    started = time.monotonic()
    logging.shutdown([__import__("weakref").ref(handler)])
    elapsed = time.monotonic() - started

    assert elapsed < 1.0 + 1.0
    assert handler.stats()["cached"] == 1


@pytest.mark.parametrize("cache", [True, False])
def test_a_close_that_leaves_records_undelivered_says_where_they_went(
    onecollector: LocalCollector,
    make: Make,
    caplog: pytest.LogCaptureFixture,
    cache: bool,
) -> None:
    onecollector.script_always(Answer(hang=True))
    handler = make(shutdown_timeout=0.2, cache=cache, max_batch_records=10)
    logger = isolated_logger("app.undelivered", handler)
    for i in range(25):
        logger.info("n%d", i)
    assert onecollector.wait_for_requests(1)

    with caplog.at_level(logging.WARNING, logger="onecollector_logging"):
        handler.close()

    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    where = (
        f"closed: 25 record(s) of tenant {TENANT} wait in the disk cache"
        if cache
        else "closed: 25 record(s) were dropped (see stats())"
    )
    assert len(said) == 1, said
    assert where in said[0]


def test_a_close_sends_what_a_slow_answer_made_the_handler_write_to_disk(
    onecollector: LocalCollector, make: Make, tmp_path: Path
) -> None:
    # One slow answer sends the batches behind it to disk; the collector is
    # quick again by the close, which sends them rather than leave them there
    # for the next run of the application.
    onecollector.script(Answer(delay_s=0.6))
    handler = make(max_batch_records=10, shutdown_timeout=5)
    logger = isolated_logger("app.slow", handler)
    for i in range(45):
        logger.info("n%d", i)
    assert wait_until(lambda: handler.stats().get("cached") == 15)

    handler.close()

    assert handler.stats() == {"accepted": 45, "cached": 15, "queued": 0}
    assert sorted(messages(onecollector.events)) == sorted(f"n{i}" for i in range(45))
    assert list((tmp_path / "cache").rglob("*.batch")) == []


def test_the_close_warning_counts_what_was_stored_before_the_close(
    onecollector: LocalCollector, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    onecollector.script_always(Answer(hang=True))
    handler = make(shutdown_timeout=0.2, max_batch_records=10)
    logger = isolated_logger("app.spilled", handler)
    for i in range(45):
        logger.info("n%d", i)
    # The request hangs: past the two batches handed to the sender, the
    # batches go to disk before the close.
    assert wait_until(lambda: handler.stats().get("cached") == 15), handler.stats()

    with caplog.at_level(logging.WARNING, logger="onecollector_logging"):
        handler.close()

    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1, said
    assert f"closed: 45 record(s) of tenant {TENANT} wait in the disk cache" in said[0]


def test_records_after_close_are_counted_not_lost_silently(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    handler = make()
    logger = isolated_logger("app.late", handler)
    handler.close()

    with caplog.at_level(logging.WARNING, logger="onecollector_logging"):
        logger.info("late 1")
        logger.info("late 2")

    assert handler.stats()["dropped"]["after_close"] == 2
    assert len([r for r in caplog.records if "closed" in r.getMessage()]) == 1


def test_a_record_in_emit_while_another_thread_closes_is_counted(
    onecollector: LocalCollector, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    handler = make()

    class ClosingFormatter(logging.Formatter):
        # Runs inside emit(), after its closed check and before the record is
        # queued: where another thread's close() can fall.
        def format(self, record: logging.LogRecord) -> str:
            handler.close()
            return super().format(record)

    logger = isolated_logger("app.race", handler)
    logger.info("before")
    handler.setFormatter(ClosingFormatter())

    with caplog.at_level(logging.WARNING, logger="onecollector_logging"):
        logger.info("during close")

    assert onecollector.wait_for_events(1)
    assert handler.stats()["dropped"]["after_close"] == 1
    assert handler.stats()["queued"] == 0
    assert len([r for r in caplog.records if "closing" in r.getMessage()]) == 1


def test_records_logged_during_a_close_go_with_the_rest(
    onecollector: LocalCollector,
    make: Make,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler = make()
    logger = isolated_logger("app.during", handler)
    logger.info("before")
    assert onecollector.wait_for_events(1)
    end_close = Pipeline.end_close

    def log_then_end(pipeline: Pipeline) -> None:
        logger.info("during the close")  # as another thread would
        end_close(pipeline)

    monkeypatch.setattr(Pipeline, "end_close", log_then_end)
    with caplog.at_level(logging.WARNING, logger="onecollector_logging"):
        handler.close()

    assert handler.stats() == {"accepted": 2, "queued": 0}
    assert messages(onecollector.events) == ["before", "during the close"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_records_queued_after_the_threads_stopped_go_to_the_cache(
    onecollector: LocalCollector, make: Make
) -> None:
    handler = make()
    logger = isolated_logger("app.straggler", handler)
    logger.info("first")
    assert onecollector.wait_for_events(1)
    pipeline = handler._pipeline
    assert pipeline is not None and pipeline._threads
    # The close of a handler whose threads finish before a late record lands.
    assert pipeline.begin_close(5.0)
    for thread in pipeline._threads:
        thread.join(5.0)
        assert not thread.is_alive()
    logger.info("straggler")

    pipeline.end_close()

    assert handler.stats()["cached"] == 1
    assert handler.stats()["queued"] == 0


def test_stats_count_accepted_records(onecollector: LocalCollector, make: Make) -> None:
    handler = make()
    logger = isolated_logger("app.stats", handler)

    for i in range(7):
        logger.info("n%d", i)
    handler.flush()

    assert onecollector.wait_for_events(7)
    assert handler.stats()["accepted"] == 7
    assert all(r.status == 200 for r in onecollector.requests)


def test_nothing_identifying_is_sent_by_default(
    onecollector: LocalCollector, make: Make
) -> None:
    import getpass
    import socket

    logger = isolated_logger("app.private", make())

    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    logger.info("plain", stack_info=True)
    logger.handlers[0].flush()

    assert onecollector.wait_for_events(2)
    text = "".join(r.text for r in onecollector.requests)
    assert __file__ not in text and str(Path(__file__).parent) not in text
    assert "test_handler.py" in text
    assert socket.gethostname() not in text
    assert f'"{getpass.getuser()}"' not in text
    assert "code.filepath" not in text


def test_code_location_is_opt_in(onecollector: LocalCollector, make: Make) -> None:
    logger = isolated_logger("app.where", make(code_location=True))

    logger.info("here")
    logger.handlers[0].flush()

    assert onecollector.wait_for_events(1)
    data = onecollector.events[0]["data"]
    assert data["code.filepath"] == __file__
    assert data["code.function"] == "test_code_location_is_opt_in"
    assert isinstance(data["code.lineno"], int)


@pytest.mark.parametrize(
    "options",
    [
        {"instrumentation_key": KEY, "flush_interval_s": "soon"},
        {"instrumentation_key": "<tenant>-x"},
        {"instrumentation_key": KEY, "endpoint": "ftp://x"},
    ],
)
def test_a_refused_construction_leaves_logging_usable(options: dict) -> None:
    handler = {"class": "onecollector_logging.OneCollectorHandler", **options}
    with pytest.raises(ValueError, match="Unable to configure handler") as caught:
        logging.config.dictConfig(
            {
                "version": 1,
                "handlers": {"oc": handler},
                "root": {"handlers": ["oc"]},
            }
        )
    assert isinstance(caught.value.__cause__, ConfigurationError)

    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    logging.shutdown(list(logging._handlerList))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("under_the_file", "problem"),
    [
        ("", "is not a directory"),
        ("sub/cache", "cannot be created: '{file}' is not a directory"),
    ],
)
def test_a_file_in_the_way_of_cache_dir_fails_at_construction(
    tmp_path: Path, under_the_file: str, problem: str
) -> None:
    file = tmp_path / "taken"
    file.write_text("not a directory")
    cache_dir = str(file / under_the_file) if under_the_file else str(file)
    lazy = tmp_path / "lazy" / "cache"

    with pytest.raises(ConfigurationError) as caught:
        OneCollectorHandler(KEY, cache_dir=cache_dir)
    OneCollectorHandler(KEY, cache_dir=str(lazy)).close()

    message = str(caught.value)
    assert message.startswith(f"cache_dir {cache_dir!r}")
    assert problem.format(file=file) in message
    assert sorted(tmp_path.iterdir()) == [file]


def test_dict_config_refuses_a_file_as_cache_dir(tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_text("not a directory")
    handler = {
        "class": "onecollector_logging.OneCollectorHandler",
        "instrumentation_key": KEY,
        "cache_dir": str(file),
    }

    with pytest.raises(ValueError, match="Unable to configure handler") as caught:
        logging.config.dictConfig(
            {"version": 1, "handlers": {"oc": handler}, "root": {"handlers": ["oc"]}}
        )

    assert isinstance(caught.value.__cause__, ConfigurationError)
    assert str(file) in str(caught.value.__cause__)
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    logging.shutdown(list(logging._handlerList))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "endpoint", ["http://[::1", "https://host:99999/", "http://host:0/"]
)
def test_malformed_endpoints_are_configuration_errors(endpoint: str) -> None:
    with pytest.raises(ConfigurationError, match="endpoint"):
        OneCollectorHandler(KEY, endpoint=endpoint)


@pytest.mark.parametrize(
    "query",
    [
        KEY,
        KEY.upper(),
        KEY.replace("-", "%2D"),
        KEY.replace("-", "%2d"),
        KEY.partition("-")[2],
    ],
)
def test_an_endpoint_holding_the_key_is_refused_without_showing_it(query: str) -> None:
    # urllib3 logs the URL of every request; the key goes in a header only.
    with pytest.raises(ConfigurationError, match="x-apikey header") as caught:
        OneCollectorHandler(KEY, endpoint=f"https://host/OneCollector/1.0/?k={query}")

    assert query not in str(caught.value)


def test_no_repr_of_the_handler_or_its_parts_holds_the_key(make: Make) -> None:
    handler = make()
    parts = [handler, handler._settings, handler._record_options, handler.counters]

    assert [repr(part) for part in parts if KEY in repr(part)] == []


def test_a_tenant_that_is_not_alphanumeric_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="tenant"):
        OneCollectorHandler("<tenant>-<...>-<...>")


def test_a_key_quoted_back_by_the_collector_is_masked(
    onecollector: LocalCollector, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    onecollector.script(
        Answer(
            401,
            headers={"Collector-Error": f"unknown key {KEY}"},
            # The key straddles the 200-byte excerpt of the body.
            body=f'{{"acc":0,"efi":{{"InvalidTenantToken":"all"}},"pad":"{"x" * 120}",'
            f'"key":"{KEY}"}}',
        )
    )
    handler = make()
    logger = isolated_logger("app.echo", handler)

    with caplog.at_level(logging.DEBUG, logger="onecollector_logging"):
        logger.info("refused")
        handler.flush()

    assert onecollector.wait_for_requests(1)
    assert KEY not in caplog.text
    assert f"{TENANT}-***" in caplog.text


def test_handler_filters_apply(onecollector: LocalCollector, make: Make) -> None:
    handler = make()
    handler.addFilter(lambda record: "skip" not in record.getMessage())
    logger = isolated_logger("app.filtered", handler)

    logger.info("keep me")
    logger.info("skip me")
    logger.info("keep me too")
    handler.flush()

    assert onecollector.wait_for_events(2)
    assert messages(onecollector.events) == ["keep me", "keep me too"]


def _pay_messages(other: logging.handlers.BufferingHandler) -> List[str]:
    return sorted(r.getMessage() for r in other.buffer if r.name.startswith("pay"))


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level restored after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_records_logged_by_redact_go_to_other_handlers_not_back_to_this_one(
    onecollector: LocalCollector, make: Make, root_logger: logging.Logger
) -> None:
    redacted: List[str] = []

    def redact(data: Dict[str, Any]) -> Dict[str, Any]:
        redacted.append(data["formattedMessage"])
        logging.getLogger("pay.redact").warning("removed a card number")
        data.pop("card", None)
        return data

    handler = make(redact=redact)
    other = logging.handlers.BufferingHandler(capacity=1000)
    root_logger.handlers[:] = [handler, other]
    root_logger.setLevel(logging.INFO)

    logging.getLogger("pay").info("payment", extra={"card": "4111"})
    assert handler.flush_within(10)

    assert messages(onecollector.events) == ["payment"]
    assert "card" not in onecollector.events[0]["data"]
    assert redacted == ["payment"]
    assert _pay_messages(other) == ["payment", "removed a card number"]


def test_records_after_a_redact_that_logged_and_raised_are_still_sent(
    onecollector: LocalCollector, make: Make, root_logger: logging.Logger
) -> None:
    def redact(data: Dict[str, Any]) -> Dict[str, Any]:
        if data["formattedMessage"] == "bad":
            logging.getLogger("pay.redact").warning("cannot redact this")
            raise ValueError("unredactable")
        return data

    handler = make(redact=redact)
    root_logger.handlers[:] = [handler]
    root_logger.setLevel(logging.INFO)

    logging.getLogger("pay").info("bad")
    logging.getLogger("pay").info("good")
    assert handler.flush_within(10)

    assert messages(onecollector.events) == ["good"]
    assert handler.stats()["dropped"] == {"redact_error": 1}


def test_redact_leaves_the_own_activity_flag_as_it_found_it(make: Make) -> None:
    # As on a thread already doing the handler's own work.
    redact = make(redact=lambda data: data)._record_options.redact
    assert redact is not None
    own_activity.active = True
    try:
        redact({"message": "m"})
        still_active = own_activity.active
    finally:
        own_activity.active = False

    assert still_active


@pytest.mark.parametrize("compression", ["deflate", "gzip", "none"])
def test_every_compression_delivers_a_batch_of_many_lines_whole_and_in_order(
    onecollector: LocalCollector, make: Make, compression: str
) -> None:
    handler = make(compression=compression, max_batch_records=150)
    logger = isolated_logger("app.compression", handler)
    sent = [f"line {i} " + "x" * (i % 50) for i in range(150)]

    for text in sent:
        logger.info(text)

    assert handler.flush_within(10)
    assert onecollector.wait_for_events(150)
    (request,) = onecollector.requests
    assert request.problem is None
    assert request.headers.get("Content-Encoding") == (
        None if compression == "none" else compression
    )
    assert messages(onecollector.events) == sent


def test_a_key_with_a_typographic_dash_is_refused_without_echoing_it(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    pasted = KEY.replace("-89ab", "\u201389ab")

    with pytest.raises(ConfigurationError, match="not printable ASCII") as raised:
        OneCollectorHandler(
            pasted, endpoint=onecollector.endpoint, cache_dir=str(tmp_path)
        )

    assert pasted not in str(raised.value)


def test_a_record_without_a_logger_name_is_sent_not_reported_as_an_error(
    onecollector: LocalCollector, make: Make, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = make()

    handler.handle(logging.makeLogRecord({"msg": "nameless"}))

    assert handler.flush_within(10)
    assert onecollector.wait_for_events(1)
    assert messages(onecollector.events) == ["nameless"]
    assert "Logging error" not in capsys.readouterr().err
