// Signing in and out at the auth role, and the JWT the API wants.
//
// The auth role keeps the session in its HttpOnly, SameSite=Lax cookie; this page never sees
// it. What the page holds is a JWT (in memory only, never in a URL or in storage), fetched from
// /api/auth/token with that cookie and fetched again before it expires.

import { parseExact } from "./json.js";

const AUTH = document.querySelector('meta[name="brain-auth-url"]').content.replace(/\/$/, "");
// Ask for a new JWT this long before the current one expires (at most a quarter of its life).
const REFRESH_EARLY_SECONDS = 60;

let jwt = null;
let claims = null;
let refreshTimer = null;
const changes = new Set();

/** An answer of brain that was not 2xx: its status, code and message. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

/** The signed-in user's claims ({sub, email, name, ...}), or null. */
export const user = () => claims;

/** Call `listener(user or null)` whenever the user signs in or out. */
export function onChange(listener) {
  changes.add(listener);
}

async function read(response, exact) {
  const text = response.status === 204 ? "" : await response.text();
  let body = null;
  if (text) {
    try {
      body = exact ? parseExact(text) : JSON.parse(text);
    } catch {
      body = { message: text.slice(0, 200) };
    }
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/** A call to the auth role, with its session cookie. */
export async function auth(path, { method = "GET", body } = {}) {
  const options = { method, credentials: "include", headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  return read(await fetch(AUTH + path, options), false);
}

/** A call to the API (this page's origin) with the JWT; `exact`: parse with parseExact. */
export async function api(path, { method = "GET", body, exact = false } = {}) {
  const attempt = async () => {
    const options = { method, headers: { Authorization: `Bearer ${jwt}` } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(path, options);
  };
  let response = await attempt();
  if (response.status === 401 && jwt) {
    // The JWT ran out under us (a sleeping laptop): one fresh token, one retry.
    await refresh();
    response = await attempt();
  }
  return read(response, exact);
}

function decode(token) {
  const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0))));
}

function adopt(token) {
  const wasSignedIn = claims !== null;
  jwt = token;
  claims = decode(token);
  clearTimeout(refreshTimer);
  // Timed from now and the token's own lifetime, so a wrong clock here does not matter.
  const lifetime = claims.exp - claims.iat;
  const early = Math.min(REFRESH_EARLY_SECONDS, lifetime / 4);
  refreshTimer = setTimeout(() => refresh().catch(() => {}), Math.max(1, lifetime - early) * 1000);
  if (!wasSignedIn) changes.forEach((listener) => listener(claims));
}

function forget() {
  const wasSignedIn = claims !== null;
  jwt = null;
  claims = null;
  clearTimeout(refreshTimer);
  if (wasSignedIn) changes.forEach((listener) => listener(null));
}

/** A fresh JWT from the session cookie; signs the page out if the session is gone. */
export async function refresh() {
  try {
    adopt((await auth("/api/auth/token")).token);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) forget();
    throw error;
  }
  return jwt;
}

/** On load: whether the browser still has a session (then the page is signed in). get-session
 * answers null rather than 401 without one, so a signed-out visit logs no failed request. */
export async function restore() {
  try {
    const response = await fetch(`${AUTH}/api/auth/get-session`, { credentials: "include" });
    const current = await read(response, false);
    const token = response.headers.get("set-auth-jwt");
    if (!current || !token) return false;
    adopt(token);
    return true;
  } catch {
    return false;
  }
}

/** Sign in with email and password. */
export async function signIn(email, password) {
  const answer = await auth("/api/auth/sign-in/email", { method: "POST", body: { email, password } });
  if (answer.twoFactorRedirect) throw new Error("This account uses two-factor sign-in, which the console does not offer yet.");
  adopt(answer.jwt || (await auth("/api/auth/token")).token);
}

/** Create an account; false when it must verify its email first (no session yet). The
 * verification link brings the browser back to `callbackURL`. */
export async function signUp(name, email, password, callbackURL) {
  const answer = await auth("/api/auth/sign-up/email", { method: "POST", body: { name, email, password, callbackURL } });
  if (!answer.token) return false;
  adopt(answer.jwt || (await auth("/api/auth/token")).token);
  return true;
}

/** End the session at the auth role, and here. */
export async function signOut() {
  try {
    await auth("/api/auth/sign-out", { method: "POST", body: {} });
  } finally {
    forget();
  }
}

/** The page forgets the user (after the account was deleted or the session revoked). */
export function signedOut() {
  forget();
}

/** Where emailed links come back to: this page. */
export const pageUrl = () => `${location.origin}/console/`;
