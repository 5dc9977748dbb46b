"""Coercion and validation of the handler's options.

``dictConfig`` and ``fileConfig`` deliver numbers and booleans as strings; every
option is turned into its real type here, once, at construction, and a bad value
raises :class:`ConfigurationError` naming the option.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import stat
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import unquote, urlsplit

from . import _schema
from .exceptions import ConfigurationError

KEY_ENV = "ONECOLLECTOR_INSTRUMENTATION_KEY"
DISABLED_ENV = "ONECOLLECTOR_LOGGING_DISABLED"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def disabled_by_environment() -> bool:
    """Return whether the opt-out variable turns every handler into a no-op."""
    return os.environ.get(DISABLED_ENV, "").strip().lower() in _TRUE


def as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigurationError(f"{name} must be a boolean, got {value!r}")


def as_number(
    name: str,
    value: object,
    *,
    minimum: float,
    maximum: float = math.inf,
    integer: bool = False,
) -> float:
    number: float
    if isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip()) if integer else float(value.strip())
        except ValueError:
            raise ConfigurationError(
                f"{name} must be {'an integer' if integer else 'a number'},"
                f" got {value!r}"
            ) from None
    else:
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if integer and number != int(number):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if not minimum <= number <= maximum or math.isnan(number):
        raise ConfigurationError(
            f"{name} must be between {minimum:g} and {maximum:g}, got {value!r}"
        )
    return number


def as_int(name: str, value: object, *, minimum: int, maximum: float = math.inf) -> int:
    return int(as_number(name, value, minimum=minimum, maximum=maximum, integer=True))


def as_choice(name: str, value: object, choices: Tuple[str, ...]) -> str:
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise ConfigurationError(
        f"{name} must be one of {', '.join(choices)}; got {value!r}"
    )


def instrumentation_key(value: Optional[str]) -> Tuple[str, str]:
    """Return the key (from *value* or the environment) and its tenant id."""
    if value is None or (isinstance(value, str) and not value.strip()):
        value = os.environ.get(KEY_ENV)
        if not value or not value.strip():
            raise ConfigurationError(
                f"instrumentation_key is required (or set {KEY_ENV})"
            )
    if not isinstance(value, str):
        raise ConfigurationError(
            f"instrumentation_key must be a string, got {type(value).__name__}"
        )
    key = value.strip()
    tenant = _schema.tenant_of(key)
    if tenant is None:
        # The value itself is a credential: describe it, never echo it.
        raise ConfigurationError(
            "instrumentation_key must look like '<tenant id>-<...>' (it has no '-'"
            " after a non-empty tenant id); note that the key must be the full"
            " instrumentation key, not the 'o:<tenant>' form"
        )
    if not tenant.isalnum() or not tenant.isascii():
        raise ConfigurationError(
            "instrumentation_key must start with its tenant id, letters and digits"
            " only (a real key starts with 32 hexadecimal digits)"
        )
    if not key.isascii() or not key.isprintable():
        # HTTP headers are Latin-1 at best: a dash or quote pasted from a
        # document would make every request fail before it is sent.
        raise ConfigurationError(
            f"instrumentation_key for tenant {tenant} contains characters that are"
            " not printable ASCII (a typographic dash or quote pasted with it?)"
        )
    if any(c.isspace() or c == "," for c in key) or key.lower().startswith("o:"):
        raise ConfigurationError(
            f"instrumentation_key for tenant {tenant} contains spaces, commas or an"
            " 'o:' prefix; give the full instrumentation key"
        )
    return key, tenant


#: Characters of a key's secret part from which an endpoint holding it is refused.
_MIN_SECRET = 16


def endpoint(value: object, key: str = "") -> str:
    """Check the collector's URL.

    :param key: the instrumentation key, which must not be part of the URL: it
        travels in the ``x-apikey`` header only, and a URL is logged (by
        urllib3, for one) where a header is not.
    """
    if not isinstance(value, str):
        raise ConfigurationError(f"endpoint must be a URL string, got {value!r}")
    # Case and percent-encoding do not hide it from whoever reads the URL, and
    # the part after the tenant id is the secret even without the tenant (when
    # it is long enough not to turn up in a URL by chance).
    url_text = unquote(value).lower()
    secret = key.partition("-")[2].lower()
    if key and (
        key.lower() in url_text or (len(secret) >= _MIN_SECRET and secret in url_text)
    ):
        raise ConfigurationError(
            "endpoint holds the instrumentation key: the handler sends it in the"
            " x-apikey header; remove it from the URL"
        )
    url = value.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"endpoint {value!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"endpoint must be an http(s) URL, got {value!r}")
    if port == 0:
        raise ConfigurationError(f"endpoint {value!r} has port 0")
    return url


def event_name(name: str, value: object) -> str:
    if not _schema.is_valid_event_name(value):
        raise ConfigurationError(
            f"{name} {value!r} is not a valid event name: 4-100 characters of"
            " letters, digits, '_' and '.', starting with a letter, not ending"
            " with '.' or '_', without '..'"
        )
    assert isinstance(value, str)
    return value


def mapping(name: str, value: object) -> Optional[Dict[str, Any]]:
    """Accept a mapping, or a JSON object in a string (from an INI file)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigurationError(
                f"{name} must be a mapping or a JSON object, got {value!r}"
            ) from None
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


def directory(name: str, value: object) -> Optional[str]:
    """Accept a path (created later, on first use), or None for the default."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigurationError(f"{name} must be a path, got {value!r}")
    path = os.fspath(value)
    if not isinstance(path, str) or "\0" in path:
        raise ConfigurationError(f"{name} is not a usable path: {value!r}")
    return path


def check_creatable(name: str, path: str) -> None:
    """Refuse a directory that no one could create because a file is in the way.

    Only *path* and its ancestors are looked at (``stat``); nothing is created.
    Other problems (permissions, a read-only file system) are the cache's to
    report when it first opens, on a background thread.
    """
    target = os.path.abspath(path)
    candidate = target
    while True:
        try:
            info = os.stat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(candidate)
            if parent == candidate:
                return
            candidate = parent
            continue
        except OSError:
            return
        if stat.S_ISDIR(info.st_mode):
            return
        if candidate == target:
            raise ConfigurationError(f"{name} {path!r} is not a directory")
        raise ConfigurationError(
            f"{name} {path!r} cannot be created: {candidate!r} is not a directory"
        )


def callable_option(name: str, value: object) -> Optional[Callable[..., Any]]:
    """Accept a callable, or a ``module:attribute`` / ``module.attribute`` path."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        path = value.strip()
        if path.startswith("ext://"):
            path = path[len("ext://") :]
        module_name, sep, attribute = path.partition(":")
        if not sep:
            module_name, _, attribute = path.rpartition(".")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigurationError(
                f"{name} {value!r} cannot be imported: {exc}"
            ) from None
        value = target
    if not callable(value):
        raise ConfigurationError(f"{name} must be callable, got {value!r}")
    return value
