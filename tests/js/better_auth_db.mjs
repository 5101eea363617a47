// Writes a Better Auth 1.7 SQLite database the way a real deployment does (its own server code,
// better-sqlite3, the jwt plugin, the passkey plugin's table), for tests/test_import_better_auth.py
// to import into brain.
//
//   node better_auth_db.mjs /path/to/auth.db  ->  one JSON object on stdout: users, JWTs, baseURL
import { generateKeyPairSync, randomBytes } from "node:crypto";
import Database from "better-sqlite3";
import { base64 } from "@better-auth/utils/base64";
import { betterAuth } from "better-auth";
import { jwt } from "better-auth/plugins";
import { getMigrations } from "better-auth/db/migration";

const path = process.argv[2];
if (!path) {
  console.error("usage: node better_auth_db.mjs PATH/auth.db");
  process.exit(2);
}
const baseURL = "http://127.0.0.1:4999";
// @better-auth/passkey's table, as its schema.ts declares it: the plugin itself is not published
// for better-auth 1.7.25 (and its ceremonies need a browser), but the schema is all Better Auth
// needs to create the table, and rows are written as its verify-registration writes them.
const passkeySchema = {
  passkey: {
    fields: {
      name: { type: "string", required: false },
      publicKey: { type: "string", required: true },
      userId: { type: "string", references: { model: "user", field: "id" }, required: true, index: true },
      credentialID: { type: "string", required: true, index: true },
      counter: { type: "number", required: true },
      deviceType: { type: "string", required: true },
      backedUp: { type: "boolean", required: true },
      transports: { type: "string", required: false },
      createdAt: { type: "date", required: false },
      aaguid: { type: "string", required: false },
    },
  },
};
const options = {
  baseURL,
  secret: "better-auth-secret-used-only-by-this-test-0123456789",
  database: new Database(path),
  emailAndPassword: { enabled: true },
  plugins: [jwt(), { id: "passkey", schema: passkeySchema }],
  logger: { disabled: true },
};
const auth = betterAuth(options);
const { runMigrations } = await getMigrations(auth.options);
await runMigrations();
const ctx = await auth.$context;

const people = [
  { name: "Ada Lovelace", email: "ada@example.com", password: "analytical engine" },
  // NFKC: Better Auth hashes the normalised form, so the composed "é" signs in too.
  { name: "Zoë Unicode", email: "Zoe@Example.com", password: "cafe\u0301 au lait 42" },
  { name: "Grace Hopper", email: "grace@example.com", password: "nanoseconds 11.8in" },
];
const out = { baseURL, users: [], jwts: {}, sessions: {} };
for (const p of people) {
  const res = await auth.api.signUpEmail({ body: p });
  out.users.push({ id: res.user.id, email: res.user.email, name: p.name, password: p.password });
}
// Ada verified her address; Grace also signs in with GitHub (a social account row).
const [ada, zoe, grace] = out.users;
await ctx.internalAdapter.updateUser(ada.id, { emailVerified: true });
await ctx.internalAdapter.linkAccount({
  userId: grace.id, providerId: "github", accountId: "583231", scope: "read:user,user:email",
  accessToken: "gho_not_imported", refreshToken: "ghr_not_imported",
});
// Sign in (a live session) and get a JWT from the jwt plugin, as an app would.
for (const u of [ada, zoe]) {
  const { headers, response } = await auth.api.signInEmail({
    body: { email: u.email, password: u.password }, returnHeaders: true,
  });
  out.sessions[u.email] = response.token;
  const cookie = headers.get("set-cookie").split(";")[0];
  const { token } = await auth.api.getToken({ headers: new Headers({ cookie }) });
  out.jwts[u.email] = token;
}
// An expired session: sessions to import are only the live ones.
const expired = await ctx.internalAdapter.createSession(grace.id);
await ctx.internalAdapter.updateSession(expired.token, { expiresAt: new Date(Date.now() - 60_000) });
out.jwks = await auth.api.getJwks();

// Passkeys: one of Ada's, and Linus, who has nothing but a passkey (passkey-first registration).
// An ES256 key as an authenticator makes it; its COSE form goes in base64 as Better Auth stores
// it (base64.encode of SimpleWebAuthn's credential.publicKey); the private key goes to the test.
function passkeyFor(userId, name, counter) {
  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const { x, y } = publicKey.export({ format: "jwk" });
  const cose = Buffer.concat([
    Buffer.from([0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20]), Buffer.from(x, "base64url"),
    Buffer.from([0x22, 0x58, 0x20]), Buffer.from(y, "base64url"),
  ]);
  const credentialID = randomBytes(32).toString("base64url");
  const row = {
    name, userId, credentialID, publicKey: base64.encode(cose), counter, deviceType: "singleDevice",
    transports: "usb,nfc", backedUp: false, createdAt: new Date(), aaguid: "00000000-0000-0000-0000-000000000000",
  };
  return { row, test: { userId, credentialID, counter, privateKey: privateKey.export({ format: "pem", type: "pkcs8" }) } };
}
const linus = await ctx.internalAdapter.createUser({ name: "Linus Passkey", email: "linus@example.com", emailVerified: true });
out.users.push({ id: linus.id, email: linus.email, name: linus.name, password: null });
out.passkeys = [];
for (const [userId, name, counter] of [[ada.id, "Ada's key", 7], [linus.id, null, 0]]) {
  const { row, test } = passkeyFor(userId, name, counter);
  await ctx.adapter.create({ model: "passkey", data: row });
  out.passkeys.push(test);
}
console.log(JSON.stringify(out));
