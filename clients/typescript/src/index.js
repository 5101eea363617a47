// A client for brain's HTTP API (both roles). ESM, no dependency beyond `fetch`: Node 18+ and
// browsers. Types: index.d.ts, over the types openapi-typescript generated from the OpenAPI
// document (schema.d.ts, `make clients`).

/** Refresh a JWT this many seconds before it expires. */
const REFRESH_MARGIN = 60;
const RETRIED = new Set([429, 503]);
const SAFE_METHODS = new Set(["GET", "HEAD"]);

/** An error answer from brain: HTTP status, the server's `code` and message. */
export class BrainError extends Error {
  constructor(status, code, message, body, retryAfter) {
    super(`${status} ${code}: ${message}`);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.serverMessage = message;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}
export class BadRequest extends BrainError {}
export class Unauthorized extends BrainError {}
export class Forbidden extends BrainError {}
export class NotFound extends BrainError {}
export class Conflict extends BrainError {}
export class PayloadTooLarge extends BrainError {}
export class Unprocessable extends BrainError {}
export class RateLimited extends BrainError {}
export class ServiceUnavailable extends BrainError {}
export class ServerError extends BrainError {}

const BY_STATUS = {
  400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
  422: Unprocessable, 429: RateLimited, 503: ServiceUnavailable,
};

/** The typed error for an error answer. */
export function errorFor(status, body, retryAfter) {
  const code = (body && typeof body === "object" && body.code) || "HTTP_ERROR";
  const message = (body && typeof body === "object" && body.message) || String(body || `HTTP ${status}`);
  const Kind = BY_STATUS[status] || (status >= 500 ? ServerError : BrainError);
  return new Kind(status, code, message, body, retryAfter);
}

/** The `exp` of a JWT, unverified (the server verifies; the client only plans its refresh). */
export function jwtExpiry(jwt) {
  try {
    const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload + "=".repeat((4 - (payload.length % 4)) % 4))).exp ?? null;
  } catch {
    return null;
  }
}

function newIdempotencyKey() {
  return globalThis.crypto.randomUUID();
}

function sleep(seconds) {
  return new Promise((resolve) => setTimeout(resolve, seconds * 1000));
}

function retryAfterOf(response) {
  const value = Number(response.headers.get("retry-after"));
  return Number.isFinite(value) && response.headers.has("retry-after") ? Math.max(0, value) : null;
}

/** Endings of an event stream after which the same stream continues on a new connection. */
const RESUMABLE = new Set(["token-expired", "too-slow", "shutting-down"]);
/** Connections in a row that may fail before a stream gives up. */
const MAX_RECONNECT_FAILURES = 5;

/** The server ended the stream for a reason a reconnect does not cure (`revoked`, `error`), or
 * reconnecting was turned off; `reason` names the ending, `lastEventId` is where to resume. */
export class StreamEnded extends BrainError {
  constructor(reason, body, lastEventId) {
    super(200, body?.code || reason, body?.message || reason, body, null);
    this.reason = reason;
    this.lastEventId = lastEventId;
  }
}

/** Lines of a text/event-stream in, whole messages ({event, data, id}) out: the WHATWG rules. */
export class SseParser {
  constructor() {
    this.retryMs = null;
    this._event = "";
    this._data = [];
    this._id = null;
  }

  line(line) {
    if (line === "") {
      const message = this._data.length ? { event: this._event || "message", data: this._data.join("\n"), id: this._id } : null;
      this._event = "";
      this._data = [];
      return message;
    }
    if (line.startsWith(":")) return null; // a comment: the server's heartbeat
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") this._data.push(value);
    else if (name === "event") this._event = value;
    else if (name === "id" && !value.includes("\0")) this._id = value;
    else if (name === "retry" && /^[0-9]+$/.test(value)) this.retryMs = Number(value);
    return null;
  }
}

/** The lines of a fetch response body as they arrive (\n, \r\n or \r ends a line). */
async function* linesOf(body) {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
      // A \r at the very end may be the first half of \r\n: wait for the next chunk.
      if (buffer[end] === "\r" && end === buffer.length - 1) break;
      yield buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
    }
  }
}

