// Drives brain's account endpoints with Better Auth 1.7's own client and its twoFactorClient and
// apiKeyClient (@better-auth/api-key) plugins: sessions, account changes, two-factor and API
// keys, then uses the API keys against the API role. jose verifies every JWT on the way. Prints
// one JSON object with what each step saw; tests/test_auth_account_js.py asserts on it.
//
//   AUTH_URL=http://127.0.0.1:3000 API_URL=http://127.0.0.1:8080 AUDIENCE=brain node account.mjs
import { createHmac } from "node:crypto";
import { jwtClient, twoFactorClient } from "better-auth/client/plugins";
import { apiKeyClient } from "@better-auth/api-key/client";
import { device as makeDevice, verifyAll } from "./device.mjs";
import { stepsInto, summary } from "./steps.mjs";

const baseURL = process.env.AUTH_URL;
const apiURL = process.env.API_URL;
const audience = process.env.AUDIENCE ?? "brain";
const issuer = process.env.ISSUER ?? baseURL;
if (!baseURL || !apiURL) {
  console.error("AUTH_URL and API_URL are required");
  process.exit(2);
}
const jwts = [];
const device = (name) =>
  makeDevice(name, {
    baseURL,
    jwts,
    plugins: (state) => [
      jwtClient(),
      twoFactorClient({ onTwoFactorRedirect: (ctx) => state.twoFactorRedirects.push(ctx) }),
      apiKeyClient(),
    ],
  });

const out = { steps: {} };
const step = stepsInto(out);

// RFC 6238 TOTP (SHA-1, 6 digits, 30 s) from the otpauth URI's base32 secret.
function totp(uri, stepOffset = 0) {
  const secret = new URL(uri).searchParams.get("secret");
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret.replace(/=+$/, "")) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 30000) + stepOffset));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = mac[mac.length - 1] & 15;
  const value = (mac.readUInt32BE(offset) & 0x7fffffff) % 1000000;
  return value.toString().padStart(6, "0");
}

const api = async (path, headers, init = {}) => {
  const response = await fetch(`${apiURL}${path}`, { ...init, headers: { ...headers, ...(init.headers ?? {}) } });
  let body = null;
  try {
    body = await response.json();
  } catch {}
  return { status: response.status, body, challenge: response.headers.get("www-authenticate") };
};

const email = `account-${Date.now()}@example.com`;
const password = "correct horse battery";
const newPassword = "a new horse battery staple";
const main = device("main");
const laptop = device("laptop");
const phone = device("phone");

// --- sessions -----------------------------------------------------------------------------------
await step("signUp", async () => summary(await main.client.signUp.email({ email, password, name: "Account User" })));
await step("signInLaptop", async () => summary(await laptop.client.signIn.email({ email, password })));
await step("signInPhone", async () => summary(await phone.client.signIn.email({ email, password })));
await step("listSessions", async () => summary(await main.client.listSessions()));
await step("revokeLaptop", async () => {
  const laptopSession = out.steps.listSessions.data.find((s) => s.id === out.steps.signInLaptop.data.session.id);
  return summary(await main.client.revokeSession({ token: laptopSession.token }));
});
await step("laptopAfterRevoke", async () => summary(await laptop.client.getSession()));
await step("phoneStillIn", async () => summary(await phone.client.getSession()));
await step("revokeOthers", async () => summary(await main.client.revokeOtherSessions()));
await step("phoneAfterRevokeOthers", async () => summary(await phone.client.getSession()));
await step("listAfterRevokes", async () => summary(await main.client.listSessions()));

// --- account changes --------------------------------------------------------------------------
await step("updateUser", async () =>
  summary(await main.client.updateUser({ name: "Renamed User", image: "https://example.com/me.png" })),
);
await step("sessionAfterUpdate", async () => summary(await main.client.getSession()));
await step("updateUserControlChars", async () => summary(await main.client.updateUser({ name: "evil\u001b[2Jname" })));
await step("updateUserEmail", async () => summary(await main.client.updateUser({ email: "other@example.com" })));
await step("changePasswordWrong", async () =>
  summary(await main.client.changePassword({ currentPassword: "not my password", newPassword })),
);
await step("changePasswordKeep", async () =>
  summary(await main.client.changePassword({ currentPassword: password, newPassword })),
);
await step("signInPhoneAgain", async () => summary(await phone.client.signIn.email({ email, password: newPassword })));
await step("changePasswordRevoke", async () => {
  const before = main.bearer;
  const res = summary(
    await main.client.changePassword({ currentPassword: newPassword, newPassword: password, revokeOtherSessions: true }),
  );
  return { ...res, bearerChanged: main.bearer !== before };
});
await step("phoneAfterPasswordRevoke", async () => summary(await phone.client.getSession()));
await step("mainAfterPasswordRevoke", async () => summary(await main.client.getSession()));
await step("changeEmail", async () =>
  summary(await main.client.changeEmail({ newEmail: `new-${email}`, callbackURL: "/settings" })),
);

