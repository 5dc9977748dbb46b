"""Redaction callables that tests reach through dictConfig's ``ext://``."""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def strip_emails(data: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    for key, value in data.items():
        if isinstance(value, str):
            data[key] = _EMAIL.sub("<email>", value)
    return data


def fail_on_secrets(data: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if "secret" in str(data.get("formattedMessage")):
        raise RuntimeError("cannot redact this")
    return data
