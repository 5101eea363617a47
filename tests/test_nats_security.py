"""NATS is brain's alone: the embedded server admits only brain's credential, and a deletion
published on a shared NATS by anyone but a role of the deployment deletes nobody."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
import pytest
import requests

from brain.config import load_settings
from brain.control_messages import CONTROL_TTL_S, control_key, signed_headers
from brain.deletions import STREAM, SUBJECT, ensure_stream
from brain.errors import ConfigError
from brain.nats_auth import connect_options
from brain.testing.fakes.tls import tls_files
from tests.support import BrainServer, embedded_nats_url, free_port, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user, sign_in
from tests.test_jetstream import NatsServer

SECRET = "the-secret-every-role-shares-" + "x" * 12


async def _connect(url: str) -> str:
    """"connected", or why the server refused the client."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(repr(exc))

    try:
        async with asyncio.timeout(5):  # nats-py retries a refused first connect for ever
            nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2,
                                    error_cb=on_error)
    except Exception as exc:  # noqa: BLE001 - the refusal is what we look at
        return f"refused: {exc!r} {errors}"
    try:
        streams = [s.config.name for s in await nc.jetstream().streams_info()]
        return f"connected; streams {sorted(streams)}"
    finally:
        await nc.close()


def test_embedded_nats_admits_only_brains_credential(brain_server: BrainServer) -> None:
    server = brain_server
    detail = wait_until(lambda: (b := server.health())["nats"].get("connected") and b, timeout=20,
                        what="brain connected to its embedded NATS")
    url = detail["nats"]["url"]
    store = server.data_dir / "nats"
    credential = json.loads((store / "credentials").read_text())
    for name in ("credentials", "server.conf"):
        assert (store / name).stat().st_mode & 0o777 == 0o600, name
    # Another local client: refused without the credential, or with a wrong one.
    for tried in (url, url.replace("://", f"://{credential['user']}:not-the-password@")):
        outcome = asyncio.run(_connect(tried))
        assert outcome.startswith("refused") and "Authorization" in outcome, outcome
    # With it (read from the data directory, as the data directory's owner can): in.
    assert asyncio.run(_connect(embedded_nats_url(url, server.data_dir))) == "connected; streams ['BRAIN_CONTROL', 'BRAIN_EVENTS']"
    # The password is in no place another user can read: not on /health, not in the command line.
    password = credential["password"]
    assert password not in requests.get(f"{server.api_url}/health", timeout=5).text
    assert password not in json.dumps(server.health())
    pid = int((store / "nats-server.pid").read_text())
    assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


def publish(url: str, payload: bytes, headers: dict[str, str]) -> None:
    """Publish on the control stream as any client of the shared NATS could."""

    async def run() -> None:
        nc = await nats.connect(url, connect_timeout=5)
        try:
            js = nc.jetstream()
            await ensure_stream(js)
            await js.publish(SUBJECT, payload, stream=STREAM, headers=headers)
        finally:
            await nc.close()

    asyncio.run(run())


