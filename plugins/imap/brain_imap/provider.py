"""The IMAP provider: any IMAP4rev1 server, with direct credentials (no OAuth).

Connect: ``POST /mail/connect {"provider": "imap", "host", "port", "tls", "username",
"password", ["address"], ["folders"]}``. The core stores the credentials encrypted, like OAuth
tokens. IMAP has no tokens, so ``refresh`` *is* a login: the core's token step at connect time
proves the password (a refusal is a 400), and a refusal later makes the account
``needs_reauth``.

Folders: every selectable folder but the virtual ones that repeat others (``\\All``,
``\\Flagged``) and, unless the account asks for them, ``\\Junk`` and ``\\Trash`` (found by
their SPECIAL-USE flags); or the account's choice (names, or special-use flags such as
``\\Sent``). A folder created later is synced from the next incremental run on.

Sync, per folder:

- initial: record UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ first, then fetch the UIDs below
  that UIDNEXT a page at a time (the content as `brain_imap.messages` says: whole messages, or
  header, structure and text parts, always with BODY.PEEK); the checkpoint is the set of UIDs
  still to fetch, so a restart resumes by UID.
- incremental, the best the folder offers:
  ``qresync``   ``UID FETCH 1:* (FLAGS) (CHANGEDSINCE m VANISHED)``: changed, new and expunged;
  ``condstore`` CHANGEDSINCE for changes; expunges by comparing the known UID set with the
                server's, only when the message count says something was expunged;
  ``plain``     FLAGS of every message hashed per block of UIDs; blocks whose hash moved are
                fetched again, and the UID sets compared for expunges.
- a changed UIDVALIDITY (or a synced folder that vanished) is ``CursorExpired``: the core runs
  a full resync and reconciles.

After each finished incremental run an IDLE watcher on INBOX (its own connection and thread)
asks the core for a sync whenever the server reports a change.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from brain.mail.provider import (
    AttachmentContent,
    ConnectRejected,
    Credentials,
    CursorExpired,
    MailProvider,
    MessageGone,
    MessageRecord,
    Revocation,
    SyncContext,
    SyncPage,
    Transient,
    iso_utc,
    mime_part,
)
from brain_imap import uidset
from brain_imap.hosts import allowed_networks, checked_address
from brain_imap.idle import IdleWatcher
from brain_imap.messages import (
    content_items,
    decoded_sizes,
    fetch_items,
    leaf_message,
    leaves,
    message_id,
    record_from_fetch,
    skeleton,
    text_parts,
)
from brain_imap.session import (
    DEFAULT_PORTS,
    TLS_MODES,
    ImapAccount,
    Selected,
    Session,
    is_loopback,
    ssl_context_for,
    vanished_uids,
)

__all__ = ["ImapProvider", "SETTINGS_KEYS"]

log = logging.getLogger("brain.mail.imap")

DEFAULTS: dict[str, Any] = {
    # Folders an account syncs when it names none; empty: every folder (see the module doc).
    "folders": (),
    # A message up to this size is downloaded whole; a larger one as header, structure and text.
    "max_message_bytes": 2 * 1024 * 1024,
    "ca_file": "",
    "timeout": 30.0,
    "idle": True,
    "idle_refresh_seconds": 1500.0,
    # Non-public networks (CIDRs) a user's account may still point at (see brain_imap.hosts).
    "allowed_networks": (),
}
SETTINGS_KEYS = frozenset({*DEFAULTS, "page_size"})
CONNECT_FIELDS = ("host", "port", "tls", "username", "password", "address", "folders")
# Plain-mode change detection hashes FLAGS per block of this many UIDs.
_BLOCK = 1000
# Whole messages are fetched in groups of at most this many bytes per FETCH.
_FETCH_BYTES = 16 * 1024 * 1024
# Virtual folders whose messages live in other folders too.
_VIRTUAL = (b"\\ALL", b"\\FLAGGED")
_NOT_SELECTABLE = (b"\\NOSELECT", b"\\NONEXISTENT")
_SPAM_TRASH = (b"\\JUNK", b"\\TRASH")
_SPECIAL_USE = frozenset({b"\\ALL", b"\\ARCHIVE", b"\\DRAFTS", b"\\FLAGGED", b"\\JUNK", b"\\SENT", b"\\TRASH"})
CURSOR_VERSION = 1
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,253}")


def folder_list(value: Any, *, field: str) -> tuple[str, ...]:
    """A folder list from JSON (a list) or a setting (a list, or a comma-separated string)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConnectRejected(f"{field} must be a non-empty list of folder names or special-use flags")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > 512:
            raise ConnectRejected(f"{field} entries must be non-empty strings, e.g. \"INBOX\" or \"\\\\Sent\"")
        out.append(item.strip())
    return tuple(dict.fromkeys(out))


