"""gunicorn: every worker delivers its own records.

Run with ``gunicorn -c gunicorn.conf.py contoso.wsgi``. The arbiter configures
logging from ``logconfig_dict`` and then forks the workers. The handler notices
the fork: each worker starts its own sending threads and its own sequence (its
own ``ext.sdk.epoch``), forgets what the arbiter had not sent yet (the arbiter
sends it), and shares the disk cache with the other processes. The key comes
from the environment variable ``ONECOLLECTOR_INSTRUMENTATION_KEY``.
"""

workers = 2

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "onecollector": {
            "class": "onecollector_logging.OneCollectorHandler",
            "level": "INFO",
            "event_name": "Contoso.Web.Log",
            "app": {"name": "contoso-web"},
        },
    },
    "root": {"level": "INFO", "handlers": ["onecollector"]},
    # gunicorn's own loggers do not propagate to the root logger.
    "loggers": {
        "gunicorn.error": {
            "level": "INFO",
            "handlers": ["onecollector"],
            "propagate": False,
        },
    },
}
