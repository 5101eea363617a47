"""The auth role's parts on their own: cookie format, limits, origins, key ring states, the actor."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import pytest

from brain.actors import bridge
from brain.actors.supervisor import ChildSpec, Supervisor
from brain.actors.tree import Child, Group
from brain.auth import keys
from brain.auth import plugin as auth_plugin
from brain.auth.cookies import signed_value, unsign
from brain import ratelimit
from brain.ratelimit import SlidingWindow, client_block
from brain.auth.validation import normalize_email, password_length
from brain.config import load_settings
from brain.errors import BadRequest
from brain.origins import TrustedOrigins, origin_of
from brain.runtime import Runtime
from tests.support import FAST_ARGON2, wait_until

SECRET = b"a-better-auth-secret-of-32-chars-min"
TOKEN = "Xq9v1bYHsCkF3Tz8wLmN2pRt5uVa7dEe"
# better-call's serializeSignedCookie("better-auth.session_token", TOKEN, SECRET), from node.
BETTER_AUTH_COOKIE = "Xq9v1bYHsCkF3Tz8wLmN2pRt5uVa7dEe.%2BaM%2BE8jBWbYy%2Bpzh86A%2FGr1oep5kxA%2BXUMuU1SUV%2BuM%3D"


def test_cookie_value_matches_better_call() -> None:
    assert signed_value(SECRET, TOKEN) == BETTER_AUTH_COOKIE
    assert unsign(SECRET, BETTER_AUTH_COOKIE) == TOKEN
    assert unsign(SECRET, BETTER_AUTH_COOKIE.replace("%2BaM", "%2BaN")) is None
    assert unsign(b"another secret of at least 32 chars", BETTER_AUTH_COOKIE) is None
    assert unsign(SECRET, TOKEN) is None
    assert unsign(SECRET, "." + BETTER_AUTH_COOKIE.split(".")[1]) is None


def test_sliding_window() -> None:
    w = SlidingWindow(3, 10.0, max_keys=2)
    assert [w.take("a", now=t) for t in (0, 1, 2)] == [0, 0, 0]
    assert w.take("a", now=3) == pytest.approx(7.0)
    assert w.take("a", now=10.5) == 0  # the first event aged out
    w.reset("a")
    assert w.retry_after("a", now=11) == 0
    for key in ("b", "c", "d"):
        w.hit(key, now=100)
    assert len(w) <= 2  # bounded, however many keys arrive


def lines_run_in(module_file: str, action: Callable[[], object]) -> int:
    """How many lines of one module run while `action` does: a count of work, not of time."""
    count = 0

    def local(_frame: FrameType, event: str, _arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def tracer(frame: FrameType, _event: str, _arg: object) -> Any:
        return local if frame.f_code.co_filename == module_file else None

    sys.settrace(tracer)
    try:
        action()
    finally:
        sys.settrace(None)
    return count


def test_rate_limiter_at_100k_keys_stays_bounded_and_evicts_without_scanning() -> None:
    keys = 100_000
    w = SlidingWindow(5, 900.0, max_keys=keys)
    for i in range(keys):  # every key under its limit: the open table is full
        w.hit(f"open-{i}", now=1.0)
    for i in range(keys):  # as many lockouts: the table of keys at their limit is full too
        for _ in range(5):
            w.hit(f"locked-{i}", now=2.0)
    assert 2 * keys - 1 <= len(w) <= 2 * keys  # both tables full (a key passes through the open one)
    # One more key of each kind: each pushes one out, and looks at a handful of entries to do it
    # (a scan would run its loop body once per key: 100,000 lines and more).
    assert lines_run_in(ratelimit.__file__, lambda: w.hit("new-open", now=3.0)) < 60
    assert lines_run_in(ratelimit.__file__, lambda: [w.hit("new-locked", now=3.0) for _ in range(5)]) < 200
    assert lines_run_in(ratelimit.__file__, lambda: w.take("another", now=3.0)) < 80
    assert len(w) <= 2 * keys
    assert w.retry_after("new-locked", now=3.0) > 0 and w.retry_after("open-0", now=3.0) == 0


def test_flooding_other_keys_does_not_lift_a_lockout() -> None:
    w = SlidingWindow(3, 900.0, max_keys=100)
    for t in (0, 1, 2):
        w.take("victim@example.com", now=t)
    assert w.take("victim@example.com", now=3) == pytest.approx(897.0)
    # An attacker sends many times more keys than the table holds (a few attempts each, under
    # the limit): the least recently seen of them go, the lockout stays.
    for i in range(10_000):
        for _ in range(2):
            w.take(f"flood-{i}@example.com", now=4)
    assert len(w) <= 2 * 100
    assert w.take("victim@example.com", now=5) == pytest.approx(895.0)
    assert w.take("victim@example.com", now=901) == 0  # the window passed: free again


def test_ipv6_clients_are_limited_per_64() -> None:
    assert client_block("2001:db8:1:2::1") == client_block("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert client_block("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_block("::ffff:192.0.2.7") == "192.0.2.7"  # an IPv4 client on a dual-stack socket
    assert client_block("192.0.2.7") == "192.0.2.7"
    assert client_block("fe80::1%eth0") == "fe80::/64"


def test_trusted_origins() -> None:
    t = TrustedOrigins("http://127.0.0.1:3000", ["https://app.example.com/", "https://*.example.org"])
    assert "http://127.0.0.1:3000" in t
    assert "https://APP.example.com" in t and "https://app.example.com:443" in t
    assert "https://x.example.org" in t and "https://a.b.example.org" in t
    for bad in ("https://example.org", "http://x.example.org", "https://app.example.com.evil.io", "null", "", "file:///x",
                "http://127.0.0.1:3001", "https://app.example.com:8443"):
        assert bad not in t, bad
    assert t.safe_callback("/dashboard") == "/dashboard"
    assert t.safe_callback("https://app.example.com/x?y=1") == "https://app.example.com/x?y=1"
    for bad in ("//evil.io/x", "/\\evil.io", "https://evil.io/", "javascript:alert(1)"):
        assert t.safe_callback(bad) is None, bad
    assert origin_of("http://[::1]:80/x") == "http://[::1]"


@pytest.mark.parametrize("good", ["a@b.io", "A.B+tag@Example.COM", "o'neil@x-y.example.org"])
def test_good_emails(good: str) -> None:
    assert normalize_email(good) == good.lower()


@pytest.mark.parametrize(
    "bad", ["", "a", "a@b", "@b.io", "a@.io", ".a@b.io", "a..b@c.io", "a@b.io ", " a@b.io", "a@b.io\r\n", "a\x00@b.io",
            "é@b.io", "a@b.i", "a@b_c.io", "a@-b.io", "a" * 250 + "@b.io"],
)
def test_bad_emails(bad: str) -> None:
    with pytest.raises(BadRequest) as info:
        normalize_email(bad)
    assert info.value.code == "INVALID_EMAIL"


def test_password_length_counts_like_javascript() -> None:
    assert password_length("abc") == 3
    assert password_length("\U0001F600") == 2  # one emoji, two UTF-16 code units


def row(kid: str, activates: int) -> SimpleNamespace:
    return SimpleNamespace(kid=kid, activates_at=activates, created_at=activates)


def test_published_keys_follow_rotation() -> None:
    rows = [row("old", 0), row("cur", 100), row("next", 200)]
    keep = 50
    # Before "cur" activates: old signs, cur is pending (published), next is pending.
    assert [r.kid for r in keys.published_rows(rows, 50, keep)] == ["old", "cur", "next"]
    # "cur" active since 100: old is retired but kept until 150.
    assert [r.kid for r in keys.published_rows(rows, 149, keep)] == ["old", "cur", "next"]
    assert [r.kid for r in keys.published_rows(rows, 151, keep)] == ["cur", "next"]
    assert [r.kid for r in keys.published_rows(rows, 260, keep)] == ["next"]


def test_sealed_keys_are_bound_to_secret_and_kid() -> None:
    aead = keys.sealing_key(SECRET)
    sealed = keys.seal(aead, "kid1", b"private")
    assert keys.unseal(aead, "kid1", sealed) == b"private"
    from cryptography.exceptions import InvalidTag

    with pytest.raises(InvalidTag):
        keys.unseal(aead, "kid2", sealed)
    with pytest.raises(InvalidTag):
        keys.unseal(keys.sealing_key(b"another secret of at least 32 chars"), "kid1", sealed)


async def test_handlers_find_a_restarted_issuer(tmp_path: Path) -> None:
    """The cached issuer ref is dropped when its actor dies; the next ask reaches the successor."""
    from brain.auth.context import context_for

    settings = load_settings(
        environ={}, overrides={"server": {"data_dir": str(tmp_path)}, "auth": {**FAST_ARGON2, "key_poll_seconds": 60.0}}
    )
    rt = Runtime(settings)
    rt.root = Supervisor.start(
        name="root",
        children=[_auth_sup(rt)],
    )
    try:
        await bridge.ask(rt.root.proxy().count_children())  # answered once the subtree is up
        ctx = context_for(rt)
        assert ctx.ring is not None and ctx.ring.signer().kid
        assert await ctx.issuer("revoke_session", token_hash="0" * 64) is False
        first = ctx._issuer[0]  # noqa: SLF001 - the cache under test
        first.stop()
        wait_until(lambda: rt.lookup("auth_sup/auth_issuer") not in (None, first), timeout=10, what="a restarted issuer")
        assert await ctx.issuer("revoke_session", token_hash="0" * 64) is False
        assert ctx._issuer[0] is not first  # noqa: SLF001
    finally:
        await asyncio.get_running_loop().run_in_executor(None, lambda: rt.root.stop(block=True, timeout=20))
        context_for(rt).close()


def _auth_sup(rt: Runtime) -> ChildSpec:
    """auth_sup with just the auth role's children (no NATS, no API role)."""
    entries: list[Child | Group] = []
    auth_plugin.register_children(rt=rt, register=entries.append)
    children = [entry.spec for entry in entries if isinstance(entry, Child)]
    return ChildSpec(
        id="auth_sup",
        start=lambda link: Supervisor.start(link=link, name="auth_sup", children=children),
    )



