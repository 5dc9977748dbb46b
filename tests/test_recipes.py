"""The README's recipes, run as written: the files under ``tests/recipes/``.

Each test loads a recipe file unchanged and points its handler at the test's
collector and cache (a real application leaves both at their defaults).
"""

from __future__ import annotations

import ast
import configparser
import copy
import importlib
import logging
import logging.config
import os
import socket
import stat
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
import yaml
from support import KEY, messages

from onecollector_logging import OneCollectorHandler
from onecollector_logging.consent import Consent, handler_factory
from onecollector_logging.testing import LocalCollector

RECIPES = Path(__file__).resolve().parent / "recipes"
ROOT = RECIPES.parent.parent


@pytest.fixture(autouse=True)
def _key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The recipes take the key from the environment, as deployments do.
    monkeypatch.setenv("ONECOLLECTOR_INSTRUMENTATION_KEY", KEY)
    monkeypatch.delenv("ONECOLLECTOR_LOGGING_DISABLED", raising=False)


@pytest.fixture(autouse=True)
def _close_configured_handlers() -> Iterator[None]:
    """Close the handlers a recipe put on the root logger, as exit would."""
    before = set(logging.getLogger().handlers)
    yield
    for handler in set(logging.getLogger().handlers) - before:
        handler.close()


def _load(name: str) -> Dict[str, Any]:
    namespace: Dict[str, Any] = {}
    exec(compile((RECIPES / name).read_text(), name, "exec"), namespace)
    return namespace


def _point_at(config: Dict[str, Any], endpoint: str, cache_dir: Path) -> None:
    options = config["handlers"]["onecollector"]
    options.update(endpoint=endpoint, cache_dir=str(cache_dir), flush_interval_s=0.05)


def _root_handler() -> OneCollectorHandler:
    (handler,) = [
        h for h in logging.getLogger().handlers if isinstance(h, OneCollectorHandler)
    ]
    return handler


# -- Django ------------------------------------------------------------------


