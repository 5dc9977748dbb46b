"""Django: the part of ``settings.py`` that sends records to OneCollector.

Django passes ``LOGGING`` to :func:`logging.config.dictConfig` after its own
defaults, so the handler is configured like any other. The instrumentation key
comes from the environment variable ``ONECOLLECTOR_INSTRUMENTATION_KEY``.
``django.request`` reports every 4xx and 5xx answer; its records get their own
event name, so they land in their own table.
"""

from typing import Any, Dict


def without_request(data: Dict[str, Any]) -> Dict[str, Any]:
    """Leave out the request object of ``django.request`` records: its text
    holds the full path, and a query string can hold a token."""
    data.pop("request", None)
    return data


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "onecollector": {
            "class": "onecollector_logging.OneCollectorHandler",
            "level": "INFO",
            "event_name": "Contoso.Shop.Log",
            "event_names": {"django.request": "Contoso.Shop.Request"},
            "app": {"name": "contoso-shop", "ver": "2.3.0"},
            "redact": without_request,
        },
    },
    "root": {"handlers": ["onecollector"], "level": "INFO"},
}