// --- two-factor -----------------------------------------------------------------------------------
await step("enable2fa", async () => summary(await main.client.twoFactor.enable({ password })));
const uri = () => out.steps.enable2fa.data.totpURI;
await step("verifyTotpEnabling", async () => summary(await main.client.twoFactor.verifyTotp({ code: totp(uri()) })));
await step("getTotpUri", async () => summary(await main.client.twoFactor.getTotpUri({ password })));
await step("generateBackupCodes", async () => summary(await main.client.twoFactor.generateBackupCodes({ password })));
await step("signOutFor2fa", async () => summary(await main.client.signOut()));
main.bearer = null;
await step("signIn2fa", async () => {
  const res = summary(await main.client.signIn.email({ email, password }));
  return { ...res, cookies: [...main.cookies.keys()], redirects: main.twoFactorRedirects.length };
});
await step("verifyTotpWrong", async () => summary(await main.client.twoFactor.verifyTotp({ code: totp(uri(), -5) })));
await step("verifyTotpSignIn", async () => {
  const res = summary(await main.client.twoFactor.verifyTotp({ code: totp(uri(), 1) }));
  return { ...res, cookies: [...main.cookies.keys()], bearer: main.bearer };
});
await step("sessionAfter2fa", async () => summary(await main.client.getSession()));
await step("signOutForBackup", async () => summary(await main.client.signOut()));
main.bearer = null;
const backupCode = () => out.steps.generateBackupCodes.data.backupCodes[0];
await step("signInBackup", async () => summary(await main.client.signIn.email({ email, password })));
await step("verifyBackupCode", async () => summary(await main.client.twoFactor.verifyBackupCode({ code: backupCode() })));
await step("signOutForBackupReuse", async () => summary(await main.client.signOut()));
main.bearer = null;
await step("signInBackupReuse", async () => summary(await main.client.signIn.email({ email, password })));
await step("verifyBackupCodeReuse", async () =>
  summary(await main.client.twoFactor.verifyBackupCode({ code: backupCode() })),
);
await step("verifyOtherBackupCode", async () =>
  summary(await main.client.twoFactor.verifyBackupCode({ code: out.steps.generateBackupCodes.data.backupCodes[1] })),
);
await step("disable2fa", async () => summary(await main.client.twoFactor.disable({ password })));
await step("signInWithout2fa", async () => summary(await phone.client.signIn.email({ email, password })));

// --- API keys -------------------------------------------------------------------------------------
await step("createKey", async () =>
  summary(
    await main.client.apiKey.create({
      name: "reader",
      expiresIn: 30 * 86400,
      metadata: { purpose: "compat" },
      permissions: { events: ["read"] },
    }),
  ),
);
const key = () => out.steps.createKey.data.key;
await step("createFullKey", async () => summary(await main.client.apiKey.create({ name: "agent" })));
await step("listKeys", async () => summary(await main.client.apiKey.list()));
await step("getKey", async () => summary(await main.client.apiKey.get({ query: { id: out.steps.createKey.data.id } })));
await step("updateKey", async () =>
  summary(await main.client.apiKey.update({ keyId: out.steps.createKey.data.id, name: "events reader" })),
);
await step("serverOnlyField", async () => summary(await main.client.apiKey.create({ name: "x", remaining: 5 })));
await step("apiMeWithKey", async () => api("/me", { "x-api-key": key() }));
await step("apiMeWithBearerKey", async () => api("/me", { authorization: `Bearer ${key()}` }));
await step("apiEventsRead", async () => api("/events", { "x-api-key": key() }));
await step("apiEventsWrite", async () =>
  api("/events", { "x-api-key": key(), "content-type": "application/json" }, {
    method: "POST",
    body: JSON.stringify({ type: "note.created", data: { by: "key" } }),
  }),
);
await step("apiEventsWriteFullKey", async () =>
  api("/events", { "x-api-key": out.steps.createFullKey.data.key, "content-type": "application/json" }, {
    method: "POST",
    body: JSON.stringify({ type: "note.created", data: { by: "agent" } }),
  }),
);
await step("apiMeWithJwt", async () => api("/me", { authorization: `Bearer ${(await main.client.token()).data.token}` }));
await step("deleteKey", async () => summary(await main.client.apiKey.delete({ keyId: out.steps.createKey.data.id })));
await step("apiMeAfterDelete", async () => api("/me", { "x-api-key": key() }));
await step("listAfterDelete", async () => summary(await main.client.apiKey.list()));

// --- every JWT seen, verified by jose ---------------------------------------------------------------
await step("verify", async () => verifyAll(jwts, { baseURL, issuer, audience }));

console.log(JSON.stringify(out));
process.exit(0);
