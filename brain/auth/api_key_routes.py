"""API-key endpoints: Better Auth 1.7's apiKey plugin (`@better-auth/api-key`).

| endpoint | answer |
|----------|--------|
| `POST /api/auth/api-key/create` `{name?, expiresIn?, prefix?, metadata?, permissions?}` | the key object with `key` (shown this once) |
| `GET /api/auth/api-key/list?limit&offset&sortBy&sortDirection` | `{apiKeys, total}` (+ `limit`, `offset` when given) |
| `GET /api/auth/api-key/get?id` | the key object |
| `POST /api/auth/api-key/update` `{keyId, name?, enabled?, expiresIn?, metadata?, permissions?}` | the key object |
| `POST /api/auth/api-key/delete` `{keyId}` | `{success: true}` |
| `POST /api/auth/api-key/verify` `{key, permissions?}` | `{valid, error, key}` (+ brain's `user`) |

All but verify need a session and act on the caller's own keys only (another user's key is 404
`KEY_NOT_FOUND`, as if it did not exist). `verify` is server-only in Better Auth; brain serves
it because its API role, when it runs in another process, is the server that asks. Deleting,
disabling or changing a key reaches every API role at once (brain.apikeys).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from brain.apikeys import KEY_RE, api_key_hub, hash_key, scopes_of
from brain.auth import api_keys, openapi_account
from brain.auth.context import AuthContext
from brain.auth.db import ApiKey, User, now_ms
from brain.auth.routes import AuthRoutes, described
from brain.auth.validation import require_object, text_field, validation_error
from brain.errors import BadRequest, NotFound, Unauthorized
from brain.routes import Route
from brain.web import json_response, read_json


_NO_STORE = {"Cache-Control": "no-store"}


def _not_found() -> NotFound:
    return NotFound("API Key not found", code="KEY_NOT_FOUND")


def _query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 9:
        raise BadRequest(f"[query.{name}] Invalid input: expected a non-negative integer", code="VALIDATION_ERROR")
    return int(raw)


class ApiKeyRoutes:
    """The API-key endpoints, on the sign-in routes' helpers."""

    def __init__(self, base: AuthRoutes) -> None:
        self.base = base
        self.auth = base.auth
        self.hub = api_key_hub(base.rt)

    @property
    def ctx(self) -> AuthContext:
        """The process's AuthContext (made on first use, see AuthRoutes)."""
        return self.base.ctx

    def routes(self) -> list[Route]:
        """The endpoints, each with its OpenAPI operation."""
        return described(
            openapi_account.api_key_paths(self.auth),
            (
                ("POST", "/api/auth/api-key/create", self.create),
                ("GET", "/api/auth/api-key/list", self.list_keys),
                ("GET", "/api/auth/api-key/get", self.get),
                ("POST", "/api/auth/api-key/update", self.update),
                ("POST", "/api/auth/api-key/delete", self.delete),
                ("POST", "/api/auth/api-key/verify", self.verify),
            ), components={"schemas": openapi_account.SCHEMAS},
        )

    async def _user(self, request: web.Request, code: str = "UNAUTHORIZED") -> User:
        found = await self.base._current(request)
        if found is None:
            if code == "UNAUTHORIZED":
                raise Unauthorized("Unauthorized", code=code)
            raise Unauthorized("Unauthorized or invalid session", code=code)
        return found[1]

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return require_object(await read_json(request, limit=self.auth.max_body_bytes))

    async def create(self, request: web.Request) -> web.Response:
        """POST /api/auth/api-key/create -> the new key object, with the key itself."""
        user = await self._user(request, "UNAUTHORIZED_SESSION")
        changes, body = api_keys.parse_changes(await self._body(request), self.auth, creating=True)
        api_keys.check_owner(body, user.id)
        prefix = changes.prefix or self.auth.api_key_prefix
        key = api_keys.new_key(prefix)
        row = await self.ctx.issuer(
            "write", fn=api_keys.create_tx, user_id=user.id, key_hash=hash_key(key), prefix=prefix,
            start=api_keys.start_of(key, prefix), changes=changes, limit=self.auth.api_keys_per_user,
        )
        if row is None:
            raise BadRequest(f"At most {self.auth.api_keys_per_user} API keys per user; delete one first.",
                             code="TOO_MANY_API_KEYS")
        return json_response(api_keys.render(row, key=key), headers=_NO_STORE)

    async def list_keys(self, request: web.Request) -> web.Response:
        """GET /api/auth/api-key/list -> {apiKeys, total, limit?, offset?}."""
        user = await self._user(request)
        limit, offset = _query_int(request, "limit"), _query_int(request, "offset")
        sort_by = request.query.get("sortBy")
        direction = request.query.get("sortDirection", "asc")
        if sort_by is not None and sort_by not in api_keys.SORTABLE:
            raise BadRequest(f"[query.sortBy] must be one of {', '.join(api_keys.SORTABLE)}", code="VALIDATION_ERROR")
        if direction not in ("asc", "desc"):
            raise BadRequest('[query.sortDirection] Invalid option: expected one of "asc"|"desc"', code="VALIDATION_ERROR")
        query = ApiKey.select().where(ApiKey.user == user.id)
        total = query.count()
        column = api_keys.SORTABLE[sort_by or "createdAt"]
        query = query.order_by(column.desc() if direction == "desc" else column.asc(), ApiKey.id)
        if offset:
            query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        body: dict[str, Any] = {"apiKeys": [api_keys.render(row) for row in query], "total": total}
        if limit is not None:
            body["limit"] = limit
        if offset is not None:
            body["offset"] = offset
        return json_response(body, headers=_NO_STORE)

    async def get(self, request: web.Request) -> web.Response:
        """GET /api/auth/api-key/get?id -> the key object."""
        user = await self._user(request)
        key_id = request.query.get("id")
        if not key_id:
            raise BadRequest("[query.id] Invalid input: expected string, received undefined", code="VALIDATION_ERROR")
        row = ApiKey.get_or_none((ApiKey.id == key_id) & (ApiKey.user == user.id))
        if row is None:
            raise _not_found()
        return json_response(api_keys.render(row), headers=_NO_STORE)

    async def update(self, request: web.Request) -> web.Response:
        """POST /api/auth/api-key/update {keyId, ...} -> the updated key object."""
        user = await self._user(request, "UNAUTHORIZED_SESSION")
        raw = await self._body(request)
        key_id = text_field(raw, "keyId", required=True)
        changes, body = api_keys.parse_changes(raw, self.auth, creating=False)
        api_keys.check_owner(body, user.id)
        if changes == api_keys.KeyChanges():
            raise BadRequest("No values to update.", code="NO_VALUES_TO_UPDATE")
        row = await self.ctx.issuer("write", fn=api_keys.update_tx, user_id=user.id, key_id=key_id, changes=changes)
        if row is None:
            raise _not_found()
        # Enabled, expiry or scopes may have changed: API roles look the key up again.
        await self.hub.revoked([row.key_hash])
        return json_response(api_keys.render(row), headers=_NO_STORE)

    async def delete(self, request: web.Request) -> web.Response:
        """POST /api/auth/api-key/delete {keyId} -> {success: true}."""
        user = await self._user(request)
        key_id = text_field(await self._body(request), "keyId", required=True)
        key_hash = await self.ctx.issuer("write", fn=api_keys.delete_tx, user_id=user.id, key_id=key_id)
        if key_hash is None:
            raise _not_found()
        await self.hub.revoked([key_hash])
        return json_response({"success": True})

    async def verify(self, request: web.Request) -> web.Response:
        """POST /api/auth/api-key/verify {key, permissions?} -> {valid, error, key, user}."""
        body = await self._body(request)
        key = text_field(body, "key", required=True)
        assert key is not None
        needed = None
        if body.get("permissions") is not None:
            try:
                needed = scopes_of(body["permissions"])
            except ValueError as exc:
                raise validation_error("permissions", str(exc)) from None
        found = api_keys.find_row(key) if KEY_RE.fullmatch(key) else None
        if found is None:
            return self._invalid("INVALID_API_KEY", "Invalid API key.")
        row, owner = found
        if not row.enabled:
            return self._invalid("KEY_DISABLED", "API Key is disabled")
        if row.expires_at is not None and row.expires_at <= now_ms():
            return self._invalid("KEY_EXPIRED", "API Key has expired")
        if needed is not None and not needed <= api_keys.record(row, owner).scopes:
            return self._invalid("KEY_NOT_FOUND", "API Key not found")
        return json_response({
            "valid": True, "error": None, "key": api_keys.render(row),
            "user": {"id": owner.id, "email": owner.email, "name": owner.name},
        }, headers=_NO_STORE)

    @staticmethod
    def _invalid(code: str, message: str) -> web.Response:
        return json_response({"valid": False, "error": {"message": message, "code": code}, "key": None},
                             headers=_NO_STORE)
