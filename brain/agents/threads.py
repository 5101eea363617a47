"""A mail thread as an assistant reads it, put together from the mail events in the user's store.

Mail sync writes `mail.message.received` (the whole message, docs/mail-model.md),
`mail.message.updated` (folders, labels, flags changed; or a whole record once, a backfill) and
`mail.message.deleted`, each with the message's `thread_id`. Read in commit order, the last
word on each message wins: a received or backfilled record replaces what was known, an update
changes the fields it names, a deletion removes the message (until it is received again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

RECEIVED, UPDATED, DELETED = "mail.message.received", "mail.message.updated", "mail.message.deleted"
THREAD_TYPES = "mail.message.*"
# What an update may change without being a whole record.
_UPDATABLE = ("folders", "labels", "flags")
# A record's fields an assistant gets for each message (the rest is in the event).
_SHOWN = ("account", "address", "message_id", "internet_message_id", "from", "to", "cc", "reply_to", "subject",
          "date", "direction", "folders", "labels", "flags", "has_attachments", "truncated")


def thread_messages(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The thread's messages, oldest first, from its events in commit order."""
    messages: dict[tuple[Any, Any], dict[str, Any]] = {}
    for event in events:
        data = event["data"]
        if not isinstance(data, dict):
            continue
        key = (data.get("account"), data.get("message_id"))
        previous = data.get("previous_message_id")
        if previous is not None and (data.get("account"), previous) in messages:
            # The provider changed its ids (Outlook's immutable ids): the message lives on under the new one.
            messages[key] = {**messages.pop((data.get("account"), previous)), "message_id": data.get("message_id")}
        if event["type"] == DELETED:
            messages.pop(key, None)
        elif event["type"] == RECEIVED or (event["type"] == UPDATED and "body_text" in data):
            messages[key] = {**data, "event_id": event["id"]}
        elif event["type"] == UPDATED and key in messages:
            messages[key].update({name: data[name] for name in _UPDATABLE if name in data})
    shown = [_shown(record) for record in messages.values()]
    return sorted(shown, key=lambda m: (m.get("date") or "", m["event_id"]))


def _shown(record: Mapping[str, Any]) -> dict[str, Any]:
    message = {"event_id": record["event_id"], **{name: record[name] for name in _SHOWN if name in record}}
    # The text without quoted replies and signatures: each message of a thread says its own part.
    message["body"] = record.get("body_text_clean") or record.get("body_text") or ""
    message["attachments"] = [
        {k: a.get(k) for k in ("id", "filename", "mime_type", "size", "inline")}
        for a in record.get("attachments") or () if isinstance(a, dict)
    ]
    return message
