from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
import zlib
from http import HTTPStatus
from typing import Any, Callable, Dict, List, Mapping, Optional

import pytest
import requests

from onecollector_logging.testing import Answer, Headers, LocalCollector

pytest_plugins = ["pytester"]

KEY = "a1b2c3d4e5f60718293a4b5c6d7e8f90-1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b-7321"
TENANT = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
KEY2 = "0f1e2d3c4b5a69788796a5b4c3d2e1f0-9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d-4242"
TENANT2 = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
JSON_STREAM = "application/x-json-stream; charset=utf-8"
HEADERS = {"Content-Type": JSON_STREAM, "x-apikey": KEY}
FORMAT_REJECTION = {"acc": 0, "efi": {"InvalidEventFormat": "all"}}
TENANT_REJECTION = {"acc": 0, "efi": {"InvalidTenantToken": "all"}}


def envelope(
    name: str = "App.Log", tenant: str = TENANT, **fields: Any
) -> Dict[str, Any]:
    event: Dict[str, Any] = {
        "ver": "4.0",
        "name": name,
        "time": "2026-12-03T10:11:12.345Z",
        "iKey": "o:" + tenant,
        "data": {"message": "disk full"},
        "ext": {"sdk": {"ver": "onecollector-logging-py-1.0", "seq": 1}},
    }
    event.update(fields)
    return event


def ndjson(*events: Mapping[str, Any]) -> bytes:
    return "\n".join(json.dumps(e, separators=(",", ":")) for e in events).encode()


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def post(
    collector: LocalCollector,
    body: Any,
    headers: Optional[Mapping[str, str]] = None,
    params: Optional[Mapping[str, str]] = None,
    timeout: float = 5.0,
) -> requests.Response:
    return requests.post(
        collector.endpoint,
        data=body,
        headers=HEADERS if headers is None else headers,
        params=params,
        timeout=timeout,
    )


def test_valid_raw_deflate_batch_is_accepted_and_recorded(
    onecollector: LocalCollector,
) -> None:
    events = [envelope(), envelope("App.Other")]
    body = raw_deflate(ndjson(*events))
    before = time.time()

    answer = post(onecollector, body, {**HEADERS, "Content-Encoding": "deflate"})

    assert answer.status_code == 200
    assert answer.json() == {"acc": 2}
    assert answer.headers["Content-Type"] == "application/json"
    assert onecollector.events == events
    assert onecollector.rejected_events == 0
    (request,) = onecollector.requests
    assert (request.method, request.path) == ("POST", "/OneCollector/1.0/")
    assert request.headers["X-APIKEY"] == KEY
    assert request.body == body
    assert request.text == ndjson(*events).decode()
    assert request.events == events
    assert (request.status, request.problem, request.scripted) == (200, None, False)
    assert json.loads(request.answer_body) == {"acc": 2}
    assert before <= request.received_at <= time.time()


@pytest.mark.parametrize(
    ("label", "compress"),
    [
        ("deflate", zlib.compress),
        ("deflate", gzip.compress),
        ("gzip", gzip.compress),
    ],
    ids=["zlib-as-deflate", "gzip-as-deflate", "gzip"],
)
def test_other_compressed_forms_are_accepted(
    onecollector: LocalCollector, label: str, compress: Callable[[bytes], bytes]
) -> None:
    headers = {**HEADERS, "Content-Encoding": label}

    answer = post(onecollector, compress(ndjson(envelope())), headers)

    assert answer.status_code == 200
    assert onecollector.events == [envelope()]


def test_undecodable_body_is_answered_400(onecollector: LocalCollector) -> None:
    headers = {**HEADERS, "Content-Encoding": "deflate"}

    answer = post(onecollector, b"\xff\x00 certainly not deflate", headers)

    assert answer.status_code == 400
    assert answer.json() == FORMAT_REJECTION
    assert "deflate" in answer.headers["Collector-Error"]


