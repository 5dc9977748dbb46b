"""The pytest plugin of :mod:`onecollector_logging`: a local collector per test.

It is registered through the ``pytest11`` entry point, so installing the package
is enough for any test to ask for the fixture::

    def test_warning_is_delivered(onecollector):
        logger.addHandler(OneCollectorHandler(KEY, endpoint=onecollector.endpoint))
        logger.warning("disk full")
        assert onecollector.wait_for_events(1)
"""

from __future__ import annotations

from typing import Iterator

import pytest

from .testing import LocalCollector

__all__ = ["onecollector"]


@pytest.fixture
def onecollector() -> Iterator[LocalCollector]:
    """A started :class:`~onecollector_logging.testing.LocalCollector` on a free
    loopback port, stopped (connections cut, threads joined) after the test."""
    with LocalCollector() as collector:
        yield collector
