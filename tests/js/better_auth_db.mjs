// Writes a Better Auth 1.7 SQLite database the way a real deployment does (its own server code,
// better-sqlite3, the jwt plugin), for tests/test_import_better_auth.py to import into brain.
//
//   node better_auth_db.mjs /path/to/auth.db  ->  one JSON object on stdout: users, JWTs, baseURL
import Database from "better-sqlite3";
import { betterAuth } from "better-auth";
import { jwt } from "better-auth/plugins";
import { getMigrations } from "better-auth/db/migration";

const path = process.argv[2];
if (!path) {
  console.error("usage: node better_auth_db.mjs PATH/auth.db");
  process.exit(2);
}
const baseURL = "http://127.0.0.1:4999";
const options = {
  baseURL,
  secret: "better-auth-secret-used-only-by-this-test-0123456789",
  database: new Database(path),
  emailAndPassword: { enabled: true },
  plugins: [jwt()],
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
console.log(JSON.stringify(out));
