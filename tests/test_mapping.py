"""Records become good events end to end: limits, names, redaction, ext options."""

from __future__ import annotations

import logging
import logging.config
from pathlib import Path
from typing import Any, Callable

import pytest
from support import KEY, isolated_logger, messages

from onecollector_logging import ConfigurationError, OneCollectorHandler
from onecollector_logging._schema import MAX_EVENT_BYTES
from onecollector_logging.testing import LocalCollector

Make = Callable[..., OneCollectorHandler]


@pytest.fixture
def make(make_handler: Make) -> Make:
    def build(**options: Any) -> OneCollectorHandler:
        options.setdefault("flush_interval_s", 30)
        return make_handler(**options)

    return build


def test_a_two_megabyte_message_is_shrunk_and_its_neighbours_arrive(
    onecollector: LocalCollector, make: Make
) -> None:
    logger = isolated_logger("app.big", make())
    huge = "é𝄞" * (2_000_000 // 6)

    for i in range(5):
        logger.info("normal %d", i)
    logger.info(huge)
    for i in range(5, 10):
        logger.info("normal %d", i)
    logger.handlers[0].flush()

    assert onecollector.wait_for_events(11)
    assert all(r.problem is None for r in onecollector.requests)
    big = onecollector.events[5]
    text = big["data"]["formattedMessage"]
    assert len(text.encode("utf-8")) < MAX_EVENT_BYTES
    assert text.startswith("é𝄞é𝄞") and "truncated" in text
    lines = [line for r in onecollector.requests for line in r.text.split("\n")]
    assert max(len(line.encode("utf-8")) for line in lines) <= MAX_EVENT_BYTES


def _redacting_config(endpoint: str, cache_dir: Path, redact: str) -> dict:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "oc": {
                "class": "onecollector_logging.OneCollectorHandler",
                "instrumentation_key": KEY,
                "endpoint": endpoint,
                "cache_dir": str(cache_dir),
                "flush_interval_s": "30",
                "redact": redact,
                "event_names": {"app.billing": "Contoso.App.Billing"},
            }
        },
        "loggers": {"app": {"level": "INFO", "handlers": ["oc"], "propagate": False}},
    }


def test_redaction_from_dict_config_removes_an_email_address(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    config = _redacting_config(
        onecollector.endpoint, tmp_path, "ext://redactors.strip_emails"
    )
    logging.config.dictConfig(config)
    handler = logging.getLogger("app").handlers[0]
    try:
        logging.getLogger("app.billing").info(
            "invoice sent to %s", "alice@example.com", extra={"to": "bob@example.org"}
        )
        handler.flush()
        assert onecollector.wait_for_events(1)
    finally:
        handler.close()
        logging.getLogger("app").handlers.clear()

    event = onecollector.events[0]
    assert "example" not in onecollector.requests[0].text
    assert event["data"]["formattedMessage"] == "invoice sent to <email>"
    assert event["data"]["to"] == "<email>"
    assert event["name"] == "Contoso.App.Billing"


def test_a_failing_redactor_costs_only_its_own_event(
    onecollector: LocalCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _redacting_config(
        onecollector.endpoint, tmp_path, "redactors:fail_on_secrets"
    )
    logging.config.dictConfig(config)
    handler = logging.getLogger("app").handlers[0]
    assert isinstance(handler, OneCollectorHandler)
    logger = logging.getLogger("app.web")
    try:
        with caplog.at_level(logging.WARNING, logger="onecollector_logging"):
            logger.info("before")
            logger.info("a secret")
            logger.info("another secret")
            logger.info("after")
        handler.flush()
        assert onecollector.wait_for_events(2)
    finally:
        handler.close()
        logging.getLogger("app").handlers.clear()

    assert messages(onecollector.events) == ["before", "after"]
    assert handler.stats()["dropped"]["redact_error"] == 2
    assert len([r for r in caplog.records if "redact" in r.getMessage()]) == 1


def test_an_invalid_per_record_name_falls_back_and_is_kept(
    onecollector: LocalCollector, make: Make
) -> None:
    handler = make(event_name="Contoso.App.Log")
    logger = isolated_logger("app.names", handler)

    logger.info("odd name", extra={"event_name": "no spaces allowed"})
    handler.flush()

    assert onecollector.wait_for_events(1)
    event = onecollector.events[0]
    assert event["name"] == "Contoso.App.Log"
    assert event["data"]["invalidEventName"] == "no spaces allowed"
    assert handler.stats()["invalid"]["event_name"] == 1


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"ext": {"os": {"release": "x"}}}, "os"),
        ({"ext": {"app": {"initTs": 1}}}, "initTs"),
        ({"ext": {"dt": {"traceFlags": "01"}}}, "dt"),
        ({"device_local_id": "abc123"}, "device_local_id"),
        ({"user_local_id": "0123abcd"}, "user_local_id"),
        ({"app": {"colour": "blue"}}, "colour"),
        ({"cloud": '{"role": 5}'}, "role"),
    ],
)
def test_ext_options_outside_the_schema_fail_at_construction(
    options: dict, named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        OneCollectorHandler(KEY, **options)


def test_configured_ext_fields_reach_the_collector(
    onecollector: LocalCollector, make: Make
) -> None:
    handler = make(
        app={"name": "shop", "env": "prod"},
        cloud='{"role": "api", "roleInstance": "api-7"}',
        device_local_id="r:6f1c7a4e-2b1d-4c8e-9b0a-3d5e7f9a1b2c",
        user_local_id="c:user-42",
    )
    logger = isolated_logger("app.ext", handler)

    logger.info("configured")
    handler.flush()

    assert onecollector.wait_for_events(1)
    ext = onecollector.events[0]["ext"]
    assert ext["cloud"] == {"role": "api", "roleInstance": "api-7"}
    assert ext["device"] == {"localId": "r:6f1c7a4e-2b1d-4c8e-9b0a-3d5e7f9a1b2c"}
    assert ext["user"] == {"localId": "c:user-42"}
    assert onecollector.requests[0].problem is None


def test_trace_context_goes_to_ext_dt_only(
    onecollector: LocalCollector, make: Make
) -> None:
    handler = make()
    logger = isolated_logger("app.trace", handler)

    logger.info(
        "traced",
        extra={
            "otelTraceID": "0af7651916cd43dd8448eb211c80319c",
            "otelSpanID": "b7ad6b7169203331",
        },
    )
    handler.flush()

    assert onecollector.wait_for_events(1)
    event = onecollector.events[0]
    assert event["ext"]["dt"] == {
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "spanId": "b7ad6b7169203331",
    }
    assert "otelTraceID" not in event["data"]
