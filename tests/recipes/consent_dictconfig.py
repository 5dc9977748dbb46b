"""The same rule in a ``dictConfig``: the handler exists only with consent.

The factory reads the stored answer and builds a ``NullHandler`` when there is
none (or it is no, or the opt-out variable is set); it never asks. Ask first,
with ``Consent("contoso-cli").ask()``, then configure logging.
"""

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "onecollector": {
            "()": "onecollector_logging.consent.handler_factory",
            "app_name": "contoso-cli",
            "event_name": "Contoso.Cli.Log",
            "level": "INFO",
        },
    },
    "root": {"handlers": ["onecollector"], "level": "INFO"},
}