/** A client of one brain deployment: `apiUrl` (API role) and `authUrl` (auth role). */
export class BrainClient {
  constructor({
    apiUrl, authUrl, jwt, sessionToken, apiKey, getJwt, maxRetries = 3, maxRetryWait = 30, fetch: fetchImpl,
  }) {
    this.apiUrl = apiUrl.replace(/\/+$/, "");
    this.authUrl = (authUrl || apiUrl).replace(/\/+$/, "");
    this.jwt = jwt ?? null;
    this.sessionToken = sessionToken ?? null;
    this.apiKey = apiKey ?? null;
    // Where a fresh JWT comes from when the client did not sign in itself (e.g. Better Auth's client).
    this.getJwt = getJwt ?? null;
    this.maxRetries = maxRetries;
    this.maxRetryWait = maxRetryWait;
    this.fetch = fetchImpl ?? globalThis.fetch.bind(globalThis);
    /** Retries made so far (429/503 waited out, lost connections sent again). */
    this.retries = 0;
  }

  // -- the plumbing -----------------------------------------------------------------------------

  _needsRefresh() {
    if (!this.sessionToken && !this.getJwt) return false;
    if (!this.jwt) return true;
    const exp = jwtExpiry(this.jwt);
    return exp !== null && exp - Date.now() / 1000 < REFRESH_MARGIN;
  }

  _headers(call) {
    const headers = { accept: "application/json", ...(call.headers || {}) };
    if (call.body !== undefined) headers["content-type"] = "application/json";
    if (call.auth === "session" && this.sessionToken) {
      headers.authorization = `Bearer ${this.sessionToken}`;
    } else if (call.auth === "user") {
      if (this.jwt) headers.authorization = `Bearer ${this.jwt}`;
      else if (this.apiKey) headers["x-api-key"] = this.apiKey;
    }
    return headers;
  }

  _url(call) {
    const url = new URL((call.role === "auth" ? this.authUrl : this.apiUrl) + call.path);
    for (const [name, value] of Object.entries(call.query || {})) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    return url;
  }

  _retryWait(call, failure, attempt) {
    if (attempt >= this.maxRetries) return null;
    if (failure instanceof BrainError) {
      if (!RETRIED.has(failure.status)) return null;
      const wait = failure.retryAfter ?? 2 ** attempt;
      return wait <= this.maxRetryWait ? wait : null;
    }
    // A lost connection: only a read or a keyed write may be sent again.
    const repeatable = SAFE_METHODS.has(call.method) || Boolean(call.headers?.["Idempotency-Key"]);
    return repeatable ? 0.2 * 2 ** attempt : null;
  }

  async _run(call) {
    if (call.auth === "user" && this._needsRefresh()) await this.refresh();
    for (let attempt = 0; ; attempt++) {
      try {
        const response = await this.fetch(this._url(call), {
          method: call.method,
          headers: this._headers(call),
          body: call.body === undefined ? undefined : JSON.stringify(call.body),
          // Bearer tokens only: a session cookie sent back without an Origin would be refused.
          credentials: "omit",
        });
        return await this._read(call, response);
      } catch (failure) {
        const wait = this._retryWait(call, failure, attempt);
        if (wait === null) throw failure;
        this.retries += 1;
        await sleep(wait);
      }
    }
  }

  async _read(call, response) {
    if (response.status >= 400) {
      const text = await response.text();
      let body = text;
      try { body = JSON.parse(text); } catch { /* not JSON: keep the text */ }
      throw errorFor(response.status, body, retryAfterOf(response));
    }
    if (call.read === "bytes") return new Uint8Array(await response.arrayBuffer());
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }

  _signedIn(body) {
    this.sessionToken = body.token;
    this.jwt = body.jwt ?? this.jwt;
    return body;
  }

  // -- auth role --------------------------------------------------------------------------------

  /** Create an account and sign in; the client keeps the session token and JWT. */
  async signUp(body) {
    return this._signedIn(await this._run({ method: "POST", role: "auth", path: "/api/auth/sign-up/email", auth: "none", body }));
  }

  /** Sign in with email and password; the client keeps the session token and JWT. */
  async signIn(body) {
    return this._signedIn(await this._run({ method: "POST", role: "auth", path: "/api/auth/sign-in/email", auth: "none", body }));
  }

  /** A fresh JWT: from `getJwt`, or for the session (done before the current one expires). */
  async refresh() {
    if (this.getJwt) {
      this.jwt = await this.getJwt();
    } else {
      this.jwt = (await this._run({ method: "GET", role: "auth", path: "/api/auth/token", auth: "session" })).token;
    }
    return this.jwt;
  }

  /** The current session and user, or null. */
  getSession() {
    return this._run({ method: "GET", role: "auth", path: "/api/auth/get-session", auth: "session" });
  }

  /** End the session; the client forgets its credentials. */
  async signOut() {
    await this._run({ method: "POST", role: "auth", path: "/api/auth/sign-out", auth: "session", body: {} });
    this.sessionToken = null;
    this.jwt = null;
  }

  /** The issuer's public keys. */
  jwks() {
    return this._run({ method: "GET", role: "auth", path: "/api/auth/jwks", auth: "none" });
  }

