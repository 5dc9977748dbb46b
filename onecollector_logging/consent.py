"""Ask the user once whether the application may send telemetry, and remember.

An application that runs on its users' machines asks before it sends anything::

    consent = Consent("contoso-cli")
    consent.ask()  # prompts only the first time
    logging.getLogger().addHandler(consent.handler(event_name="Contoso.Cli.Log"))

The answer is kept per user in a small JSON file readable only by that user.
Until the user says yes, :meth:`Consent.handler` gives a
:class:`logging.NullHandler`: no handler is built, so no thread, no socket and
no disk cache exist. The opt-out environment variable
``ONECOLLECTOR_LOGGING_DISABLED`` always wins over a stored yes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import platformdirs

from . import _config
from .exceptions import ConfigurationError
from .handler import OneCollectorHandler

__all__ = ["DEFAULT_PROMPT", "Consent", "handler_factory"]

log = logging.getLogger(__name__)

CONSENT_FILE = "telemetry-consent.json"
DEFAULT_PROMPT = "May {app} send usage and error reports to help improve it? [y/N] "
_YES = frozenset({"y", "yes"})


class Consent:
    """The user's answer to "may this application send telemetry?".

    :param app_name: the application's name; it names the per-user directory
        (:func:`platformdirs.user_config_dir`) that holds the answer.
    :param path: the file that holds the answer, instead of
        ``<user config dir>/telemetry-consent.json``.
    :raises ConfigurationError: if *app_name* is empty.
    """

    def __init__(
        self, app_name: str, *, path: Union[str, os.PathLike[str], None] = None
    ) -> None:
        if not isinstance(app_name, str) or not app_name.strip():
            raise ConfigurationError(
                f"app_name must be a non-empty string, got {app_name!r}"
            )
        self.app_name = app_name
        self.path = (
            Path(path)
            if path is not None
            else Path(platformdirs.user_config_dir(app_name)) / CONSENT_FILE
        )

    @property
    def answer(self) -> Optional[bool]:
        """The stored answer, or None if the user was never asked (or the file
        cannot be read, which is taken as never asked)."""
        try:
            with open(self.path, encoding="utf-8") as stream:
                stored = json.load(stream)
        except (OSError, ValueError):
            return None
        granted = stored.get("granted") if isinstance(stored, dict) else None
        return granted if isinstance(granted, bool) else None

    def granted(self) -> bool:
        """Whether records may be sent: the user said yes and the opt-out
        environment variable is not set."""
        if _config.disabled_by_environment():
            return False
        return self.answer is True

    def ask(
        self,
        prompt_fn: Callable[[str], str] = input,
        prompt: str = DEFAULT_PROMPT,
    ) -> bool:
        """Ask the user unless an answer is stored; remember the answer.

        Nothing is asked when the opt-out environment variable is set. When the
        question cannot be put (no terminal: ``EOFError``), the answer counts as
        no for this run and the user is asked again next time.

        :param prompt_fn: shows the prompt and returns what the user typed.
        :param prompt: the question; ``{app}`` is replaced by *app_name*.
        :return: :meth:`granted` after asking.
        """
        if _config.disabled_by_environment():
            return False
        if self.answer is None:
            try:
                reply = prompt_fn(prompt.replace("{app}", self.app_name))
            except EOFError:
                return False
            self.record(str(reply).strip().lower() in _YES)
        return self.granted()

    def record(self, granted: bool) -> None:
        """Store *granted* as the user's answer (a settings screen, a flag).

        :raises OSError: if the file cannot be written.
        """
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"granted": bool(granted), "answered_at": time.time()})
        # Written aside and renamed, so a reader never sees half a file; the
        # temporary file is created 0600, so the answer is never readable by
        # other users, not even for a moment.
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".consent-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        log.debug("telemetry consent of %s stored: %s", self.app_name, granted)

    def forget(self) -> None:
        """Delete the stored answer, so that :meth:`ask` asks again."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def handler(self, **options: Any) -> logging.Handler:
        """A :class:`OneCollectorHandler` built from *options* when
        :meth:`granted`, else a :class:`logging.NullHandler`.

        :param options: the arguments of :class:`OneCollectorHandler`.
        """
        if not self.granted():
            log.debug("no telemetry consent for %s: records stay local", self.app_name)
            return logging.NullHandler()
        return OneCollectorHandler(**options)

    def __repr__(self) -> str:
        return f"<Consent {self.app_name} answer={self.answer}>"


def handler_factory(
    app_name: str,
    consent_path: Optional[str] = None,
    **options: Any,
) -> logging.Handler:
    """Build the handler of a ``dictConfig`` entry, subject to stored consent.

    Use it as the entry's factory; the user is not asked here (logging is often
    configured before there is anyone to ask), the stored answer decides::

        "onecollector": {
            "()": "onecollector_logging.consent.handler_factory",
            "app_name": "contoso-cli",
            "event_name": "Contoso.Cli.Log",
        }

    :param app_name: as for :class:`Consent`.
    :param consent_path: as *path* of :class:`Consent`.
    :param options: the arguments of :class:`OneCollectorHandler`.
    """
    return Consent(app_name, path=consent_path).handler(**options)
