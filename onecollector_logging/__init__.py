"""Send stdlib :mod:`logging` records to Microsoft OneCollector as Common Schema 4.0
events.

Add :class:`OneCollectorHandler` to a logger (or to a ``dictConfig``) and the
application's existing ``logger.info(...)`` calls are delivered in the
background, retried when the service is unavailable, and kept on disk when they
cannot be sent now.
"""

from __future__ import annotations

from ._version import __version__
from .exceptions import ConfigurationError, OneCollectorError
from .handler import OneCollectorHandler

__all__ = [
    "ConfigurationError",
    "OneCollectorError",
    "OneCollectorHandler",
    "__version__",
]
