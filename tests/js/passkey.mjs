// Drives brain's passkey endpoints through Better Auth 1.7's core client ($fetch: the passkey
// client plugin, @better-auth/passkey, is not published for Better Auth 1.7.25 and needs a
// browser's navigator.credentials). The passkey was registered from Python with the software
// authenticator (tests/fakes/authenticator.py), which hands over its private key; here the
// client lists, renames and deletes passkeys, and signs in with one: the challenge cookie goes
// through the client's own fetch, and node:crypto signs the assertion as an authenticator would.
// jose verifies every JWT. Prints one JSON object; tests/test_auth_passkeys_js.py asserts on it.
//
//   AUTH_URL=... EMAIL=... PASSWORD=... KEY_PEM=... CREDENTIAL_ID=... OTHER_PASSKEY_ID=... node passkey.mjs
import { createHash, createPrivateKey, sign } from "node:crypto";
import { jwtClient } from "better-auth/client/plugins";
import { device, verifyAll } from "./device.mjs";
import { stepsInto, summary } from "./steps.mjs";

const { AUTH_URL: baseURL, EMAIL: email, PASSWORD: password, KEY_PEM, CREDENTIAL_ID, OTHER_PASSKEY_ID } = process.env;
const audience = process.env.AUDIENCE ?? "brain";
const issuer = process.env.ISSUER ?? baseURL;
if (!baseURL || !email || !password || !KEY_PEM || !CREDENTIAL_ID || !OTHER_PASSKEY_ID) {
  console.error("AUTH_URL, EMAIL, PASSWORD, KEY_PEM, CREDENTIAL_ID and OTHER_PASSKEY_ID are required");
  process.exit(2);
}
const origin = new URL(baseURL).origin;
const jwts = [];
const out = { steps: {} };
const step = stepsInto(out);
const key = createPrivateKey(KEY_PEM);
let signCount = 0;

// navigator.credentials.get() on a security key: authenticator data (RP ID hash, user present
// and verified, the next count), clientDataJSON, and an ES256 signature over both.
function assertion(options) {
  signCount += 1;
  const authenticatorData = Buffer.concat([
    createHash("sha256").update(options.rpId).digest(),
    Buffer.from([0x05]),
    Buffer.from([signCount >>> 24, (signCount >>> 16) & 255, (signCount >>> 8) & 255, signCount & 255]),
  ]);
  const clientDataJSON = Buffer.from(
    JSON.stringify({ type: "webauthn.get", challenge: options.challenge, origin, crossOrigin: false }),
  );
  const signature = sign("sha256", Buffer.concat([authenticatorData, createHash("sha256").update(clientDataJSON).digest()]), key);
  return {
    id: CREDENTIAL_ID,
    rawId: CREDENTIAL_ID,
    type: "public-key",
    response: {
      clientDataJSON: clientDataJSON.toString("base64url"),
      authenticatorData: authenticatorData.toString("base64url"),
      signature: signature.toString("base64url"),
      userHandle: null,
    },
    authenticatorAttachment: "cross-platform",
    clientExtensionResults: {},
  };
}

const laptop = device("laptop", { baseURL, jwts, plugins: () => [jwtClient()] });
const fetch = (path, init) => laptop.client.$fetch(path, init);

await step("signIn", async () => summary(await laptop.client.signIn.email({ email, password })));
await step("list", async () => summary(await fetch("/passkey/list-user-passkeys", { method: "GET" })));
const mine = () => out.steps.list.data[0].id;
await step("rename", async () =>
  summary(await fetch("/passkey/update-passkey", { method: "POST", body: { id: mine(), name: "Renamed by the client" } })),
);
await step("renameOthers", async () =>
  summary(await fetch("/passkey/update-passkey", { method: "POST", body: { id: OTHER_PASSKEY_ID, name: "mine now" } })),
);
await step("deleteOthers", async () =>
  summary(await fetch("/passkey/delete-passkey", { method: "POST", body: { id: OTHER_PASSKEY_ID } })),
);
await step("signOut", async () => summary(await laptop.client.signOut()));
laptop.bearer = null;
await step("sessionAfterSignOut", async () => summary(await laptop.client.getSession()));

// Sign in with the passkey: options (the challenge cookie lands in the jar), then the assertion.
await step("options", async () => {
  const res = summary(await fetch("/passkey/generate-authenticate-options", { method: "GET" }));
  return { ...res, cookies: [...laptop.cookies.keys()] };
});
await step("signInPasskey", async () => {
  const res = summary(
    await fetch("/passkey/verify-authentication", { method: "POST", body: { response: assertion(out.steps.options.data) } }),
  );
  return { ...res, cookies: [...laptop.cookies.keys()], bearer: laptop.bearer };
});
await step("replay", async () => {
  signCount -= 1; // the same count again, with a fresh challenge: what a cloned key would send
  const options = (await fetch("/passkey/generate-authenticate-options", { method: "GET" })).data;
  return summary(await fetch("/passkey/verify-authentication", { method: "POST", body: { response: assertion(options) } }));
});
await step("session", async () => summary(await laptop.client.getSession()));
await step("delete", async () => summary(await fetch("/passkey/delete-passkey", { method: "POST", body: { id: mine() } })));
await step("listAfterDelete", async () => summary(await fetch("/passkey/list-user-passkeys", { method: "GET" })));
await step("verify", async () => verifyAll(jwts, { baseURL, issuer, audience }));

console.log(JSON.stringify(out));
process.exit(0);
