// Better Auth's own client against brain's social endpoints: signIn.social (up to the redirect),
// then, once Python has followed the provider and the callback, listAccounts and unlinkAccount
// with the session it got. tests/test_auth_social.py runs it and asserts on the JSON it prints.
//
//   AUTH_URL=... STEP=start PROVIDER=acme node social.mjs
//   AUTH_URL=... STEP=accounts TOKEN=<session token> node social.mjs
import { createAuthClient } from "better-auth/client";

const baseURL = process.env.AUTH_URL;
let setCookie = null;
const client = createAuthClient({
  baseURL,
  fetchOptions: {
    headers: { Origin: baseURL },
    auth: process.env.TOKEN ? { type: "Bearer", token: process.env.TOKEN } : undefined,
    onResponse: (ctx) => {
      setCookie = ctx.response.headers.get("set-cookie");
    },
  },
});
const summary = ({ data, error }) => ({
  data,
  error: error ? { status: error.status, code: error.code ?? null } : null,
});
const out = {};
if (process.env.STEP === "start") {
  out.signIn = summary(await client.signIn.social({ provider: process.env.PROVIDER, callbackURL: "/app", disableRedirect: true }));
  out.setCookie = setCookie;
  out.unknown = summary(await client.signIn.social({ provider: "no-such-provider", disableRedirect: true }));
} else {
  out.accounts = summary(await client.listAccounts());
  const last = out.accounts.data?.[0]?.id;
  out.unlinkLast = summary(await client.unlinkAccount({ accountId: last }));
}
console.log(JSON.stringify(out));
