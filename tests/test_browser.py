"""A real browser on another origin: headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

The example app (examples/index.html) is served by a plain static server on a port of its own,
so it is a third origin besides the auth role's and the API's. In the browser it signs in,
opens the live stream with a ticket and posts a note; an event posted by a second client shows
on the page within a second. Then the same page against a brain whose API does not allow that
origin: sign-in still works (the auth role trusts it), and every API call fails in the browser
because the CORS headers are missing — CORS is what made the first run work. Last, with JWTs of a
few seconds, the page follows its stream across several `token-expired` endings while a second
client writes, and shows every event exactly once.
"""

from __future__ import annotations

import functools
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import REPO, BrainServer
from tests.test_auth_helpers import NO_LIMITS, PASSWORD, bearer, new_user, unique_email

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
JWT_TTL = 4


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """examples/ served by a static server on its own port: the app's origin."""
    handler = functools.partial(_QuietStatic, directory=str(REPO / "examples"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietStatic(SimpleHTTPRequestHandler):
    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver are needed (apt-get install chromium chromium-driver; .ci/run does)"
    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def open_app(browser: webdriver.Chrome, page_origin: str, server: BrainServer, email: str) -> None:
    """Load the app from its own origin and sign in through its form."""
    browser.get(f"{page_origin}/index.html?" + urlencode({"auth": server.auth_url, "api": server.api_url}))
    browser.find_element(By.ID, "email").send_keys(email)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "sign-in-button").click()


def status(browser: webdriver.Chrome) -> str:
    return browser.find_element(By.ID, "status").text


def test_the_example_app_on_another_origin_signs_in_streams_and_posts(
    browser: webdriver.Chrome, page_origin: str, make_server: Any
) -> None:
    server: BrainServer = make_server(config={"auth": {**NO_LIMITS, "trusted_origins": [page_origin]}}).start()
    email = unique_email("browser")
    user = new_user(server, email)
    assert page_origin not in (server.auth_url, server.api_url)
    open_app(browser, page_origin, server, email)
    WebDriverWait(browser, 15).until(lambda b: status(b).startswith("Live"), message="the stream did not open")

    # A second client posts; the page shows it within a second.
    sent_ms = time.time() * 1000
    r = requests.post(f"{server.api_url}/events", json={"type": "note.created", "data": {"text": "from client two"}},
                      headers=bearer(user["jwt"]), timeout=10)
    assert r.status_code == 201, r.text
    event_id = r.json()["id"]
    arrived_ms = WebDriverWait(browser, 5).until(lambda b: b.execute_script(f"return window.received[{event_id}]"))
    assert arrived_ms - sent_ms < 1000, f"the page saw the event {arrived_ms - sent_ms:.0f} ms after it was posted"
    assert "from client two" in browser.find_element(By.ID, f"event-{event_id}").text

    # The page posts a note itself (a preflighted POST with Authorization) and sees it come back.
    browser.find_element(By.ID, "note").send_keys("typed in the browser")
    browser.find_element(By.ID, "post-button").click()
    WebDriverWait(browser, 10).until(lambda b: "typed in the browser" in b.find_element(By.ID, "timeline").text)
    stored = requests.get(f"{server.api_url}/events", headers=bearer(user["jwt"]), timeout=10).json()["events"]
    assert [e["data"]["text"] for e in stored] == ["typed in the browser", "from client two"]
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")


def test_without_cors_for_its_origin_the_same_app_cannot_use_the_api(
    browser: webdriver.Chrome, page_origin: str, make_server: Any
) -> None:
    # The auth role trusts the page (so sign-in works); the API allows another origin only.
    server: BrainServer = make_server(config={
        "auth": {**NO_LIMITS, "trusted_origins": [page_origin]},
        "api": {"cors_origins": ["https://somewhere-else.example"]},
    }).start()
    email = unique_email("browser")
    new_user(server, email)
    open_app(browser, page_origin, server, email)
    WebDriverWait(browser, 15).until(lambda b: "error" in b.find_element(By.ID, "status").get_attribute("class"),
                                     message="the page did not report a failure")
    assert "Failed to fetch" in status(browser)
    blocked = [entry["message"] for entry in browser.get_log("browser") if "blocked by CORS policy" in entry["message"]]
    # The API refused the page (its first call after signing in); the auth role did not.
    assert any(f"{server.api_url}/events" in message for message in blocked), blocked
    assert not any(server.auth_url in message.split(" from origin")[0] for message in blocked), blocked
    assert browser.find_element(By.ID, "compose").get_attribute("hidden") is not None


def test_the_app_follows_the_stream_across_its_tokens_expiry_without_a_gap_or_a_duplicate(
    browser: webdriver.Chrome, page_origin: str, make_server: Any
) -> None:
    # JWTs live a few seconds: the page's stream ends with `token-expired` more than once while a
    # second client keeps writing, and the page (Chromium's own EventSource, its named-event
    # listener, a fresh JWT from the auth role across origins, a new ticket, `after=`) resumes.
    server: BrainServer = make_server(
        config={"auth": {**NO_LIMITS, "trusted_origins": [page_origin], "jwt_ttl_seconds": JWT_TTL}}
    ).start()
    email = unique_email("browser")
    user = new_user(server, email)
    open_app(browser, page_origin, server, email)
    WebDriverWait(browser, 15).until(lambda b: status(b).startswith("Live"), message="the stream did not open")

    posted = []
    until = time.monotonic() + 3 * JWT_TTL
    while time.monotonic() < until:
        jwt = requests.get(f"{server.auth_url}/api/auth/token", headers=bearer(user["token"]), timeout=10).json()["token"]
        for _ in range(10):
            r = requests.post(f"{server.api_url}/events", json={"type": "note.created", "data": {"text": "tick"}},
                              headers=bearer(jwt), timeout=10)
            assert r.status_code == 201, r.text
            posted.append(r.json()["id"])
            time.sleep(0.1)

    def shown(b: webdriver.Chrome) -> list[int]:
        items = b.find_elements(By.CSS_SELECTOR, "#timeline li")
        return sorted(int(item.get_attribute("id").removeprefix("event-")) for item in items)

    WebDriverWait(browser, 15).until(lambda b: shown(b)[-1:] == posted[-1:], message="the last event never showed")
    assert shown(browser) == posted, "the page missed or repeated an event across a reconnect"
    tickets = server.health()["streams"]["tickets"]
    assert tickets["redeemed"] >= 3, f"the stream was not reopened after each expiry: {tickets}"
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")
