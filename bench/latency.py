"""Single-client latencies: one keep-alive connection, one request at a time.

Each function returns per-request latencies in seconds (warm-up requests excluded) and checks
every response's status, so an error can never pass for a fast answer. Given the bare
baseline's port, the API measurements alternate blocks of bare requests of the same method with
blocks of measured ones (bench.client.SHADOW_BLOCK), so brain's figure and the
client-plus-aiohttp floor are taken under the same noise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from bench.baseline import GET_PATH, PAGE_PATH, POST_PATH, argon2_verifier
from bench.client import KeepAliveClient, Shadow, expect, sample_latencies
from bench.users import SIGN_IN, User, event_body, sign_in_body, sign_up


class Paired(NamedTuple):
    """Latencies of the measured requests and of the bare requests interleaved with them."""

    times: list[float]
    bare: list[float]


def bare(port: int, *, samples: int, warmup: int) -> tuple[list[float], list[float]]:
    """(GET, POST) latencies against the bare baseline: the client's own overhead plus aiohttp's floor."""
    with KeepAliveClient(port) as c:
        get_raw = c.encode("GET", GET_PATH)
        post_raw = c.encode("POST", POST_PATH, body=event_body(1))
        get = sample_latencies(c, lambda _i: get_raw, count=samples, warmup=warmup, statuses=(200,), what="bare GET")
        post = sample_latencies(c, lambda _i: post_raw, count=samples, warmup=warmup, statuses=(201,), what="bare POST")
    return get, post


def sign_ups(auth_port: int, tag: str, count: int) -> tuple[list[User], list[float]]:
    """Sign up `count` new users one after another; (users, latencies)."""
    users: list[User] = []
    latencies: list[float] = []
    with KeepAliveClient(auth_port) as c:
        for i in range(count):
            user, response = sign_up(c, tag, i)
            users.append(user)
            latencies.append(response.elapsed)
    return users, latencies


def sign_ins(auth_port: int, users: Sequence[User], *, samples: int, warmup: int = 2) -> list[float]:
    """Sign in as the users in turn."""
    with KeepAliveClient(auth_port) as c:
        raws = [c.encode("POST", SIGN_IN, body=sign_in_body(u)) for u in users]
        return sample_latencies(
            c, lambda i: raws[i % len(raws)], count=samples, warmup=warmup, statuses=(200,), what="sign-in"
        )


# Sign-ins and bare verifications alternate in blocks this long, so outside load falls on both.
SIGN_IN_BLOCK = 10


def sign_ins_beside_argon2(
    auth_port: int, users: Sequence[User], *, samples: int, memory_kib: int, time_cost: int, parallelism: int
) -> Paired:
    """Sign-ins, and argon2id verifications alone at the same parameters in this process, in alternating blocks.

    The verification is the floor of a sign-in: what a sign-in costs beyond it is brain's.
    """
    verify = argon2_verifier(memory_kib=memory_kib, time_cost=time_cost, parallelism=parallelism)
    signed: list[float] = []
    alone: list[float] = []
    with KeepAliveClient(auth_port) as c:
        raws = [c.encode("POST", SIGN_IN, body=sign_in_body(u)) for u in users]
        done = 0
        while done < samples:
            block = min(SIGN_IN_BLOCK, samples - done)
            signed += sample_latencies(
                c, lambda i: raws[(done + i) % len(raws)], count=block, warmup=0, statuses=(200,), what="sign-in"
            )
            for _ in range(block):
                start = time.perf_counter()
                verify()
                alone.append(time.perf_counter() - start)
            done += block
    return Paired(signed, alone)


@contextmanager
def _shadow(bare_port: int | None, method: str, path: str = GET_PATH) -> Iterator[Shadow | None]:
    """Bare-baseline requests of the same method to alternate (in blocks) with the measured ones."""
    if bare_port is None:
        yield None
        return
    with KeepAliveClient(bare_port) as bare:
        if method == "GET":
            yield Shadow(bare, bare.encode("GET", path), 200, [])
        else:
            yield Shadow(bare, bare.encode("POST", POST_PATH, body=event_body(1)), 201, [])


def post_events(api_port: int, user: User, *, samples: int, warmup: int, bare_port: int | None = None) -> Paired:
    """POST /events as one user, each answered only after its commit."""
    headers = {"Authorization": user.authorization}
    with KeepAliveClient(api_port) as c, _shadow(bare_port, "POST") as shadow:
        times = sample_latencies(
            c, lambda i: c.encode("POST", "/events", headers=headers, body=event_body(i, kind="bench.latency")),
            count=samples, warmup=warmup, statuses=(201,), what="POST /events", shadow=shadow,
        )
        return Paired(times, shadow.times if shadow else [])


def get_events(
    api_port: int, user: User, *, limit: int, samples: int, warmup: int, bare_port: int | None = None
) -> Paired:
    """GET /events?limit=N as one user, beside the bare GET of a prebuilt page of the same shape;
    fails unless a full page of N events comes back."""
    headers = {"Authorization": user.authorization}
    with KeepAliveClient(api_port) as c, _shadow(bare_port, "GET", PAGE_PATH) as shadow:
        raw = c.encode("GET", f"/events?limit={limit}", headers=headers)
        got = len(expect(c.send(raw), 200, what="GET /events").json().get("events", []))
        if got != limit:
            raise RuntimeError(f"GET /events?limit={limit} returned {got} events; the user needs at least {limit}")
        times = sample_latencies(
            c, lambda _i: raw, count=samples, warmup=warmup, statuses=(200,), what="GET /events", shadow=shadow
        )
        return Paired(times, shadow.times if shadow else [])


def get_me(api_port: int, user: User, *, samples: int, warmup: int, bare_port: int | None = None) -> Paired:
    """GET /me as one user (a cached token after the first request)."""
    with KeepAliveClient(api_port) as c, _shadow(bare_port, "GET") as shadow:
        raw = c.encode("GET", "/me", headers={"Authorization": user.authorization})
        times = sample_latencies(
            c, lambda _i: raw, count=samples, warmup=warmup, statuses=(200,), what="GET /me", shadow=shadow
        )
        return Paired(times, shadow.times if shadow else [])


def get_me_with_key(api_port: int, user: User, key_authorization: str, *, samples: int, warmup: int) -> Paired:
    """GET /me with the user's API key, in blocks alternating with GET /me with their JWT on a
    second connection to the same server: `bare` holds the JWT latencies (same run, same noise)."""
    with KeepAliveClient(api_port) as c, KeepAliveClient(api_port) as jwt_client:
        shadow = Shadow(jwt_client, jwt_client.encode("GET", "/me", headers={"Authorization": user.authorization}), 200, [])
        raw = c.encode("GET", "/me", headers={"Authorization": key_authorization})
        times = sample_latencies(
            c, lambda _i: raw, count=samples, warmup=warmup, statuses=(200,), what="GET /me (API key)", shadow=shadow
        )
        return Paired(times, shadow.times)