def test_chunked_body_is_read(onecollector: LocalCollector) -> None:
    answer = post(onecollector, iter([ndjson(envelope())]))

    assert answer.status_code == 200
    assert onecollector.requests[0].headers["Transfer-Encoding"] == "chunked"
    assert onecollector.events == [envelope()]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", json.dumps([envelope()]).encode()),
        ("application/json", ndjson(envelope())),
        ("text/plain", ndjson(envelope())),
    ],
)
def test_other_content_types_are_answered_415(
    onecollector: LocalCollector, content_type: str, body: bytes
) -> None:
    answer = post(onecollector, body, {"Content-Type": content_type, "x-apikey": KEY})

    assert answer.status_code == 415
    assert answer.headers["Content-Type"] == "application/json"
    assert "Collector-Error" in answer.headers
    assert onecollector.events == []


def test_methods_other_than_post_are_answered_405(onecollector: LocalCollector) -> None:
    answer = requests.get(onecollector.endpoint, headers=HEADERS, timeout=5.0)

    assert answer.status_code == 405
    assert onecollector.requests[0].method == "GET"


def test_missing_key_is_answered_401_invalid_tenant_token(
    onecollector: LocalCollector,
) -> None:
    answer = post(onecollector, ndjson(envelope()), {"Content-Type": JSON_STREAM})

    assert answer.status_code == 401
    assert answer.json() == TENANT_REJECTION
    assert answer.headers["Collector-Error"].startswith("Invalid tenant token")
    assert onecollector.rejected_events == 1


def test_key_without_tenant_prefix_is_answered_401(
    onecollector: LocalCollector,
) -> None:
    headers = {"Content-Type": JSON_STREAM, "x-apikey": TENANT}

    answer = post(onecollector, ndjson(envelope()), headers)

    assert answer.status_code == 401
    assert answer.json() == TENANT_REJECTION


@pytest.mark.parametrize("ikey", ["o:" + KEY, KEY], ids=["o-prefixed", "bare"])
def test_full_key_in_ikey_is_answered_401_without_echoing_it(
    onecollector: LocalCollector, ikey: str
) -> None:
    answer = post(onecollector, ndjson(envelope(iKey=ikey)))

    assert answer.status_code == 401
    assert answer.json() == TENANT_REJECTION
    assert KEY not in answer.headers["Collector-Error"]


def test_ikey_of_a_tenant_whose_key_was_not_given_is_answered_401(
    onecollector: LocalCollector,
) -> None:
    body = ndjson(envelope(), envelope(tenant=TENANT2))

    answer = post(onecollector, body)

    assert answer.status_code == 401
    assert answer.json() == TENANT_REJECTION
    assert onecollector.events == []
    assert onecollector.rejected_events == 2


@pytest.mark.parametrize(
    "bad_line",
    [
        json.dumps(envelope(data={"ratio": float("nan")})).encode(),
        json.dumps(envelope(data={"ratio": float("inf")})).encode(),
        ndjson(envelope(ver="3.0")),
        ndjson(envelope(time="2026-12-03 10:11:12")),
        ndjson(envelope(name="x")),
        ndjson(envelope(ext={"os": {"name": "Linux", "release": "6.1"}})),
        b'{"ver":"4.0","name":',
    ],
    ids=["NaN", "Infinity", "ver", "time", "name", "ext.os.release", "unparseable"],
)
def test_one_invalid_event_rejects_the_whole_request(
    onecollector: LocalCollector, bad_line: bytes
) -> None:
    body = ndjson(envelope()) + b"\n" + bad_line

    answer = post(onecollector, body)

    assert answer.status_code == 400
    assert answer.json() == FORMAT_REJECTION
    assert answer.headers["Collector-Error"]
    assert onecollector.events == []
    assert onecollector.rejected_events == 2
    assert onecollector.requests[0].problem == answer.headers["Collector-Error"]


