"""Types of the brain API's JSON bodies, generated from clients/openapi.json by clients/generate.py.

Do not edit: run `make clients`. TypedDicts are plain dicts at run time: what the server sent,
nothing dropped, nothing converted.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict, Union

__all__ = [
    "ApiKey",
    "ApiKeyCreated",
    "ApiKeyPermissions0",
    "ChangesPage",
    "Deleted",
    "Error",
    "Event",
    "EventDeleted",
    "EventsPage",
    "Health",
    "JsonRpcClientResponse",
    "JsonRpcError",
    "JsonRpcErrorError",
    "JsonRpcNotification",
    "JsonRpcRequest",
    "JsonRpcResult",
    "Jwks",
    "MailAccount",
    "MailAccountBackfill",
    "MailAccountInitialSync",
    "MailAccountPush",
    "MailAuthorize",
    "MailConnect",
    "MailMessageDeleted",
    "MailMessageReceived",
    "MailMessageReceivedAttachmentsItem",
    "MailMessageReceivedBccItem",
    "MailMessageReceivedCcItem",
    "MailMessageReceivedFlags",
    "MailMessageReceivedFrom0",
    "MailMessageReceivedReplyToItem",
    "MailMessageReceivedToItem",
    "MailMessageUpdated",
    "MailMessageUpdatedAttachmentsItem",
    "MailMessageUpdatedBccItem",
    "MailMessageUpdatedCcItem",
    "MailMessageUpdatedFlags",
    "MailMessageUpdatedFrom0",
    "MailMessageUpdatedReplyToItem",
    "MailMessageUpdatedToItem",
    "MailSyncChoices",
    "Me",
    "NewEvent",
    "NewWebhook",
    "Passkey",
    "SearchPage",
    "SearchPageResultsItem",
    "Session",
    "SessionResponse",
    "SignInRequest",
    "SignUpRequest",
    "Stats",
    "StatsIndex",
    "StatsQuota",
    "StreamEnding",
    "StreamMessage",
    "StreamTicket",
    "User",
    "Webhook",
    "WebhookDelivery",
    "WebhookDeliveryAttemptLogItem",
    "WebhookDisabled",
    "WebhookPayload",
    "WebhookWithSecret",
]

ApiKeyPermissions0 = TypedDict("ApiKeyPermissions0", {
    "events": NotRequired[list[Literal['read', 'write']]],
    "mail": NotRequired[list[Literal['read']]],
    "search": NotRequired[list[Literal['read']]],
})


ApiKey = TypedDict("ApiKey", {
    "id": str,
    "configId": NotRequired[str],
    "name": NotRequired[Union[str, None]],
    "start": NotRequired[Union[str, None]],
    "prefix": NotRequired[Union[str, None]],
    "referenceId": str,
    "enabled": bool,
    "expiresAt": NotRequired[Union[str, None]],
    "createdAt": str,
    "updatedAt": str,
    "lastRequest": NotRequired[Union[str, None]],
    "lastRefillAt": NotRequired[Union[str, None]],
    "remaining": NotRequired[Union[float, None]],
    "refillAmount": NotRequired[Union[float, None]],
    "refillInterval": NotRequired[Union[float, None]],
    "rateLimitEnabled": bool,
    "rateLimitTimeWindow": NotRequired[Union[float, None]],
    "rateLimitMax": NotRequired[Union[float, None]],
    "requestCount": int,
    "metadata": NotRequired[Union[dict[str, Any], None]],
    "permissions": NotRequired[Union[ApiKeyPermissions0, None]],
})


ApiKeyCreated = Any


Event = TypedDict("Event", {
    "id": int,
    "type": str,
    "data": Any,
    "created_at": str,
})


ChangesPage = TypedDict("ChangesPage", {
    "events": list[Event],
    "next_after": int,
    "has_more": bool,
})


Deleted = TypedDict("Deleted", {
    "deleted": int,
    "ids": list[int],
})


Error = TypedDict("Error", {
    "message": str,
    "code": str,
})


EventsPage = TypedDict("EventsPage", {
    "events": list[Event],
    "next_cursor": Union[str, None],
})


Health = TypedDict("Health", {
    "status": Literal['ok', 'degraded'],
    "problems": list[str],
    "version": str,
    "uptime_seconds": NotRequired[float],
    "supervisor": NotRequired[dict[str, Any]],
    "jwks": NotRequired[dict[str, Any]],
    "nats": NotRequired[dict[str, Any]],
    "stores": NotRequired[dict[str, Any]],
    "search": NotRequired[dict[str, Any]],
})


# The client's answer to a request of the server's: this server sends none, so its result or error is not read
JsonRpcClientResponse = TypedDict("JsonRpcClientResponse", {
    "jsonrpc": Literal["2.0"],
    "id": Union[str, int],
    "result": NotRequired[Any],
    "error": NotRequired[Any],
})


JsonRpcErrorError = TypedDict("JsonRpcErrorError", {
    "code": int,
    "message": str,
})


JsonRpcError = TypedDict("JsonRpcError", {
    "jsonrpc": Literal["2.0"],
    "id": Union[str, int, None],
    "error": JsonRpcErrorError,
})


JsonRpcNotification = TypedDict("JsonRpcNotification", {
    "jsonrpc": Literal["2.0"],
    "method": str,
    "params": NotRequired[dict[str, Any]],
})


JsonRpcRequest = TypedDict("JsonRpcRequest", {
    "jsonrpc": Literal["2.0"],
    "id": Union[str, int],
    "method": str,
    "params": NotRequired[dict[str, Any]],
})


JsonRpcResult = TypedDict("JsonRpcResult", {
    "jsonrpc": Literal["2.0"],
    "id": Union[str, int],
    "result": dict[str, Any],
})


Jwks = TypedDict("Jwks", {
    "keys": list[dict[str, Any]],
})


MailAccountInitialSync = TypedDict("MailAccountInitialSync", {
    "complete": NotRequired[bool],
    "done": NotRequired[int],
    "estimated_total": NotRequired[Union[int, None]],
})


# Messages synced before the account kept this much content are sent again, once
MailAccountBackfill = TypedDict("MailAccountBackfill", {
    "complete": NotRequired[bool],
    "running": NotRequired[bool],
    "done": NotRequired[int],
    "estimated_total": NotRequired[Union[int, None]],
})


MailAccountPush = TypedDict("MailAccountPush", {
    "active": NotRequired[bool],
    "expires_at": NotRequired[Union[str, None]],
})


# What an account syncs (the user's choice)
MailSyncChoices = TypedDict("MailSyncChoices", {
    "folders": NotRequired[Union[list[str], None]],
    "exclude_spam_trash": NotRequired[bool],
    "sync_window_days": NotRequired[Union[int, None]],
    "bodies": NotRequired[bool],
    "keep_html": NotRequired[Union[bool, None]],
})


MailAccount = TypedDict("MailAccount", {
    "account": str,
    "provider": str,
    "address": str,
    "state": Literal['syncing', 'idle', 'backoff', 'needs_reauth', 'error', 'disconnected'],
    "phase": NotRequired[Literal['initial', 'reconcile', 'backfill', 'incremental']],
    "last_sync_at": NotRequired[Union[str, None]],
    "messages_synced": int,
    "initial_sync": MailAccountInitialSync,
    "backfill": NotRequired[MailAccountBackfill],
    "sync": NotRequired[MailSyncChoices],
    "poll_interval_seconds": NotRequired[Union[float, None]],
    "push": NotRequired[MailAccountPush],
    "last_error": NotRequired[Union[str, None]],
    "last_error_at": NotRequired[Union[str, None]],
    "retry_at": NotRequired[Union[str, None]],
    "connected_at": NotRequired[str],
})


MailAuthorize = TypedDict("MailAuthorize", {
    "provider": str,
    "authorize_url": str,
    "state": str,
    "redirect_uri": str,
    "start_by": str,
})


MailConnect = TypedDict("MailConnect", {
    "provider": Literal['gmail', 'outlook'],
    "refresh_token": NotRequired[Union[str, None]],
    "sync": NotRequired[MailSyncChoices],
})


Me = TypedDict("Me", {
    "id": str,
    "email": NotRequired[Union[str, None]],
    "name": NotRequired[Union[str, None]],
    "claims": dict[str, Any],
})


NewEvent = TypedDict("NewEvent", {
    "type": str,
    "data": Any,
    "created_at": NotRequired[Union[str, float, None]],
})


NewWebhook = TypedDict("NewWebhook", {
    "url": str,
    "types": NotRequired[list[str]],
    "secret": NotRequired[str],
})


Passkey = TypedDict("Passkey", {
    "id": str,
    "name": Union[str, None],
    "publicKey": str,
    "userId": str,
    "credentialID": str,
    "counter": int,
    "deviceType": Literal['singleDevice', 'multiDevice'],
    "backedUp": bool,
    "transports": str,
    "createdAt": str,
    "aaguid": Union[str, None],
})


SearchPageResultsItem = TypedDict("SearchPageResultsItem", {
    "event": Event,
    "score": float,
    "highlights": dict[str, str],
})


SearchPage = TypedDict("SearchPage", {
    "results": list[SearchPageResultsItem],
    "next_cursor": Union[str, None],
    "partial": bool,
})


Session = TypedDict("Session", {
    "id": NotRequired[str],
    "userId": NotRequired[str],
    "token": NotRequired[str],
    "expiresAt": NotRequired[str],
    "ipAddress": NotRequired[str],
    "userAgent": NotRequired[str],
    "createdAt": NotRequired[str],
    "updatedAt": NotRequired[str],
})


User = TypedDict("User", {
    "id": str,
    "email": str,
    "name": str,
    "image": NotRequired[Union[str, None]],
    "emailVerified": NotRequired[bool],
    "twoFactorEnabled": NotRequired[bool],
    "createdAt": NotRequired[str],
    "updatedAt": NotRequired[str],
})


SessionResponse = TypedDict("SessionResponse", {
    "token": Union[str, None],
    "user": User,
    "session": Union[Session, None],
    "jwt": Union[str, None],
})


SignInRequest = TypedDict("SignInRequest", {
    "email": str,
    "password": str,
    "rememberMe": NotRequired[bool],
    "callbackURL": NotRequired[str],
})


SignUpRequest = TypedDict("SignUpRequest", {
    "name": str,
    "email": str,
    "password": str,
    "image": NotRequired[str],
    "callbackURL": NotRequired[str],
    "rememberMe": NotRequired[bool],
})


StatsIndex = TypedDict("StatsIndex", {
    "state": NotRequired[Literal['ready', 'backfilling', 'disabled']],
    "documents": NotRequired[int],
    "pending": NotRequired[int],
})


StatsQuota = TypedDict("StatsQuota", {
    "max_bytes": NotRequired[Union[int, None]],
    "max_events_per_minute": NotRequired[Union[int, None]],
    "events_available": NotRequired[Union[int, None]],
})


Stats = TypedDict("Stats", {
    "events": int,
    "by_type": dict[str, int],
    "sequence": int,
    "tombstones": NotRequired[int],
    "bytes": int,
    "file_bytes": NotRequired[int],
    "index": StatsIndex,
    "quota": StatsQuota,
})


StreamEnding = TypedDict("StreamEnding", {
    "message": str,
    "code": NotRequired[str],
    "last_event_id": int,
})


# One SSE event of GET /events/stream: an unnamed message (`id`: the commit sequence, `data`: the event as JSON), or the named event that ends the stream (`data`: a StreamEnding)
StreamMessage = TypedDict("StreamMessage", {
    "event": NotRequired[Literal['message', 'token-expired', 'too-slow', 'revoked', 'shutting-down', 'error']],
    "id": NotRequired[str],
    "data": str,
    "retry": NotRequired[int],
})


StreamTicket = TypedDict("StreamTicket", {
    "ticket": str,
    "expires_in": int,
    "stream": str,
})


Webhook = TypedDict("Webhook", {
    "id": str,
    "url": str,
    "types": list[str],
    "state": Literal['active', 'disabled'],
    "created_at": NotRequired[str],
    "failing_since": NotRequired[Union[str, None]],
    "disabled_at": NotRequired[Union[str, None]],
    "disabled_reason": NotRequired[Union[str, None]],
})


WebhookDeliveryAttemptLogItem = TypedDict("WebhookDeliveryAttemptLogItem", {
    "at": NotRequired[str],
    "status": NotRequired[Union[int, None]],
    "error": NotRequired[Union[str, None]],
    "duration_ms": NotRequired[float],
})


WebhookDelivery = TypedDict("WebhookDelivery", {
    "id": str,
    "event_id": int,
    "event_type": NotRequired[str],
    "status": Literal['pending', 'delivered', 'failed'],
    "attempts": int,
    "created_at": NotRequired[str],
    "finished_at": NotRequired[Union[str, None]],
    "last_status": NotRequired[Union[int, None]],
    "last_error": NotRequired[Union[str, None]],
    "attempt_log": NotRequired[list[WebhookDeliveryAttemptLogItem]],
})


# The body of a delivery (Standard Webhooks): the event, its type and time beside it
WebhookPayload = TypedDict("WebhookPayload", {
    "type": str,
    "timestamp": str,
    "data": Event,
})


WebhookWithSecret = TypedDict("WebhookWithSecret", {
    "id": str,
    "url": str,
    "types": list[str],
    "state": Literal['active', 'disabled'],
    "created_at": NotRequired[str],
    "failing_since": NotRequired[Union[str, None]],
    "disabled_at": NotRequired[Union[str, None]],
    "disabled_reason": NotRequired[Union[str, None]],
    "secret": str,
})


# A tombstone: this event of the user was deleted (DELETE /events/{id} or DELETE /events)
EventDeleted = TypedDict("EventDeleted", {
    "id": int,
    "type": str,
    "created_at": str,
})


MailMessageDeleted = TypedDict("MailMessageDeleted", {
    "account": NotRequired[str],
    "provider": NotRequired[str],
    "address": NotRequired[str],
    "message_id": str,
    "thread_id": NotRequired[Union[str, None]],
    "reconciled": NotRequired[bool],
    "previous_message_id": NotRequired[str],
})


# A parsed mailbox; name is empty when the header gave none.
MailMessageReceivedFrom0 = TypedDict("MailMessageReceivedFrom0", {
    "name": str,
    "address": str,
})


# A parsed mailbox; name is empty when the header gave none.
MailMessageReceivedToItem = TypedDict("MailMessageReceivedToItem", {
    "name": str,
    "address": str,
})


# A parsed mailbox; name is empty when the header gave none.
MailMessageReceivedCcItem = TypedDict("MailMessageReceivedCcItem", {
    "name": str,
    "address": str,
})


# A parsed mailbox; name is empty when the header gave none.
MailMessageReceivedBccItem = TypedDict("MailMessageReceivedBccItem", {
    "name": str,
    "address": str,
})


# A parsed mailbox; name is empty when the header gave none.
MailMessageReceivedReplyToItem = TypedDict("MailMessageReceivedReplyToItem", {
    "name": str,
    "address": str,
})


MailMessageReceivedFlags = TypedDict("MailMessageReceivedFlags", {
    "read": bool,
    "starred": bool,
    "important": bool,
})


MailMessageReceivedAttachmentsItem = TypedDict("MailMessageReceivedAttachmentsItem", {
    "id": str,
    "filename": str,
    "mime_type": str,
    "size": Union[int, None],
    "content_id": Union[str, None],
    "inline": bool,
})


MailMessageReceived = TypedDict("MailMessageReceived", {
    "account": NotRequired[str],
    "provider": NotRequired[str],
    "address": NotRequired[str],
    "message_id": str,
    "thread_id": Union[str, None],
    "internet_message_id": Union[str, None],
    "in_reply_to": Union[str, None],
    "references": list[str],
    "from": Union[MailMessageReceivedFrom0, None],
    "to": list[MailMessageReceivedToItem],
    "cc": list[MailMessageReceivedCcItem],
    "bcc": list[MailMessageReceivedBccItem],
    "reply_to": list[MailMessageReceivedReplyToItem],
    "subject": str,
    "date": Union[str, None],
    "direction": Literal['received', 'sent', 'draft'],
    "folders": list[str],
    "labels": list[str],
    "flags": MailMessageReceivedFlags,
    "size": Union[int, None],
    "snippet": str,
    "body_text": str,
    "body_text_clean": str,
    "body_html": NotRequired[str],
    "attachments": list[MailMessageReceivedAttachmentsItem],
    "has_attachments": bool,
    "truncated": bool,
    "original_sizes": NotRequired[dict[str, int]],
})


# A parsed mailbox; name is empty when the header gave none.
MailMessageUpdatedFrom0 = TypedDict("MailMessageUpdatedFrom0", {
    "name": str,
    "address": str,
})


# A parsed mailbox; name is empty when the header gave none.
MailMessageUpdatedToItem = TypedDict("MailMessageUpdatedToItem", {
    "name": str,
    "address": str,
})


# A parsed mailbox; name is empty when the header gave none.
MailMessageUpdatedCcItem = TypedDict("MailMessageUpdatedCcItem", {
    "name": str,
    "address": str,
})


# A parsed mailbox; name is empty when the header gave none.
MailMessageUpdatedBccItem = TypedDict("MailMessageUpdatedBccItem", {
    "name": str,
    "address": str,
})


# A parsed mailbox; name is empty when the header gave none.
MailMessageUpdatedReplyToItem = TypedDict("MailMessageUpdatedReplyToItem", {
    "name": str,
    "address": str,
})


MailMessageUpdatedFlags = TypedDict("MailMessageUpdatedFlags", {
    "read": bool,
    "starred": bool,
    "important": bool,
})


MailMessageUpdatedAttachmentsItem = TypedDict("MailMessageUpdatedAttachmentsItem", {
    "id": str,
    "filename": str,
    "mime_type": str,
    "size": Union[int, None],
    "content_id": Union[str, None],
    "inline": bool,
})


MailMessageUpdated = TypedDict("MailMessageUpdated", {
    "account": NotRequired[str],
    "provider": NotRequired[str],
    "address": NotRequired[str],
    "message_id": str,
    "thread_id": NotRequired[Union[str, None]],
    "internet_message_id": NotRequired[Union[str, None]],
    "in_reply_to": NotRequired[Union[str, None]],
    "references": NotRequired[list[str]],
    "from": NotRequired[Union[MailMessageUpdatedFrom0, None]],
    "to": NotRequired[list[MailMessageUpdatedToItem]],
    "cc": NotRequired[list[MailMessageUpdatedCcItem]],
    "bcc": NotRequired[list[MailMessageUpdatedBccItem]],
    "reply_to": NotRequired[list[MailMessageUpdatedReplyToItem]],
    "subject": NotRequired[str],
    "date": NotRequired[Union[str, None]],
    "direction": NotRequired[Literal['received', 'sent', 'draft']],
    "folders": NotRequired[list[str]],
    "labels": NotRequired[list[str]],
    "flags": NotRequired[MailMessageUpdatedFlags],
    "size": NotRequired[Union[int, None]],
    "snippet": NotRequired[str],
    "body_text": NotRequired[str],
    "body_text_clean": NotRequired[str],
    "body_html": NotRequired[str],
    "attachments": NotRequired[list[MailMessageUpdatedAttachmentsItem]],
    "has_attachments": NotRequired[bool],
    "truncated": NotRequired[bool],
    "original_sizes": NotRequired[dict[str, int]],
    "added_labels": NotRequired[list[str]],
    "removed_labels": NotRequired[list[str]],
    "previous_message_id": NotRequired[str],
})


# An endpoint failed for webhooks.disable_after_days and was disabled; its pending deliveries failed
WebhookDisabled = TypedDict("WebhookDisabled", {
    "webhook_id": str,
    "url": str,
    "failing_since": Union[str, None],
    "disabled_at": str,
    "last_error": str,
    "deliveries_failed": int,
})
