"""A command-line program that asks its user once before it sends anything.

The first run asks; the answer is kept per user. ``--telemetry on|off`` changes
it later, and ``ONECOLLECTOR_LOGGING_DISABLED=1`` turns sending off whatever
was answered. Until the user says yes, the handler is a ``NullHandler``: no
thread, no socket, no disk cache.
"""

import argparse
import logging
import sys
from typing import Any, Callable, List, Optional

from onecollector_logging.consent import Consent

log = logging.getLogger("contoso.cli")


def configure_telemetry(
    consent: Consent, prompt_fn: Callable[[str], str] = input, **options: Any
) -> logging.Handler:
    """Ask (the first time only) and add the handler that the answer allows."""
    consent.ask(prompt_fn)
    handler = consent.handler(event_name="Contoso.Cli.Log", level="INFO", **options)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    return handler


def main(
    argv: Optional[List[str]] = None,
    consent: Optional[Consent] = None,
    prompt_fn: Callable[[str], str] = input,
    **options: Any,
) -> int:
    parser = argparse.ArgumentParser(prog="contoso")
    parser.add_argument("--telemetry", choices=("on", "off"))
    parser.add_argument("files", nargs="*")
    args = parser.parse_args(argv)
    consent = consent or Consent("contoso-cli")
    if args.telemetry:
        consent.record(args.telemetry == "on")
    configure_telemetry(consent, prompt_fn, **options)
    # What is logged is sent in the background; logging.shutdown(), run at
    # exit, sends the rest.
    log.info("converted %d files", len(args.files), extra={"files": len(args.files)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
