"""GET /metrics against the real server: the Prometheus text format, moving figures, bounded
labels, token protection and the separate listener."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from brain.mail.db import MailDb, States
from brain.metrics import METHODS, ROUTE_UNMATCHED
from tests.support import BrainServer, free_port, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user

TOKEN = "metrics-token-" + "x" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of one scrape, by (name, labels); the text must parse as Prometheus format."""
    r = requests.get(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in samples if n == name}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    s = BrainServer(
        tmp_path_factory.mktemp("metrics") / "brain", config={"auth": NO_LIMITS, "metrics": {"token": TOKEN}}
    )
    with s:
        wait_until(lambda: requests.get(f"{s.api_url}/health", timeout=5).json()["status"] == "ok", timeout=15,
                   what="/health ok")
        yield s


def metrics_url(server: BrainServer) -> str:
    return f"{server.api_url}/metrics"


def test_token_protects_metrics_on_the_api_port(server: BrainServer) -> None:
    r = requests.get(metrics_url(server), timeout=5)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert r.json()["code"] == "UNAUTHORIZED"
    r = requests.get(metrics_url(server), headers={"Authorization": f"Bearer {TOKEN}x"}, timeout=5)
    assert r.status_code == 401
    # A user's JWT is not the metrics token either.
    user = new_user(server)
    assert requests.get(metrics_url(server), headers=bearer(user["jwt"]), timeout=5).status_code == 401
    samples = scrape(metrics_url(server), AUTH)
    assert value(samples, "brain_build_info", version=__import__("brain").__version__, roles="api,auth") == 1
    # Not on the auth port; and /openapi.json describes it where it is served.
    assert requests.get(f"{server.auth_url}/metrics", headers=AUTH, timeout=5).status_code == 404
    assert "/metrics" in requests.get(f"{server.api_url}/openapi.json", timeout=5).json()["paths"]


def test_figures_move_with_requests(server: BrainServer) -> None:
    before = scrape(metrics_url(server), AUTH)
    user = new_user(server)
    auth = bearer(user["jwt"])
    for _ in range(3):
        assert requests.get(f"{server.api_url}/me", headers=auth, timeout=5).status_code == 200
    for i in range(2):
        r = requests.post(f"{server.api_url}/events", json={"type": "m", "data": i}, headers=auth, timeout=5)
        assert r.status_code == 201
    assert requests.get(f"{server.api_url}/events", headers=auth, timeout=5).status_code == 200
    assert requests.get(f"{server.api_url}/me", timeout=5).status_code == 401
    wait_until(
        lambda: value(scrape(metrics_url(server), AUTH), "brain_events_published_total")
        >= value(before, "brain_events_published_total") + 2,
        timeout=10, what="the two events published",
    )
    after = scrape(metrics_url(server), AUTH)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("brain_http_requests_total", role="api", route="/me", method="GET", status="200") == 3
    assert delta("brain_http_requests_total", role="api", route="/me", method="GET", status="401") == 1
    assert delta("brain_http_requests_total", role="api", route="/events", method="POST", status="201") == 2
    assert delta("brain_http_requests_total", role="api", route="/events", method="GET", status="200") == 1
    assert delta("brain_http_requests_total", role="auth", route="/api/auth/sign-up/email", method="POST",
                 status="200") == 1
    assert delta("brain_http_request_duration_seconds_count", role="api", route="/me", method="GET") == 4
    assert delta("brain_http_request_duration_seconds_sum", role="api", route="/me", method="GET") > 0
    assert value(after, "brain_http_request_duration_seconds_bucket", role="api", route="/me", method="GET",
                 le="+Inf") == value(after, "brain_http_request_duration_seconds_count", role="api", route="/me",
                                     method="GET")
    # JWT cache: the first /me of a new token is a miss, the following ones hits.
    assert delta("brain_jwt_cache_misses_total") >= 1 and delta("brain_jwt_cache_hits_total") >= 4
    assert value(after, "brain_jwt_cache_entries") >= 1
    assert value(after, "brain_stores_open") >= 1 and delta("brain_store_activations_total") >= 1
    assert value(after, "brain_stores_max_open") == 256
    assert value(after, "brain_jwks_keys") >= 1 and value(after, "brain_jwks_refreshes_total") >= 1
    assert 0 <= value(after, "brain_jwks_age_seconds") < 600
    assert value(after, "brain_healthy") == 1 and value(after, "brain_nats_connected") == 1
    assert value(after, "brain_outbox_dirty_users") == 0
    for name in ("brain_outbox_queued_events", "brain_outbox_in_flight_events", "brain_outbox_oldest_unacked_seconds",
                 "brain_jwks_refresh_failures_total", "brain_supervisor_restarts_total",
                 "brain_supervisor_escalations_total", "process_open_fds"):
        assert (name, frozenset()) in after, name