async def test_the_key_ring_is_published_again_only_when_it_changed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another process's write to auth.db (a sign-in on another worker) makes the issuer look at
    the keys again; an unchanged ring is not published again, so the log does not repeat "key ring
    published" every `key_poll_seconds` on every worker. A rotation still is."""
    import sqlite3

    from brain.auth.context import context_for

    settings = load_settings(
        environ={}, overrides={"server": {"data_dir": str(tmp_path)}, "auth": {**FAST_ARGON2, "key_poll_seconds": 0.05}}
    )
    rt = Runtime(settings)
    caplog.set_level("INFO", logger="brain.auth")
    rt.root = Supervisor.start(name="root", children=[_auth_sup(rt)])
    try:
        await bridge.ask(rt.root.proxy().count_children())
        ctx = context_for(rt)
        first = ctx.ring
        assert first is not None
        other = sqlite3.connect(tmp_path / "auth.db")  # another process's connection
        try:
            for n in range(5):
                other.execute("DELETE FROM session WHERE expires_at < ?", (n,))
                other.execute("CREATE TABLE IF NOT EXISTS scratch (n INTEGER)")
                other.execute("INSERT INTO scratch VALUES (?)", (n,))
                other.commit()
                await asyncio.sleep(0.15)  # three polls
            assert ctx.ring is first
            published = [r for r in caplog.records if r.getMessage().startswith("key ring published")]
            assert len(published) == 1, [r.getMessage() for r in published]
            await asyncio.get_running_loop().run_in_executor(None, lambda: keys.rotate(ctx.aead, publish_delay_s=600))
            wait_until(lambda: ctx.ring is not first and len(ctx.ring.published) == 2, timeout=10, what="the rotated ring")
        finally:
            other.close()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, lambda: rt.root.stop(block=True, timeout=20))
        context_for(rt).close()
