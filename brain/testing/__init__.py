"""What a mail provider distribution needs to test itself, without this repository's tests/.

- `brain.testing.fakes`: local fakes of Gmail (`fakes.gmail.FakeGmail`), Microsoft identity and
  Graph (`fakes.microsoft.FakeMicrosoft`), a real dovecot run from a config of its own
  (`fakes.dovecot.Dovecot`), and their shared server and fault-injection plumbing;
- `brain.testing.conformance.ProviderConformance`: the suite every provider must pass,
  subclassed in a provider's tests with a `mailbox` fixture that drives its fake;
- `sync_context(provider, credentials)`: the context the core hands a provider, for calling
  it directly; `registered_providers(pm)`: what a plugin registers, checked as the core does;
- `free_port()`: a loopback port for a server started as a process of its own (`ports`);
- a pytest plugin (entry point `pytest11: brain`) with the `loopback_only` fixture.

Install brain with its `test` extra to use them (the fakes use `requests`, the Microsoft
clients' own library).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from brain.mail.access_tokens import TokenProvider
from brain.mail.engine import QuotaPacer
from brain.mail.provider import Credentials, MailProvider, SyncContext
from brain.mail.registry import ProviderRegistry
from brain.testing.ports import free_port

__all__ = ["free_port", "registered_providers", "sync_context", "wait_until"]


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll cond until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def sync_context(
    provider: MailProvider, credentials: Credentials, *, skew: float = 60.0, account_id: str = "", address: str = ""
) -> SyncContext:
    """A SyncContext as the core builds one: a refreshing token source, no quota pacing; `address`
    is the account's own address."""
    tokens = TokenProvider(provider, credentials, skew=skew, key=f"test:{id(provider)}")
    return SyncContext(tokens=tokens, budget=QuotaPacer(0), page_size=provider.page_size, account_id=account_id,
                       address=address)


def registered_providers(pm: Any) -> dict[str, type[MailProvider]]:
    """The provider classes the plugins of a plugin manager register, by name (checked as the core does)."""
    registry = ProviderRegistry()
    pm.hook.register_mail_providers(register=registry.register)
    return {name: cls for name in registry.names() if (cls := registry.get(name)) is not None}
