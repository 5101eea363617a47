"""Benchmark users: real sign-ups through the auth role, and the requests that act as them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from bench.client import KeepAliveClient, Response, expect

SIGN_UP = "/api/auth/sign-up/email"
SIGN_IN = "/api/auth/sign-in/email"
API_KEY_CREATE = "/api/auth/api-key/create"
PASSWORD = "bench-password-0123456789"

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class User:
    """A signed-up user and the JWT brain handed out for them."""

    id: str
    email: str
    password: str
    jwt: str
    session: str = ""  # the session token (what the auth role's own endpoints take)

    @property
    def authorization(self) -> str:
        """The `Authorization` header value."""
        return f"Bearer {self.jwt}"


def run_tag() -> str:
    """A short tag that keeps this run's emails and markers apart from any other run's."""
    return uuid.uuid4().hex[:10]


def sign_up_body(tag: str, i: int) -> dict[str, str]:
    """The sign-up body of benchmark user i."""
    return {"name": f"Bench User {i}", "email": f"bench-{tag}-{i}@example.com", "password": PASSWORD}


def sign_in_body(user: User) -> dict[str, str]:
    """The sign-in body of a user."""
    return {"email": user.email, "password": user.password}


def user_from(response: Response, password: str) -> User:
    """The User in a sign-up or sign-in response (fails if the shape is not brain's)."""
    body = response.json()
    jwt = body.get("jwt")
    if not isinstance(jwt, str) or not jwt:
        raise RuntimeError("the sign-up response carries no jwt")
    return User(id=body["user"]["id"], email=body["user"]["email"], password=password, jwt=jwt, session=body["token"])


def sign_up(client: KeepAliveClient, tag: str, i: int) -> tuple[User, Response]:
    """Sign up user i over the client's connection."""
    response = expect(client.request("POST", SIGN_UP, body=sign_up_body(tag, i)), 200, what="sign-up")
    return user_from(response, PASSWORD), response


def event_body(n: int, *, kind: str = "bench.post", marker: str | None = None) -> dict:
    """A small event like an app would post (the bare POST baseline parses the same shape)."""
    data: dict = {"n": n, "text": "hello from the benchmark"}
    if marker is not None:
        data["bench_marker"] = marker
    return {"type": kind, "data": data}


def concurrently(port: int, items: Sequence[T], fn: Callable[[KeepAliveClient, T], R], *, clients: int = 4) -> list[R]:
    """fn(client, item) for every item, over `clients` connections in threads; results in order."""
    parts = [list(range(k, len(items), clients)) for k in range(clients)]

    def worker(indices: list[int]) -> list[tuple[int, R]]:
        with KeepAliveClient(port) as c:
            return [(i, fn(c, items[i])) for i in indices]

    with ThreadPoolExecutor(max_workers=clients) as pool:
        done = dict(pair for chunk in pool.map(worker, parts) for pair in chunk)
    return [done[i] for i in range(len(items))]


def sign_up_many(auth_port: int, tag: str, indices: range, *, clients: int = 4) -> list[User]:
    """Sign up users concurrently (untimed set-up: hashing runs on brain's worker pool)."""
    return concurrently(auth_port, list(indices), lambda c, i: sign_up(c, tag, i)[0], clients=clients)


def create_api_keys(auth_port: int, users: Sequence[User], *, clients: int = 4) -> list[str]:
    """One API key for each user (every scope), as `Authorization` values (`Bearer <key>`)."""

    def create(c: KeepAliveClient, user: User) -> str:
        response = c.request("POST", API_KEY_CREATE, headers={"Authorization": f"Bearer {user.session}"},
                             body={"name": "bench"})
        return f"Bearer {expect(response, 200, what='API key create').json()['key']}"

    return concurrently(auth_port, users, create, clients=clients)


def seed_event(n: int) -> dict:
    """A seeded event: a page of 100 of them is ~15 KB of JSON, the size issue 22's reads are judged at."""
    body = event_body(n, kind="bench.seed")
    body["data"]["tags"] = ["seed", "page"]
    return body


def seed_events(api_port: int, users: Sequence[User], *, count: int = 100, clients: int = 4) -> None:
    """Give each user `count` more events (one batch POST each, concurrently)."""
    batch = [seed_event(i) for i in range(count)]

    def post(c: KeepAliveClient, user: User) -> None:
        response = c.request("POST", "/events", headers={"Authorization": user.authorization}, body=batch)
        expect(response, 200, 201, what="batch POST /events")

    concurrently(api_port, users, post, clients=clients)
