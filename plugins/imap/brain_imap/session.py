"""One logged-in IMAP connection (IMAPClient over imaplib) and the mapping of its failures onto
the core's typed errors.

- network trouble, timeouts, a dropped connection, ``[UNAVAILABLE]``  -> ``Transient``
- the server refusing the username/password                          -> ``AuthFailed``
- a folder that no longer exists                                     -> ``CursorExpired``
- a server that cannot do what the account asks (no STARTTLS)        -> ``ConnectRejected``

IMAPClient's ``fetch`` keeps only the UIDs it was handed, so range fetches (``1:*`` with
``CHANGEDSINCE``) and the ``VANISHED`` responses of QRESYNC go through ``uid_fetch`` here, which
drives the underlying imaplib object and reuses IMAPClient's FETCH parser.
"""

from __future__ import annotations

import contextlib
import imaplib
import ipaddress
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import imapclient
from imapclient import exceptions as imap_errors
from imapclient.response_parser import parse_fetch_response

from brain.mail.provider import AuthFailed, ConnectRejected, CursorExpired, ProviderError, Transient
from brain_imap import uidset
from brain_imap.hosts import Network, PinnedIMAPClient, checked_address

__all__ = [
    "DEFAULT_PORTS",
    "TLS_MODES",
    "ImapAccount",
    "Selected",
    "Session",
    "is_loopback",
    "mapped_errors",
    "ssl_context_for",
    "vanished_uids",
]

TLS_MODES = ("implicit", "starttls", "plain")
DEFAULT_PORTS = {"implicit": 993, "starttls": 143, "plain": 143}

# Response codes (RFC 5530) that mean "try again later", not "wrong password".
_TEMPORARY_CODES = ("[UNAVAILABLE]", "[SERVERBUG]", "[INUSE]", "[LIMIT]")

T = TypeVar("T")


def is_loopback(host: str) -> bool:
    """True for a loopback address or the name localhost (never resolved through DNS)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ImapAccount:
    """Where and how to log in; kept (with the password) in the encrypted credentials."""

    host: str
    port: int
    tls: str
    username: str
    password: str

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> ImapAccount:
        """Rebuild from ``Credentials.extra``."""
        try:
            return cls(
                host=str(extra["host"]),
                port=int(extra["port"]),
                tls=str(extra["tls"]),
                username=str(extra["username"]),
                password=str(extra["password"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AuthFailed(f"stored IMAP credentials are incomplete ({exc}); connect again") from None


@dataclass(frozen=True)
class Selected:
    """What SELECT said about a folder."""

    folder: str
    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None  # None: no CONDSTORE for this folder (or not enabled)


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Turn imaplib/IMAPClient/socket failures inside the block into the core's typed errors."""
    try:
        yield
    except ProviderError:
        raise
    except imap_errors.LoginError as exc:
        text = _server_text(exc)
        if any(code in text.upper() for code in _TEMPORARY_CODES):
            raise Transient(f"{what}: the server cannot log in right now: {text}") from exc
        raise AuthFailed(f"{what}: login refused: {text}") from exc
    except ssl.SSLCertVerificationError as exc:
        raise ConnectRejected(f"{what}: the server's TLS certificate was not accepted: {exc.verify_message}") from exc
    except (imaplib.IMAP4.abort, imap_errors.ProtocolError, OSError, EOFError) as exc:
        # OSError covers refused/reset connections, timeouts and TLS failures.
        raise Transient(f"{what}: {type(exc).__name__}: {exc}") from exc
    except imap_errors.CapabilityError as exc:
        raise ConnectRejected(f"{what}: {exc}") from exc


