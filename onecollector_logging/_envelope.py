"""Common Schema 4.0 envelopes: the configured ``ext`` part, and one JSON line per
snapshot, kept under the size limit of a single event.

Runs on the worker thread. The constant parts of the line (``iKey`` and every
``ext`` slot but the sequence number and trace context) are encoded once per
handler; each event costs one encoding of its ``data``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import platform
import time
from json.encoder import encode_basestring
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from . import _schema
from ._record import OWN_KEYS, PlainRecord, Snapshot, plain_snapshot, severity_number
from ._stats import Counters
from ._values import JSONValue, to_json
from .exceptions import ConfigurationError

log = logging.getLogger(__name__)

Dumps = Callable[[object], bytes]
Quote = Callable[[str], bytes]

#: Name given to a snapshot whose name is not valid (snapshot() prevents it).
FALLBACK_EVENT_NAME = "Python.Log"
#: Key added when an event had to lose its extras to fit; the number lost.
DROPPED_KEYS = "droppedKeys"
#: Keys whose end is kept when cut: the innermost frames are at the end.
_KEEP_END = frozenset({"exceptionStack", "stackInfo"})
#: Smallest event size worth configuring: room for the envelope and a marker.
MIN_EVENT_BYTES = 1024
_SHRINK_ROUNDS = 16
#: Values are not cut shorter than this while extras could be dropped instead:
#: many values reduced to their marker tell less than the message alone.
_MIN_CUT_BYTES = 128
#: Room for the marker a cut adds, ``…[truncated 1234567 bytes]``.
_MARKER_ROOM = 40

#: The data object of a plain record, in the order snapshot() builds it: the
#: body and the message, then what its logger and level give.
_PLAIN_DATA_HEAD = b'{"body":%s,"formattedMessage":%s'
_PLAIN_DATA_TAIL = b',"severityText":%s,"severityNumber":%d,"logger":%s}'
#: Message templates are kept encoded, up to this many, each up to
#: _QUOTED_MAX_CHARS; and line templates for up to this many loggers and levels.
_MAX_QUOTED = 1024
_QUOTED_MAX_CHARS = 512
_MAX_PLAIN_TEMPLATES = 1024

_HANDLER_SLOTS = {"os", "sdk", "dt"}
_INT64_MAX = 2**63 - 1
_MAX_NAMES = 1024
_HEX = frozenset("0123456789abcdef")

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps_json(value: object) -> bytes:
    """Compact UTF-8 JSON, as the collector takes it; raises on NaN and Infinity."""
    return _ENCODER.encode(value).encode("utf-8")


def _quote_json(text: str) -> bytes:
    """*text* as a JSON string, as :func:`dumps_json` writes it (the function
    its encoder calls for a str, without the encoder's own dispatch)."""
    return encode_basestring(text).encode("utf-8")


_HEAD = b'{"ver":' + dumps_json(_schema.SCHEMA_VERSION) + b',"name":"'


# -- configured ext ---------------------------------------------------------


def static_ext(
    *,
    app: Optional[Mapping[str, object]] = None,
    cloud: Optional[Mapping[str, object]] = None,
    device_local_id: Optional[str] = None,
    user_local_id: Optional[str] = None,
    ext: Optional[Mapping[str, Mapping[str, object]]] = None,
) -> Dict[str, Dict[str, JSONValue]]:
    """Validate the ``ext`` fields the application configures and return them.

    :param app: fields of ``ext.app`` (``name``, ``ver``, ``env``...).
    :param cloud: fields of ``ext.cloud`` (``role``, ``roleInstance``...).
    :param device_local_id: ``ext.device.localId``, in the ``<scope>:<id>`` form.
    :param user_local_id: ``ext.user.localId``, in the ``<scope>:<id>`` form.
    :param ext: any configurable slot (``app``, ``device``, ``user``, ``loc``,
        ``net``, ``cloud``) as a mapping of its fields. A field may also be
        given by a named argument above, with the same value.
    :raises ConfigurationError: naming the field, for a slot the handler fills
        itself, a field that is not part of Common Schema, a value of the wrong
        type, a malformed local id (one such field would make the collector
        reject every request), or a field given two different values.

    Empty values (None, ``""``) are left out, and so are slots left empty.
    Integer fields accept a string of decimal digits, as ``dictConfig`` gives.
    """
    slots: Dict[str, Dict[str, object]] = {}
    if ext is not None:
        if not isinstance(ext, Mapping):
            raise ConfigurationError(
                f"ext must be a mapping of slot -> fields, got {type(ext).__name__}"
            )
        for slot, fields in ext.items():
            _check_slot(slot)
            slots[slot] = dict(_fields_of(f"ext.{slot}", fields))
    for slot, named in (("app", app), ("cloud", cloud)):
        if named is not None:
            for key, value in _fields_of(slot, named).items():
                _set_once(slots.setdefault(slot, {}), slot, key, value, slot)
    for slot, value in (("device", device_local_id), ("user", user_local_id)):
        if value:
            option = f"{slot}_local_id"
            _check_local_id(option, value)
            _set_once(slots.setdefault(slot, {}), slot, "localId", value, option)

    result: Dict[str, Dict[str, JSONValue]] = {}
    for slot, fields in slots.items():
        checked = {
            key: _field_value(slot, key, value)
            for key, value in fields.items()
            if value is not None and value != ""
        }
        if checked:
            result[slot] = checked
    return result


def _set_once(
    fields: Dict[str, object], slot: str, key: str, value: object, option: str
) -> None:
    """Set *key* of ext.*slot* from *option*, unless ``ext`` gave it another value:
    which of the two the application meant cannot be known."""
    if value is None or value == "":
        fields.setdefault(key, value)  # empty: left out unless ext sets it
        return
    given = fields.get(key)
    if given is not None and given not in ("", value):
        raise ConfigurationError(
            f"ext.{slot}.{key} is given twice with different values: {given!r} in"
            f" ext and {value!r} in {option}"
        )
    fields[key] = value


def _check_slot(slot: object) -> None:
    if slot in _schema.CONFIGURABLE_EXT_SLOTS:
        return
    if slot in _HANDLER_SLOTS:
        raise ConfigurationError(f"ext.{slot} is filled by the handler")
    if slot in _schema.EXT_KEYS:
        raise ConfigurationError(f"ext.{slot} is not configurable")
    configurable = ", ".join(sorted(_schema.CONFIGURABLE_EXT_SLOTS))
    raise ConfigurationError(
        f"ext.{slot} is not a Common Schema slot the application may fill "
        f"(those are: {configurable})"
    )


def _fields_of(where: str, fields: object) -> Mapping[str, object]:
    if not isinstance(fields, Mapping):
        raise ConfigurationError(
            f"{where} must be a mapping of field -> value, got {type(fields).__name__}"
        )
    for key in fields:
        if not isinstance(key, str):
            raise ConfigurationError(
                f"{where} has a field name {key!r} that is not str"
            )
    return fields


def _field_value(slot: str, key: str, value: object) -> JSONValue:
    field = f"ext.{slot}.{key}"
    expected = _schema.EXT_KEYS[slot].get(key)
    if expected is None:
        raise ConfigurationError(f"{field} is not a Common Schema field")
    if expected is int:
        return _int_field(field, value)
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{field} must be a string, got {type(value).__name__} {value!r}"
        )
    if key == "localId":
        _check_local_id(field, value)
    if field == "ext.device.authSecId":
        raise ConfigurationError(
            f"{field} is rejected by the collector when it is not empty"
        )
    return str(value)