def js_envelope(tenant: str) -> Dict[str, Any]:
    return {
        "name": "ExtFieldsEvent",
        "time": "2026-12-03T12:47:41.000Z",
        "ver": "4.0",
        "iKey": "o:" + tenant,
        "ext": {
            "sdk": {"ver": "1DS-Web-JS-4.4.4"},
            "metadata": {"f": {"x": {"t": 6}}},
        },
        "data": {"baseData": {"properties": {"version": "PostChannel=4.4.4"}}, "x": 1},
    }


def test_js_sdk_header_form_with_two_tenants_is_accepted(
    onecollector: LocalCollector,
) -> None:
    events = [js_envelope(TENANT), js_envelope(TENANT2)]
    headers = {
        "Client-Id": "NO_AUTH",
        "client-version": "1DS-Web-JS-4.4.4",
        "apikey": f"{KEY},{KEY2}",
        "cache-control": "no-cache, no-store",
        "content-type": "application/x-json-stream",
    }
    params = {"cors": "true", "content-type": "application/x-json-stream"}

    answer = post(onecollector, ndjson(*events) + b"\n", headers, params)

    assert answer.status_code == 200
    assert onecollector.events == events


def test_js_sdk_query_string_form_with_text_plain_is_accepted(
    onecollector: LocalCollector,
) -> None:
    params = {
        "cors": "true",
        "content-type": "application/x-json-stream",
        "client-id": "NO_AUTH",
        "client-version": "1DS-Web-JS-4.4.4",
        "apikey": KEY,
        "upload-time": "1796302242222",
    }
    headers = {"Content-Type": "text/plain;charset=UTF-8"}

    answer = post(onecollector, ndjson(js_envelope(TENANT)), headers, params)

    assert answer.status_code == 200
    assert onecollector.events == [js_envelope(TENANT)]
    assert onecollector.requests[0].query["apikey"] == KEY


def test_own_log_never_shows_the_full_key(
    onecollector: LocalCollector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="onecollector_logging.testing")
    headers = {"Content-Type": "text/plain"}
    params = {"content-type": "application/x-json-stream", "apikey": KEY}

    post(onecollector, ndjson(envelope()), headers, params)
    with socket.create_connection(("127.0.0.1", onecollector.port), 5.0) as raw:
        line = f"POST /OneCollector/1.0/?apikey={KEY} and more HTTP/1.1\r\n\r\n"
        raw.sendall(line.encode())
        assert b"400" in raw.recv(4096)

    logged = "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name == "onecollector_logging.testing"
    )
    assert "/OneCollector/1.0/" in logged
    assert TENANT not in logged


def test_empty_lines_are_ignored(onecollector: LocalCollector) -> None:
    body = b"\n" + ndjson(envelope()) + b"\n\n" + ndjson(envelope()) + b"\n"

    answer = post(onecollector, body)

    assert answer.json() == {"acc": 2}


def test_500_events_are_accepted_and_501_answered_413(
    onecollector: LocalCollector,
) -> None:
    accepted = post(onecollector, ndjson(*[envelope()] * 500))
    too_many = post(onecollector, ndjson(*[envelope()] * 501))

    assert accepted.status_code == 200
    assert too_many.status_code == 413
    assert len(onecollector.events) == 500


def test_body_over_the_byte_limit_once_inflated_is_answered_413(
    onecollector: LocalCollector,
) -> None:
    event = envelope(data={"message": "x" * 3_200_000})
    headers = {**HEADERS, "Content-Encoding": "deflate"}

    answer = post(onecollector, raw_deflate(ndjson(event)), headers)

    assert answer.status_code == 413
    assert onecollector.events == []


def test_scripted_answer_replaces_the_verdict_once(
    onecollector: LocalCollector,
) -> None:
    onecollector.script(Answer(status=503, headers={"Retry-After": "7"}))

    failed = post(onecollector, ndjson(envelope()))
    accepted = post(onecollector, ndjson(envelope()))

    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "7"
    assert failed.json() == {"acc": 0}
    assert accepted.status_code == 200
    assert onecollector.events == [envelope()]
    assert onecollector.rejected_events == 1
    first = onecollector.requests[0]
    assert (first.status, first.scripted, first.problem) == (503, True, None)
    assert first.events == [envelope()]
    assert onecollector.pending_answers == 0


