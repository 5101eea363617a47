"""The messages between the master and a worker: one JSON object per line over a Unix socket pair.

A request carries an `id` and an `op`; its answer carries `re` (the request's id) and either
`result` or `error`. Either side may ask: a worker asks the master (`limit`, `gather`,
`broadcast`; `ready` needs no answer), the master asks a worker (`ask`, on behalf of a `gather`
or `broadcast` of another worker). See brain.workers.hub (the master's side) and
brain.workers.peers (a worker's).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_LINE", "decode", "encode"]

# A line longer than this is a broken peer (a /metrics document is well under it).
MAX_LINE = 64 * 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    """One message as its line."""
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One line as its message (ValueError if it is not a JSON object)."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message