  // -- API role ---------------------------------------------------------------------------------

  /** Liveness: status, version, problems. */
  health() {
    return this._run({ method: "GET", role: "api", path: "/health", auth: "none" });
  }

  /** The OpenAPI document. */
  openapi() {
    return this._run({ method: "GET", role: "api", path: "/openapi.json", auth: "none" });
  }

  /** The AsyncAPI document of the JetStream event stream. */
  asyncapi() {
    return this._run({ method: "GET", role: "api", path: "/asyncapi.json", auth: "none" });
  }

  /** Who the credentials speak for. */
  me() {
    return this._run({ method: "GET", role: "api", path: "/me", auth: "user" });
  }

  /** Store one event, keyed so that a retry never stores it twice. */
  postEvent(type, data, { createdAt, idempotencyKey } = {}) {
    const body = createdAt === undefined ? { type, data } : { type, data, created_at: createdAt };
    const headers = { "Idempotency-Key": idempotencyKey ?? newIdempotencyKey() };
    return this._run({ method: "POST", role: "api", path: "/events", auth: "user", body, headers });
  }

  /** Store a batch of events atomically. */
  async postEvents(events, { idempotencyKey } = {}) {
    const headers = { "Idempotency-Key": idempotencyKey ?? newIdempotencyKey() };
    return (await this._run({ method: "POST", role: "api", path: "/events", auth: "user", body: events, headers })).events;
  }

  /** One page of the user's events, newest first. */
  listEvents(query = {}) {
    return this._run({ method: "GET", role: "api", path: "/events", auth: "user", query });
  }

  /** Every matching event, newest first, following the cursors page after page. */
  async *iterEvents({ pageSize, ...query } = {}) {
    let cursor;
    do {
      const page = await this.listEvents({ ...query, limit: pageSize, cursor });
      yield* page.events;
      cursor = page.next_cursor;
    } while (cursor);
  }

  /** One page of the user's events matching the query (GET /search), best first. */
  search(q, query = {}) {
    return this._run({ method: "GET", role: "api", path: "/search", auth: "user", query: { ...query, q } });
  }

  /** Every match, best first, following the cursors page after page. */
  async *iterSearch(q, { pageSize, ...query } = {}) {
    let cursor;
    do {
      const page = await this.search(q, { ...query, limit: pageSize, cursor });
      yield* page.results;
      cursor = page.next_cursor;
    } while (cursor);
  }

  /** One event by id. */
  getEvent(id) {
    return this._run({ method: "GET", role: "api", path: `/events/${Number(id)}`, auth: "user" });
  }

  /** Delete one event (a tombstone, event.deleted, takes its place in the commit order). */
  deleteEvent(id) {
    return this._run({ method: "DELETE", role: "api", path: `/events/${Number(id)}`, auth: "user" });
  }

  /** Delete the events of these types and/or times (at least one of them); how many went. */
  async deleteEvents({ type, since, until } = {}) {
    const query = { type: Array.isArray(type) ? type.join(",") : type, since, until };
    return (await this._run({ method: "DELETE", role: "api", path: "/events", auth: "user", query })).deleted;
  }

  /** One page of what was committed after a sequence number, deletions included. */
  eventChanges({ after = 0, limit, type } = {}) {
    const query = { after, limit, type: Array.isArray(type) ? type.join(",") : type };
    return this._run({ method: "GET", role: "api", path: "/events/changes", auth: "user", query });
  }

  /** Everything committed after `after`, in commit order, until the feed is read to its end. */
  async *iterChanges({ after = 0, pageSize, type } = {}) {
    for (;;) {
      const page = await this.eventChanges({ after, limit: pageSize, type });
      yield* page.events;
      after = page.next_after;
      if (!page.has_more) return;
    }
  }

  /** The user's event counts by type, storage, search index state and quotas. */
  meStats() {
    return this._run({ method: "GET", role: "api", path: "/me/stats", auth: "user" });
  }

