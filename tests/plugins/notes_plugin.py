"""The example plugin of docs/plugins.md: an actor, a route and a user-purge step, and nothing of
brain/ changed. Loaded from its entry point (`notes`, tests/plugins/sample_dist) by
tests/test_example_plugin.py.

It counts notes per user in an actor of its own (a root child, `notes`), answers
`POST /notes` and `GET /notes/count` on the API listener (behind its bearer-token guard) and
forgets a deleted user's notes. For the test, each purge is also written to the file named
by BRAIN_TEST_NOTES_FILE.
"""

from __future__ import annotations

import os
from typing import Any

from brain.actors import bridge
from brain.actors.base import BrainActor, Link
from brain.actors.supervisor import ChildSpec
from brain.actors.tree import Child
from brain.plugins import hookimpl
from brain.routes import Route, current_user
from brain.web import json_response

ACTOR = "notes"


class NoteCounter(BrainActor):
    """How many notes each user wrote (kept in memory: it is an example)."""

    def __init__(self, *, link: Link | None = None) -> None:
        super().__init__(link=link)
        self.counts: dict[str, int] = {}

    def add(self, user_id: str) -> int:
        self.counts[user_id] = self.counts.get(user_id, 0) + 1
        return self.counts[user_id]

    def count(self, user_id: str) -> int:
        return self.counts.get(user_id, 0)

    def forget(self, user_id: str) -> int:
        return self.counts.pop(user_id, 0)


@hookimpl
def register_children(rt: Any, register: Any) -> None:
    register(Child(ChildSpec(id=ACTOR, start=lambda link: NoteCounter.start(link=link))))


@hookimpl
def register_routes(rt: Any, listener: str, register: Any) -> None:
    if listener != "api":
        return

    async def add(request: Any) -> Any:
        ref = await rt.alookup(ACTOR)
        return json_response({"count": await bridge.ask(ref.proxy().add(current_user(request).id))}, status=201)

    async def count(request: Any) -> Any:
        ref = await rt.alookup(ACTOR)
        return json_response({"count": await bridge.ask(ref.proxy().count(current_user(request).id))})

    ok = {"200": {"description": "OK"}}
    register(Route("POST", "/notes", add, {"operationId": "addNote", "summary": "Write a note", "responses": ok}))
    register(Route("GET", "/notes/count", count, {"operationId": "notesCount", "summary": "Notes written", "responses": ok}))


@hookimpl
def user_purge(rt: Any, user_id: str) -> dict[str, int]:
    ref = rt.lookup(ACTOR)
    forgotten = ref.proxy().forget(user_id).get(timeout=10) if ref is not None else 0
    with open(os.environ["BRAIN_TEST_NOTES_FILE"], "a") as fh:
        fh.write(f"{user_id} {forgotten}\n")
    return {"notes_removed": forgotten}
