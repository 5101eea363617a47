"""What a user chose to sync for one account: folders or labels, spam and trash, a time window,
bodies and HTML. Sent in `POST /mail/connect` (``sync``) and `PATCH /mail/accounts/{id}`,
stored as JSON on the account, shown in `/mail/status`, handed to the provider as
`brain.mail.provider.SyncOptions`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from brain.errors import BadRequest
from brain.mail.message import ConvertOptions
from brain.mail.provider import SyncOptions

__all__ = ["SyncChoices", "content_key"]

#: Bump when the message model changes so that events already stored should be sent again
#: with the new content (the next sync of every account backfills once).
CONTENT_VERSION = 1
MAX_FOLDERS = 100
MAX_WINDOW_DAYS = 36_500


@dataclass(frozen=True)
class SyncChoices:
    """One account's choices; every field has the default a new account gets."""

    # Folders or labels to sync (provider terms); None: the whole mailbox.
    folders: tuple[str, ...] | None = None
    exclude_spam_trash: bool = True
    # Only messages received in the last this many days; None: all of them.
    sync_window_days: int | None = None
    bodies: bool = True
    # None: `[mail] keep_html`.
    keep_html: bool | None = None

    FIELDS = ("folders", "exclude_spam_trash", "sync_window_days", "bodies", "keep_html")

    @classmethod
    def parse(cls, value: Any, *, base: SyncChoices | None = None, field: str = "sync") -> SyncChoices:
        """``base`` with the fields of a client's JSON object changed; 400 naming a bad field."""
        if not isinstance(value, Mapping):
            raise BadRequest(f"{field} must be a JSON object with any of: {', '.join(cls.FIELDS)}")
        unknown = sorted(str(k) for k in value if k not in cls.FIELDS)
        if unknown:
            raise BadRequest(f"{field}: unknown field(s) {', '.join(unknown)} (known: {', '.join(cls.FIELDS)})")
        changes: dict[str, Any] = {}
        if "folders" in value:
            changes["folders"] = _folders(value["folders"], f"{field}.folders")
        for name in ("exclude_spam_trash", "bodies"):
            if name in value:
                if not isinstance(value[name], bool):
                    raise BadRequest(f"{field}.{name} must be true or false")
                changes[name] = value[name]
        if "keep_html" in value:
            if value["keep_html"] is not None and not isinstance(value["keep_html"], bool):
                raise BadRequest(f"{field}.keep_html must be true, false or null (the server's default)")
            changes["keep_html"] = value["keep_html"]
        if "sync_window_days" in value:
            days = value["sync_window_days"]
            if isinstance(days, float) and days.is_integer():
                days = int(days)  # JSON does not tell 30 from 30.0
            if days is not None and (
                isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_WINDOW_DAYS
            ):
                raise BadRequest(f"{field}.sync_window_days must be null (everything) or days from 1 to {MAX_WINDOW_DAYS}")
            changes["sync_window_days"] = days
        return dataclasses.replace(base or cls(), **changes)

    @classmethod
    def from_json(cls, raw: str | None) -> SyncChoices:
        """The choices stored on an account (None: the defaults)."""
        if not raw:
            return cls()
        data = json.loads(raw)
        folders = data.get("folders")
        return cls(
            folders=tuple(folders) if folders is not None else None,
            exclude_spam_trash=bool(data.get("exclude_spam_trash", True)),
            sync_window_days=data.get("sync_window_days"),
            bodies=bool(data.get("bodies", True)),
            keep_html=data.get("keep_html"),
        )

    def to_json(self) -> str:
        """What the account row stores."""
        return json.dumps(self.as_dict(), separators=(",", ":"))

    def as_dict(self) -> dict[str, Any]:
        """The choices as `/mail/status` shows them."""
        return {
            "folders": list(self.folders) if self.folders is not None else None,
            "exclude_spam_trash": self.exclude_spam_trash,
            "sync_window_days": self.sync_window_days,
            "bodies": self.bodies,
            "keep_html": self.keep_html,
        }

    def selection_differs(self, other: SyncChoices) -> bool:
        """Whether ``other`` syncs another set of messages (a resync must reconcile)."""
        return (self.folders, self.exclude_spam_trash, self.sync_window_days) != (
            other.folders,
            other.exclude_spam_trash,
            other.sync_window_days,
        )

    def options(self, convert: ConvertOptions, *, now: float | None = None) -> SyncOptions:
        """The provider's view: these choices with the server's conversion settings."""
        keep_html = convert.keep_html if self.keep_html is None else self.keep_html
        since = None
        if self.sync_window_days is not None:
            since = (time.time() if now is None else now) - self.sync_window_days * 86_400
        return SyncOptions(
            folders=self.folders,
            exclude_spam_trash=self.exclude_spam_trash,
            since=since,
            bodies=self.bodies,
            convert=dataclasses.replace(convert, keep_html=keep_html),
        )


def content_key(options: SyncOptions) -> str:
    """What the stored events of an account hold of each message: when it changes, a backfill
    sends every message again (an `updated` event with the new content)."""
    return f"v{CONTENT_VERSION}:{'body' if options.bodies else 'nobody'}:{'html' if options.convert.keep_html else 'text'}"


def _folders(value: Any, field: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_FOLDERS:
        raise BadRequest(f"{field} must be null (everything) or a list of 1 to {MAX_FOLDERS} folder or label names")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > 512 or any(c in item for c in "\r\n\0"):
            raise BadRequest(f"{field} entries must be non-empty names, e.g. \"INBOX\" or \"\\\\Sent\"")
        out.append(item.strip())
    return tuple(dict.fromkeys(out))
