"""A real dovecot IMAP server for tests, run from a config file the test writes.

``Dovecot(tmpdir).start()`` writes ``dovecot.conf`` and a passwd-file, runs ``dovecot -F -c
dovecot.conf`` as its own process (it is not a daemon: ``stop()`` ends it and every child),
and waits until the IMAP port greets. It listens on 127.0.0.1 only: plain IMAP with STARTTLS
on ``port`` and implicit TLS on ``tls_port``, both with a certificate from ``brain.testing.fakes.tls``
(trust ``ca_path``). Users are passwd-file entries with ``{PLAIN}`` passwords; mail is Maildir.

The helpers change a mailbox the way another mail client would, over IMAP with the standard
library's ``imaplib`` (deliberately not the library the provider under test uses): append,
flag, expunge, list. ``reset_uidvalidity`` stops the server, drops the mailbox's UID list and
indexes and starts it again, so the server hands out a new UIDVALIDITY and new UIDs for the
same messages, exactly what a client sees after a server-side mailbox rebuild.

Written for dovecot 2.3's configuration syntax (Debian 12's ``dovecot-imapd``); ``start()``
refuses another major version with a message saying so. Running as root, dovecot will not
give mail access to uid 0: mail processes run as the ``dovecot`` system user, and because
pytest's temp dirs are 0700, the Maildirs live in a directory of their own under the system
temp dir (``mail_root``, beside dovecot's sockets), removed by ``stop()``. As any other user, every process runs as
that user.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from brain.testing.fakes.tls import tls_files
from brain.testing import free_port, wait_until

__all__ = ["Dovecot", "dovecot_version", "make_message"]

LOOPBACK = "127.0.0.1"
DEFAULT_USERS = {"alice@example.test": "alice-password", "bob@example.test": "bob-password"}

# Special-use folders every test user has (RFC 6154 flags on LIST).
SPECIAL_FOLDERS = {"Sent": r"\Sent", "Drafts": r"\Drafts", "Trash": r"\Trash", "Junk": r"\Junk", "Archive": r"\Archive"}


# Where to look for the binary: PATH, then the sbin dirs a non-root PATH often lacks.
SEARCH_PATH = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/usr/local/sbin"]


def dovecot_binary() -> str:
    """Path of the dovecot binary; an AssertionError (a failed test, never a skip) without it."""
    path = shutil.which("dovecot", path=os.pathsep.join(SEARCH_PATH))
    if path is None:
        raise AssertionError("dovecot is not installed: apt-get install dovecot-imapd (.ci/run does this)")
    return path


def dovecot_version() -> str:
    """The installed dovecot's version string, e.g. "2.3.19.1"."""
    out = subprocess.run([dovecot_binary(), "--version"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()[0]


def make_message(
    subject: str,
    *,
    body: str = "hello\r\n",
    sender: str = "sender@example.test",
    to: str = "alice@example.test",
    message_id: str | None = None,
    date: float | None = None,
) -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    message_id = message_id or email.utils.make_msgid(domain="example.test")
    headers = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(date, localtime=False)}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n")).encode()


class Dovecot:
    """One dovecot instance on loopback ports, with its own config, users and Maildirs."""

    def __init__(
        self,
        tmpdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        capabilities_without: Sequence[str] = (),
    ) -> None:
        """Prepare (not start) an instance; ``capabilities_without`` hides extensions (e.g. QRESYNC)."""
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.users: dict[str, str] = dict(users or DEFAULT_USERS)
        self.capabilities_without = tuple(c.upper() for c in capabilities_without)
        self.host = LOOPBACK
        self.port = free_port()
        self.tls_port = free_port()
        self.ca_path = tls_files().ca_path
        self.conf_path = self.dir / "dovecot.conf"
        self.log_path = self.dir / "dovecot.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mail_root: Path | None = None
        self.starts = 0
        self._as_root = os.geteuid() == 0
        if self._as_root:
            # dovecot refuses mail access as uid 0; the package's own system user will do.
            self._mail_user = pwd.getpwnam("dovecot")
            self._login_user = "dovenull"
        else:
            self._mail_user = pwd.getpwuid(os.getuid())
            self._login_user = self._mail_user.pw_name

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> Dovecot:
        """Write the config, start dovecot in the foreground and wait for the IMAP greeting."""
        assert self.proc is None or self.proc.poll() is not None, "dovecot is already running"
        binary = dovecot_binary()
        version = dovecot_version()
        if not version.startswith("2.3."):
            raise AssertionError(f"brain/testing/fakes/dovecot.py writes dovecot 2.3 config; installed is {version}")
        if self.mail_root is None:
            self.mail_root = Path(tempfile.mkdtemp(prefix="brain-dovecot-mail-"))
            self.mail_root.chmod(0o755)
        self._write_users()
        self.conf_path.write_text(self._config())
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen(
            [binary, "-F", "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "dovecot.stderr").open("ab"),
            start_new_session=True,  # our own process group, so stop() can reap every child
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"dovecot exited with {self.proc.returncode}:\n{self._diagnostics(offset)}")
            if self._greets(self.port) and self._greets(self.tls_port, tls=True):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"dovecot did not answer within {timeout}s:\n{self._diagnostics(offset)}")
            time.sleep(0.05)

    def stop(self, *, keep_mail: bool = False, hard: bool = False, timeout: float = 15.0) -> None:
        """Stop dovecot and all its children; remove the Maildirs unless ``keep_mail``.

        ``hard`` kills every process at once (a crash): no session outlives the call, where a
        clean stop lets the master take about a second.
        """
        proc, self.proc = self.proc, None
        if proc is not None and hard:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None:
            # Children that outlived the master (they should not) must not keep ports or files.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if not keep_mail and self.mail_root is not None:
            shutil.rmtree(self.mail_root, ignore_errors=True)
            self.mail_root = None

    def restart(self, *, hard: bool = False) -> Dovecot:
        """Stop (``hard``: crash) and start again on the same ports with the same mail."""
        self.stop(keep_mail=True, hard=hard)
        wait_until(lambda: not self._accepts(self.port), timeout=10, what="dovecot's port to close")
        return self.start()

    @property
    def running(self) -> bool:
        """True while the dovecot master process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        """Everything dovecot logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- clients -------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    @contextlib.contextmanager
    def imap(self, user: str, *, folder: str | None = "INBOX") -> Iterator[imaplib.IMAP4]:
        """A logged-in imaplib connection (plain, loopback), with ``folder`` selected."""
        conn = imaplib.IMAP4(self.host, self.port, timeout=15)
        try:
            _ok(conn.login(user, self.users[user]))
            if folder is not None:
                _ok(conn.select(_quote(folder)))
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def append(
        self,
        user: str,
        message: bytes | str,
        *,
        folder: str = "INBOX",
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> int:
        """Append a message (raw bytes, or a subject for ``make_message``), received at
        ``internal_date`` (aware; default now); return its UID."""
        raw = message if isinstance(message, bytes) else make_message(message, to=user)
        with self.imap(user, folder=None) as conn:
            return _append(conn, folder, raw, flags, internal_date)

    def append_many(self, user: str, subjects: Iterable[str], *, folder: str = "INBOX") -> list[int]:
        """Append one message per subject over a single connection; return their UIDs."""
        with self.imap(user, folder=None) as conn:
            return [_append(conn, folder, make_message(subject, to=user)) for subject in subjects]

    def deliver_many(self, user: str, subjects: Iterable[str], *, folder: str = "INBOX") -> int:
        """Drop messages into the Maildir's new/ as a local delivery agent would (fast, no IMAP).

        dovecot assigns their UIDs when a client next looks at the folder. Returns the count.
        """
        with self.imap(user, folder=folder):
            pass  # dovecot creates the Maildir (as its mail user) on first use
        new = self.maildir(user, folder) / "new"
        uid, gid = self._mail_user.pw_uid, self._mail_user.pw_gid
        count = 0
        stamp = f"{int(time.time())}.P{os.getpid()}"
        for count, subject in enumerate(subjects, 1):
            path = new / f"{stamp}Q{count}.brain-test"
            path.write_bytes(make_message(subject, to=user))
            if self._as_root:
                os.chown(path, uid, gid)
        return count

    def add_flags(self, user: str, uids: Iterable[int], flags: Iterable[str], *, folder: str = "INBOX") -> None:
        """Set flags on messages (``UID STORE +FLAGS``)."""
        self._store(user, uids, "+FLAGS.SILENT", flags, folder)

    def remove_flags(self, user: str, uids: Iterable[int], flags: Iterable[str], *, folder: str = "INBOX") -> None:
        """Clear flags on messages (``UID STORE -FLAGS``)."""
        self._store(user, uids, "-FLAGS.SILENT", flags, folder)

    def expunge(self, user: str, uids: Iterable[int], *, folder: str = "INBOX") -> None:
        r"""Delete messages for good: ``\Deleted`` then ``UID EXPUNGE`` of exactly those UIDs."""
        uid_set = _uid_set(uids)
        with self.imap(user, folder=folder) as conn:
            _ok(conn.uid("STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)"))
            _ok(conn.uid("EXPUNGE", uid_set))

    def messages(self, user: str, *, folder: str = "INBOX") -> dict[int, dict[str, object]]:
        """The mailbox as the server has it: UID -> {"flags": set, "message_id": str, "subject": str}."""
        out: dict[int, dict[str, object]] = {}
        with self.imap(user, folder=folder) as conn:
            typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID SUBJECT)])")
            _ok((typ, data))
            for item in data:
                if not isinstance(item, tuple):
                    continue
                meta, headers = item
                uid = int(re.search(rb"UID (\d+)", meta).group(1))  # type: ignore[union-attr]
                flags = re.search(rb"FLAGS \(([^)]*)\)", meta)
                parsed = email.message_from_bytes(headers)
                out[uid] = {
                    # \Recent is per-session state, not a stored flag.
                    "flags": set(flags.group(1).decode().split()) - {"\\Recent"} if flags else set(),
                    "message_id": (parsed["Message-ID"] or "").strip(),
                    "subject": parsed["Subject"] or "",
                }
        return out

    def uids(self, user: str, *, folder: str = "INBOX") -> list[int]:
        """Every UID in the folder, ascending."""
        with self.imap(user, folder=folder) as conn:
            typ, data = conn.uid("SEARCH", "ALL")
            _ok((typ, data))
        return sorted(int(x) for x in (data[0] or b"").split())

    def uidvalidity(self, user: str, *, folder: str = "INBOX") -> int:
        """The folder's current UIDVALIDITY."""
        with self.imap(user, folder=None) as conn:
            typ, data = conn.status(_quote(folder), "(UIDVALIDITY)")
            _ok((typ, data))
        return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))  # type: ignore[union-attr,arg-type]

    def set_password(self, user: str, password: str) -> None:
        """Change a user's password (dovecot re-reads the passwd-file when it changes)."""
        self.users[user] = password
        self._write_users()

    def create_folder(self, user: str, name: str) -> None:
        """Create a folder (no special use)."""
        with self.imap(user, folder=None) as conn:
            _ok(conn.create(_quote(name)))

    def reset_uidvalidity(self, user: str, *, folder: str = "INBOX") -> int:
        """Make the server forget the folder's UIDs (new UIDVALIDITY, new UIDs, same mail); return it."""
        before = self.uidvalidity(user, folder=folder)
        self.stop(keep_mail=True)
        maildir = self.maildir(user, folder)
        for path in maildir.iterdir():
            if path.name == "dovecot-uidlist" or path.name.startswith("dovecot.index"):
                path.unlink()
        self.start()
        after = self.uidvalidity(user, folder=folder)
        assert after != before, f"UIDVALIDITY did not change ({before})"
        return after

    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        """The Maildir directory holding ``folder`` of ``user``."""
        assert self.mail_root is not None, "dovecot has not been started"
        base = self._home(user) / "Maildir"
        return base if folder.upper() == "INBOX" else base / f".{folder}"

    # -- internals -----------------------------------------------------------------

    def _store(self, user: str, uids: Iterable[int], op: str, flags: Iterable[str], folder: str) -> None:
        with self.imap(user, folder=folder) as conn:
            _ok(conn.uid("STORE", _uid_set(uids), op, "(" + " ".join(flags) + ")"))

    def _home(self, user: str) -> Path:
        assert self.mail_root is not None
        return self.mail_root / re.sub(r"[^A-Za-z0-9._-]", "_", user)

    def _write_users(self) -> None:
        assert self.mail_root is not None
        uid, gid = self._mail_user.pw_uid, self._mail_user.pw_gid
        lines = []
        for user, password in self.users.items():
            if ":" in user or ":" in password or "\n" in user + password:
                raise ValueError("passwd-file entries cannot contain ':' or newlines")
            home = self._home(user)
            home.mkdir(exist_ok=True)
            if self._as_root:
                os.chown(home, uid, gid)
            lines.append(f"{user}:{{PLAIN}}{password}:{uid}:{gid}::{home}::")
        passwd = self.mail_root / "passwd"
        passwd.write_text("\n".join(lines) + "\n")
        passwd.chmod(0o644)  # throwaway test passwords; the auth process must read them

    def _config(self) -> str:
        tls = tls_files()
        assert self.mail_root is not None
        # base_dir holds dovecot's unix sockets, whose paths may not pass 107 bytes: a pytest temp
        # dir (deeper still under pytest-xdist) can leave too little room, the short mail_root cannot.
        run = self.mail_root / "run"
        state = self.dir / "state"
        for d in (run, state):
            d.mkdir(exist_ok=True)
        passwd = self.mail_root / "passwd"
        mailboxes = "\n".join(
            f'  mailbox {name} {{\n    special_use = {flag}\n    auto = subscribe\n  }}'
            for name, flag in SPECIAL_FOLDERS.items()
        )
        hidden = ""
        if self.capabilities_without:
            hidden = f"imap_capability = {' '.join(_capabilities(self.capabilities_without))}\n"
        # Without root there is no chroot and no user switching: everything runs as us.
        unprivileged = "" if self._as_root else (
            "service imap-login {\n  chroot =\n}\nservice anvil {\n  chroot =\n}\n"
        )
        return f"""\
# Written by brain/testing/fakes/dovecot.py for one test run; dovecot 2.3 syntax.
base_dir = {run}
state_dir = {state}
instance_name = brain-test-{self.port}
log_path = {self.log_path}
info_log_path = {self.log_path}
listen = {LOOPBACK}
protocols = imap
default_internal_user = {self._mail_user.pw_name}
default_internal_group = {_group_name(self._mail_user.pw_gid)}
default_login_user = {self._login_user}
first_valid_uid = {min(self._mail_user.pw_uid, 500)}
first_valid_gid = 0

ssl = yes
ssl_cert = <{tls.cert_path}
ssl_key = <{tls.key_path}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_max_userip_connections = 200

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}

mail_location = maildir:~/Maildir
mail_fsync = never
namespace inbox {{
  inbox = yes
  separator = /
{mailboxes}
}}
{hidden}
service imap-login {{
  inet_listener imap {{
    address = {LOOPBACK}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {LOOPBACK}
    port = {self.tls_port}
    ssl = yes
  }}
}}
# No auth penalty: one failed login from 127.0.0.1 would delay every later login by seconds.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{unprivileged}"""

    def _greets(self, port: int, *, tls: bool = False) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1) as raw:
                sock: socket.socket = raw
                if tls:
                    sock = self.ssl_context().wrap_socket(raw, server_hostname=self.host)
                return sock.recv(256).startswith(b"* OK")
        except (OSError, ssl.SSLError):
            return False

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1):
                return True
        except OSError:
            return False

    def _diagnostics(self, offset: int) -> str:
        stderr = self.dir / "dovecot.stderr"
        text = self.log_text()[offset:]
        if stderr.exists():
            text += stderr.read_text(errors="replace")
        return text


# Post-login capabilities of dovecot 2.3's imap, minus what a test hides (the server still
# implements it; a client that reads CAPABILITY must not use it).
_DOVECOT_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE"
)


def _capabilities(without: Sequence[str]) -> list[str]:
    return [c for c in _DOVECOT_CAPABILITIES.split() if c.upper() not in without]


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _append(
    conn: imaplib.IMAP4, folder: str, raw: bytes, flags: Iterable[str] = (), internal_date: datetime.datetime | None = None
) -> int:
    flag_list = "(" + " ".join(flags) + ")" if flags else None
    when = imaplib.Time2Internaldate(internal_date) if internal_date is not None else None
    typ, data = conn.append(_quote(folder), flag_list, when, raw)
    _ok((typ, data))
    match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")  # type: ignore[arg-type]
    assert match, f"dovecot gave no APPENDUID: {data!r}"
    return int(match.group(1))


def _uid_set(uids: Iterable[int]) -> str:
    values = sorted(set(uids))
    if not values:
        raise ValueError("no UIDs given")
    return ",".join(str(u) for u in values)


def _ok(result: tuple[str, list[object]]) -> None:
    typ, data = result
    if typ != "OK":
        raise AssertionError(f"IMAP command failed: {typ} {data!r}")
