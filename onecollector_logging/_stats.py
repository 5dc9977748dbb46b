"""Thread-safe counters: what happened to every record the handler accepted."""

from __future__ import annotations

import threading
from typing import Dict


class Counters:
    """Named integer counters, incremented from any thread.

    Names are dotted: ``accepted``, ``rejected.<reason>``, ``dropped.<reason>``,
    ``retried``, ``cached``... :meth:`snapshot` nests them one level deep so that
    ``stats()["dropped"]["killed"]`` reads naturally.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Dict[str, int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        if amount:
            with self._lock:
                self._values[name] = self._values.get(name, 0) + amount

    def get(self, name: str) -> int:
        with self._lock:
            if name in self._values:
                return self._values[name]
            prefix = name + "."
            return sum(v for k, v in self._values.items() if k.startswith(prefix))

    def snapshot(self) -> Dict[str, object]:
        with self._lock:
            flat = dict(self._values)
        nested: Dict[str, object] = {}
        for name, value in sorted(flat.items()):
            group, dot, reason = name.partition(".")
            if not dot:
                nested[name] = value
                continue
            bucket = nested.setdefault(group, {})
            if isinstance(bucket, dict):
                bucket[reason] = value
        return nested

    def reset(self) -> None:
        with self._lock:
            self._values.clear()
