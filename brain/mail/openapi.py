"""The OpenAPI description of the mail routes (brain.mail.routes carries these operations)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from brain.apikeys import with_api_keys
from brain.mail.provider import event_schemas
from brain.errors import StorageFault
from brain.mail.selection import MAX_FOLDERS, MAX_WINDOW_DAYS
from brain.openapi import INVALID_CODES, TOKEN_CODES, UNAVAILABLE_CODES, disk_full, with_body_errors
from brain.openapi import error as _error
from brain.openapi import json_body as _json
from brain.openapi import ref as _ref

__all__ = ["PATHS", "SCHEMAS", "connect_schema"]


# Mail sync not running in this process, starting, restarting an account's actor or moving it between
# workers (brain.mail.ownership), or mail.db failing.
_UNAVAILABLE = {**_error("Mail sync is not running, or is starting, restarting or moving the account (SERVICE_UNAVAILABLE, "
                         "Retry-After); mail.db is failing (STORE_UNAVAILABLE)", *UNAVAILABLE_CODES),
                "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}}
_ERRORS = {
    "400": _error("Invalid body: missing or bad fields (named)", *INVALID_CODES),
    "401": _error("Missing or invalid bearer token", *TOKEN_CODES),
    "503": _UNAVAILABLE,
}
# A change to mail.db (an account, its credentials or choices, an OAuth flow) on a full disk.
_DISK_FULL = {"507": disk_full("the disk under mail.db is full")}
_TOO_MANY_CONNECTS = {
    **_error(
        "TOO_MANY_CONNECTS: `[mail] connects_per_user` connects of the caller are still in progress; or RATE_LIMITED",
        "TOO_MANY_CONNECTS", "RATE_LIMITED",
    ),
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}},
}
_REDIRECT = {
    "description": "A redirect (Location) for the browser",
    "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
}
_ACCOUNT_RESPONSE = {"type": "object", "required": ["account"], "properties": {"account": _ref("MailAccount")}}
# What a provider answers its own servers' notifications with: a few words of plain text.
_PROVIDER_TEXT = {"text/plain": {"schema": {"type": "string"}}}
# An account id as brain.mail.service.owned_account accepts it.
_ACCOUNT_ID = {"type": "string", "minLength": 1, "maxLength": 64}
_ACCOUNT_PARAMETER = {"name": "account", "in": "path", "required": True, "schema": _ACCOUNT_ID}

PATHS: dict[str, dict[str, Any]] = {
    "/mail/connect": {
        "post": {
            "operationId": "mailConnect",
            "summary": "Connect a mail account: start OAuth, or hand over a refresh token",
            "description": (
                "With only `provider`, answers brain's connect link (`authorize_url`, "
                "/mail/oauth/start) carrying a signed, single-use `state` bound to the caller: "
                "open it in the user's browser before `start_by`. It binds the flow to that "
                "browser and goes on to the provider, which sends the browser back to "
                "/mail/oauth/callback. With `refresh_token` (clients that already hold one), "
                "the account is connected at once. Either way its sync starts immediately."
            ),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("MailConnect")}},
            },
            "responses": {
                "200": _json(
                    {"oneOf": [_ref("MailAuthorize"), _ACCOUNT_RESPONSE]},
                    "The authorize URL to send the user to, or a reconnected account",
                ),
                "201": _json(_ACCOUNT_RESPONSE, "A newly connected account (syncing)"),
                "429": _TOO_MANY_CONNECTS,
                "502": _error("PROVIDER_UNAVAILABLE: the provider could not be reached", "PROVIDER_UNAVAILABLE"),
                **_ERRORS,
                **_DISK_FULL,
                "400": _error(
                    "Invalid body: missing or bad fields (named), an UNKNOWN_PROVIDER, or a refresh token the provider "
                    "refused (PROVIDER_AUTH_FAILED)", "UNKNOWN_PROVIDER", "PROVIDER_AUTH_FAILED", *INVALID_CODES,
                ),
            },
        }
    },
    "/mail/oauth/start": {
        "get": {
            "operationId": "mailOAuthStart",
            "summary": "The connect link: binds the OAuth flow to this browser, then goes to the provider",
            "description": (
                "Opened by the user's browser (no token): the first opening, within "
                "`mail.oauth_start_ttl_seconds` of `POST /mail/connect`, sets an HttpOnly, "
                "SameSite=Lax cookie for the flow (`__Host-` prefixed over https) and redirects to "
                "the provider's consent page (PKCE S256, consent prompt). Anything else redirects to "
                "`mail.app_redirect_url` with `status=error` and `code` (`INVALID_STATE`, "
                "`FLOW_ALREADY_STARTED`)."
            ),
            "security": [],
            # Not required: whatever the link carries, the browser gets a redirect (an error page at worst).
            "parameters": [
                {"name": "flow", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "The signed state of POST /mail/connect; missing or bad: INVALID_STATE"}
            ],
            "responses": {"302": _REDIRECT},
        }
    },
    "/mail/oauth/callback": {
        "get": {
            "operationId": "mailOAuthCallback",
            "summary": "Where the provider sends the browser back: exchanges the code",
            "description": (
                "From a browser (no token): the flow's cookie must be the one its connect link set, "
                "else nothing is connected (`FLOW_NOT_BOUND`); the code is redeemed with the flow's "
                "PKCE verifier and the browser is redirected to `mail.app_redirect_url` with "
                "`status=connected&account=...&provider=...&reconnected=...` or "
                "`status=error&code=...&message=...`. A front end that receives the redirect itself "
                "forwards code and state with its bearer token instead: the flow must belong to "
                "that user, and the answer is JSON."
            ),
            "security": [],
            # Not required: a browser is redirected whatever it brings (status=error when one is
            # missing); with a bearer token a missing one is 400.
            "parameters": [
                {"name": "state", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "code", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "error", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json(_ACCOUNT_RESPONSE, "With a bearer token: a reconnected account"),
                "201": _json(_ACCOUNT_RESPONSE, "With a bearer token: a newly connected account (syncing)"),
                "302": _REDIRECT,
                "400": _error(
                    "With a bearer token: bad, expired or replayed state (INVALID_STATE); refused code "
                    "(PROVIDER_AUTH_FAILED); consent denied (OAUTH_DENIED); a missing parameter",
                    "INVALID_STATE", "PROVIDER_AUTH_FAILED", "OAUTH_DENIED", *INVALID_CODES,
                ),
                "401": _error("An invalid bearer token", *TOKEN_CODES),
                "403": _error("With a bearer token: its user did not start this flow, or not in this browser",
                              "STATE_USER_MISMATCH", "FLOW_NOT_BOUND", "FLOW_ALREADY_STARTED"),
                "429": _TOO_MANY_CONNECTS,
                "502": _error("With a bearer token: the provider could not be reached", "PROVIDER_UNAVAILABLE"),
                "503": _UNAVAILABLE,
                **_DISK_FULL,
            },
        }
    },
    "/mail/oauth/result": {
        "get": {
            "operationId": "mailOAuthResult",
            "summary": "brain's own page for the end of an OAuth flow (when no app URL is configured)",
            "security": [],
            "parameters": [
                {"name": name, "in": "query", "schema": {"type": "string"}}
                for name in ("status", "code", "message", "provider", "account", "reconnected")
            ],
            "responses": {
                "200": {"description": "What happened, for a person", "content": {"text/html": {"schema": {"type": "string"}}}}
            },
        }
    },
    "/mail/status": {
        "get": with_api_keys({
            "operationId": "mailStatus",
            "summary": "The caller's mail accounts and their sync state",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["accounts"],
                        "properties": {
                            "accounts": {"type": "array", "items": _ref("MailAccount")},
                            "attachment_cache": {
                                "type": "object",
                                "description": "Attachments kept in the caller's directory ([mail] cache_attachments)",
                                "properties": {
                                    "files": {"type": "integer"},
                                    "bytes": {"type": "integer"},
                                    "limit_bytes": {
                                        "type": "integer",
                                        "description": "The caller's quota for it ([mail] attachment_cache_bytes)",
                                    },
                                },
                            },
                        },
                    },
                    "Every account of the caller, oldest first",
                ),
                "401": _ERRORS["401"],
                "503": _UNAVAILABLE,
            },
        }, "mail:read")
    },
    "/mail/disconnect": {
        "post": {
            "operationId": "mailDisconnect",
            "summary": "Stop syncing an account and delete its credentials (stored events stay)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["account"],
                            "properties": {"account": _ACCOUNT_ID},
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        **_ACCOUNT_RESPONSE,
                        "properties": {
                            **_ACCOUNT_RESPONSE["properties"],
                            "events_kept": {"const": True},
                            "revocation": {
                                "type": "object",
                                "description": (
                                    "Whether brain's grant is gone at the provider: true (revoked), false (it could "
                                    "not be: detail says why and what the user can do), null (nothing to revoke)"
                                ),
                                "properties": {"revoked": {"type": ["boolean", "null"]}, "detail": {"type": "string"}},
                            },
                        },
                    },
                    "Disconnected",
                ),
                "404": _error("ACCOUNT_NOT_FOUND: no such account of the caller", "ACCOUNT_NOT_FOUND"),
                **_ERRORS,
                **_DISK_FULL,
            },
        }
    },
    "/mail/accounts/{account}": {
        "patch": {
            "operationId": "mailChangeAccount",
            "summary": "Change what an account syncs",
            "description": (
                "Fields not sent keep their value. Changing folders, exclude_spam_trash or sync_window_days "
                "starts a resync that reconciles (messages that left the choice get mail.message.deleted, "
                "messages that joined it mail.message.received); turning bodies or keep_html on backfills "
                "(each stored message gets one mail.message.updated with its whole content)."
            ),
            "parameters": [_ACCOUNT_PARAMETER],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("MailSyncChoices")}}},
            "responses": {
                "200": _json(_ACCOUNT_RESPONSE, "The account with its new choices"),
                "404": _error("ACCOUNT_NOT_FOUND: no such account of the caller", "ACCOUNT_NOT_FOUND"),
                **_ERRORS,
                **_DISK_FULL,
            },
        }
    },
    "/mail/accounts/{account}/sync": {
        "post": {
            "operationId": "mailSyncNow",
            "summary": "Sync an account now (or right after the sync in progress)",
            "parameters": [_ACCOUNT_PARAMETER],
            "responses": {
                "202": _json(_ACCOUNT_RESPONSE, "Asked for; /mail/status shows the progress"),
                "404": _error("ACCOUNT_NOT_FOUND: no such account of the caller", "ACCOUNT_NOT_FOUND"),
                "409": _error("ACCOUNT_NOT_SYNCING: the account is disconnected or needs re-authorisation",
                              "ACCOUNT_NOT_SYNCING"),
                **_ERRORS,
            },
        }
    },
    "/mail/messages/{message}/attachments/{attachment}": {
        "get": with_api_keys({
            "operationId": "mailAttachment",
            "summary": "An attachment's content, fetched from the provider with the account's credentials",
            "description": (
                "`message` is the event's `message_id`, `attachment` an `attachments[].id` (URL-encoded). "
                "Streamed as the provider sends it, always as a download (Content-Disposition: attachment)."
            ),
            "parameters": [
                {"name": "message", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "attachment", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "account",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "Which account, when more than one of the caller's has this message id",
                },
            ],
            "responses": {
                "200": {
                    "description": "The content, in the attachment's own media type (as the provider gives it)",
                    "headers": {
                        "Content-Disposition": {
                            "schema": {"type": "string"},
                            "description": "attachment, with the file name (RFC 6266 filename*)",
                        },
                    },
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                "404": _error("No such message of the caller (MESSAGE_NOT_FOUND), its account disconnected "
                              "(ACCOUNT_DISCONNECTED), or the provider no longer has it (ATTACHMENT_GONE)",
                              "MESSAGE_NOT_FOUND", "ACCOUNT_DISCONNECTED", "ATTACHMENT_GONE"),
                "409": _error("ACCOUNT_NEEDS_REAUTH: the provider refused the account's credentials", "ACCOUNT_NEEDS_REAUTH"),
                "413": _error("Larger than [mail] max_attachment_bytes", "PAYLOAD_TOO_LARGE"),
                "502": _error("The provider failed", "PROVIDER_ERROR"),
                **_ERRORS,
                "503": {**_error("The provider is throttling or unavailable (SERVICE_UNAVAILABLE; Retry-After says "
                                 "when), or mail.db is failing (STORE_UNAVAILABLE)", *UNAVAILABLE_CODES),
                        "headers": _UNAVAILABLE["headers"]},
            },
        }, "mail:read")
    },
    "/mail/push/{provider}": {
        "post": {
            "operationId": "mailPush",
            "summary": "Push notifications from a provider (Gmail via Pub/Sub, Microsoft Graph)",
            "description": (
                "Called by the provider's servers, not by clients: Gmail's Pub/Sub push subscription "
                "(`?token=` must be [plugins.gmail] push_token) and Graph subscriptions (the validation "
                "handshake echoes `validationToken`; notifications must carry the account's clientState). "
                "The accounts a notification names are synced at once."
            ),
            "security": [],
            "parameters": [{"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {
                "200": {"description": "Graph's validation handshake: the token", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "202": {"description": "Taken"},
                "204": {"description": "Taken (Pub/Sub)"},
                "400": {"description": "Not a notification of this provider", "content": _PROVIDER_TEXT},
                "403": {"description": "The push token is wrong", "content": _PROVIDER_TEXT},
                "404": {
                    "description": "No such provider (JSON), or one that takes no push notifications (text)",
                    "content": {**_json(_ref("Error"))["content"], **_PROVIDER_TEXT},
                },
                "408": _error("REQUEST_TIMEOUT: the body did not arrive within server.body_timeout_seconds",
                              "REQUEST_TIMEOUT"),
                "413": _error("Larger than a notification can be", "PAYLOAD_TOO_LARGE"),
                "503": _error("mail.db is failing (STORE_UNAVAILABLE)", StorageFault.code),
            },
        }
    },
}

# The operations whose handlers read a JSON body (brain.web.read_json) also state what that may refuse.
for _path, _method in (("/mail/connect", "post"), ("/mail/disconnect", "post"), ("/mail/accounts/{account}", "patch")):
    PATHS[_path][_method] = with_body_errors(PATHS[_path][_method])


def connect_schema(providers: Iterable[str]) -> dict[str, Any]:
    """The body of POST /mail/connect, naming the providers this server has registered."""
    return {
        "type": "object",
        "required": ["provider"],
        "properties": {
            "provider": {"enum": sorted(providers), "description": "A registered provider"},
            "refresh_token": {"type": ["string", "null"], "minLength": 1,
                              "description": "Connect directly with this token (absent or null: start OAuth)"},
            "sync": _ref("MailSyncChoices"),
        },
    }


SCHEMAS: dict[str, Any] = {
    "MailAuthorize": {
        "type": "object",
        "required": ["provider", "authorize_url", "state", "redirect_uri", "start_by"],
        "properties": {
            "provider": {"type": "string"},
            "authorize_url": {"type": "string", "format": "uri", "description": "brain's connect link"},
            "state": {"type": "string"},
            "redirect_uri": {"type": "string", "format": "uri"},
            "start_by": {"type": "string", "format": "date-time", "description": "Open the link before this"},
        },
    },
    "MailAccount": {
        "type": "object",
        "required": ["account", "provider", "address", "state", "messages_synced", "initial_sync"],
        "properties": {
            "account": {"type": "string"},
            "provider": {"type": "string"},
            "address": {"type": "string"},
            "state": {"enum": ["syncing", "idle", "backoff", "needs_reauth", "error", "disconnected"]},
            "phase": {"enum": ["initial", "reconcile", "backfill", "incremental"]},
            "last_sync_at": {"type": ["string", "null"], "format": "date-time"},
            "messages_synced": {"type": "integer"},
            "initial_sync": {
                "type": "object",
                "properties": {
                    "complete": {"type": "boolean"},
                    "done": {"type": "integer"},
                    "estimated_total": {"type": ["integer", "null"]},
                },
            },
            "backfill": {
                "type": "object",
                "description": "Messages synced before the account kept this much content are sent again, once",
                "properties": {
                    "complete": {"type": "boolean"},
                    "running": {"type": "boolean"},
                    "done": {"type": "integer"},
                    "estimated_total": {"type": ["integer", "null"]},
                },
            },
            "sync": _ref("MailSyncChoices"),
            "poll_interval_seconds": {"type": ["number", "null"], "description": "Until the next poll"},
            "push": {
                "type": "object",
                "properties": {
                    "active": {"type": "boolean"},
                    "expires_at": {"type": ["string", "null"], "format": "date-time"},
                },
            },
            "last_error": {"type": ["string", "null"]},
            "last_error_at": {"type": ["string", "null"], "format": "date-time"},
            "retry_at": {"type": ["string", "null"], "format": "date-time"},
            "connected_at": {"type": "string", "format": "date-time"},
        },
    },
    "MailSyncChoices": {
        "type": "object",
        "description": "What an account syncs (the user's choice)",
        "additionalProperties": False,
        "properties": {
            "folders": {
                "type": ["array", "null"],
                "minItems": 1,
                "maxItems": MAX_FOLDERS,
                # Non-blank, one line, no NUL (brain.mail.selection).
                "items": {"type": "string", "maxLength": 512, "pattern": r"^[^\r\n\x00]*[^\s][^\r\n\x00]*$"},
                "description": "Folders or labels (names, Outlook well-known names, IMAP special-use flags); null: all",
            },
            "exclude_spam_trash": {"type": "boolean"},
            "sync_window_days": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_WINDOW_DAYS,
                                 "description": "null: every message"},
            "bodies": {"type": "boolean"},
            "keep_html": {"type": ["boolean", "null"], "description": "null: the server's [mail] keep_html"},
        },
    },
    # The data of each mail event, by event type (what GET /events and JetStream carry).
    **event_schemas(),
}
