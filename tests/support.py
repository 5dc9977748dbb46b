"""Shared constants and helpers of the test suite."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Iterable, List

TENANT = "0123456789abcdef0123456789abcdef"
KEY = f"{TENANT}-01234567-89ab-4cde-8f01-23456789abcd-0001"
OTHER_TENANT = "fedcba9876543210fedcba9876543210"
OTHER_KEY = f"{OTHER_TENANT}-76543210-ba98-4dcb-8f01-dcba98765432-0002"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll *condition* until true or *timeout*; for state with no event to wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def messages(events: Iterable[Dict[str, Any]]) -> List[str]:
    return [e["data"]["formattedMessage"] for e in events]


def isolated_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger
