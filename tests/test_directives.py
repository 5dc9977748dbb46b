"""Kill orders, Retry-After, clock skew and the classification of answers."""

from __future__ import annotations

import datetime as dt
import email.utils

import pytest
from freezegun import freeze_time

from onecollector_logging._directives import (
    MAX_RETRY_AFTER_S,
    THIS_REQUEST_ONLY,
    ClockSkew,
    KillWindow,
    RetryGate,
    kill_order,
    retry_after_seconds,
)
from onecollector_logging._transport import (
    ACCEPTED,
    REJECTED,
    SPLIT,
    TRANSIENT,
    classify,
)

TENANT = "0123456789abcdef0123456789abcdef"
KEY = f"{TENANT}-01234567-89ab-4cde-8f01-23456789abcd-0001"


@pytest.mark.parametrize(
    "token",
    [
        f"o:{TENANT}:all",
        f"o:{TENANT}",
        TENANT,
        f"{TENANT}:all",
        KEY,
        f"{KEY}:all",
        f"{KEY}:Some.Event",
        f"other:all, o:{TENANT}:all",
        f"O:{TENANT.upper()}:ALL",
    ],
)
def test_every_token_form_of_our_tenant_opens_a_window(token: str) -> None:
    order = kill_order({"kill-tokens": token, "kill-duration": "60"}, KEY, TENANT)

    assert order == 60.0


@pytest.mark.parametrize(
    "headers",
    [
        {"kill-tokens": "o:ffff:all", "kill-duration": "60"},
        {"kill-tokens": f"o:{TENANT}x:all", "kill-duration": "60"},
        {"kill-tokens": f"o:{TENANT}:all", "kill-duration": "abc"},
        {"kill-tokens": f"o:{TENANT}:all", "kill-duration": "0"},
        {"kill-tokens": f"o:{TENANT}:all", "kill-duration": "-5"},
        {"kill-tokens": f"o:{TENANT}:all"},
        {"kill-duration": "60"},
        {},
    ],
)
def test_malformed_or_foreign_kill_orders_are_ignored(headers: dict) -> None:
    assert kill_order(headers, KEY, TENANT) is None


def test_kill_duration_seconds_and_this_request_only() -> None:
    seconds = {"kill-tokens": TENANT, "kill-duration-seconds": "30"}
    once = {"kill-tokens": TENANT, "kill-duration": "this-request-only"}

    assert kill_order(seconds, KEY, TENANT) == 30.0
    assert kill_order(once, KEY, TENANT) == THIS_REQUEST_ONLY


def test_retry_after_accepts_seconds_and_http_dates_and_caps_them() -> None:
    with freeze_time("2026-12-03 10:00:00"):
        later = dt.datetime(2026, 12, 3, 10, 0, 20, tzinfo=dt.timezone.utc)
        date = email.utils.format_datetime(later, usegmt=True)

        assert retry_after_seconds("7") == 7.0
        assert retry_after_seconds(date) == pytest.approx(20.0)
        assert retry_after_seconds("99999") == MAX_RETRY_AFTER_S
        assert retry_after_seconds("soon") is None
        assert retry_after_seconds(None) is None


def test_kill_window_follows_the_frozen_clock_and_its_store() -> None:
    stored: list[float] = []
    with freeze_time("2026-12-03 10:00:00") as frozen:
        window = KillWindow(load=lambda: 0.0, store=stored.append)
        window.open(60)

        assert window.active()
        frozen.tick(61)
        assert not window.active()
    assert len(stored) == 1


def test_retry_gate_delay_runs_on_the_frozen_clock() -> None:
    with freeze_time("2026-12-03 10:00:00") as frozen:
        gate = RetryGate()
        gate.push(7)
        frozen.tick(5)

        assert gate.delay() == pytest.approx(2.0)


def test_clock_skew_asks_once_then_echoes_or_stops() -> None:
    echoing, silent = ClockSkew(), ClockSkew()

    first = echoing.header()
    echoing.observe({"time-delta-millis": "-1500"})
    silent.observe({})

    assert first == "use-collector-delta"
    assert echoing.header() == "-1500"
    assert silent.header() is None


@pytest.mark.parametrize(
    ("status", "body", "kind", "accepted", "rejected"),
    [
        (200, b'{"acc":10}', ACCEPTED, 10, {}),
        (204, b"", ACCEPTED, 10, {}),
        (200, b"<html>captive portal</html>", ACCEPTED, 10, {}),
        (
            200,
            b'{"acc":8,"rej":2,"efi":{"EventLevelThrottling":[3,7]}}',
            ACCEPTED,
            8,
            {"EventLevelThrottling": 2},
        ),
        (200, b'{"acc":0,"efi":{"X":"all"}}', REJECTED, 0, {"X": 10}),
        (
            400,
            b'{"acc":0,"efi":{"InvalidEventFormat":"all"}}',
            REJECTED,
            0,
            {"InvalidEventFormat": 10},
        ),
        (503, b'{"acc":0,"efi":{"Overloaded":"all"}}', REJECTED, 0, {"Overloaded": 10}),
        (401, b"", REJECTED, 0, {"HTTP401": 10}),
        (501, b"", REJECTED, 0, {"HTTP501": 10}),
        (505, b"", REJECTED, 0, {"HTTP505": 10}),
        (413, b"", SPLIT, 0, {}),
        (408, b"", TRANSIENT, 0, {}),
        (429, b"", TRANSIENT, 0, {}),
        (500, b"", TRANSIENT, 0, {}),
        (503, b"not json", TRANSIENT, 0, {}),
        (302, b"", REJECTED, 0, {"HTTP302": 10}),
    ],
)
def test_every_answer_has_one_classification(
    status: int, body: bytes, kind: str, accepted: int, rejected: dict
) -> None:
    outcome = classify(status, {}, body, 10)

    assert (outcome.kind, outcome.accepted, outcome.rejected) == (
        kind,
        accepted,
        rejected,
    )


def test_transient_answers_carry_retry_after() -> None:
    outcome = classify(429, {"Retry-After": "7"}, b"", 3)

    assert outcome.retry_after == 7.0
