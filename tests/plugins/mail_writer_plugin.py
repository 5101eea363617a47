"""A test plugin that writes events the way mail sync does: through the EVENT_SINK contract.

`POST /test/server-events` (API listener, the caller's bearer token) stores the body's events
for the caller with `append_from_thread`, the path mail sync's actors take, which may write the
namespaces clients may not (`mail.*`). Enabled by name (`mailwriter`, tests/plugins/sample_dist)
in the tests that need mail events in a store.
"""

from __future__ import annotations

import asyncio
from typing import Any

from brain.contracts import EVENT_SINK
from brain.plugins import hookimpl
from brain.routes import Route, current_user
from brain.web import json_response, read_json


@hookimpl
def register_routes(rt: Any, listener: str, register: Any) -> None:
    if listener != "api":
        return

    async def write(request: Any) -> Any:
        events = await read_json(request)
        sink = rt.stash[EVENT_SINK]
        user_id = current_user(request).id
        stored = await asyncio.get_running_loop().run_in_executor(None, sink.append_from_thread, user_id, events)
        return json_response({"events": stored}, status=201)

    ok = {"201": {"description": "Stored"}}
    register(Route("POST", "/test/server-events", write,
                   {"operationId": "testServerEvents", "summary": "Write events as mail sync does", "responses": ok}))