def test_forged_deletions_on_a_shared_nats_delete_nobody(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shared = NatsServer(tmp_path / "nats").start()
    try:
        auth_port, api_port = free_port(), free_port()
        env = {"BRAIN_SECRET": SECRET, "NATS_URL": shared.url}
        auth: BrainServer = make_server("auth", roles="auth", auth_port=auth_port, api_port=api_port, env=env,
                                        config={"auth": NO_LIMITS}).start()
        api: BrainServer = make_server("api", roles="api", auth_port=auth_port, api_port=api_port,
                                       env={**env, "AUTH_SERVER_URL": auth.auth_url}).start()
        victim = new_user(auth)
        victim_id, headers = victim["user"]["id"], bearer(victim["jwt"])
        wait_until(lambda: requests.post(f"{api.api_url}/events", json={"type": "note", "data": 1}, headers=headers,
                                         timeout=10).status_code == 201, timeout=20, what="the API to take the JWT")
        victim_dir = api.data_dir / "users" / victim_id

        now = time.time()
        payload = json.dumps({"user_id": victim_id, "deleted_at": int(now * 1000),
                              "tokens_valid_until": int(now * 1000) + 900_000}).encode()
        right, wrong = control_key(SECRET.encode()), control_key(b"a secret this deployment does not have!")
        forged = {
            "unsigned": {"Nats-Msg-Id": "forged-1"},
            "bad signature": signed_headers(wrong, SUBJECT, payload, "forged-2"),
            "expired": signed_headers(right, SUBJECT, payload, "forged-3", now=now - CONTROL_TTL_S - 60),
            "expiry beyond the allowed bound": signed_headers(right, SUBJECT, payload, "forged-4", now=now + CONTROL_TTL_S),
        }
        for message_headers in forged.values():
            publish(shared.url, payload, message_headers)
        for why in forged:
            wait_until(lambda: f"refused a {SUBJECT} message ({why})" in api.log_text(), timeout=15,
                       what=f"the API to log the refusal of the {why!r} deletion")
        # Nobody was deleted: the victim's JWT, session and data are all still there.
        assert requests.get(f"{api.api_url}/me", headers=headers, timeout=10).status_code == 200
        assert (victim_dir / "events.db").exists()
        assert sign_in(auth, victim["user"]["email"]).status_code == 200

        # A genuine deletion, signed by the auth role, still reaches the API across processes.
        r = requests.post(f"{auth.auth_url}/api/auth/delete-user", json={}, headers=bearer(victim["token"]),
                          timeout=30)
        assert r.status_code == 200, r.text
        wait_until(lambda: requests.get(f"{api.api_url}/me", headers=headers, timeout=10).status_code == 401,
                   timeout=15, what="the API to refuse the deleted user's JWT")
        wait_until(lambda: not victim_dir.exists(), timeout=15, what="the deleted user's data to go")
    finally:
        shared.stop()


@pytest.mark.parametrize(
    ("server_args", "env"),
    [
        (("--user", "svc", "--pass", "svc-password-1"), {"NATS_USER": "svc", "NATS_PASSWORD": "svc-password-1"}),
        (("--auth", "svc-token-2"), {"NATS_TOKEN": "svc-token-2"}),
    ],
    ids=["user-password", "token"],
)
def test_an_external_nats_takes_the_configured_credential(
    make_server, tmp_path: Path, server_args: tuple[str, ...], env: dict[str, str]  # type: ignore[no-untyped-def]
) -> None:
    external = NatsServer(tmp_path / "nats", args=server_args).start()
    try:
        server: BrainServer = make_server(env={"NATS_URL": external.url, **env}).start()
        wait_until(lambda: server.health()["nats"].get("connected"), timeout=20, what="brain connected to its NATS")
        assert "Authorization Violation" not in server.log_text()
    finally:
        external.stop()


def test_nats_credentials_are_checked_when_settings_load() -> None:
    with pytest.raises(ConfigError, match="one way to authenticate"):
        load_settings(environ={"NATS_URL": "nats://n:4222", "NATS_USER": "u", "NATS_PASSWORD": "p", "NATS_TOKEN": "t"})
    with pytest.raises(ConfigError, match="nats.user and nats.password"):
        load_settings(environ={"NATS_URL": "nats://n:4222", "NATS_USER": "u"})
    with pytest.raises(ConfigError, match="only for an external NATS"):
        load_settings(environ={"NATS_TOKEN": "t"})
    with pytest.raises(ConfigError, match="tls_cert_file and nats.tls_key_file"):
        load_settings(environ={"NATS_URL": "tls://n:4222", "NATS_CERT": "/c.pem"})
    settings = load_settings(environ={"NATS_URL": "tls://n:4222", "NATS_CREDS": "/nonexistent.creds"})
    with pytest.raises(ConfigError, match="nats.creds_file: cannot read"):
        connect_options(settings.nats, settings.nats.url)


def test_an_external_nats_over_tls_is_trusted_through_the_configured_ca(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = tls_files()
    external = NatsServer(tmp_path / "nats", args=("--tls", "--tlscert", str(files.cert_path),
                                                   "--tlskey", str(files.key_path))).start()
    try:
        url = f"tls://127.0.0.1:{external.port}"
        trusting: BrainServer = make_server("trusting", env={"NATS_URL": url, "NATS_CA": str(files.ca_path)}).start()
        untrusting: BrainServer = make_server("untrusting", env={"NATS_URL": url}).start()
        wait_until(lambda: trusting.health()["nats"].get("connected"), timeout=20, what="brain connected over TLS")
        # The system CAs do not know the test CA: without nats.tls_ca_file the server is not believed.
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in untrusting.log_text(), timeout=20,
                   what="the untrusted certificate refused")
        assert not untrusting.health()["nats"]["connected"]
    finally:
        external.stop()
