"""The errors this package raises."""

from __future__ import annotations


class OneCollectorError(Exception):
    """Base class of every error raised by :mod:`onecollector_logging`."""


class ConfigurationError(OneCollectorError, ValueError):
    """An option given to the handler (or the command line) is not usable.

    Raised at construction, never while logging. The message names the option
    and the offending value; an instrumentation key is shown by its tenant only.
    """
