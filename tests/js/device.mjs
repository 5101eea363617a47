// A "device" for the scripts here: Better Auth's client with what a browser app keeps beside it —
// the bearer token (set-auth-token) and a cookie jar (the two_factor and passkey challenge
// cookies live there) — and every JWT it is handed (set-auth-jwt), for jose to verify at the end.
// Cookies go with an Origin, as a browser sends them.
import { createAuthClient } from "better-auth/client";
import { createRemoteJWKSet, jwtVerify } from "jose";

// `plugins(state)` gives the client's plugins (a callback may record into `state`); `jwts`
// collects [label, jwt] pairs.
export function device(name, { baseURL, plugins = () => [], jwts }) {
  const origin = new URL(baseURL).origin;
  const state = { name, bearer: null, cookies: new Map(), twoFactorRedirects: [] };
  state.client = createAuthClient({
    baseURL,
    plugins: plugins(state),
    fetchOptions: {
      auth: { type: "Bearer", token: () => state.bearer ?? undefined },
      onRequest: (ctx) => {
        const headers = new Headers(ctx.headers);
        if (state.cookies.size) {
          headers.set("cookie", [...state.cookies].map(([k, v]) => `${k}=${v}`).join("; "));
          headers.set("origin", origin);
        }
        return { ...ctx, headers };
      },
      onResponse: (ctx) => {
        for (const line of ctx.response.headers.getSetCookie()) {
          const [pair] = line.split(";");
          const eq = pair.indexOf("=");
          const [key, value] = [pair.slice(0, eq), pair.slice(eq + 1)];
          if (/max-age=0/i.test(line) || value === "") state.cookies.delete(key);
          else state.cookies.set(key, value);
        }
        const token = ctx.response.headers.get("set-auth-token");
        if (token) state.bearer = token;
        const jwt = ctx.response.headers.get("set-auth-jwt");
        if (jwt) jwts.push([`${name} ${new URL(ctx.response.url).pathname}`, jwt]);
      },
    },
  });
  return state;
}

// Every JWT collected, verified by jose against the server's JWKS: {label: {ok, sub} or {ok, error}}.
export async function verifyAll(jwts, { baseURL, issuer, audience }) {
  const JWKS = createRemoteJWKSet(new URL(`${baseURL}/api/auth/jwks`));
  const results = {};
  for (const [name, jwt] of jwts) {
    try {
      const { payload } = await jwtVerify(jwt, JWKS, { issuer, audience, algorithms: ["RS256"] });
      results[name] = { ok: true, sub: payload.sub };
    } catch (e) {
      results[name] = { ok: false, error: `${e.code ?? ""} ${e.message}` };
    }
  }
  return results;
}