def test_scripted_delay_postpones_the_answer(onecollector: LocalCollector) -> None:
    onecollector.script(Answer(delay_s=0.3))
    started = time.monotonic()

    answer = post(onecollector, ndjson(envelope()))

    assert answer.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_scripted_reset_is_seen_as_a_connection_error(
    onecollector: LocalCollector, capfd: pytest.CaptureFixture[str]
) -> None:
    onecollector.script(Answer(reset=True))

    with pytest.raises(requests.ConnectionError) as failure:
        post(onecollector, ndjson(envelope()))

    assert "reset" in str(failure.value).lower()
    assert onecollector.requests[0].status is None
    assert onecollector.events == []
    assert post(onecollector, ndjson(envelope())).status_code == 200
    assert capfd.readouterr().err == ""


def test_stop_releases_a_hanging_connection_promptly() -> None:
    collector = LocalCollector().start()
    collector.script(Answer(hang=True))
    outcome: List[BaseException] = []

    def client() -> None:
        try:
            post(collector, ndjson(envelope()), timeout=10.0)
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    assert collector.wait_for_requests(1, timeout=5.0)
    started = time.monotonic()

    collector.stop()

    assert time.monotonic() - started < 2.0
    thread.join(5.0)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], requests.ConnectionError)


def test_hanging_connection_ends_when_the_client_gives_up(
    onecollector: LocalCollector,
) -> None:
    onecollector.script(Answer(hang=True))

    with pytest.raises(requests.Timeout):
        post(onecollector, ndjson(envelope()), timeout=0.2)

    assert post(onecollector, ndjson(envelope())).status_code == 200


def test_partial_rejection_records_only_the_events_not_listed(
    onecollector: LocalCollector,
) -> None:
    events = [envelope("App.Zero"), envelope("App.One"), envelope("App.Two")]
    body = {"acc": 1, "rej": 2, "efi": {"EventLevelThrottling": [0, 2]}}
    onecollector.script(Answer(body=body))

    answer = post(onecollector, ndjson(*events))

    assert answer.status_code == 200
    assert answer.json() == body
    assert onecollector.events == [events[1]]
    assert onecollector.rejected_events == 2


def test_scripted_2xx_with_efi_all_accepts_nothing(
    onecollector: LocalCollector,
) -> None:
    onecollector.script(Answer(body='{"acc":0,"efi":{"Throttled":"all"}}'))

    post(onecollector, ndjson(envelope()))

    assert onecollector.events == []
    assert onecollector.rejected_events == 1


def test_standing_answer_applies_once_the_queue_is_empty(
    onecollector: LocalCollector,
) -> None:
    onecollector.script(Answer(status=202))
    onecollector.script_always(Answer(status=503))

    statuses = [post(onecollector, ndjson(envelope())).status_code for _ in range(3)]
    onecollector.script_always(None)
    statuses.append(post(onecollector, ndjson(envelope())).status_code)

    assert statuses == [202, 503, 503, 200]
    assert len(onecollector.events) == 2


