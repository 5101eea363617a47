"""The JSON bodies of the API role's read routes, in one place.

Events are written out from their stored JSON text (`StoredEvent.json`), never parsed and
dumped again. GET /events pages are not here: SQLite joins them from each event's stored JSON
(brain.api.pages).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from brain.api.events import StoredEvent
from brain.api.search import SearchHit

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def event(row: StoredEvent) -> bytes:
    """One event: {id, type, data, created_at}."""
    return row.json().encode()


def changes_page(rows: Sequence[StoredEvent], next_after: int, has_more: bool) -> bytes:
    """GET /events/changes: {events (tombstones among them), next_after, has_more}."""
    return (
        '{"events":[' + ",".join(row.json() for row in rows) + f'],"next_after":{next_after},'
        f'"has_more":{"true" if has_more else "false"}}}'
    ).encode()


def search_page(hits: Sequence[SearchHit], next_cursor: str | None, partial: bool) -> bytes:
    """GET /search: {results: [{event, score, highlights}], next_cursor, partial}."""
    results = ",".join(
        f'{{"event":{hit.event.json()},"score":{_ENCODER.encode(hit.score)},'
        f'"highlights":{_ENCODER.encode(hit.highlights)}}}'
        for hit in hits
    )
    return (
        f'{{"results":[{results}],"next_cursor":{_ENCODER.encode(next_cursor)},'
        f'"partial":{"true" if partial else "false"}}}'
    ).encode()


def document(value: Any) -> bytes:
    """Any other JSON body (deletions, statistics)."""
    return _ENCODER.encode(value).encode()
