"""Common Schema 4.0 rules shared by the envelope builder and the local collector.

Everything here is data or a pure function of its arguments, so that the producer
(:mod:`._envelope`) and the emulator (:mod:`.testing`) cannot disagree on a rule.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Mapping, Optional

DEFAULT_ENDPOINT = "https://mobile.events.data.microsoft.com/OneCollector/1.0/"
CONTENT_TYPE = "application/x-json-stream; charset=utf-8"
SCHEMA_VERSION = "4.0"
SDK_NAME = "onecollector-logging-py"

#: The collector refuses requests above either bound (the 1DS JS SDK's figures,
#: which it documents as the service's own configuration).
MAX_EVENTS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 3_145_728
#: A single event must stay well under the 2,000,000 bytes at which the 1DS
#: clients drop it; half leaves room for the envelope around the shrunk strings.
MAX_EVENT_BYTES = 1_000_000

#: Part A extension slots and keys the collector accepts. One key outside this
#: table makes it reject the whole request as ``InvalidEventFormat``.
EXT_KEYS: Mapping[str, Mapping[str, type]] = {
    "app": dict.fromkeys(
        ("id", "ver", "name", "locale", "env", "expId", "userId", "sesId"), str
    )
    | {"asId": int},
    "os": dict.fromkeys(("name", "ver", "locale", "expId"), str) | {"bootId": int},
    "device": dict.fromkeys(
        (
            "id",
            "localId",
            "authId",
            "authSecId",
            "deviceClass",
            "orgId",
            "orgAuthId",
            "make",
            "model",
            "authIdEnt",
        ),
        str,
    ),
    "user": dict.fromkeys(("id", "localId", "authId", "locale"), str),
    "loc": dict.fromkeys(("id", "country", "timezone"), str),
    "net": dict.fromkeys(("provider", "cost", "type"), str),
    "sdk": dict.fromkeys(("ver", "epoch", "installId", "libVer"), str) | {"seq": int},
    "protocol": {
        "metadataCrc": int,
        "ticketKeys": list,
        "devMake": str,
        "devModel": str,
        "msp": int,
    },
    "cloud": dict.fromkeys(
        (
            "fullEnvName",
            "location",
            "environment",
            "deploymentUnit",
            "name",
            "roleInstance",
            "role",
        ),
        str,
    ),
    "dt": {"traceId": str, "spanId": str},
}

#: Slots that other Microsoft clients send and the collector accepts without our
#: key check. We never produce them; the local collector lets them through.
FOREIGN_EXT_SLOTS = frozenset(
    {
        "metadata",
        "web",
        "intweb",
        "utc",
        "m365",
        "xbl",
        "javascript",
        "mscv",
        "cs",
        "service",
        "intservice",
    }
)

#: Ext slots the application may fill from configuration (the rest are ours).
CONFIGURABLE_EXT_SLOTS = frozenset({"app", "device", "user", "loc", "net", "cloud"})

_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.]{2,98}[A-Za-z0-9]\Z")
_LOCAL_ID = re.compile(r"[a-z]:\S+\Z")
_TRACE_ID = re.compile(r"[0-9a-f]{32}\Z")
_SPAN_ID = re.compile(r"[0-9a-f]{16}\Z")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z\Z")


def is_valid_event_name(name: object) -> bool:
    """Return whether *name* is usable as an event name (and so a table name).

    4-100 characters of ``[A-Za-z0-9_.]``, a letter first, no ``.`` or ``_`` at
    the end, no ``..``.
    """
    return (
        isinstance(name, str)
        and _EVENT_NAME.match(name) is not None
        and ".." not in name
    )


def is_valid_local_id(value: object) -> bool:
    """Return whether *value* has the ``<scope>:<id>`` form of a local id."""
    return isinstance(value, str) and _LOCAL_ID.match(value) is not None


def tenant_of(instrumentation_key: str) -> Optional[str]:
    """Return the tenant id (the part before the first ``-``), or None."""
    tenant, sep, _ = instrumentation_key.partition("-")
    if not sep or not tenant:
        return None
    return tenant


def ikey_of(tenant: str) -> str:
    """Return the envelope ``iKey`` for *tenant*."""
    return "o:" + tenant


_MS_FORMAT = "%Y-%m-%dT%H:%M:%S"


def format_time(epoch_seconds: float) -> str:
    """Format a Unix time as ISO-8601 UTC with exactly three fractional digits.

    The fraction is truncated, never rounded, so a record is never dated later
    than it was made (``.9999`` gives ``.999``).
    """
    whole = int(epoch_seconds // 1)
    millis = int((epoch_seconds - whole) * 1000)
    millis = min(millis, 999)
    stamp = _dt.datetime.fromtimestamp(whole, _dt.timezone.utc).strftime(_MS_FORMAT)
    return f"{stamp}.{millis:03d}Z"


def is_valid_time(value: object) -> bool:
    """Return whether *value* is an ISO-8601 UTC time string the collector takes."""
    if not isinstance(value, str) or _TIME.match(value) is None:
        return False
    try:
        _dt.datetime.strptime(value[:19], _MS_FORMAT)
    except ValueError:
        return False
    return True


def ext_problem(ext: object) -> Optional[str]:
    """Return why *ext* would be rejected by the collector, or None if it is fine."""
    if not isinstance(ext, dict):
        return "ext is not an object"
    for slot, fields in ext.items():
        if slot in FOREIGN_EXT_SLOTS:
            continue
        allowed = EXT_KEYS.get(slot)
        if allowed is None:
            return f"unknown ext slot {slot!r}"
        if not isinstance(fields, dict):
            return f"ext.{slot} is not an object"
        for key, value in fields.items():
            expected = allowed.get(key)
            if expected is None:
                return f"unknown key ext.{slot}.{key}"
            if not _has_type(value, expected):
                return f"ext.{slot}.{key} must be {expected.__name__}"
        problem = _ext_value_problem(slot, fields)
        if problem:
            return problem
    return None


def _has_type(value: object, expected: type) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _ext_value_problem(slot: str, fields: Mapping[str, Any]) -> Optional[str]:
    if slot in ("device", "user") and "localId" in fields:
        if not is_valid_local_id(fields["localId"]):
            return f"ext.{slot}.localId must have the form <scope>:<id>"
    if slot == "dt":
        if "traceId" in fields and not _TRACE_ID.match(fields["traceId"]):
            return "ext.dt.traceId must be 32 lowercase hex digits"
        if "spanId" in fields and not _SPAN_ID.match(fields["spanId"]):
            return "ext.dt.spanId must be 16 lowercase hex digits"
    return None


def envelope_problem(envelope: object) -> Optional[str]:
    """Return why the collector would reject *envelope*, or None if it is fine."""
    if not isinstance(envelope, dict):
        return "event is not a JSON object"
    if envelope.get("ver") != SCHEMA_VERSION:
        return "ver must be '4.0'"
    if not is_valid_event_name(envelope.get("name")):
        return "invalid event name"
    if not is_valid_time(envelope.get("time")):
        return "invalid time"
    ikey = envelope.get("iKey")
    if not isinstance(ikey, str) or not ikey.startswith("o:") or len(ikey) < 3:
        return "iKey must be o:<tenant>"
    if "data" in envelope and not isinstance(envelope["data"], dict):
        return "data is not an object"
    if "ext" in envelope:
        return ext_problem(envelope["ext"])
    return None
