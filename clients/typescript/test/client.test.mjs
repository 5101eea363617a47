// The TypeScript client against a live brain (tests/test_client_typescript.py starts it and
// passes its URLs, a Gmail refresh token of the local fake and a message with an attachment).
import assert from "node:assert/strict";
import { test } from "node:test";

import { BadRequest, BrainClient, Forbidden, NotFound, Unauthorized, Unprocessable } from "../src/index.js";

const env = process.env;
const urls = { apiUrl: env.BRAIN_API_URL, authUrl: env.BRAIN_AUTH_URL };
const password = "correct horse battery";
let n = 0;
const email = () => `ts-${process.pid}-${n++}@example.com`;

async function signedUp(name) {
  const brain = new BrainClient(urls);
  const body = await brain.signUp({ name, email: email(), password });
  return { brain, body };
}

function expiredJwt() {
  const claims = Buffer.from(JSON.stringify({ exp: Math.floor(Date.now() / 1000) - 10 })).toString("base64url");
  return `eyJhbGciOiJSUzI1NiJ9.${claims}.c2ln`;
}

test("sign-up, events and pagination across pages", async () => {
  const { brain, body } = await signedUp("Ada");
  assert.equal(brain.sessionToken, body.token);
  assert.equal((await brain.me()).id, body.user.id);
  assert.equal((await brain.getSession()).user.id, body.user.id);
  assert.ok((await brain.jwks()).keys.length >= 1);
  assert.equal((await brain.health()).status, "ok");
  assert.match((await brain.openapi()).openapi, /^3\.1/);

  await brain.postEvent("note.created", { n: 0 });
  const batch = await brain.postEvents([1, 2, 3, 4, 5, 6].map((i) => ({ type: "note.created", data: { n: i } })));
  assert.deepEqual(batch.map((e) => e.data.n), [1, 2, 3, 4, 5, 6]);
  const page = await brain.listEvents({ type: "note.created", limit: 3 });
  assert.equal(page.events.length, 3);
  assert.ok(page.next_cursor);
  const seen = [];
  for await (const event of brain.iterEvents({ type: "note.created", pageSize: 3 })) seen.push(event.data.n);
  assert.deepEqual(seen, [6, 5, 4, 3, 2, 1, 0]);

  const once = await brain.postEvent("note.created", { n: 7 }, { idempotencyKey: "once" });
  assert.equal((await brain.postEvent("note.created", { n: 7 }, { idempotencyKey: "once" })).id, once.id);

  await brain.signOut();
  await assert.rejects(brain.me(), (error) => error instanceof Unauthorized && error.code === "INVALID_TOKEN");
});

test("errors are typed and carry the server's code", async () => {
  const { brain } = await signedUp("Bea");
  await assert.rejects(brain.postEvent("not a type", {}), (e) => e instanceof BadRequest && e.code === "VALIDATION_ERROR");
  await assert.rejects(brain.postEvent("mail.x", {}), (e) => e instanceof Forbidden && e.code === "RESERVED_EVENT_TYPE");
  await brain.postEvent("note.created", 1, { idempotencyKey: "k1" });
  await assert.rejects(brain.postEvent("note.created", 2, { idempotencyKey: "k1" }),
    (e) => e instanceof Unprocessable && e.code === "IDEMPOTENCY_KEY_REUSED" && e.status === 422);
  await assert.rejects(brain.mailDisconnect("no-such-account"), (e) => e instanceof NotFound);
});

test("the JWT is refreshed before it expires: from the session, or from getJwt", async () => {
  const { brain, body } = await signedUp("Cy");
  const fromSession = new BrainClient({ ...urls, sessionToken: body.token });
  assert.equal((await fromSession.me()).id, body.user.id);
  fromSession.jwt = expiredJwt();
  assert.equal((await fromSession.me()).id, body.user.id);
  assert.notEqual(fromSession.jwt, expiredJwt());
  // Composed with another client that holds the session (Better Auth's authClient.token()).
  let asked = 0;
  const composed = new BrainClient({ ...urls, getJwt: async () => { asked += 1; return brain.refresh(); } });
  assert.equal((await composed.me()).id, body.user.id);
  assert.equal(asked, 1);
  const stale = new BrainClient({ ...urls, jwt: expiredJwt() });
  await assert.rejects(stale.me(), Unauthorized);
});

test("mail: connect, status, change, sync now, attachment, disconnect", async () => {
  const { brain } = await signedUp("Di");
  const link = await brain.mailConnect("gmail");
  assert.ok(link.authorize_url.startsWith(`${urls.apiUrl}/mail/oauth/start`));
  const { account } = await brain.mailConnect("gmail", { refresh_token: env.BRAIN_GMAIL_REFRESH_TOKEN });
  let received;
  for (let i = 0; i < 300 && !received; i++) {
    for await (const event of brain.iterEvents({ type: "mail.message.received" })) {
      if (event.data.message_id === env.BRAIN_GMAIL_MESSAGE) received = event;
    }
    if (!received) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.ok(received, "the message synced");
  const [status] = await brain.mailStatus();
  assert.equal(status.account, account.account);
  assert.equal((await brain.mailChangeAccount(account.account, { keep_html: true })).sync.keep_html, true);
  assert.equal((await brain.mailSyncNow(account.account)).account, account.account);
  const [attachment] = received.data.attachments;
  const bytes = await brain.mailAttachment(env.BRAIN_GMAIL_MESSAGE, attachment.id);
  assert.equal(Buffer.from(bytes).toString(), env.BRAIN_GMAIL_ATTACHMENT);
  const gone = await brain.mailDisconnect(account.account);
  assert.equal(gone.account.state, "disconnected");
});
