from __future__ import annotations

import gc
import logging
import threading
from typing import Any, Callable, Iterator, List

import pytest
from support import KEY

from onecollector_logging import OneCollectorHandler
from onecollector_logging.testing import LocalCollector


def pytest_configure(config: pytest.Config) -> None:
    # An installed package has already loaded the plugin via its pytest11 entry
    # point; a source checkout run without installing has not.
    if not config.pluginmanager.has_plugin("onecollector"):
        from onecollector_logging import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "onecollector")


def _our_threads() -> List[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("onecollector") and t.is_alive()
    ]


@pytest.fixture(autouse=True)
def _restore_logging_and_check_threads() -> Iterator[None]:
    """Every test leaves logging as it found it and leaks no thread of ours."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    before = set(_our_threads())
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for thread in set(_our_threads()) - before:
        thread.join(10.0)
    leaked = [t.name for t in set(_our_threads()) - before]
    assert not leaked, f"threads leaked by the test: {leaked}"


@pytest.fixture
def make_handler(
    onecollector: LocalCollector, tmp_path: Any
) -> Iterator[Callable[..., OneCollectorHandler]]:
    """Build handlers against the test's collector and cache; all closed after."""
    made: List[OneCollectorHandler] = []

    def make(**options: Any) -> OneCollectorHandler:
        options.setdefault("instrumentation_key", KEY)
        options.setdefault("endpoint", onecollector.endpoint)
        options.setdefault("cache_dir", str(tmp_path / "cache"))
        options.setdefault("shutdown_timeout", 5)
        handler = OneCollectorHandler(**options)
        made.append(handler)
        return handler

    yield make
    for handler in made:
        handler.close()
    del made[:]
    gc.collect()


@pytest.fixture
def make(
    make_handler: Callable[..., OneCollectorHandler],
) -> Callable[..., OneCollectorHandler]:
    """Like make_handler, with a short flush interval: small tests send at once."""

    def build(**options: Any) -> OneCollectorHandler:
        options.setdefault("flush_interval_s", 0.05)
        return make_handler(**options)

    return build