  /**
   * The user's events as they commit (GET /events/stream), for as long as it is iterated.
   * `type`: names or `prefix.*` (a string or an array); `after`: first every event committed
   * after this id (0: from the start). The stream resumes with Last-Event-ID, without a gap or a
   * repeat, when its connection drops or the server ends it for a reason a reconnect cures (an
   * expired JWT is refreshed first); `reconnect: false` throws StreamEnded instead. `signal`
   * stops it. `onResume(lastEventId)` is called before each resumption.
   */
  async *streamEvents({ type, after, reconnect = true, signal, onResume } = {}) {
    let lastEventId = after ?? null;
    let failures = 0;
    const types = Array.isArray(type) ? type.join(",") : type;
    for (;;) {
      const parser = new SseParser();
      let ending = null;
      try {
        for await (const message of this._streamMessages(types, lastEventId, parser, signal)) {
          if (message.event !== "message") {
            ending = message;
            break;
          }
          failures = 0;
          if (/^[0-9]+$/.test(message.id ?? "")) lastEventId = Number(message.id);
          yield JSON.parse(message.data);
        }
        if (!ending) throw new TypeError("the event stream closed without saying why");
      } catch (failure) {
        if (signal?.aborted) return;
        const retryable = failure instanceof BrainError ? RETRIED.has(failure.status) : failure instanceof TypeError;
        if (!reconnect || !retryable || failures >= MAX_RECONNECT_FAILURES) throw failure;
        failures += 1;
        onResume?.(lastEventId);
        await sleep(failure.retryAfter ?? 0.2 * 2 ** failures);
        continue;
      }
      let body = null;
      try { body = JSON.parse(ending.data); } catch { body = { message: ending.data }; }
      if (!reconnect || !RESUMABLE.has(ending.event)) throw new StreamEnded(ending.event, body, lastEventId);
      onResume?.(lastEventId);
      // A fresh JWT is all an expired one needs; otherwise the server's retry: delay.
      if (ending.event !== "token-expired") await sleep((parser.retryMs ?? 1000) / 1000);
    }
  }

  async *_streamMessages(types, lastEventId, parser, signal) {
    const call = { method: "GET", role: "api", path: "/events/stream", auth: "user", query: { type: types } };
    if (this._needsRefresh()) await this.refresh();
    const headers = { ...this._headers(call), accept: "text/event-stream" };
    if (lastEventId !== null) headers["last-event-id"] = String(lastEventId);
    const response = await this.fetch(this._url(call), { headers, credentials: "omit", signal });
    if (response.status >= 400) await this._read(call, response);
    try {
      for await (const line of linesOf(response.body)) {
        const message = parser.line(line);
        if (message) yield message;
      }
    } finally {
      // Leaving early (a break, an ending, an abort) closes the connection.
      await response.body.cancel().catch(() => {});
    }
  }

  /** A single-use ticket that opens one stream without a header (POST /events/stream/ticket). */
  streamTicket() {
    return this._run({ method: "POST", role: "api", path: "/events/stream/ticket", auth: "user", body: {} });
  }

  /** A URL for the browser's own `new EventSource(url)`: the stream, opened with a fresh ticket.
   * EventSource resumes by itself (Last-Event-ID) while the ticket's credential is valid. */
  async eventSourceUrl({ type } = {}) {
    const { ticket } = await this.streamTicket();
    const url = new URL(`${this.apiUrl}/events/stream`);
    url.searchParams.set("ticket", ticket);
    if (type) url.searchParams.set("type", Array.isArray(type) ? type.join(",") : type);
    return url.toString();
  }

  /** Connect a mail account: the OAuth link, or (with a refresh token or IMAP's fields) the account. */
  mailConnect(provider, fields = {}) {
    return this._run({ method: "POST", role: "api", path: "/mail/connect", auth: "user", body: { provider, ...fields } });
  }

  /** The caller's mail accounts and their sync state. */
  async mailStatus() {
    return (await this._run({ method: "GET", role: "api", path: "/mail/status", auth: "user" })).accounts;
  }

  /** Stop syncing an account and delete its credentials. */
  mailDisconnect(account) {
    return this._run({ method: "POST", role: "api", path: "/mail/disconnect", auth: "user", body: { account } });
  }

  /** Change what an account syncs. */
  async mailChangeAccount(account, choices) {
    const path = `/mail/accounts/${encodeURIComponent(account)}`;
    return (await this._run({ method: "PATCH", role: "api", path, auth: "user", body: choices })).account;
  }

  /** Sync an account now. */
  async mailSyncNow(account) {
    const path = `/mail/accounts/${encodeURIComponent(account)}/sync`;
    return (await this._run({ method: "POST", role: "api", path, auth: "user", body: {} })).account;
  }

  /** An attachment's content. */
  mailAttachment(message, attachment, { account } = {}) {
    const path = `/mail/messages/${encodeURIComponent(message)}/attachments/${encodeURIComponent(attachment)}`;
    return this._run({ method: "GET", role: "api", path, auth: "user", query: { account }, read: "bytes" });
  }

  /** Any other operation of the OpenAPI document, with the same credentials, retries and errors. */
  request(method, path, { role = "api", auth = "user", query, body } = {}) {
    return this._run({ method: method.toUpperCase(), role, path, auth, query, body });
  }
}