@pytest.mark.parametrize(
    ("options", "token", "duration_header", "duration"),
    [
        ({}, f"o:{TENANT}:all", "kill-duration", "60"),
        ({"token_form": "{key}"}, KEY, "kill-duration", "60"),
        ({"token_form": "{tenant}"}, TENANT, "kill-duration", "60"),
        (
            {"this_request_only": True},
            f"o:{TENANT}:all",
            "kill-duration",
            "this-request-only",
        ),
        (
            {"duration_header": "kill-duration-seconds"},
            f"o:{TENANT}:all",
            "kill-duration-seconds",
            "60",
        ),
    ],
    ids=["o-tenant-all", "full-key", "bare-tenant", "this-request-only", "seconds"],
)
def test_kill_headers_go_to_the_next_answer_for_that_tenant(
    onecollector: LocalCollector,
    options: Dict[str, Any],
    token: str,
    duration_header: str,
    duration: str,
) -> None:
    onecollector.kill(TENANT, 60, **options)
    other_tenant = {"Content-Type": JSON_STREAM, "x-apikey": KEY2}

    unrelated = post(onecollector, ndjson(envelope(tenant=TENANT2)), other_tenant)
    killed = post(onecollector, ndjson(envelope()))
    after = post(onecollector, ndjson(envelope()))

    assert "kill-tokens" not in unrelated.headers
    assert killed.status_code == 200
    assert killed.headers["kill-tokens"] == token
    assert killed.headers[duration_header] == duration
    assert "kill-tokens" not in after.headers


def test_kill_rides_on_a_scripted_answer_too(onecollector: LocalCollector) -> None:
    onecollector.kill(TENANT, 5)
    onecollector.script(Answer(status=403))

    answer = post(onecollector, ndjson(envelope()))

    assert answer.status_code == 403
    assert answer.headers["kill-tokens"] == f"o:{TENANT}:all"
    assert answer.headers["kill-duration"] == "5"


def test_kill_rejects_an_unknown_placeholder() -> None:
    with pytest.raises(ValueError, match="token_form"):
        LocalCollector().kill(TENANT, token_form="{nope}")


def test_time_delta_is_answered_only_to_use_collector_delta(
    onecollector: LocalCollector,
) -> None:
    asking = {**HEADERS, "time-delta-to-apply-millis": "use-collector-delta"}

    default = post(onecollector, ndjson(envelope()), asking)
    not_asked = post(onecollector, ndjson(envelope()))
    onecollector.time_delta_millis = 123456
    configured = post(onecollector, ndjson(envelope()), asking)
    onecollector.time_delta_millis = None
    silent = post(onecollector, ndjson(envelope()), asking)

    assert default.headers["time-delta-millis"] == "0"
    assert "time-delta-millis" not in not_asked.headers
    assert configured.headers["time-delta-millis"] == "123456"
    assert "time-delta-millis" not in silent.headers


def test_wait_for_events_returns_false_promptly_on_timeout(
    onecollector: LocalCollector,
) -> None:
    started = time.monotonic()

    assert onecollector.wait_for_events(1, timeout=0.05) is False
    assert onecollector.wait_for_requests(1, timeout=0.05) is False
    assert time.monotonic() - started < 1.0


def test_wait_for_events_wakes_up_when_events_arrive(
    onecollector: LocalCollector,
) -> None:
    sender = threading.Thread(target=post, args=(onecollector, ndjson(envelope())))
    sender.start()

    arrived = onecollector.wait_for_events(1, timeout=5.0)

    sender.join(5.0)
    assert arrived


def test_on_event_receives_each_accepted_envelope() -> None:
    seen: List[Dict[str, Any]] = []
    with LocalCollector(on_event=seen.append) as collector:
        collector.script(Answer(status=500))
        post(collector, ndjson(envelope("App.Lost")))
        post(collector, ndjson(envelope("App.Kept"), envelope("App.Also")))

    assert [event["name"] for event in seen] == ["App.Kept", "App.Also"]


def test_clear_forgets_received_data(onecollector: LocalCollector) -> None:
    post(onecollector, ndjson(envelope()))
    post(onecollector, ndjson(envelope(ver="1.0")))

    onecollector.clear()

    assert onecollector.events == []
    assert onecollector.requests == []
    assert onecollector.rejected_events == 0


def test_stop_is_idempotent_and_leaves_no_thread_behind() -> None:
    before = set(threading.enumerate())
    collector = LocalCollector().start()
    with requests.Session() as idle_keep_alive:
        idle_keep_alive.post(
            collector.endpoint, data=ndjson(envelope()), headers=HEADERS, timeout=5.0
        )

        collector.stop()
        collector.stop()

        assert set(threading.enumerate()) - before == set()


