"""Events: what a client may send, how one is stored and rendered, and signed paging cursors.

Every write, from HTTP or from mail sync, goes through `new_event`, so the rules hold for all:
`type` is a short dotted name (it becomes the last tokens of a NATS subject), `data` any JSON
value up to `api.max_event_bytes` serialised, `created_at` an RFC 3339 time with an offset (or
epoch seconds), stored as a fixed-width UTC string so that text order is time order.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson
import pluggy

from brain.clock import steady_time_ns
from brain.errors import BadRequest, Forbidden, PayloadTooLarge, PluginError
from brain.event_types import TYPE_RE, check_type

# What a store publishes when an event is deleted: `data` says which (id, type, created_at).
TOMBSTONE_TYPE = "event.deleted"
MAX_KEY_LENGTH = 512
EVENT_FIELDS = frozenset({"type", "data", "created_at"})
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
# A UTC time with at most microseconds (what mail sync and most clients send): its stored form
# is the same digits with the fraction padded to six (`parse_time`).
_UTC_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?Z", re.ASCII)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# One encoder for every event (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# Containers and non-string values `_encoded_fast` looks through before leaving a value to the
# json module (a mail event has about 60; a walk in Python costs more than encoding past this).
_LOOKED_AT = 512
# Cursor positions, as json.dumps(..., separators=(",", ":")) writes them (ASCII): every page
# with a next one makes a cursor.
_POSITIONS = json.JSONEncoder(separators=(",", ":"))
# Cursors remembered by a CursorSigner (about 200 bytes each).
_MADE_CURSORS = 4096


class NewEvent(NamedTuple):
    """A validated event on its way into a store."""

    type: str
    data: str  # compact JSON text
    created_at: str | None  # normalised; None: the store's clock at commit
    key: str | None  # per-user idempotency key
    value: Any  # `data` as the caller gave it (returned without a re-parse)
    # Whether `value` holds only str, int, bool, None, lists, tuples and dicts with str keys
    # (written by orjson): then it reads as json.loads(data) would, tuples as lists, and the
    # search index takes it instead of parsing `data` again (brain.api.search).
    plain: bool = False


class StoredEvent(NamedTuple):
    """A committed event as it sits in a user's database."""

    id: int
    type: str
    data: str  # JSON text
    created_at: str
    # The idempotency key it was written with (travels to JetStream so a rebuilt store keeps it).
    key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The public shape: {id, type, data, created_at}, data parsed."""
        return {"id": self.id, "type": self.type, "data": json.loads(self.data), "created_at": self.created_at}

    def json(self) -> str:
        """The public shape as JSON text, reusing the stored data text as it is."""
        # type matched TYPE_RE on the way in (no quote or backslash), created_at is ours.
        return f'{{"id":{self.id},"type":"{self.type}","data":{self.data},"created_at":"{self.created_at}"}}'


def commit_seq(event: StoredEvent) -> int:
    """An event's place in its user's commit order: what a stream's `id:` and a resume point are.

    Every consumer of the commit order (the event stream, webhooks) reads it through this
    function and through `brain.api.user_store.SEQUENCE`, so the sequence has one definition:
    the events table's integer id, drawn with the tombstones' numbers from one sequence that
    never goes back, deletions included (`brain.api.user_store.NEXT_SEQ`). A tombstone's `id`
    is its own number in it.
    """
    return event.id


# (whole second, "YYYY-MM-DDTHH:MM:SS") of the last now_timestamp(): strftime once a second,
# not per event. Replaced as one tuple, so any thread reads a consistent pair.
_second: tuple[int, str] = (-1, "")


def now_timestamp() -> str:
    """The current time in the stored format (format_time of now, at a fraction of its cost)."""
    global _second
    # The steady clock (brain.clock): an event stored after the clock stepped back still sorts
    # after the ones stored before it.
    seconds, micros = divmod(steady_time_ns() // 1000, 1_000_000)
    cached = _second
    if cached[0] != seconds:
        cached = _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{cached[1]}.{micros:06d}Z"


def format_time(moment: dt.datetime) -> str:
    """A timezone-aware datetime in the stored format (UTC, microseconds, Z)."""
    utc = moment.astimezone(dt.timezone.utc)
    # %Y does not pad years before 1000 (glibc), and RFC 3339 needs all four digits.
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S.%f}Z"


def parse_time(value: Any, field: str) -> str:
    """An RFC 3339 string (with offset) or epoch seconds, normalised; BadRequest naming field."""
    if isinstance(value, bool):
        raise BadRequest(f"{field}: must be an RFC 3339 time or epoch seconds")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise BadRequest(f"{field}: must be a finite number")
        try:
            return format_time(_EPOCH + dt.timedelta(seconds=value))
        except OverflowError:
            raise BadRequest(f"{field}: out of range") from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise BadRequest(f"{field}: needs a timezone")
        return format_time(value)
    if not isinstance(value, str) or len(value) > 64:
        raise BadRequest(f"{field}: must be an RFC 3339 time or epoch seconds")
    text = value.strip()
    utc = _UTC_TIME.fullmatch(text)
    if utc is not None:
        # format_time(fromisoformat(text)), without building the string from the datetime
        # (a fifth of the time; once per mail event); fromisoformat still checks the date.
        try:
            dt.datetime.fromisoformat(text)
        except ValueError:
            raise BadRequest(f"{field}: not an RFC 3339 time: {value[:40]!r}") from None
        return f"{utc.group(1)}.{(utc.group(2) or '').ljust(6, '0')}Z"
    try:
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return parse_time(float(text), field)
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{field}: not an RFC 3339 time: {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise BadRequest(f"{field}: needs a timezone offset or Z, got {value[:40]!r}")
    try:
        return format_time(moment)
    except (OverflowError, ValueError):
        raise BadRequest(f"{field}: out of range") from None


def check_key(value: Any, field: str = "key") -> str:
    """A valid idempotency key (1-512 printable characters)."""
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_LENGTH:
        raise BadRequest(f"{field}: must be 1-{MAX_KEY_LENGTH} characters")
    if not value.isprintable():
        raise BadRequest(f"{field}: must not contain control characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadRequest(f"{field}: not valid Unicode") from None
    return value


def new_event(
    obj: Any, *, max_bytes: int, field: str = "event", key: str | None = None, strict_fields: bool = False
) -> NewEvent:
    """Validate one `{type, data, created_at?, key?}` mapping; errors name the offending field."""
    prefix = f"{field}." if field else ""
    if not isinstance(obj, Mapping):
        raise BadRequest(f"{field or 'body'}: must be a JSON object with type and data")
    if strict_fields:
        unknown = [k for k in obj if k not in EVENT_FIELDS]
        if unknown:
            raise BadRequest(f"{prefix}{str(unknown[0])[:40]}: unknown field (allowed: type, data, created_at)")
    etype = check_type(obj.get("type"), f"{prefix}type")
    if "data" not in obj:
        raise BadRequest(f"{prefix}data: required (any JSON value)")
    value = obj["data"]
    fast = _encoded_fast(value)
    if fast is not None:
        if len(fast) > max_bytes:
            raise PayloadTooLarge(f"{prefix}data: {len(fast)} bytes serialised, limit {max_bytes}")
        text = fast.decode()
    else:
        text = _encoded(value, prefix, max_bytes)
    created = obj.get("created_at")
    created_at = None if created is None else parse_time(created, f"{prefix}created_at")
    if key is None and obj.get("key") is not None:
        key = check_key(obj["key"], f"{prefix}key")
    return NewEvent(etype, text, created_at, key, value, fast is not None)


def _encoded_fast(value: Any) -> bytes | None:
    """``value`` as the UTF-8 of the text `_ENCODER` writes, by orjson; None when it cannot say.

    A 20 KiB mail event took mail sync ~110 us to encode with the json module, ~25 us with
    orjson. orjson writes the same text for str, int, bool, None, list, tuple and dict with
    string keys (tests/test_api_stores.py compares them), but its own shortest form for
    floats, null for NaN and infinities (which must be refused), and a text for types the json
    module refuses (dataclasses, datetimes). So only a value made of exactly those types, with
    few enough items to look through (`_LOOKED_AT`), is left to orjson; anything else goes to
    the json module, as does what orjson refuses (non-string keys, integers beyond 64 bits,
    lone surrogates, nesting deeper than 254), to fail or be written as before.
    """
    pending = [value]
    looked = 0
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str:
            continue
        looked += 1
        if looked > _LOOKED_AT:
            return None
        if kind is dict:
            pending.extend(item.values())
        elif kind is list or kind is tuple:
            pending.extend(item)
        elif kind is not int and kind is not bool and item is not None:
            return None  # a float, a subclass, anything else orjson writes its own way
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None


def _encoded(value: Any, prefix: str, max_bytes: int) -> str:
    """``value`` as `_ENCODER` writes it, checked: finite numbers, valid Unicode, at most ``max_bytes``."""
    try:
        text = _ENCODER.encode(value)
    except ValueError:
        raise BadRequest(f"{prefix}data: numbers must be finite") from None
    except RecursionError:
        raise BadRequest(f"{prefix}data: nested too deeply") from None
    except TypeError as exc:  # only reachable from Python callers
        raise BadRequest(f"{prefix}data: not JSON-serialisable ({exc})") from None
    if len(text) > max_bytes // 4:  # cheap pre-check: a str of n chars is at most 4n bytes
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            raise BadRequest(f"{prefix}data: not valid Unicode (lone surrogate)") from None
        if size > max_bytes:
            raise PayloadTooLarge(f"{prefix}data: {size} bytes serialised, limit {max_bytes}")
    elif not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise BadRequest(f"{prefix}data: not valid Unicode (lone surrogate)") from None
    return text


class ReservedTypes:
    """Event type namespaces only the server writes, filled through `reserve_event_types`.

    A consumer of `mail.*` must be able to trust that mail sync wrote it: a client that could
    post `mail.message.received` would plant mail that never arrived. So clients may not write
    a reserved namespace, compared without case (`MAIL.x` looks the same to a person); the
    server's own writers (mail sync) do not go through this check.
    """

    def __init__(self) -> None:
        self._names: frozenset[str] = frozenset()
        self._prefixes: tuple[str, ...] = ()

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager) -> ReservedTypes:
        """Ask every plugin (the mail role's built-in one included) for its namespaces."""
        reserved = cls()
        pm.hook.reserve_event_types(reserve=reserved.reserve)
        return reserved

    @property
    def namespaces(self) -> frozenset[str]:
        """The reserved namespaces (lower case)."""
        return self._names

    def reserve(self, namespace: str) -> None:
        """Reserve ``namespace`` and every type below it (`mail` covers `mail.message.received`)."""
        if not isinstance(namespace, str) or not TYPE_RE.fullmatch(namespace):
            raise PluginError(f"reserve_event_types: {namespace!r} is not an event type such as 'mail'")
        name = namespace.lower()
        self._names |= {name}
        self._prefixes = tuple(sorted({*self._prefixes, f"{name}."}))

    def check(self, etype: str, field: str) -> None:
        """A 403 `RESERVED_EVENT_TYPE` naming the type when clients may not write it."""
        lowered = etype.lower()
        if lowered in self._names or lowered.startswith(self._prefixes):
            raise Forbidden(
                f"{field}: event type {etype!r} is reserved for events the server writes itself",
                code="RESERVED_EVENT_TYPE",
                extra={"type": etype},
            )


# Cursors ------------------------------------------------------------------------------

class CursorSigner:
    """Signs paging positions so a cursor is only good for the user it was made for."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"brain.api.events.cursor", hashlib.sha256).digest()
        # Keyed once; each MAC copies it (HMAC_CTX_copy) instead of setting a new one up with
        # its digest looked up again.
        self._keyed = hmac.new(self._key, digestmod=hashlib.sha256)
        # The cursors made lately: a page read again (a client polling it) hands out the same one.
        self._made: dict[tuple[str, str, int], str] = {}

    def make(self, user_id: str, created_at: str, event_id: int) -> str:
        """A cursor pointing just past (older than) this event."""
        key = (user_id, created_at, event_id)
        cursor = self._made.get(key)
        if cursor is None:
            body = _b64(_POSITIONS.encode([created_at, event_id]).encode())
            cursor = f"{body}.{self._mac(user_id, body)}"
            if len(self._made) >= _MADE_CURSORS:
                self._made.clear()
            self._made[key] = cursor
        return cursor

    def read(self, user_id: str, cursor: str) -> tuple[str, int]:
        """The (created_at, id) position of a cursor; BadRequest if forged, foreign or garbled."""
        body, dot, mac = cursor.partition(".")
        if not dot or len(cursor) > 200 or not cursor.isascii() or not hmac.compare_digest(mac, self._mac(user_id, body)):
            raise BadRequest("cursor: not a cursor issued to this user")
        try:
            created_at, event_id = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, TypeError, binascii.Error):
            raise BadRequest("cursor: malformed") from None
        if not isinstance(created_at, str) or not _TIME_RE.fullmatch(created_at):
            raise BadRequest("cursor: malformed")
        if isinstance(event_id, bool) or not isinstance(event_id, int) or event_id < 1:
            raise BadRequest("cursor: malformed")
        return created_at, event_id

    def make_position(self, user_id: str, kind: str, position: list[Any]) -> str:
        """A cursor for another kind of paging (`kind` names it): a signed JSON list."""
        body = _b64(_POSITIONS.encode(position).encode())
        return f"{body}.{self._mac(user_id, body, kind)}"

    def read_position(self, user_id: str, kind: str, cursor: str) -> list[Any]:
        """The JSON list of a `make_position` cursor; BadRequest if forged, foreign, of another kind or garbled."""
        body, dot, mac = cursor.partition(".")
        if not dot or len(cursor) > 600 or not cursor.isascii() or not hmac.compare_digest(mac, self._mac(user_id, body, kind)):
            raise BadRequest("cursor: not a cursor issued to this user for this route")
        try:
            position = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, TypeError, binascii.Error):
            raise BadRequest("cursor: malformed") from None
        if not isinstance(position, list):
            raise BadRequest("cursor: malformed")
        return position

    def _mac(self, user_id: str, body: str, kind: str = "") -> str:
        # GET /events cursors sign "user\0body"; other kinds "user\0kind\0body", so that no
        # cursor of one route is ever accepted by another.
        text = f"{user_id}\x00{body}" if not kind else f"{user_id}\x00{kind}\x00{body}"
        mac = self._keyed.copy()
        mac.update(text.encode())
        return _b64(mac.digest()[:18])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
