"""Isolation: many users send randomized requests full of id, path, header, body and token tricks.

Nobody ever reads or writes another user's store (every user's events carry their own marker,
and no answer to one user ever contains another's id or marker), nobody can stop or inspect
another's mail account, and no file appears outside `data/users/<a real user>/` (plus the
outbox markers and NATS store brain keeps by design): the whole work directory is snapshotted
before and compared after. `make test` sends a few hundred requests; tests/soak thousands.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from brain.testing.fakes.gmail import FakeGmail
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS
from tests.test_mail_engine import gmail_settings
from tests.test_reliability_helpers import (
    User,
    all_events,
    files_under,
    integrity_problems,
    sign_up_many,
    unexpected_files,
    wait_api_ready,
)


def b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def forged_tokens(me: User, victim: User) -> list[str]:
    """Tokens that try to speak for victim using what me holds."""
    head, payload, sig = me.jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    swapped = f"{head}.{b64({**claims, 'sub': victim.id})}.{sig}"
    none = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({**claims, 'sub': victim.id})}."
    doubled = json.dumps(claims)[:-1] + ', "sub": ' + json.dumps(victim.id) + "}"  # a second sub member
    duplicate = f"{head}.{base64.urlsafe_b64encode(doubled.encode()).rstrip(b'=').decode()}.{sig}"
    return [swapped, none, duplicate, victim.token, f"{me.jwt}.{victim.id}", f"{victim.id}"]


def trick(rng: random.Random, me: User, victim: User, victim_account: str | None, victim_cursor: str | None) -> tuple[str, str, dict[str, Any]]:
    """One randomized request by me that tries to reach victim's data: (method, path, kwargs)."""
    v = victim.id
    own = {"Authorization": f"Bearer {me.jwt}"}
    choice = rng.randrange(14)
    if choice == 0:  # paths that name the victim
        path = rng.choice([
            f"/events/{v}", f"/users/{v}/events", f"/users/{v}/events.db", f"/../users/{v}/events.db",
            f"/events/..%2F..%2Fusers%2F{v}%2Fevents.db", f"/%2e%2e/users/{v}/events.db", f"//events?user={v}",
            f"/events;user_id={v}", f"/events/%2e%2e/{v}", f"/data/users/{v}/events.db", f"/me/../users/{v}",
            f"/events%00{v}", f"/mail/status/{v}", f"/events/{quote(quote('../' + v))}",
        ])
        return rng.choice(["GET", "POST", "DELETE"]), path, {"headers": own}
    if choice == 1:  # query parameters that name the victim
        params = {rng.choice(["user_id", "sub", "user", "owner", "uid", "id"]): v, "type": rng.choice(["load.write", "mark"])}
        return "GET", "/events", {"headers": own, "params": params}
    if choice == 2:  # headers that name the victim
        header = rng.choice(["X-User-Id", "X-Forwarded-User", "X-Remote-User", "X-Auth-Request-User", "From", "Forwarded"])
        return "GET", rng.choice(["/events", "/me", "/mail/status"]), {"headers": {**own, header: v}}
    if choice == 3:  # the victim's cursor
        return "GET", "/events", {"headers": own, "params": {"cursor": victim_cursor or "x.y", "limit": 2}}
    if choice == 4:  # forged or borrowed tokens
        token = rng.choice(forged_tokens(me, victim))
        method = rng.choice(["GET", "POST"])
        body = {"type": "mark", "data": {"owner": v, "m": "forged"}} if method == "POST" else None
        return method, rng.choice(["/events", "/me"]) if method == "GET" else "/events", {
            "headers": {"Authorization": f"Bearer {token}"}, "json": body,
        }
    if choice == 5:  # two tokens at once
        value = rng.choice([f"Bearer {me.jwt}, Bearer {victim.jwt}", f"Bearer {victim.jwt} {me.jwt}", f"Bearer {me.jwt}\tBearer {victim.jwt}"])
        return "GET", "/events", {"headers": {"Authorization": value}}
    if choice == 6:  # bodies that name the victim
        event = {"type": "mark", "data": {"owner": me.id, "m": "body"}}
        extra = rng.choice([{"user_id": v}, {"sub": v}, {"user": v}, {"owner": v}])
        body = rng.choice([{**event, **extra}, [{**event, **extra}], {"events": [event], **extra}])
        return "POST", "/events", {"headers": own, "json": body}
    if choice == 7:  # an idempotency key the victim used
        return "POST", "/events", {
            "headers": {**own, "Idempotency-Key": "shared-key"},
            "json": {"type": "mark", "data": {"owner": me.id, "m": "idem"}},
        }
    if choice == 8 and victim_account:  # the victim's mail account
        return "POST", "/mail/disconnect", {"headers": own, "json": {"account": victim_account}}
    if choice == 9:  # the victim's session token on the auth role
        return rng.choice([("GET", "/api/auth/get-session"), ("GET", "/api/auth/token")]) + (
            {"headers": {"Authorization": f"Bearer {victim.id}"}, "auth": True},
        )
    if choice == 10:  # type names that would be paths or subjects
        etype = rng.choice([f"..{v}", f"{v}/..", "../..", f"users/{v}", "*", ">", f"a.{v}.>", "a b"])
        if rng.random() < 0.5:
            return "GET", "/events", {"headers": own, "params": {"type": etype}}
        return "POST", "/events", {"headers": own, "json": {"type": etype, "data": {"owner": me.id}}}
    if choice == 11:  # ordinary traffic of my own, so the tricks run among real writes
        return "POST", "/events", {"headers": own, "json": {"type": "mark", "data": {"owner": me.id, "m": f"own-{rng.random()}"}}}
    if choice == 12:
        return "GET", "/mail/status", {"headers": own}
    return "GET", "/events", {"headers": own, "params": {"limit": rng.randint(1, 50)}}


