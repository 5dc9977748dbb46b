"""What gunicorn's arbiter does with ``gunicorn.conf.py``, without gunicorn.

Configure logging from ``logconfig_dict`` in the arbiter, log, fork the
workers; each worker logs and exits; the arbiter waits for them, logs again and
shuts logging down. Usage::

    python prefork.py CONF ENDPOINT CACHE_DIR RECORDS_PER_WORKER

ENDPOINT and CACHE_DIR are set on the ``onecollector`` handler of the file's
``logconfig_dict``; the key comes from ``ONECOLLECTOR_INSTRUMENTATION_KEY``.
"""

import logging
import logging.config
import os
import runpy
import sys
import traceback
from typing import List


def serve(worker: int, records: int) -> None:
    """The worker's life: handle "requests", then exit like a gunicorn worker."""
    log = logging.getLogger("contoso.web")
    booting = logging.getLogger("gunicorn.error")
    booting.info("Booting worker with pid: %d", os.getpid(), extra={"worker": worker})
    for i in range(records):
        log.info("worker %d request %d", worker, i, extra={"worker": worker})


def main(argv: List[str]) -> int:
    conf, endpoint, cache_dir, records = argv
    settings = runpy.run_path(conf)
    config = settings["logconfig_dict"]
    config["handlers"]["onecollector"].update(endpoint=endpoint, cache_dir=cache_dir)
    logging.config.dictConfig(config)
    arbiter = logging.getLogger("gunicorn.error")
    arbiter.info("Starting gunicorn", extra={"worker": 0})

    children = []
    for worker in range(1, int(settings["workers"]) + 1):
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                serve(worker, int(records))
                logging.shutdown()
            except BaseException:
                traceback.print_exc()
                status = 1
            finally:
                os._exit(status)
        children.append(pid)
    failed = sum(os.waitpid(pid, 0)[1] != 0 for pid in children)
    arbiter.info("Shutting down: Master", extra={"worker": 0})
    logging.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
