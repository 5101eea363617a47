"""The built-in `send_auth_email`: verification and password-reset mail through SMTP.

Registered through the auth role's manifest like any plugin (`brain/auth/__init__.py`), last in line: a
plugin that implements `send_auth_email` and returns True is asked first and wins. It uses the
`[smtp]` settings: plain, STARTTLS or implicit TLS, optional login. smtplib blocks, so the hook
is always called from a worker thread (`brain.auth.emails`), never on the event loop.

Without `smtp.host`, dev mode logs the message (with its link) at WARNING, so someone running
`make run` can still verify an account; production refuses with `EmailNotConfigured`.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from datetime import UTC, datetime
from typing import Any

from brain.config import Settings
from brain.errors import ServiceUnavailable
from brain.plugins.hookspecs import hookimpl

log = logging.getLogger("brain.auth.smtp")


class EmailNotConfigured(ServiceUnavailable):
    """No way to deliver auth email (production without [smtp] host or a mail plugin)."""

    code = "EMAIL_NOT_CONFIGURED"

    def __init__(self) -> None:
        super().__init__(
            "email delivery is not configured: set [smtp] host (and from_address), "
            "or install a plugin implementing send_auth_email",
            retry_after=60,
        )


class EmailDeliveryFailed(ServiceUnavailable):
    """The SMTP server refused the message or could not be reached."""

    code = "EMAIL_DELIVERY_FAILED"


class SmtpMailer:
    """The default `send_auth_email` implementation (one per Runtime)."""

    # pluggy names a plugin object by its __name__ (shown in the "plugins loaded" log line).
    __name__ = "builtin-smtp"

    def __init__(self) -> None:
        self.settings: Settings | None = None

    @hookimpl
    def brain_startup(self, settings: Any, plugin_settings: Any) -> None:
        """Keep the settings; say at once when production has no way to send mail."""
        self.settings = settings
        if not settings.smtp.host and settings.server.mode == "production":
            log.error("[smtp] host is not set: verification and password-reset emails cannot be sent "
                      "unless a plugin implementing send_auth_email is installed")

    @property
    def configured(self) -> bool:
        """Whether an SMTP server is configured."""
        return self.settings is not None and bool(self.settings.smtp.host)

    @hookimpl(trylast=True)
    def send_auth_email(self, to: str, subject: str, text: str, kind: str) -> bool:
        """Send through [smtp]; dev mode without a host logs the mail instead (blocking)."""
        settings = self.settings
        if settings is None:  # pragma: no cover - brain_startup is historic: always called first
            raise EmailNotConfigured()
        if not settings.smtp.host:
            if settings.server.mode != "dev":
                raise EmailNotConfigured()
            # One argument per line of the mail: text logs escape line breaks inside arguments.
            lines = text.splitlines()
            log.warning("no SMTP server configured ([smtp] host): the %s email to %s was not sent; it reads:"
                        + "\n%s" * len(lines), kind, to, *lines)
            return True
        message = build_message(settings, to=to, subject=subject, text=text, kind=kind)
        try:
            deliver(settings, message)
        except (OSError, smtplib.SMTPException) as exc:
            log.error("sending the %s email to %s via %s:%s failed: %r", kind, to, settings.smtp.host,
                      settings.smtp.port, exc)
            raise EmailDeliveryFailed(f"the mail server did not accept the message: {exc}") from None
        log.info("%s email sent to %s", kind, to)
        return True


def build_message(settings: Settings, *, to: str, subject: str, text: str, kind: str) -> EmailMessage:
    """A plain-text message from [smtp] from_address."""
    message = EmailMessage()
    message["From"] = settings.smtp.from_address
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    domain = parseaddr(settings.smtp.from_address)[1].rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: autoresponders must not answer
    message["X-Brain-Email-Kind"] = kind
    message.set_content(text)
    return message


def deliver(settings: Settings, message: EmailMessage) -> None:
    """Hand one message to the SMTP server (blocking)."""
    s = settings.smtp
    context = ssl.create_default_context(cafile=s.ca_file or None)
    client: smtplib.SMTP
    if s.tls == "implicit":
        client = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_seconds, context=context)
    else:
        client = smtplib.SMTP(s.host, s.port, timeout=s.timeout_seconds)
    with client:
        if s.tls == "starttls":
            client.starttls(context=context)
        if s.username:
            client.login(s.username, s.password)
        client.send_message(message)