def isolation_run(server: BrainServer, gmail: FakeGmail, *, users: int, requests_count: int, seed: int) -> dict[str, Any]:
    """Run the randomized trick load; fail on any leak. Returns figures."""
    rng = random.Random(seed)
    before = files_under(server.workdir)
    people = sign_up_many(server, users)
    wait_api_ready(server)
    accounts: dict[str, str] = {}
    for i, u in enumerate(people[:3]):  # a few users have a mail account to attack
        address = f"victim{i}-{seed}@example.com"
        gmail.add_mailbox(address)
        gmail.add_message(address, subject=f"private to {u.id}")
        r = requests.post(
            f"{server.api_url}/mail/connect", json={"provider": "gmail", "refresh_token": gmail.issue_refresh_token(address)},
            headers=u.headers, timeout=30,
        )
        assert r.status_code == 201, r.text
        accounts[u.id] = r.json()["account"]["account"]
    # Each user's own events carry a secret no request of anyone else ever contains.
    secrets = {u.id: f"secret-{rng.getrandbits(64):016x}" for u in people}
    for u in people:
        for payload in (
            {"type": "mark", "data": {"owner": u.id, "m": "first", "secret": secrets[u.id]}},
            [{"type": "mark", "data": {"owner": u.id, "m": "second", "secret": secrets[u.id]}}],
        ):
            r = requests.post(f"{server.api_url}/events", json=payload, headers={**u.headers, "Idempotency-Key": "shared-key"} if isinstance(payload, dict) else u.headers, timeout=10)
            assert r.status_code == 201, r.text
    cursors = {u.id: requests.get(f"{server.api_url}/events", params={"limit": 1}, headers=u.headers, timeout=10).json()["next_cursor"] for u in people}

    leaks: list[str] = []
    statuses: dict[int, int] = {}
    session = requests.Session()
    for _ in range(requests_count):
        me, victim = rng.sample(people, 2)
        method, path, kwargs = trick(rng, me, victim, accounts.get(victim.id), cursors[victim.id])
        base = server.auth_url if kwargs.pop("auth", False) else server.api_url
        if kwargs.get("json") is None:
            kwargs.pop("json", None)
        r = session.request(method, base + path, timeout=15, allow_redirects=False, **kwargs)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        where = f"{method} {path} {kwargs.get('params', '')} -> {r.status_code}"
        if r.status_code >= 500:
            leaks.append(f"5xx: {where}: {r.text[:200]}")
        if secrets[victim.id] in r.text:
            leaks.append(f"{me.id} read {victim.id}'s data: {where}: {r.text[:300]}")
        elif victim.id in r.text and victim.id not in repr((path, kwargs)):  # not an echo of the request
            leaks.append(f"{me.id} saw {victim.id}: {where}: {r.text[:300]}")
        if r.status_code in (200, 201) and path == "/me" and r.json().get("id") != me.id:
            leaks.append(f"/me answered someone else: {where}")
    assert not leaks, "\n".join(leaks[:20])

    # Every user's store holds their own events only; the victims' accounts are still theirs.
    for u in people:
        events = all_events(server, u)
        owners = {e["data"].get("owner") for e in events if isinstance(e["data"], dict) and "owner" in e["data"]}
        assert owners <= {u.id}, (u.id, owners)
        assert not any(isinstance(e["data"], dict) and e["data"].get("m") == "forged" for e in events), u.id
    for uid, account in accounts.items():
        owner = next(u for u in people if u.id == uid)
        status = requests.get(f"{server.api_url}/mail/status", headers=owner.headers, timeout=10).json()["accounts"]
        assert [a["account"] for a in status] == [account] and status[0]["state"] != "disconnected", status
    # No file anywhere but where brain puts a real user's data.
    assert server.stop() == 0
    stray = unexpected_files(server.workdir, server.data_dir, before, [u.id for u in people])
    assert not stray, stray[:20]
    assert not integrity_problems(server.data_dir), integrity_problems(server.data_dir)
    return {"requests": requests_count, "statuses": statuses}


def run_isolation(workdir: Path, *, users: int, requests_count: int, seed: int) -> dict[str, Any]:
    """A server with mail accounts on a fake Gmail, then `isolation_run`; its figures."""
    with FakeGmail() as gmail:
        server = BrainServer(
            workdir,
            config={"auth": NO_LIMITS, "plugins": {"gmail": gmail_settings(gmail)}, "mail": {"sync_interval_seconds": 2.0}},
        )
        server.start()
        try:
            return isolation_run(server, gmail, users=users, requests_count=requests_count, seed=seed)
        finally:
            server.close()


def test_randomized_tricks_never_cross_users_or_leave_data_users(tmp_path: Path) -> None:
    figures = run_isolation(tmp_path / "brain", users=8, requests_count=500, seed=11)
    assert figures["statuses"].get(401, 0) > 20 and figures["statuses"].get(200, 0) > 50, figures