def test_restart_serves_on_the_same_port_and_keeps_data() -> None:
    collector = LocalCollector().start()
    endpoint = collector.endpoint
    post(collector, ndjson(envelope()))
    collector.stop()

    with pytest.raises(requests.ConnectionError):
        post(collector, ndjson(envelope()))
    collector.start()
    try:
        answer = post(collector, ndjson(envelope()))
    finally:
        collector.stop()

    assert collector.endpoint == endpoint
    assert answer.status_code == 200
    assert len(collector.events) == 2


def test_endpoint_is_unknown_before_start() -> None:
    with pytest.raises(RuntimeError):
        _ = LocalCollector().endpoint


@pytest.mark.parametrize(
    "options",
    [
        {"status": 600},
        {"status": 101},
        {"delay_s": -1.0},
        {"reset": True, "hang": True},
    ],
)
def test_impossible_answers_are_refused(options: Dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Answer(**options)


@pytest.mark.parametrize("body", [[1, 2, 3], 7, bytearray(b"{}")])
def test_an_answer_body_of_another_type_is_refused_when_created(body: Any) -> None:
    with pytest.raises(TypeError, match="body"):
        Answer(body=body)


@pytest.mark.parametrize("body", [None, {"acc": 1}, '{"acc":1}', b'{"acc":1}'])
def test_the_documented_answer_bodies_are_accepted(body: Any) -> None:
    assert Answer(body=body).body == body


def _circular() -> Dict[str, Any]:
    body: Dict[str, Any] = {}
    body["self"] = body
    return body


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"status": 200.0}, "status"),
        ({"status": True}, "status"),
        ({"status": "200"}, "status"),
        ({"delay_s": "1"}, "delay_s"),
        ({"delay_s": False}, "delay_s"),
        ({"reset": "yes"}, "reset"),
        ({"hang": 1}, "hang"),
        ({"headers": [("a", "b")]}, "headers"),
        ({"headers": {"a": 1}}, "headers"),
        ({"headers": {b"a": "b"}}, "headers"),
        ({"body": {1: object()}}, "body"),
        ({"body": {"x": object()}}, "body"),
        ({"body": {(1, 2): "a tuple is no JSON key"}}, "body"),
    ],
)
def test_answer_options_of_the_wrong_type_are_refused_when_created(
    options: Dict[str, Any], name: str
) -> None:
    with pytest.raises(TypeError, match=name):
        Answer(**options)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"delay_s": float("nan")}, "delay_s"),
        ({"delay_s": float("inf")}, "delay_s"),
        ({"delay_s": threading.TIMEOUT_MAX * 2}, "delay_s"),
        ({"headers": {"X-A": "b\r\nX-Injected: 1"}}, "headers"),
        ({"headers": {"X-A": "b\nc"}}, "headers"),
        ({"headers": {"X-A": "b\rc"}}, "headers"),
        ({"headers": {"X-A\r\nX-Injected": "1"}}, "headers"),
        ({"headers": {"X-A\n": "b"}}, "headers"),
        ({"headers": {"X A": "b"}}, "headers"),
        ({"headers": {"": "b"}}, "headers"),
        ({"headers": {"X-A": "10 \u20ac"}}, "headers"),
        ({"body": "\ud800"}, "body"),
        ({"body": _circular()}, "body"),
        ({"body": {"acc": float("nan")}}, "body"),
        ({"status": 204, "body": "{}"}, "body"),
        ({"status": 304, "body": {"acc": 1}}, "body"),
    ],
)
def test_answer_options_the_collector_cannot_serve_are_refused_when_created(
    options: Dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        Answer(**options)


@pytest.mark.parametrize(
    "name", ["Content-Length", "content-length", "TRANSFER-ENCODING", "Connection"]
)
def test_answer_headers_that_frame_the_answer_are_refused(name: str) -> None:
    # A Content-Length beside the collector's made the client fail an answer
    # scripted to succeed.
    with pytest.raises(ValueError, match=f"{name}: the collector sets it"):
        Answer(headers={name: "100000"}, body=b"{}")


@pytest.mark.parametrize(
    "options",
    [
        {"status": HTTPStatus.ACCEPTED},
        {"status": 599, "delay_s": 0},
        {"delay_s": threading.TIMEOUT_MAX},
        {"headers": {"X-Name": "caf\u00e9\tau lait", "Retry-After": ""}},
        {"headers": Headers([("Retry-After", "7")])},
        {"body": {1: [1.5, None, "x"], "nested": {"acc": 0}}},
        {"body": '{"acc":1,"note":"caf\u00e9"}'},
    ],
)
def test_answer_options_that_can_be_served_are_accepted(
    options: Dict[str, Any],
) -> None:
    answer = Answer(**options)

    assert [getattr(answer, name) for name in options] == list(options.values())


def test_a_verbatim_body_too_deep_to_read_is_still_served(
    onecollector: LocalCollector,
) -> None:
    body = "[" * 100_000
    onecollector.script(Answer(body=body))

    answer = post(onecollector, ndjson(envelope()))

    assert answer.status_code == 200
    assert answer.text == body
    assert onecollector.requests[0].answer_body == body.encode()


def test_headers_are_read_case_insensitively() -> None:
    headers = Headers([("X-ApiKey", "k"), ("Accept", "a"), ("accept", "b")])

    assert headers["x-apikey"] == "k"
    assert headers["ACCEPT"] == "a, b"
    assert list(headers) == ["X-ApiKey", "Accept"]
    assert "x-APIKEY" in headers
    not_a_name: object = 3
    assert not_a_name not in headers


def test_the_repr_of_received_headers_hides_the_keys() -> None:
    key = "0123abcd-5678-secret"
    headers = Headers([("x-apikey", f"{key},4567ef-other"), ("Accept", "a")])

    shown = repr(headers)

    assert "secret" not in shown and "other" not in shown
    assert "0123abcd-***,4567ef-***" in shown and "'Accept': 'a'" in shown


def test_the_repr_of_a_received_request_hides_a_key_in_the_query(
    onecollector: LocalCollector,
) -> None:
    params = {"content-type": "application/x-json-stream", "APIKey": KEY}
    post(onecollector, ndjson(envelope()), {"Content-Type": "text/plain"}, params)
    misrouted = f"{onecollector.endpoint}apikey={KEY2}/"
    requests.post(misrouted, data=b"", headers=HEADERS, timeout=5.0)

    shown = [repr(request) for request in onecollector.requests]

    assert onecollector.requests[0].query["APIKey"] == KEY
    assert KEY not in shown[0] and f"'APIKey': '{TENANT}-***'" in shown[0]
    assert KEY2 not in shown[1] and f"apikey={TENANT2}-***" in shown[1]
    assert "'content-type': 'application/x-json-stream'" in shown[0]


def test_fixture_gives_a_started_collector_and_stops_it(
    pytester: pytest.Pytester,
) -> None:
    # The entry point makes the plugin load by itself only once the package is
    # installed; otherwise register it the way an uninstalled checkout must.
    pytester.makeconftest(
        """
        from onecollector_logging import pytest_plugin

        def pytest_configure(config):
            if not config.pluginmanager.has_plugin("onecollector"):
                config.pluginmanager.register(pytest_plugin, "onecollector")
        """
    )
    pytester.makepyfile(
        """
        import socket

        seen = []

        def test_uses_it(onecollector):
            seen.append(onecollector.port)
            socket.create_connection(("127.0.0.1", onecollector.port)).close()

        def test_it_was_stopped():
            try:
                socket.create_connection(("127.0.0.1", seen[0]), timeout=2).close()
            except ConnectionRefusedError:
                return
            raise AssertionError("the collector still listens")
        """
    )

    result = pytester.runpytest_inprocess()

    result.assert_outcomes(passed=2)
