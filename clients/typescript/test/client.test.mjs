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
  assert.equal((await brain.asyncapi()).asyncapi, "3.0.0");

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

test("search, single events, deletions, the changes feed and statistics", async () => {
  const { brain } = await signedUp("Sam");
  const lease = await brain.postEvent("note.created", { title: "The lease", text: "Anna signs the lease on Monday" });
  await brain.postEvents([0, 1, 2, 3].map((i) => ({ type: "note.created", data: { title: `Note ${i}`, text: "nothing here" } })));
  const page = await brain.search("lease");
  assert.deepEqual(page.results.map((r) => r.event.id), [lease.id]);
  assert.equal(page.next_cursor, null);
  assert.match(page.results[0].highlights.title, /<mark>lease<\/mark>/);
  let found = 0;
  for await (const result of brain.iterSearch("nothing", { pageSize: 3 })) found += result.event.type === "note.created";
  assert.equal(found, 4);
  assert.deepEqual(await brain.getEvent(lease.id), lease);
  const stats = await brain.meStats();
  assert.equal(stats.events, 5);
  assert.deepEqual(stats.by_type, { "note.created": 5 });
  const written = [];
  for await (const event of brain.iterChanges({ pageSize: 2 })) written.push(event);
  assert.equal(written.length, 5);
  assert.equal(written[0].id, lease.id);

  assert.deepEqual(await brain.deleteEvent(lease.id), { deleted: 1, ids: [lease.id] });
  assert.deepEqual((await brain.search("lease")).results, []);
  await assert.rejects(brain.getEvent(lease.id), NotFound);
  assert.equal(await brain.deleteEvents({ type: ["note.*"] }), 4);
  // The deleted events are gone from the feed; their five tombstones follow, in commit order.
  const changes = [];
  for await (const event of brain.iterChanges({ pageSize: 4 })) changes.push(event);
  assert.deepEqual(changes.map((e) => e.type), Array(5).fill("event.deleted"));
  assert.ok(changes[0].id > written[4].id);
  assert.equal(changes[0].data.id, lease.id);
  const rest = await brain.eventChanges({ after: changes[1].id, type: "event.deleted" });
  assert.deepEqual(rest.events, changes.slice(2));
  assert.equal(rest.has_more, false);
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