def test_django_logging_settings_work_through_dictconfig_as_django_applies_them(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    config = copy.deepcopy(_load("django_settings.py")["LOGGING"])
    _point_at(config, onecollector.endpoint, tmp_path / "cache")

    logging.config.dictConfig(config)
    logging.getLogger("contoso.shop").info("order %s paid", "A-1")
    logging.getLogger("django.request").warning(
        "Not Found: %s", "/missing", extra={"status_code": 404, "request": object()}
    )
    _root_handler().flush()

    assert onecollector.wait_for_events(2)
    names = {e["data"]["formattedMessage"]: e["name"] for e in onecollector.events}
    assert names == {
        "order A-1 paid": "Contoso.Shop.Log",
        "Not Found: /missing": "Contoso.Shop.Request",
    }
    (request,) = [e for e in onecollector.events if e["name"].endswith("Request")]
    assert request["data"]["status_code"] == 404
    assert "request" not in request["data"]
    assert request["ext"]["app"] == {"name": "contoso-shop", "ver": "2.3.0"}


def test_django_itself_configures_the_handler_and_reports_a_404(
    onecollector: LocalCollector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    django = pytest.importorskip("django")
    settings = importlib.import_module("django.conf").settings

    if settings.configured:
        pytest.skip("Django was configured by another test")
    config = copy.deepcopy(_load("django_settings.py")["LOGGING"])
    _point_at(config, onecollector.endpoint, tmp_path / "cache")
    urls = types.ModuleType("contoso_urls")
    urls.urlpatterns = []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "contoso_urls", urls)
    settings.configure(
        DEBUG=False,
        SECRET_KEY="recipe-test",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF="contoso_urls",
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
        LOGGING=config,
    )
    try:
        django.setup()
        client = importlib.import_module("django.test").Client()

        answer = client.get("/missing?token=secret")
        _root_handler().flush()

        assert answer.status_code == 404
        assert onecollector.wait_for_events(1)
        (event,) = onecollector.events
        assert event["name"] == "Contoso.Shop.Request"
        assert event["data"]["formattedMessage"] == "Not Found: /missing"
        assert event["data"]["status_code"] == 404
        assert "secret" not in str(event)
    finally:
        logging.captureWarnings(False)
        for name in ("django", "django.server"):
            logging.getLogger(name).handlers.clear()


# -- YAML and INI ------------------------------------------------------------


def test_a_yaml_file_loaded_into_dictconfig_gives_a_working_handler(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    config = yaml.safe_load((RECIPES / "logging.yaml").read_text())
    _point_at(config, onecollector.endpoint, tmp_path / "cache")

    logging.config.dictConfig(config)
    logging.getLogger("contoso.worker").info("worker started")
    logging.getLogger("contoso.worker.jobs").info("job %d done", 7, extra={"job": 7})
    logging.getLogger("contoso.worker").debug("below the handler's level")
    _root_handler().flush()

    assert onecollector.wait_for_events(2)
    events = sorted(onecollector.events, key=lambda e: e["ext"]["sdk"]["seq"])
    assert messages(events) == ["worker started", "job 7 done"]
    assert [e["name"] for e in events] == ["Contoso.Worker.Log", "Contoso.Worker.Job"]
    assert events[1]["data"]["job"] == 7
    assert events[0]["ext"]["app"] == {
        "name": "contoso-worker",
        "ver": "1.4.2",
        "env": "production",
    }
    assert events[0]["ext"]["cloud"] == {"role": "worker"}


def test_an_ini_file_loaded_by_fileconfig_gives_a_working_handler(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    parser = configparser.ConfigParser()
    parser.read(RECIPES / "logging.ini")
    section = parser["handler_onecollector"]
    options = ast.literal_eval(section["kwargs"])
    options.update(endpoint=onecollector.endpoint, cache_dir=str(tmp_path / "cache"))
    section["kwargs"] = repr(options)

    logging.config.fileConfig(parser, disable_existing_loggers=False)
    logging.getLogger("contoso.batch").warning("%d rows skipped", 3)
    handler = _root_handler()
    handler.flush()

    assert onecollector.wait_for_events(1)
    (event,) = onecollector.events
    assert event["name"] == "Contoso.Batch.Log"
    assert event["data"]["formattedMessage"] == "3 rows skipped"
    assert event["ext"]["app"] == {"name": "contoso-batch", "ver": "0.9.1"}
    assert handler.level == logging.INFO


# -- gunicorn ------------------------------------------------------------------


def test_two_forked_workers_each_deliver_their_own_records_once(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    records = 50
    result = subprocess.run(
        [
            sys.executable,
            str(RECIPES / "prefork.py"),
            str(RECIPES / "gunicorn.conf.py"),
            onecollector.endpoint,
            str(tmp_path / "cache"),
            str(records),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert onecollector.wait_for_events(2 + 2 * (records + 1))
    events = onecollector.events
    assert len(events) == 2 + 2 * (records + 1)
    by_epoch: Dict[str, List[Dict[str, Any]]] = {}
    for event in events:
        by_epoch.setdefault(event["ext"]["sdk"]["epoch"], []).append(event)
    workers = {
        epoch: {e["data"]["worker"] for e in group} for epoch, group in by_epoch.items()
    }
    assert sorted(tuple(w) for w in workers.values()) == [(0,), (1,), (2,)]
    for group in by_epoch.values():
        seqs = [e["ext"]["sdk"]["seq"] for e in group]
        assert sorted(seqs) == list(range(1, len(group) + 1))
    (arbiter,) = [g for g in by_epoch.values() if g[0]["data"]["worker"] == 0]
    assert sorted(messages(arbiter)) == ["Shutting down: Master", "Starting gunicorn"]
    lines = Counter(messages(events))
    assert all(count == 1 for count in lines.values())
    assert {e["name"] for e in events} == {"Contoso.Web.Log"}


# -- consent -------------------------------------------------------------------


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> List[object]:
    """Every address a socket of this process connects to while the test runs."""
    seen: List[object] = []
    connect = socket.socket.connect
    create_connection = socket.create_connection

    def probed_connect(self: socket.socket, address: Any) -> None:
        seen.append(address)
        connect(self, address)

    def probed_create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(address)
        return create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", probed_connect)
    monkeypatch.setattr(socket, "create_connection", probed_create_connection)
    return seen


@pytest.fixture
def consent_app() -> types.ModuleType:
    module = types.ModuleType("consent_app")
    exec(compile((RECIPES / "consent_app.py").read_text(), "consent_app.py", "exec"),
         module.__dict__)  # fmt: skip
    return module


def _refuse(prompt: str) -> str:
    return "n"


def _no_terminal(prompt: str) -> str:
    raise EOFError


def _must_not_ask(prompt: str) -> str:
    raise AssertionError(f"asked again: {prompt}")


@pytest.mark.parametrize("prompt_fn", [_refuse, _no_terminal], ids=["no", "no-tty"])
def test_without_consent_no_socket_is_opened_and_nothing_is_cached(
    onecollector: LocalCollector,
    tmp_path: Path,
    connections: List[object],
    consent_app: types.ModuleType,
    prompt_fn: Callable[[str], str],
) -> None:
    consent = Consent("contoso-cli", path=tmp_path / "consent.json")

    status = consent_app.main(
        ["a.txt", "b.txt"],
        consent=consent,
        prompt_fn=prompt_fn,
        endpoint=onecollector.endpoint,
        cache_dir=str(tmp_path / "cache"),
    )
    logging.getLogger("contoso.cli").error("and an error for good measure")
    for handler in logging.getLogger().handlers:
        handler.flush()

    assert status == 0
    assert not consent.granted()
    assert connections == []
    assert onecollector.requests == []
    assert not (tmp_path / "cache").exists()
    assert not any(
        isinstance(h, OneCollectorHandler) for h in logging.getLogger().handlers
    )


def test_consent_is_asked_once_remembered_and_then_records_are_sent(
    onecollector: LocalCollector,
    tmp_path: Path,
    connections: List[object],
    consent_app: types.ModuleType,
) -> None:
    path = tmp_path / "consent.json"
    questions: List[str] = []

    def say_yes(prompt: str) -> str:
        questions.append(prompt)
        return " Yes "

    options = {"endpoint": onecollector.endpoint, "cache_dir": str(tmp_path / "c")}
    consent_app.main(["a.txt"], Consent("contoso-cli", path=path), say_yes, **options)
    _root_handler().close()
    logging.getLogger().handlers[:] = []
    consent_app.main(["b", "c"], Consent("contoso-cli", path=path), _must_not_ask,
                     **options)  # fmt: skip
    _root_handler().flush()

    assert questions == [
        "May contoso-cli send usage and error reports to help improve it? [y/N] "
    ]
    assert onecollector.wait_for_events(2)
    assert sorted(e["data"]["files"] for e in onecollector.events) == [1, 2]
    assert any(address[1] == onecollector.port for address in connections)  # type: ignore[index]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_the_telemetry_flag_changes_the_stored_answer(
    onecollector: LocalCollector, tmp_path: Path, consent_app: types.ModuleType
) -> None:
    consent = Consent("contoso-cli", path=tmp_path / "consent.json")
    consent.record(True)

    consent_app.main(["--telemetry", "off"], consent, _must_not_ask)

    assert consent.answer is False
    assert not any(
        isinstance(h, OneCollectorHandler) for h in logging.getLogger().handlers
    )


def test_the_opt_out_variable_wins_over_a_stored_yes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    consent = Consent("contoso-cli", path=tmp_path / "consent.json")
    consent.record(True)
    monkeypatch.setenv("ONECOLLECTOR_LOGGING_DISABLED", "1")

    assert consent.answer is True
    assert consent.granted() is False
    assert consent.ask(_must_not_ask) is False
    assert type(consent.handler(cache_dir=str(tmp_path / "c"))) is logging.NullHandler


def test_the_dictconfig_factory_builds_a_handler_only_with_stored_consent(
    onecollector: LocalCollector, tmp_path: Path, connections: List[object]
) -> None:
    path = tmp_path / "consent.json"
    config = copy.deepcopy(_load("consent_dictconfig.py")["LOGGING"])
    _point_at(config, onecollector.endpoint, tmp_path / "cache")
    config["handlers"]["onecollector"]["consent_path"] = str(path)

    logging.config.dictConfig(copy.deepcopy(config))
    logging.getLogger("contoso.cli").info("before consent")
    (before,) = logging.getLogger().handlers
    before.close()
    Consent("contoso-cli", path=path).record(True)
    logging.config.dictConfig(copy.deepcopy(config))
    logging.getLogger("contoso.cli").info("after consent")
    _root_handler().flush()

    assert type(before) is logging.NullHandler
    assert onecollector.wait_for_events(1)
    assert messages(onecollector.events) == ["after consent"]
    assert onecollector.events[0]["name"] == "Contoso.Cli.Log"


def test_an_unreadable_or_foreign_consent_file_counts_as_never_asked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "consent.json"
    consent = Consent("contoso-cli", path=path)

    for text in ("not json", '{"granted": "yes"}', "[true]"):
        path.write_text(text)
        assert consent.answer is None and not consent.granted()
    consent.forget()
    consent.forget()
    assert not path.exists()


def test_the_answer_lives_in_the_users_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("XDG_CONFIG_HOME is the Linux convention")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    consent = Consent("contoso-cli")
    consent.record(False)

    assert (
        consent.path == tmp_path / "config" / "contoso-cli" / "telemetry-consent.json"
    )
    assert consent.path.is_file()
    assert isinstance(handler_factory("contoso-cli"), logging.NullHandler)


def test_an_empty_application_name_is_refused() -> None:
    from onecollector_logging import ConfigurationError

    with pytest.raises(ConfigurationError, match="app_name"):
        Consent(" ")