class Session:
    """A logged-in connection; ``qresync``/``condstore`` say which extensions are enabled."""

    def __init__(
        self, account: ImapAccount, *, ssl_context: ssl.SSLContext, timeout: float, allowed: Sequence[Network] = ()
    ) -> None:
        """Connect (to the address the host policy passed), secure the connection as the account
        says, log in and enable extensions."""
        self.account = account
        self.client: imapclient.IMAPClient | None = None
        with mapped_errors(f"IMAP {account.host}:{account.port}"):
            if account.tls == "plain" and not is_loopback(account.host):
                raise ConnectRejected("tls 'plain' is allowed only for a loopback host")
            # Checked again on every connection: the name may resolve elsewhere by now.
            address = checked_address(account.host, account.port, allowed)
            client = PinnedIMAPClient(
                account.host,
                address=address,
                port=account.port,
                ssl=account.tls == "implicit",
                ssl_context=ssl_context,
                timeout=timeout,
            )
            self.client = client
            client.normalise_times = False  # aware datetimes; the core wants UTC
            try:
                if account.tls == "starttls":
                    if not client.has_capability("STARTTLS"):
                        raise ConnectRejected(f"{account.host} does not offer STARTTLS; use tls 'implicit'")
                    client.starttls(ssl_context)
                if client.has_capability("LOGINDISABLED"):
                    raise ConnectRejected(f"{account.host} refuses to log in without TLS")
                client.login(account.username, account.password)
                caps = {c.decode().upper() for c in client.capabilities()}
                self.capabilities = frozenset(caps)
                self.qresync = self.condstore = False
                if "ENABLE" in caps and "QRESYNC" in caps:
                    enabled = {c.decode().upper() for c in client.enable("QRESYNC")}
                    self.qresync = "QRESYNC" in enabled
                    self.condstore = self.qresync  # QRESYNC implies CONDSTORE
                if not self.condstore and "CONDSTORE" in caps:
                    if "ENABLE" in caps:
                        client.enable("CONDSTORE")
                    self.condstore = True
            except BaseException:
                self.close()
                raise

    @property
    def idle(self) -> bool:
        """Whether the server offers IDLE."""
        return "IDLE" in self.capabilities

    @property
    def preview(self) -> bool:
        """Whether the server can FETCH a PREVIEW (RFC 8970) to use as the snippet."""
        return "PREVIEW" in self.capabilities

    def run(self, what: str, fn: Callable[[imapclient.IMAPClient], T]) -> T:
        """Call ``fn(client)`` with failures mapped to typed errors."""
        assert self.client is not None, "session is closed"
        with mapped_errors(what):
            return fn(self.client)

    def select(self, folder: str) -> Selected:
        """SELECT (read-only: syncing never changes \\Seen); CursorExpired if the folder is gone."""

        def do(client: imapclient.IMAPClient) -> Selected:
            try:
                info = client.select_folder(folder, readonly=True)
            except imap_errors.IMAPClientError as exc:
                if isinstance(exc, imap_errors.IMAPClientAbortError):
                    raise
                raise CursorExpired(f"folder {folder!r} cannot be selected: {exc}") from exc
            modseq = info.get(b"HIGHESTMODSEQ") if self.condstore else None
            # [NOMODSEQ]: this folder keeps no mod-sequences even though the server has CONDSTORE.
            if any(b"NOMODSEQ" in line for line in client._imap.untagged_responses.get("OK", [])):
                modseq = None
            return Selected(
                folder=folder,
                uidvalidity=int(info[b"UIDVALIDITY"]),
                uidnext=int(info[b"UIDNEXT"]) if b"UIDNEXT" in info else None,
                exists=int(info.get(b"EXISTS", 0)),
                highestmodseq=int(modseq) if modseq is not None else None,
            )

        return self.run(f"SELECT {folder}", do)

    def search(self, criteria: Sequence[str]) -> list[int]:
        """UID SEARCH; the UIDs ascending."""
        return sorted(self.run("UID SEARCH", lambda c: c.search(list(criteria))))

    def uid_fetch(
        self, uid_set: str, items: Sequence[str], modifiers: Sequence[str] = ()
    ) -> tuple[dict[int, dict[bytes, Any]], list[str]]:
        """``UID FETCH uid_set (items) (modifiers)``: messages by UID, and any VANISHED sets."""

        def do(client: imapclient.IMAPClient) -> tuple[dict[int, dict[bytes, Any]], list[str]]:
            imap = client._imap  # noqa: SLF001 - see the module docstring
            imap.untagged_responses.pop("VANISHED", None)
            args = [uid_set, "(" + " ".join(items) + ")"]
            if modifiers:
                args.append("(" + " ".join(modifiers) + ")")
            typ, data = imap._simple_command("UID", "FETCH", *args)  # noqa: SLF001
            if typ != "OK":
                raise imap_errors.IMAPClientError(f"UID FETCH failed: {data!r}")
            _, fetched = imap._untagged_response(typ, data, "FETCH")  # noqa: SLF001
            raw = imap.untagged_responses.pop("VANISHED", [])
            vanished = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
            parsed = parse_fetch_response(fetched, False, True) if fetched and fetched != [None] else {}
            return {uid: dict(fields) for uid, fields in parsed.items()}, vanished

        return self.run("UID FETCH", do)

    def status(self, folder: str, items: Sequence[str]) -> dict[bytes, Any]:
        """STATUS of a folder that is not selected."""
        return self.run(f"STATUS {folder}", lambda c: c.folder_status(folder, list(items)))

    def list_folders(self) -> list[tuple[tuple[bytes, ...], str]]:
        """Every folder: (flags, name)."""
        return [(tuple(flags), name) for flags, _delim, name in self.run("LIST", lambda c: c.list_folders())]

    def close(self) -> None:
        """Log out (best effort) and drop the connection."""
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.socket().settimeout(2)
            client.logout()
        except Exception:
            with contextlib.suppress(Exception):
                client.shutdown()


def _server_text(exc: Exception) -> str:
    """The server's words from an imaplib error (which wraps them as a bytes repr)."""
    text = str(exc)
    match = re.fullmatch(r"b'(.*)'", text) or re.fullmatch(r'b"(.*)"', text)
    return match.group(1) if match else text


def vanished_uids(responses: Sequence[str]) -> list[int]:
    """The UIDs of ``VANISHED [(EARLIER)] set`` responses."""
    out: set[int] = set()
    for text in responses:
        out.update(uidset.decode(re.sub(r"^\(EARLIER\)\s*", "", text.strip(), flags=re.I)))
    return sorted(out)


def ssl_context_for(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or ``ca_file`` (a private CA) instead."""
    return ssl.create_default_context(cafile=ca_file or None)
