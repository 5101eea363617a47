// Drives brain's auth role with Better Auth's own client (createAuthClient + jwtClient), the
// way a Better Auth app does with the bearer plugin, and verifies the JWTs with jose against
// our JWKS. Prints one JSON object with what each step saw; tests/test_auth_js.py asserts on it.
//
//   AUTH_URL=http://127.0.0.1:3000 AUDIENCE=brain node compat.mjs
import { createAuthClient } from "better-auth/client";
import { jwtClient } from "better-auth/client/plugins";
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from "jose";
import { stepsInto, summary } from "./steps.mjs";

const baseURL = process.env.AUTH_URL;
const audience = process.env.AUDIENCE ?? "brain";
const issuer = process.env.ISSUER ?? baseURL;
if (!baseURL) {
  console.error("AUTH_URL is required");
  process.exit(2);
}

// What a browser app keeps in localStorage with the bearer plugin: the set-auth-token header.
let bearer = null;
let lastJwtHeader = null;
const client = createAuthClient({
  baseURL,
  plugins: [jwtClient()],
  fetchOptions: {
    auth: { type: "Bearer", token: () => bearer ?? undefined },
    onSuccess: (ctx) => {
      const token = ctx.response.headers.get("set-auth-token");
      if (token) bearer = token;
      lastJwtHeader = ctx.response.headers.get("set-auth-jwt");
    },
  },
});

const out = { steps: {} };
const step = stepsInto(out);

const email = `compat-${Date.now()}@Example.com`;
const password = "correct horse battery";
const JWKS = createRemoteJWKSet(new URL(`${baseURL}/api/auth/jwks`));
const verify = async (jwt) => {
  const { payload, protectedHeader } = await jwtVerify(jwt, JWKS, { issuer, audience, algorithms: ["RS256"] });
  return { payload, header: protectedHeader };
};

await step("signUp", async () => {
  const res = summary(await client.signUp.email({ email, password, name: "Compat User" }));
  return { ...res, bearer, jwtHeader: lastJwtHeader };
});
await step("duplicate", async () => summary(await client.signUp.email({ email: email.toUpperCase(), password, name: "Again" })));
await step("shortPassword", async () =>
  summary(await client.signUp.email({ email: `short-${Date.now()}@example.com`, password: "short", name: "S" })),
);
bearer = null;
await step("wrongPassword", async () => summary(await client.signIn.email({ email, password: "wrong password!" })));
await step("signIn", async () => {
  const res = summary(await client.signIn.email({ email: email.toLowerCase(), password }));
  return { ...res, bearer };
});
await step("getSession", async () => {
  lastJwtHeader = null;
  const res = summary(await client.getSession());
  return { ...res, jwtHeader: lastJwtHeader };
});
await step("getSessionRawToken", async () => {
  // The bearer plugin also accepts the unsigned token that sign-in returned.
  const raw = out.steps.signIn?.data?.token;
  return summary(await client.getSession({ fetchOptions: { auth: { type: "Bearer", token: raw } } }));
});
await step("token", async () => summary(await client.token()));
await step("jwks", async () => summary(await client.jwks()));
await step("verify", async () => {
  const results = {};
  for (const [name, jwt] of [
    ["signUpJwt", out.steps.signUp?.data?.jwt],
    ["signInJwt", out.steps.signIn?.data?.jwt],
    ["sessionHeaderJwt", out.steps.getSession?.jwtHeader],
    ["tokenJwt", out.steps.token?.data?.token],
  ]) {
    try {
      results[name] = { ok: true, ...(await verify(jwt)), kid: decodeProtectedHeader(jwt).kid };
    } catch (e) {
      results[name] = { ok: false, error: `${e.code ?? ""} ${e.message}` };
    }
  }
  return results;
});
await step("verifyWrongAudience", async () => {
  try {
    await jwtVerify(out.steps.token.data.token, JWKS, { issuer, audience: "someone-else" });
    return { ok: true };
  } catch (e) {
    return { ok: false, code: e.code ?? null };
  }
});
await step("signOut", async () => summary(await client.signOut()));
await step("afterSignOutSession", async () => summary(await client.getSession()));
await step("afterSignOutToken", async () => summary(await client.token()));

console.log(JSON.stringify(out));
// The client's session signal arms short timers; do not wait for them.
process.exit(0);