def test_route_labels_stay_bounded(server: BrainServer) -> None:
    before = scrape(metrics_url(server), AUTH)
    for _ in range(25):
        assert requests.get(f"{server.api_url}/nope-{uuid.uuid4().hex}", timeout=5).status_code == 404
        assert requests.get(f"{server.auth_url}/api/auth/x-{uuid.uuid4().hex}", timeout=5).status_code == 404
    assert requests.request("PROPFIND", f"{server.api_url}/coffee-{uuid.uuid4().hex}", timeout=5).status_code == 404
    assert requests.delete(f"{server.api_url}/me", timeout=5).status_code == 405
    after = scrape(metrics_url(server), AUTH)
    routes = label_values(after, "brain_http_requests_total", "route")
    assert routes == label_values(after, "brain_http_request_duration_seconds_count", "route")
    assert not any("nope" in r or "x-" in r or "coffee" in r for r in routes)
    assert ROUTE_UNMATCHED in routes
    assert all(r == ROUTE_UNMATCHED or r.startswith("/") for r in routes)
    assert label_values(after, "brain_http_requests_total", "method") <= METHODS | {"OTHER"}

    def delta(**labels: str) -> float:
        return value(after, "brain_http_requests_total", **labels) - value(before, "brain_http_requests_total", **labels)

    assert delta(role="api", route=ROUTE_UNMATCHED, method="GET", status="404") == 25
    assert delta(role="auth", route=ROUTE_UNMATCHED, method="GET", status="404") == 25
    assert delta(role="api", route=ROUTE_UNMATCHED, method="OTHER", status="404") == 1
    assert delta(role="api", route=ROUTE_UNMATCHED, method="DELETE", status="405") == 1
    # Another round of new random paths adds no series at all.
    for _ in range(10):
        requests.get(f"{server.api_url}/again-{uuid.uuid4().hex}", timeout=5)
    http_series = [{k for k in samples if k[0].startswith("brain_http_")} for samples in (after, scrape(metrics_url(server), AUTH))]
    assert http_series[1] == http_series[0]


def test_mail_accounts_by_state_come_from_mail_db(server: BrainServer) -> None:
    samples = scrape(metrics_url(server), AUTH)
    states = label_values(samples, "brain_mail_accounts", "state")
    assert states == {"syncing", "idle", "backoff", "needs_reauth", "error", "disconnected"}
    before = value(samples, "brain_mail_accounts", state=States.NEEDS_REAUTH)
    # An account that needs re-authorisation, written the way the mail actor writes it.
    secret = (server.data_dir / "secret.key").read_text().strip().encode()
    db = MailDb(server.data_dir / "mail.db", secret)
    try:
        account, _ = db.upsert_account(user_id=new_user(server)["user"]["id"], provider="gmail", address="m@example.com")
        db.update_account(account.id, state=States.NEEDS_REAUTH, last_error="invalid_grant")
    finally:
        db.close()
    assert value(scrape(metrics_url(server), AUTH), "brain_mail_accounts", state=States.NEEDS_REAUTH) == before + 1


def test_supervisor_restarts_are_counted(server: BrainServer) -> None:
    """Last in this module: it kills the embedded nats-server (the tree restarts it)."""
    before = value(scrape(metrics_url(server), AUTH), "brain_supervisor_restarts_total")
    os.kill(int((server.data_dir / "nats" / "nats-server.pid").read_text()), signal.SIGKILL)
    wait_until(
        lambda: value(scrape(metrics_url(server), AUTH), "brain_supervisor_restarts_total") > before,
        timeout=15, what="a restart counted",
    )


def test_separate_listener_without_token(make_server) -> None:  # type: ignore[no-untyped-def]
    """Metrics off the public port; here also the figures of an API that cannot reach its issuer."""
    port = free_port()
    dead = free_port()
    server = make_server(
        roles="api",
        config={"metrics": {"port": port}},
        env={"AUTH_SERVER_URL": f"http://127.0.0.1:{dead}", "NATS_URL": f"nats://127.0.0.1:{free_port()}"},
    ).start()
    url = f"http://127.0.0.1:{port}/metrics"
    samples = wait_until(
        lambda: (s := scrape(url)) and value(s, "brain_jwks_refresh_failures_total") >= 1 and s,
        timeout=10, what="a failed JWKS fetch counted",
    )
    assert value(samples, "brain_jwks_keys") == 0 and value(samples, "brain_jwks_refreshes_total") == 0
    assert value(samples, "brain_jwks_consecutive_failures") >= 1
    assert value(samples, "brain_healthy") == 0 and value(samples, "brain_nats_connected") == 0
    assert ("brain_jwks_age_seconds", frozenset()) not in samples  # no keys, no age
    # Not on the API port, and the listener itself is not instrumented as a role.
    assert requests.get(f"{server.api_url}/metrics", timeout=5).status_code == 404
    assert "metrics" not in label_values(scrape(url), "brain_http_requests_total", "role")
    assert "/metrics" not in requests.get(f"{server.api_url}/openapi.json", timeout=5).json()["paths"]


def test_listener_with_token_requires_it(make_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = make_server(roles="auth", config={"metrics": {"port": port, "token": TOKEN}}).start()
    url = f"http://127.0.0.1:{port}/metrics"
    assert requests.get(url, timeout=5).status_code == 401
    requests.get(f"{server.auth_url}/api/auth/ok", timeout=5)
    samples = scrape(url, AUTH)
    assert value(samples, "brain_http_requests_total", role="auth", route="/api/auth/ok", method="GET", status="200") == 1
    # An auth-only process has no API figures to report.
    assert not any(name.startswith(("brain_jwks", "brain_stores", "brain_mail")) for name, _ in samples)


def test_not_served_without_port_or_token(make_server) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(config={"metrics": {}}).start()  # test servers get a token by default
    for url in (server.api_url, server.auth_url):
        r = requests.get(f"{url}/metrics", timeout=5)
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"


def test_bad_metrics_settings_are_refused(tmp_path: Path) -> None:
    from brain.config import load_settings
    from brain.errors import ConfigError

    with pytest.raises(ConfigError, match="metrics.token"):
        load_settings(environ={"BRAIN_METRICS__TOKEN": "short"})
    with pytest.raises(ConfigError, match="metrics.port"):
        load_settings(environ={}, overrides={"metrics": {"port": 8080}})
    assert load_settings(environ={"BRAIN_METRICS__TOKEN": TOKEN}).metrics.exposed
    assert not load_settings(environ={"BRAIN_METRICS__TOKEN": TOKEN, "BRAIN_METRICS__ENABLED": "false"}).metrics.exposed