class ImapProvider(MailProvider):
    """IMAP with username and password; settings from ``[plugins.imap]``."""

    name = "imap"
    title = "IMAP"
    oauth = False
    direct_fields = CONNECT_FIELDS

    def __init__(self, settings: Mapping[str, Any], *, page_size: int = 100) -> None:
        super().__init__(settings, page_size=page_size)
        conf = {**DEFAULTS, **settings}
        self.folders = folder_list(conf["folders"], field="plugins.imap.folders") if conf["folders"] else ()
        self.max_message_bytes = int(conf["max_message_bytes"])
        self.ca_file = str(conf["ca_file"] or "")
        self.timeout = float(conf["timeout"])
        self.idle_enabled = str(conf["idle"]).lower() not in ("false", "0", "no", "off")
        self.idle_refresh_seconds = float(conf["idle_refresh_seconds"])
        self.allowed_networks = allowed_networks(conf["allowed_networks"])
        self.page_size = max(1, min(1000, self.page_size))
        self._session: Session | None = None
        self._watcher: IdleWatcher | None = None
        self._lock = threading.Lock()  # close() may come from another thread than sync
        self._special_use: dict[str, str] = {}  # folder -> its special-use flag, from the last LIST

    # Connecting ------------------------------------------------------------------------

    def direct_credentials(self, fields: Mapping[str, Any]) -> Credentials:
        """Validate the connect request's fields; every problem names its field."""
        unknown = sorted(set(fields) - set(CONNECT_FIELDS))
        if unknown:
            known = ", ".join(CONNECT_FIELDS)
            raise ConnectRejected(f"unknown field(s) for imap: {', '.join(unknown)} (known: {known})")
        missing = [f for f in ("host", "username", "password") if fields.get(f) in (None, "")]
        if missing:
            raise ConnectRejected(f"missing field(s) for imap: {', '.join(missing)}")
        host = _host(fields["host"])
        tls = fields.get("tls", "implicit")
        if tls not in TLS_MODES:
            raise ConnectRejected(f"tls must be one of: {', '.join(TLS_MODES)}")
        if tls == "plain" and not is_loopback(host):
            raise ConnectRejected("tls 'plain' sends the password in clear text: allowed only for a loopback host")
        port = fields.get("port", DEFAULT_PORTS[tls])
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConnectRejected("port must be an integer from 1 to 65535")
        try:
            checked_address(host, port, self.allowed_networks)  # before anything is stored
        except OSError as exc:
            raise ConnectRejected(f"host {host} cannot be resolved: {exc}") from None
        for name in ("username", "password"):
            value = fields[name]
            if not isinstance(value, str) or len(value) > 1024 or any(c in value for c in "\r\n\0"):
                raise ConnectRejected(f"{name} must be a string without line breaks")
        address = fields.get("address") or fields["username"]
        if not isinstance(address, str) or len(address) > 320:
            raise ConnectRejected("address must be a string (the mailbox's e-mail address)")
        extra: dict[str, Any] = {
            "host": host, "port": port, "tls": tls, "username": fields["username"],
            "password": fields["password"], "address": address.strip(),
        }
        if "folders" in fields:
            extra["folders"] = list(folder_list(fields["folders"], field="folders"))
        return Credentials(extra=extra)

    def refresh(self, credentials: Credentials) -> Credentials:
        """Log in once: IMAP has no tokens, so this is how a password is proven (or refused)."""
        session = self._open(ImapAccount.from_extra(credentials.extra))
        session.close()
        now = time.time()
        # A marker, not a secret: the next login check is due in a day.
        return Credentials(access_token="imap-login-verified", expires_at=now + 86_400, obtained_at=now)

    def account_address(self, ctx: SyncContext) -> str:
        """The address given at connect (or the username); named folders must exist."""
        extra = ctx.tokens.credentials().extra
        self._call(ctx, lambda s: self._resolve_folders(s, ctx, strict=True))
        return str(extra.get("address") or extra["username"])

    # Syncing ------------------------------------------------------------------------------

    def initial_sync(self, ctx: SyncContext, checkpoint: dict[str, Any] | None) -> SyncPage:
        """One page of the full sync; the checkpoint holds the UIDs still to fetch."""
        return self._call(ctx, lambda s: self._initial_page(s, ctx, checkpoint))

    def incremental_sync(self, ctx: SyncContext, cursor: dict[str, Any]) -> SyncPage:
        """One page of changes since the cursor (or the position of a run in progress)."""
        page = self._call(ctx, lambda s: self._incremental_page(s, ctx, cursor))
        if page.next is None:
            self._ensure_watcher(ctx)
        return page

    def revoke(self, credentials: Credentials) -> Revocation:
        """IMAP has no grant: brain deletes the password, which is all there is to withdraw."""
        return Revocation(None, "IMAP has no grant to revoke: brain deleted the stored password; change it (or "
                                "delete the app password) at the mail provider to be sure it is never used again")

    def fetch_attachment(self, ctx: SyncContext, message_id: str, attachment_id: str) -> AttachmentContent:
        """One part (IMAP section) of a message, fetched with BODY.PEEK: nothing is marked read."""
        folder, _, rest = message_id.rpartition(":")
        folder, _, validity = folder.rpartition(":")
        try:
            uidvalidity, uid = int(validity), int(rest)
        except ValueError:
            raise MessageGone(f"not an IMAP message id: {message_id!r}") from None
        return self._call(ctx, lambda s: self._attachment(s, folder, uidvalidity, uid, attachment_id))

    def _attachment(self, session: Session, folder: str, uidvalidity: int, uid: int, section: str) -> AttachmentContent:
        try:
            selected = session.select(folder)
        except CursorExpired:
            raise MessageGone(f"folder {folder!r} is gone") from None
        if selected.uidvalidity != uidvalidity:
            raise MessageGone(f"folder {folder!r} was renumbered (UIDVALIDITY changed)")
        first, _ = session.uid_fetch(str(uid), ["UID", "BODYSTRUCTURE"])
        if uid not in first:
            raise MessageGone(f"message {uid} of {folder!r} is gone")
        leaf = next((p for p in leaves(first[uid][b"BODYSTRUCTURE"]) if p.section == section), None)
        if leaf is None:
            raise MessageGone(f"message {uid} of {folder!r} has no part {section}")
        fetched, _ = session.uid_fetch(str(uid), ["UID", f"BODY.PEEK[{section}]"])
        content = fetched.get(uid, {}).get(f"BODY[{section}]".encode())
        part = mime_part(leaf_message(leaf, content if isinstance(content, bytes) else b""), "1")
        assert part is not None  # a one-part message always has part 1
        return AttachmentContent(part.mime_type, part.filename, len(part.content), iter((part.content,)))

    def close(self) -> None:
        """Stop IDLE and log out."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
            session, self._session = self._session, None
        if watcher is not None:
            watcher.stop()
        if session is not None:
            session.close()

    # Sessions -----------------------------------------------------------------------------

    def _open(self, account: ImapAccount) -> Session:
        return Session(
            account, ssl_context=ssl_context_for(self.ca_file), timeout=self.timeout, allowed=self.allowed_networks
        )

    def _call(self, ctx: SyncContext, fn: Callable[[Session], Any]) -> Any:
        """Run ``fn`` on the kept session; a stale one (server restart) gets one fresh try."""
        account = ImapAccount.from_extra(ctx.tokens.credentials().extra)
        with self._lock:
            session = self._session
        reused = session is not None and session.account == account
        if not reused:
            self._drop_session()
            session = self._open(account)
            with self._lock:
                self._session = session
        assert session is not None
        try:
            return fn(session)
        except Transient:
            self._drop_session()
            if not reused:
                raise
        session = self._open(account)
        with self._lock:
            self._session = session
        try:
            return fn(session)
        except Transient:
            self._drop_session()
            raise

    def _drop_session(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def _wanted_folders(self, ctx: SyncContext) -> tuple[str, ...]:
        """The account's choice, else the connect request's ``folders``, else the plugin's; (): all."""
        chosen = ctx.options.folders
        if chosen:
            return tuple(chosen)
        return tuple(ctx.tokens.credentials().extra.get("folders") or self.folders)

    def _resolve_folders(self, session: Session, ctx: SyncContext, *, strict: bool = False) -> list[str]:
        """The folders to sync, by name; ``\\Flag`` entries by special use (RFC 6154)."""
        listing = session.list_folders()
        self._special_use = {
            name: flag.decode() for flags, name in listing for flag in flags if flag.upper() in _SPECIAL_USE
        }
        wanted = self._wanted_folders(ctx)
        if not wanted:
            left_out = _VIRTUAL + _NOT_SELECTABLE + (_SPAM_TRASH if ctx.options.exclude_spam_trash else ())
            every = [name for flags, name in listing if not {f.upper() for f in flags} & set(left_out)]
            return sorted(every, key=lambda name: (name.upper() != "INBOX", name))
        names = {name for _flags, name in listing}
        out: list[str] = []
        missing: list[str] = []
        for entry in wanted:
            if entry.startswith("\\"):
                flag = entry.upper().encode()
                match = [name for flags, name in listing if flag in {f.upper() for f in flags}]
                if match:
                    out.append(match[0])
            elif entry.upper() == "INBOX":
                out.append("INBOX")
            elif entry in names:
                out.append(entry)
            else:
                missing.append(entry)
        if missing:
            if strict:
                raise ConnectRejected(f"folders not found on the server: {', '.join(missing)}")
            log.warning("IMAP folders not found, skipped: %s", ", ".join(missing))
        return list(dict.fromkeys(out))

    # Initial sync -------------------------------------------------------------------------

    def _initial_page(self, session: Session, ctx: SyncContext, checkpoint: dict[str, Any] | None) -> SyncPage:
        if checkpoint is None:
            folders = self._resolve_folders(session, ctx)
            total = 0
            for folder in folders:
                total += int(session.status(folder, ["MESSAGES"]).get(b"MESSAGES", 0))
            checkpoint = {"folders": folders, "i": 0, "todo": None, "cur": None, "states": {}, "total": total,
                          "uses": self._uses(folders)}
        cp = dict(checkpoint)
        folders: list[str] = cp["folders"]
        states: dict[str, Any] = dict(cp["states"])
        while cp["i"] < len(folders):
            folder = folders[cp["i"]]
            selected = session.select(folder)
            state = cp["cur"]
            if state is None:
                state, uids = self._start_state(session, selected, ctx)
                cp["todo"] = uidset.encode(uids)
            elif selected.uidvalidity != state["uidvalidity"]:
                raise CursorExpired(f"UIDVALIDITY of {folder!r} changed during the initial sync")
            batch, rest = uidset.take(cp["todo"], self.page_size)
            messages = self._fetch_messages(session, selected, batch, ctx, cp["uses"].get(folder))
            if rest:
                cp.update(todo=rest, cur=state, states=states)
                return SyncPage(messages=messages, next=cp, estimated_total=cp["total"])
            states[folder] = state
            cp.update(i=cp["i"] + 1, todo=None, cur=None, states=states)
            if messages and cp["i"] < len(folders):
                return SyncPage(messages=messages, next=cp, estimated_total=cp["total"])
            if messages:
                return SyncPage(messages=messages, cursor=_cursor(folders, states, cp["uses"]), estimated_total=cp["total"])
        return SyncPage(cursor=_cursor(folders, states, cp["uses"]), estimated_total=cp["total"])

    def _uses(self, folders: Sequence[str]) -> dict[str, str]:
        """The special-use flags of these folders (what says a message was sent, or a draft)."""
        return {f: self._special_use[f] for f in folders if f in self._special_use}

    def _start_state(
        self, session: Session, selected: Selected, ctx: SyncContext
    ) -> tuple[dict[str, Any], list[int]]:
        """Where incremental sync of a folder starts, recorded before anything is listed; and
        the UIDs to fetch (those inside the account's sync window)."""
        mode = _mode(session, selected)
        state: dict[str, Any] = {
            "uidvalidity": selected.uidvalidity,
            "modseq": selected.highestmodseq,
            "mode": mode,
        }
        if mode == "plain":
            flags = self._all_flags(session, selected)
            uids = sorted(flags)
            state["digest"] = _digests(flags)
        else:
            uids = session.search(["ALL"]) if selected.exists else []
        uidnext = selected.uidnext or (max(uids) + 1 if uids else 1)
        uids = [u for u in uids if u < uidnext]
        state["uidnext"] = uidnext
        if mode != "qresync":
            state["known"] = uidset.encode(uids)
        since = ctx.options.since
        if since is not None and uids:
            day = datetime.datetime.fromtimestamp(since, datetime.timezone.utc).date()
            recent = set(session.search(["SINCE", day]))
            uids = [u for u in uids if u in recent]
        return state, uids

    # Incremental sync ---------------------------------------------------------------------

    def _incremental_page(self, session: Session, ctx: SyncContext, position: dict[str, Any]) -> SyncPage:
        if "run" not in position:
            if position.get("v") != CURSOR_VERSION:
                raise CursorExpired("cursor from another version of the IMAP provider")
            folders = self._resolve_folders(session, ctx)
            gone = [f for f in position["folders"] if f not in folders]
            if gone:
                # Its messages must go, and only a resync that reconciles can tell which.
                raise CursorExpired(f"synced folder(s) gone or no longer chosen: {', '.join(gone)}")
            base = {**position, "folders": folders, "uses": {**position.get("uses", {}), **self._uses(folders)}}
            position = {"run": 1, "base": base, "i": 0, "pending": None, "deleted": [], "cur": None, "states": {}}
        run = dict(position)
        base = run["base"]
        folders: list[str] = base["folders"]
        uses: dict[str, str] = base.get("uses", {})
        states: dict[str, Any] = dict(run["states"])
        while run["i"] < len(folders):
            folder = folders[run["i"]]
            old = base["states"].get(folder)
            selected = session.select(folder)
            if old is not None and selected.uidvalidity != old["uidvalidity"]:
                change = f"{old['uidvalidity']} -> {selected.uidvalidity}"
                raise CursorExpired(f"UIDVALIDITY of {folder!r} changed ({change})")
            if run["cur"] is not None and selected.uidvalidity != run["cur"]["uidvalidity"]:
                raise CursorExpired(f"UIDVALIDITY of {folder!r} changed during the run")
            deleted: list[str] = []
            if run["pending"] is None:
                if old is None:  # a folder new since the last run: everything in it is new
                    new, changed = self._start_state(session, selected, ctx)
                    gone_uids: list[int] = []
                else:
                    new, changed, gone_uids = self._changes(session, selected, old)
                run["cur"] = new
                run["pending"] = uidset.encode(changed)
                deleted = [message_id(folder, selected.uidvalidity, uid) for uid in gone_uids]
            batch, rest = uidset.take(run["pending"], self.page_size)
            messages = self._fetch_messages(session, selected, batch, ctx, uses.get(folder))
            if rest:
                run.update(pending=rest, states=states)
                return SyncPage(messages=messages, deleted=deleted, next=run)
            states[folder] = run["cur"]
            run.update(i=run["i"] + 1, pending=None, cur=None, states=states)
            if (messages or deleted) and run["i"] < len(folders):
                return SyncPage(messages=messages, deleted=deleted, next=run)
            if messages or deleted:
                return SyncPage(messages=messages, deleted=deleted, cursor=_cursor(folders, states, uses))
        return SyncPage(cursor=_cursor(folders, states, uses))

    def _changes(
        self, session: Session, selected: Selected, old: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[int], list[int]]:
        """(new folder state, UIDs to fetch, UIDs expunged) since ``old``."""
        mode = _mode(session, selected)
        if mode != old["mode"]:
            raise CursorExpired(f"{selected.folder!r}: the server's sync support changed ({old['mode']} -> {mode})")
        new: dict[str, Any] = {
            "uidvalidity": selected.uidvalidity,
            "modseq": selected.highestmodseq,
            "mode": mode,
            "uidnext": selected.uidnext or old["uidnext"],
        }
        if mode == "qresync":
            if selected.highestmodseq == old["modseq"]:
                return new, [], []
            fetched, vanished = session.uid_fetch(
                "1:*", ["UID", "FLAGS"], [f"CHANGEDSINCE {old['modseq']}", "VANISHED"]
            )
            return new, sorted(fetched), vanished_uids(vanished)
        known = uidset.decode(old["known"])
        if mode == "condstore":
            changed: list[int] = []
            if selected.highestmodseq != old["modseq"] and selected.exists:
                fetched, _ = session.uid_fetch("1:*", ["UID"], [f"CHANGEDSINCE {old['modseq']}"])
                changed = sorted(fetched)
            added = [u for u in changed if u >= old["uidnext"]]
            gone: list[int] = []
            # |now| = |known| - |expunged| + |added|: search only when something was expunged.
            if len(known) + len(added) != selected.exists:
                present = set(session.search(["ALL"])) if selected.exists else set()
                gone = [u for u in known if u not in present]
                added = sorted(present - set(known))
                changed = sorted(set(changed) | set(added))
            new["known"] = uidset.encode((set(known) - set(gone)) | set(added))
            if selected.uidnext is None and added:
                new["uidnext"] = max(added) + 1
            return new, changed, gone
        flags = self._all_flags(session, selected)
        digests = _digests(flags)
        moved = {b for b in digests.keys() | old["digest"].keys() if digests.get(b) != old["digest"].get(b)}
        changed = sorted(u for u in flags if str(u // _BLOCK) in moved)
        gone = sorted(set(known) - set(flags))
        new.update(known=uidset.encode(flags), digest=digests)
        if selected.uidnext is None and flags:
            new["uidnext"] = max(flags) + 1
        return new, changed, gone

    # Fetching -----------------------------------------------------------------------------

    def _fetch_messages(
        self, session: Session, selected: Selected, uids: list[int], ctx: SyncContext, special_use: str | None
    ) -> list[MessageRecord]:
        """The messages of these UIDs as the model (a message expunged meanwhile is simply not there)."""
        if not uids:
            return []
        first, _ = session.uid_fetch(uidset.encode(uids), fetch_items(preview=session.preview))
        wanted = sorted(uid for uid in first if uid in set(uids))
        options = ctx.options
        whole = [u for u in wanted if options.bodies and int(first[u].get(b"RFC822.SIZE") or 0) <= self.max_message_bytes]
        raws: dict[int, bytes] = {}
        group: list[int] = []
        group_bytes = 0
        for uid in [*whole, None]:
            size = int(first[uid].get(b"RFC822.SIZE") or 0) if uid is not None else 0
            if group and (uid is None or group_bytes + size > _FETCH_BYTES):
                fetched, _ = session.uid_fetch(uidset.encode(group), ["UID", "BODY.PEEK[]"])
                raws.update({u: d[b"BODY[]"] for u, d in fetched.items() if isinstance(d.get(b"BODY[]"), bytes)})
                group, group_bytes = [], 0
            if uid is not None:
                group.append(uid)
                group_bytes += size
        sizes: dict[int, dict[str, int]] = {}
        self._fetch_skeletons(session, [u for u in wanted if u not in raws], first, options, raws, sizes)
        got = [uid for uid in wanted if uid in raws]
        convert = partial(
            record_from_fetch, folder=selected.folder, uidvalidity=selected.uidvalidity, special_use=special_use,
            own_addresses=ctx.own_addresses, options=options,
        )
        facts = [_facts(first[u]) for u in got]
        return ctx.convert(convert, got, facts, [raws[u] for u in got], [sizes.get(u, {}) for u in got])

    def _fetch_skeletons(
        self,
        session: Session,
        uids: list[int],
        first: Mapping[int, Mapping[bytes, Any]],
        options: Any,
        raws: dict[int, bytes],
        sizes: dict[int, dict[str, int]],
    ) -> None:
        """Header, text parts and attachment sizes of these messages, built into skeletons.

        Messages of the same shape (the same parts) share one FETCH.
        """
        text_limit = options.convert.max_text_bytes * 6  # the cap of the text, encoded, with room for HTML
        binary = "BINARY" in session.capabilities
        shapes: dict[tuple[str, ...], list[int]] = {}
        parts_of: dict[int, Any] = {}
        for uid in uids:
            parts = leaves(first[uid].get(b"BODYSTRUCTURE") or (b"text", b"plain", None, None, None, b"7bit", 0))
            parts_of[uid] = parts
            items = tuple(content_items(parts, text_limit=text_limit, bodies=options.bodies, binary=binary))
            shapes.setdefault(items, []).append(uid)
        for items, group in shapes.items():
            fetched, _ = session.uid_fetch(uidset.encode(group), ["UID", *items])
            for uid, data in fetched.items():
                if uid not in parts_of:
                    continue
                structure = first[uid].get(b"BODYSTRUCTURE") or (b"text", b"plain", None, None, None, b"7bit", 0)
                raws[uid] = skeleton(structure, data.get(b"BODY[HEADER]") or b"", text_parts(data))
                sizes[uid] = decoded_sizes(parts_of[uid], data)

    def _all_flags(self, session: Session, selected: Selected) -> dict[int, tuple[str, ...]]:
        if not selected.exists:
            return {}
        fetched, _ = session.uid_fetch("1:*", ["UID", "FLAGS"])
        out: dict[int, tuple[str, ...]] = {}
        for uid, data in fetched.items():
            flags = {f.decode(errors="replace") if isinstance(f, bytes) else str(f) for f in data.get(b"FLAGS", ())}
            # \Recent differs from one session to the next; it is not the message's state.
            out[uid] = tuple(sorted(f for f in flags if f.upper() != "\\RECENT"))
        return out

    # IDLE ---------------------------------------------------------------------------------

    def _ensure_watcher(self, ctx: SyncContext) -> None:
        """Start IDLE on INBOX once a run has finished, if the core can be woken and the server can IDLE."""
        wake = ctx.wake
        if wake is None or not self.idle_enabled:
            return
        with self._lock:
            if self._watcher is not None and self._watcher.alive:
                return
            session = self._session
        if session is None or not session.idle:
            return
        folders = self._wanted_folders(ctx)
        if folders and not any(f.upper() == "INBOX" for f in folders):
            return
        account = session.account
        watcher = IdleWatcher(
            lambda: self._open(account),
            wake,
            folder="INBOX",
            refresh_seconds=self.idle_refresh_seconds,
            name=f"imap-idle-{ctx.account_id or account.username}",
        )
        with self._lock:
            self._watcher = watcher
        watcher.start()


def _facts(data: Mapping[bytes, Any]) -> dict[bytes, Any]:
    """What the model needs of the first FETCH, in plain types that pickle (IMAPClient's
    INTERNALDATE carries a tzinfo that does not): flags, size, preview, the date as ISO text."""
    out = {key: data[key] for key in (b"FLAGS", b"RFC822.SIZE", b"PREVIEW") if key in data}
    internal = data.get(b"INTERNALDATE")
    if isinstance(internal, datetime.datetime):
        out[b"INTERNALDATE"] = iso_utc(internal)
    return out


def _host(value: Any) -> str:
    """A DNS name or an IP address (IPv6 with or without brackets); no scheme, user or port."""
    if isinstance(value, str):
        text = value.strip()
        if _NAME_RE.fullmatch(text):
            return text
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
    raise ConnectRejected("host must be a host name or IP address (no scheme, no port)")


def _mode(session: Session, selected: Selected) -> str:
    if selected.highestmodseq is not None and session.qresync:
        return "qresync"
    if selected.highestmodseq is not None and session.condstore:
        return "condstore"
    return "plain"


def _digests(flags: Mapping[int, Sequence[str]]) -> dict[str, str]:
    """A short hash of (UID, FLAGS) per block of UIDs: what plain-mode change detection compares."""
    blocks: dict[int, list[str]] = {}
    for uid in sorted(flags):
        blocks.setdefault(uid // _BLOCK, []).append(f"{uid}:{' '.join(flags[uid])}")
    return {str(b): hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16] for b, lines in blocks.items()}


def _cursor(folders: list[str], states: Mapping[str, Any], uses: Mapping[str, str]) -> dict[str, Any]:
    return {"v": CURSOR_VERSION, "folders": folders, "states": dict(states), "uses": dict(uses)}
