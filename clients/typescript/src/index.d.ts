// Types of the client in index.js; the bodies come from schema.d.ts, which openapi-typescript
// generated from brain's OpenAPI document (`make clients`).
import type { components, operations, paths } from "./schema.js";

export type { components, operations, paths };
type Schemas = components["schemas"];
export type Event = Schemas["Event"];
export type NewEvent = Schemas["NewEvent"];
export type EventsPage = Schemas["EventsPage"];
export type Me = Schemas["Me"];
export type Health = Schemas["Health"];
export type Jwks = Schemas["Jwks"];
export type User = Schemas["User"];
export type SessionResponse = Schemas["SessionResponse"];
export type SignUpRequest = Schemas["SignUpRequest"];
export type SignInRequest = Schemas["SignInRequest"];
export type MailAccount = Schemas["MailAccount"];
export type MailAuthorize = Schemas["MailAuthorize"];
export type MailSyncChoices = Schemas["MailSyncChoices"];
export type MailMessageReceived = Schemas["mail.message.received"];
export type MailMessageUpdated = Schemas["mail.message.updated"];
export type MailMessageDeleted = Schemas["mail.message.deleted"];
export type EventsQuery = NonNullable<operations["listEvents"]["parameters"]["query"]>;
export type SearchQuery = NonNullable<operations["search"]["parameters"]["query"]>;
export type SearchPage = Schemas["SearchPage"];
export type SearchResult = SearchPage["results"][number];
export type ChangesPage = Schemas["ChangesPage"];
export type Deleted = Schemas["Deleted"];
export type Stats = Schemas["Stats"];
export type Role = "api" | "auth";
export type Auth = "user" | "session" | "none";

export class BrainError extends Error {
  readonly status: number;
  /** The server's machine-readable code (VALIDATION_ERROR, IDEMPOTENCY_KEY_REUSED, ...). */
  readonly code: string;
  readonly serverMessage: string;
  readonly body: unknown;
  /** Seconds the server asked to wait (429, 503). */
  readonly retryAfter: number | null;
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
export function errorFor(status: number, body: unknown, retryAfter: number | null): BrainError;
/** The server ended an event stream for a reason a reconnect does not cure, or reconnecting was off. */
export class StreamEnded extends BrainError {
  /** The ending's name: revoked, error (or token-expired, too-slow, shutting-down with reconnect: false). */
  readonly reason: string;
  /** The commit sequence of the last event received: where a later stream resumes. */
  readonly lastEventId: number | null;
}
export interface SseMessage { event: string; data: string; id: string | null }
export class SseParser {
  retryMs: number | null;
  /** Feed one line (without its end); a message when the line completes one. */
  line(line: string): SseMessage | null;
}
export type StreamTicket = Schemas["StreamTicket"];
export type StreamEnding = Schemas["StreamEnding"];
export interface StreamOptions {
  /** Event type names or `prefix.*` namespaces. */
  type?: string | string[];
  /** First every event committed after this id (0: from the start). */
  after?: number;
  /** Resume after lost connections and curable endings (default true). */
  reconnect?: boolean;
  signal?: AbortSignal;
  onResume?: (lastEventId: number | null) => void;
}
export function jwtExpiry(jwt: string): number | null;

export interface BrainClientOptions {
  /** The API role, e.g. http://127.0.0.1:8080 */
  apiUrl: string;
  /** The auth role (default: apiUrl) */
  authUrl?: string;
  jwt?: string;
  /** A session token: the JWT is fetched for it, and again before it expires. */
  sessionToken?: string;
  /** Sent as x-api-key when there is no JWT. */
  apiKey?: string;
  /** Where fresh JWTs come from when another client (Better Auth's) holds the session. */
  getJwt?: () => Promise<string>;
  /** Retries of 429/503 (after Retry-After) and of lost connections for reads and keyed writes. */
  maxRetries?: number;
  /** Longest Retry-After (seconds) the client waits out by itself. */
  maxRetryWait?: number;
  fetch?: typeof fetch;
}

export type MailConnectFields = {
  refresh_token?: string;
  sync?: MailSyncChoices;
  /** Provider-specific fields (IMAP: host, port, tls, username, password). */
  [field: string]: unknown;
};

export class BrainClient {
  constructor(options: BrainClientOptions);
  apiUrl: string;
  authUrl: string;
  jwt: string | null;
  sessionToken: string | null;
  apiKey: string | null;
  retries: number;

  signUp(body: SignUpRequest): Promise<SessionResponse>;
  signIn(body: SignInRequest): Promise<SessionResponse>;
  refresh(): Promise<string>;
  getSession(): Promise<{ session: Schemas["Session"]; user: User } | null>;
  signOut(): Promise<void>;
  jwks(): Promise<Jwks>;

  health(): Promise<Health>;
  openapi(): Promise<Record<string, unknown>>;
  asyncapi(): Promise<Record<string, unknown>>;
  me(): Promise<Me>;
  postEvent(type: string, data: unknown, options?: { createdAt?: string | number; idempotencyKey?: string }): Promise<Event>;
  postEvents(events: NewEvent[], options?: { idempotencyKey?: string }): Promise<Event[]>;
  listEvents(query?: EventsQuery): Promise<EventsPage>;
  iterEvents(query?: Omit<EventsQuery, "limit" | "cursor"> & { pageSize?: number }): AsyncGenerator<Event, void, void>;
  search(q: string, query?: Omit<SearchQuery, "q">): Promise<SearchPage>;
  iterSearch(q: string, query?: Omit<SearchQuery, "q" | "limit" | "cursor"> & { pageSize?: number }): AsyncGenerator<SearchResult, void, void>;
  getEvent(id: number): Promise<Event>;
  deleteEvent(id: number): Promise<Deleted>;
  deleteEvents(filter: { type?: string | string[]; since?: string | number; until?: string | number }): Promise<number>;
  eventChanges(options?: { after?: number; limit?: number; type?: string | string[] }): Promise<ChangesPage>;
  iterChanges(options?: { after?: number; pageSize?: number; type?: string | string[] }): AsyncGenerator<Event, void, void>;
  meStats(): Promise<Stats>;
  streamEvents(options?: StreamOptions): AsyncGenerator<Event, void, void>;
  streamTicket(): Promise<StreamTicket>;
  eventSourceUrl(options?: { type?: string | string[] }): Promise<string>;
  mailConnect(provider: Schemas["MailConnect"]["provider"] | (string & {}), fields?: MailConnectFields): Promise<MailAuthorize | { account: MailAccount }>;
  mailStatus(): Promise<MailAccount[]>;
  mailDisconnect(account: string): Promise<{ account: MailAccount; events_kept?: true }>;
  mailChangeAccount(account: string, choices: MailSyncChoices): Promise<MailAccount>;
  mailSyncNow(account: string): Promise<MailAccount>;
  mailAttachment(message: string, attachment: string, options?: { account?: string }): Promise<Uint8Array>;
  request<T = unknown>(method: string, path: keyof paths | (string & {}), options?: { role?: Role; auth?: Auth; query?: Record<string, unknown>; body?: unknown }): Promise<T>;
}