def _int_field(field: str, value: object) -> int:
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in ("+", "-") else text
        if digits.isascii() and digits.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{field} must be an integer, got {type(value).__name__} {value!r}"
        )
    if not -(2**63) <= value < 2**63:
        raise ConfigurationError(f"{field} is outside the int64 range: {value}")
    return int(value)


def _check_local_id(field: str, value: object) -> None:
    if not _schema.is_valid_local_id(value):
        raise ConfigurationError(
            f"{field} must have the form <scope>:<id>, such as c:<your id> or "
            f"r:<random uuid4>, got {value!r} (the collector rejects bare ids)"
        )


def os_identity() -> Tuple[str, str]:
    """Return the operating system's name and version, e.g. ``("Linux", "6.5.0")``.

    Nothing that names the machine or its user: no host name, no paths.
    """
    system = platform.system()
    if system == "Darwin":
        version = platform.mac_ver()[0]
        if version:
            return "macOS", version
    elif system == "Windows":
        version = platform.win32_ver()[1]
        if version:
            return system, version
    return system, platform.release()


# -- envelopes ---------------------------------------------------------------


class EnvelopeBuilder:
    """Turns snapshots into envelope lines for one handler.

    :param tenant: tenant id; the envelope ``iKey`` is ``o:<tenant>``.
    :param epoch: ``ext.sdk.epoch``, one random id per handler lifetime.
    :param sdk_version: ``ext.sdk.ver``.
    :param ext: configured slots, as returned by :func:`static_ext`.
    :param os_name: ``ext.os.name``; left out when empty.
    :param os_ver: ``ext.os.ver``; left out when empty.
    :param max_event_bytes: longest line; larger events have their longest
        strings cut, with a ``…[truncated N bytes]`` marker, until they fit.
    :param dumps: encoder of the ``data`` object into compact UTF-8 JSON
        (``allow_nan=False``). By default the standard library's, with
        ``orjson`` as an accelerator where its output is byte-identical.
    :param counters: where ``shrunk`` events and invalid names are counted.
    :raises ConfigurationError: if the ``ext`` would be refused by the collector
        or leaves no room for data under *max_event_bytes*.
    """

    def __init__(
        self,
        *,
        tenant: str,
        epoch: str,
        sdk_version: str,
        ext: Mapping[str, Mapping[str, JSONValue]],
        os_name: str,
        os_ver: str,
        max_event_bytes: int = _schema.MAX_EVENT_BYTES,
        dumps: Optional[Dumps] = None,
        counters: Optional[Counters] = None,
    ) -> None:
        self._dumps = dumps or _default_dumps()
        # Strings alone are encoded by the same engine as the data objects.
        self._quote = dumps or _default_quote()
        self._quoted: Dict[str, bytes] = {}
        self._max_bytes = max_event_bytes
        self._counters = counters
        # (whole second, its formatted text): consecutive events mostly share
        # their second, and formatting it is most of the cost of a small event.
        self._second: Tuple[int, bytes] = (0, _schema.format_time(0)[:19].encode())
        #: valid event name -> the start of its line, up to the time value.
        self._heads: Dict[str, bytes] = {}
        full_ext: Dict[str, Dict[str, JSONValue]] = {}
        for slot, fields in ext.items():
            if slot in _HANDLER_SLOTS:
                raise ConfigurationError(f"ext.{slot} is filled by the handler")
            full_ext[slot] = dict(fields)
        os_fields = {"name": os_name, "ver": os_ver}
        full_ext["os"] = {key: value for key, value in os_fields.items() if value}
        if not full_ext["os"]:
            del full_ext["os"]
        full_ext["sdk"] = {"ver": sdk_version, "epoch": epoch, "seq": 1}
        problem = _schema.ext_problem(full_ext)
        if problem:
            raise ConfigurationError(problem)

        # ext is written last and ends with sdk.seq then the optional ext.dt,
        # so all of it up to the value of seq is constant.
        encoded_ext = dumps_json(full_ext)
        ext_head = encoded_ext[: -len(b"1}}")]
        ikey = dumps_json(_schema.ikey_of(tenant))
        ikey_part = b'","iKey":' + _escaped(ikey) + b',"data":'
        ext_part = b',"ext":' + _escaped(ext_head)
        # The whole line as one %-template: (head up to the time value, whole
        # second, milliseconds, data, seq, what closes sdk and adds ext.dt).
        self._template = b"%s%s.%03dZ" + ikey_part + b"%s" + ext_part + b"%d%s"
        self._ikey_part, self._ext_part = ikey_part, ext_part
        #: (event name, level name, level number, logger name) -> the template
        #: of the lines of plain records of that logger at that level.
        self._plain_templates: Dict[Tuple[str, str, int, str], bytes] = {}
        longest = self._line(
            "N" * 100, 0.0, _INT64_MAX, b"{}", _dt_part("0" * 32, "0" * 16)
        )
        least = max(MIN_EVENT_BYTES, len(longest) + 512)
        if max_event_bytes < least:
            raise ConfigurationError(
                f"max_event_bytes must be at least {least} with this ext, "
                f"got {max_event_bytes}"
            )

    def serialize(self, snap: Union[Snapshot, PlainRecord]) -> bytes:
        """Return the envelope of *snap* as one JSON line, without a newline.

        Never longer than ``max_event_bytes``: the longest strings of ``data``
        are cut first (the end of ``exceptionStack`` and ``stackInfo`` is kept,
        the start of everything else); if that is not enough, only the keys the
        handler fills are kept, plus ``droppedKeys``.
        """
        if not isinstance(snap, tuple):
            return self._snapshot_line(snap)
        # A plain record, the common kind: written from the template of its
        # logger and level within this one call (see _plain_line for the rest).
        name, created, seq, body, message, level, levelno, logger, trace, span = snap
        try:
            template = self._plain_templates[name, level, levelno, logger]
            second, text = self._second
            delta = created - second
            if 0.0 <= delta < 1.0 and 0 <= seq <= _INT64_MAX:
                encoded = self._quote(message)
                line = template % (
                    text,
                    # as format_time: truncated, never rounded up
                    int(delta * 1000),
                    encoded
                    if body is message
                    else self._quoted.get(body) or self._keep(body),
                    encoded,
                    seq,
                    b"}}}"
                    if trace is None and span is None
                    else _tail(_dt_part(trace, span)),
                )
                if len(line) <= self._max_bytes:
                    return line
        except (KeyError, TypeError, ValueError):
            pass
        return self._plain_line(snap)

    def _snapshot_line(self, snap: Snapshot) -> bytes:
        data = self._encode(snap.data)
        head, text, millis, seq, tail = self._parts(
            snap.name, snap.created, snap.seq, snap.trace_id, snap.span_id
        )
        line = self._template % (head, text, millis, data, seq, tail)
        if len(line) > self._max_bytes:
            data = self._shrink(snap.data, self._max_bytes - (len(line) - len(data)))
            line = self._template % (head, text, millis, data, seq, tail)
            if self._counters is not None:
                self._counters.add("shrunk")
        return line

    def _plain_line(self, plain: PlainRecord) -> bytes:
        """The line of a plain record that :meth:`serialize` did not write: the
        first of its logger and level (which makes their template), one of a
        new second, one with a value to mend or one too long to send whole."""
        name, created, seq, body, message, level, levelno, logger, trace, span = plain
        try:
            template = self._plain_template_for(name, level, levelno, logger)
            if template is not None:
                text, millis = self._time(created)
                encoded = self._quote(message)
                line = template % (
                    text,
                    millis,
                    encoded if body is message else self._quote(body),
                    encoded,
                    _seq_of(seq),
                    _tail(_dt_part(trace, span)),
                )
                if len(line) <= self._max_bytes:
                    return line
        except (TypeError, ValueError):
            pass
        # Not encodable as it is (a lone surrogate, a level name that is not
        # text) or too long: the dict path mends it or cuts it to fit.
        return self.serialize(plain_snapshot(plain))

    def _plain_template_for(
        self, name: str, level: str, levelno: int, logger: str
    ) -> Optional[bytes]:
        """The line template of plain records of *logger* at *level*: (second,
        milliseconds, body, message, seq, tail). None when its parts are not
        what a template can hold."""
        key = (name, level, levelno, logger)
        template = self._plain_templates.get(key)
        if template is not None:
            return template
        if not (type(level) is str and type(levelno) is int and type(logger) is str):
            return None
        head = self._heads.get(name) or self._head_of(name)
        data_tail = _PLAIN_DATA_TAIL % (
            self._quote(level),
            severity_number(levelno),
            self._quote(logger),
        )
        template = b"".join(
            (
                _escaped(head),
                b"%s.%03dZ",
                self._ikey_part,
                _PLAIN_DATA_HEAD,
                _escaped(data_tail),
                self._ext_part,
                b"%d%s",
            )
        )
        if name in self._heads:  # an invalid name is counted at every event
            if len(self._plain_templates) >= _MAX_PLAIN_TEMPLATES:
                self._plain_templates.clear()
            self._plain_templates[key] = template
        return template

    def _parts(
        self,
        name: str,
        created: float,
        seq: int,
        trace_id: Optional[str],
        span_id: Optional[str],
    ) -> Tuple[bytes, bytes, int, int, bytes]:
        """What every line is made of besides its data: (the head up to the
        time value, the time to the second, the milliseconds, the sequence
        number, what closes ext.sdk and adds ext.dt)."""
        head = self._heads.get(name)
        if head is None:
            head = self._head_of(name)
        second, text = self._second
        try:
            whole = int(created // 1)
            # as format_time: truncated, never rounded up
            millis = int((created - whole) * 1000)
            same_second = whole == second and millis <= 999
        except (TypeError, ValueError, OverflowError):
            same_second = False
        if not same_second:
            text, millis = self._time(created)
        if type(seq) is not int or not 0 <= seq <= _INT64_MAX:
            seq = _seq_of(seq)
        tail = b"}}}"
        if trace_id is not None or span_id is not None:
            tail = _tail(_dt_part(trace_id, span_id))
        return head, text, millis, seq, tail

    def _keep(self, text: str) -> bytes:
        encoded = self._quote(text)
        if len(text) <= _QUOTED_MAX_CHARS:
            if len(self._quoted) >= _MAX_QUOTED:
                self._quoted.clear()
            self._quoted[text] = encoded
        return encoded

    def _head_of(self, name: str) -> bytes:
        if not _schema.is_valid_event_name(name):
            if self._counters is not None:
                self._counters.add("invalid.event_name")
            return _head(FALLBACK_EVENT_NAME)
        if len(self._heads) >= _MAX_NAMES:
            self._heads.clear()
        head = self._heads[name] = _head(name)
        return head

    def _time(self, created: float) -> Tuple[bytes, int]:
        """Return :func:`_schema.format_time` of *created* as (the text up to
        the whole second, the milliseconds)."""
        try:
            whole = int(created // 1)
            second, text = self._second
            if whole != second:
                text = _schema.format_time(whole)[:19].encode("ascii")
                self._second = (whole, text)
            millis = int((created - whole) * 1000)
            return text, min(millis, 999)
        except (TypeError, ValueError, OverflowError, OSError):
            # A record made by hand with a nonsensical time: now is the best guess.
            now = _schema.format_time(time.time())
            return now[:19].encode("ascii"), int(now[20:23])

    def _line(
        self, name: str, created: float, seq: int, data: bytes, trace: Optional[bytes]
    ) -> bytes:
        text, millis = self._time(created)
        return self._template % (
            _head(name),
            text,
            millis,
            data,
            _seq_of(seq),
            _tail(trace),
        )

    def _encode(self, data: object) -> bytes:
        try:
            return self._dumps(data)
        except (TypeError, ValueError, OverflowError):
            # Not JSON as built by snapshot(): a non-str key, NaN, a lone
            # surrogate (not encodable as UTF-8)... Coerced again, then fixed.
            return self._dumps(_fix_text(to_json(data)))

    def _shrink(self, data: Mapping[str, JSONValue], budget: int) -> bytes:
        """Encode *data* in at most *budget* bytes, cutting or dropping values."""
        fitted = _Shrinker(self, dict(data), budget, _MIN_CUT_BYTES).run()
        if fitted is not None:
            return fitted
        kept = {key: value for key, value in data.items() if key in OWN_KEYS}
        kept[DROPPED_KEYS] = len(data) - len(kept)
        fitted = _Shrinker(self, kept, budget, 0).run()
        if fitted is not None:
            return fitted
        return self._encode({DROPPED_KEYS: len(data)})


class _Shrinker:
    """Cuts the largest values of one event's data until its encoding fits.

    The values above a common cap are cut to that cap, so that a long message
    and a long stack both keep their share rather than one losing everything.
    """

    def __init__(
        self,
        builder: EnvelopeBuilder,
        data: Dict[str, JSONValue],
        budget: int,
        floor: int,
    ) -> None:
        self.encode = builder._encode
        self.data = data
        self.budget = budget
        self.floor = floor
        # Every cut starts again from the original text, so that the marker
        # counts all the bytes removed.
        self.originals: Dict[str, bytes] = {}
        self.kept: Dict[str, int] = {}

    def run(self) -> Optional[bytes]:
        """Return the encoding that fits, or None if cutting cannot make it fit."""
        for _ in range(_SHRINK_ROUNDS):
            encoded = self.encode(self.data)
            excess = len(encoded) - self.budget
            if excess <= 0:
                return encoded
            sizes = self._sizes()
            cap = self._cap(sizes, excess)
            if cap is None:
                return None
            for size, key in sizes:
                if size <= cap:
                    break
                self._cut(key, size, size - cap)
        return None

    def _sizes(self) -> List[Tuple[int, str]]:
        sizes = [
            (len(self.encode(value)), key)
            for key, value in self.data.items()
            if isinstance(value, (str, list, dict))
        ]
        sizes.sort(reverse=True)
        return sizes

    def _cap(self, sizes: List[Tuple[int, str]], excess: int) -> Optional[int]:
        """Return the size to cut the largest values to, to save *excess* bytes."""
        total = 0
        for count, (size, _) in enumerate(sizes, 1):
            total += size
            following = sizes[count][0] if count < len(sizes) else 0
            cap = (total - excess) // count
            if cap >= max(following, self.floor):
                return cap
        return None

    def _cut(self, key: str, size: int, reduce: int) -> None:
        raw = self.originals.get(key)
        if raw is None:
            value = self.data[key]
            # A container becomes its JSON text so that it can be cut.
            text = value if isinstance(value, str) else self.encode(value).decode()
            raw = self.originals[key] = _utf8(text)
            self.kept[key] = len(raw)
        kept = self.kept[key]
        # Escapes make the encoding longer than the text: one byte of text cut
        # saves about `ratio` bytes of JSON.
        ratio = max(size / max(kept, 1), 1.0)
        keep = max(kept - math.ceil((reduce + _MARKER_ROOM) / ratio), 0)
        self.kept[key] = keep
        self.data[key] = _cut_utf8(raw, keep, key in _KEEP_END)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _cut_utf8(raw: bytes, keep: int, keep_end: bool) -> str:
    """Keep *keep* bytes of the UTF-8 text *raw* on a character boundary, marked."""
    if keep >= len(raw):
        return _fix_str(raw.decode("utf-8", "surrogatepass"))
    if keep_end:
        start = len(raw) - keep
        while start < len(raw) and raw[start] & 0xC0 == 0x80:
            start += 1
        kept = raw[start:]
    else:
        end = keep
        while end > 0 and raw[end] & 0xC0 == 0x80:
            end -= 1
        kept = raw[:end]
    removed = len(raw) - len(kept)
    text = _fix_str(kept.decode("utf-8", "surrogatepass"))
    if keep_end:
        return f"[truncated {removed} bytes]…{text}"
    return f"{text}…[truncated {removed} bytes]"


def _fix_str(text: str) -> str:
    """Return *text* with each lone surrogate replaced by U+FFFD.

    A surrogate pair stored as two code points becomes the character it encodes.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _fix_text(value: JSONValue) -> JSONValue:
    if isinstance(value, str):
        return _fix_str(value)
    if isinstance(value, list):
        return [_fix_text(item) for item in value]
    if isinstance(value, dict):
        return {_fix_str(key): _fix_text(item) for key, item in value.items()}
    return value


def _escaped(part: bytes) -> bytes:
    """*part* as the literal text of a %-template."""
    return part.replace(b"%", b"%%")


def _head(name: str) -> bytes:
    return _HEAD + name.encode("ascii") + b'","time":"'


def _tail(trace: Optional[bytes]) -> bytes:
    # Closes ext.sdk, adds ext.dt when there is a trace context, closes ext
    # and the envelope.
    return b"}}}" if trace is None else b"}" + trace + b"}}"


def _seq_of(seq: object) -> int:
    """*seq* as an int within 0 .. 2**63-1 (0 when it is not a number)."""
    try:
        number: int = int(seq)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(number, 0), _INT64_MAX)


def _dt_part(trace_id: Optional[str], span_id: Optional[str]) -> Optional[bytes]:
    if trace_id is None and span_id is None:
        return None
    fields: List[str] = []
    if _is_hex(trace_id, 32):
        fields.append(f'"traceId":"{trace_id}"')
    if _is_hex(span_id, 16):
        fields.append(f'"spanId":"{span_id}"')
    if not fields:
        return None
    return (',"dt":{' + ",".join(fields) + "}").encode("ascii")


def _is_hex(value: object, digits: int) -> bool:
    return isinstance(value, str) and len(value) == digits and _HEX.issuperset(value)


# -- optional accelerator ------------------------------------------------------

#: Floats whose shortest form the standard library and orjson both write without
#: an exponent, identically; outside, they differ (1e+16 and 1e16, 1e-05 and
#: 0.00001), so an event holding such a float is encoded by the standard library.
_PLAIN_FLOAT_MIN = 1e-4
_PLAIN_FLOAT_MAX = 1e16

#: Values on which orjson must agree with the standard library, byte for byte,
#: before it is used at all, in case an orjson version formats them differently.
_AGREEMENT_PROBE: Dict[str, JSONValue] = {
    "floats": [6.0, 0.1, 1e-4, 0.00012345, 123456.789, 1e15, 9999999999999998.0, -0.0],
    "ints": [0, -1, 2**53 + 1, 2**63 - 1, -(2**63)],
    "text": '\x00\x1f"\\/\x7f\u2028é𝄞 <\n\t>',
    "nested": {"a": [True, False, None, {"b": ""}]},
}


@functools.cache
def _default_dumps() -> Dumps:
    try:
        import orjson  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return dumps_json
    fast: Dumps = orjson.dumps
    try:
        agrees = fast(_AGREEMENT_PROBE) == dumps_json(_AGREEMENT_PROBE)
    except Exception:
        agrees = False
    if not agrees:
        log.debug("orjson output differs from json's; using json")
        return dumps_json

    def dumps(value: object) -> bytes:
        if type(value) is dict and (
            _ORJSON_SAFE.issuperset(map(type, value.values()))
            or _same_in_orjson(value.values())
        ):
            try:
                return fast(value)
            except TypeError:
                # An int beyond 64 bits, a key that is not a str, a lone
                # surrogate: the standard library decides, as without orjson.
                pass
        return dumps_json(value)

    return dumps


#: Types of values that orjson writes as the standard library does, or refuses
#: (an int beyond 64 bits), in which case the standard library encodes them.
_ORJSON_SAFE = frozenset({str, int, bool, type(None)})


@functools.cache
def _default_quote() -> Quote:
    """The encoder of a lone str: orjson's when _default_dumps() uses it."""
    if _default_dumps() is dumps_json:
        return _quote_json
    import orjson  # noqa: PLC0415 (optional dependency, known to be there)

    quote: Quote = orjson.dumps
    return quote


def _same_in_orjson(values: Iterable[object]) -> bool:
    """Return whether orjson writes *values* exactly as the standard library."""
    for value in values:
        if type(value) is str or type(value) is bool or value is None:
            continue
        if type(value) is int:
            if -_INT64_MAX - 1 <= value <= _INT64_MAX:
                continue
        elif type(value) is float:
            magnitude = abs(value)
            if _PLAIN_FLOAT_MIN <= magnitude < _PLAIN_FLOAT_MAX or not magnitude:
                continue
        elif type(value) is list:
            if _same_in_orjson(value):
                continue
        elif type(value) is dict and _same_in_orjson(value.values()):
            continue
        return False
    return True
