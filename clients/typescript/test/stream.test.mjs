// The event stream through the TypeScript client against a live brain
// (tests/test_client_typescript.py starts it; with BRAIN_JWT_TTL set, its JWTs live that many seconds).
import assert from "node:assert/strict";
import { test } from "node:test";

import { BadRequest, BrainClient } from "../src/index.js";

const urls = { apiUrl: process.env.BRAIN_API_URL, authUrl: process.env.BRAIN_AUTH_URL };
const jwtTtl = Number(process.env.BRAIN_JWT_TTL || 0);
let n = 0;

async function signedUp(name) {
  const brain = new BrainClient(urls);
  const body = await brain.signUp({ name, email: `ts-stream-${process.pid}-${n++}@example.com`, password: "correct horse battery" });
  // A second client on the same session posts while the first one reads its stream.
  return { brain, writer: new BrainClient({ ...urls, sessionToken: body.token }) };
}

/** The next `count` events of a stream's iterator. */
async function take(iterator, count) {
  const events = [];
  while (events.length < count) {
    const { value, done } = await iterator.next();
    assert.ok(!done, "the stream ended early");
    events.push(value);
  }
  return events;
}

test("the stream follows live events and resumes after the last one seen", { skip: jwtTtl > 0 }, async () => {
  const { brain, writer } = await signedUp("Gus");
  await brain.postEvents([0, 1, 2].map((i) => ({ type: "note.created", data: i })));
  const stream = brain.streamEvents({ type: ["note.*"], after: 0 });
  const history = await take(stream, 3);
  assert.deepEqual(history.map((e) => e.data), [0, 1, 2]);
  setTimeout(() => writer.postEvents([{ type: "other.thing", data: 3 }, { type: "note.edited", data: 4 }]), 300);
  const [live] = await take(stream, 1);
  assert.equal(live.data, 4);
  await stream.return(); // closes the connection

  // Resumed after the last event seen: nothing twice, nothing missed.
  await brain.postEvent("note.created", 5);
  const resumed = brain.streamEvents({ type: "note.*", after: live.id });
  assert.deepEqual((await take(resumed, 1)).map((e) => e.data), [5]);
  await resumed.return();

  // The browser's way: a ticket in the URL (EventSource cannot send headers).
  const url = await brain.eventSourceUrl({ type: "note.*" });
  const controller = new AbortController();
  const response = await fetch(url, { signal: controller.signal });
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /^text\/event-stream/);
  controller.abort();

  const refused = brain.streamEvents({ type: "not a type" });
  await assert.rejects(refused.next(), (e) => e instanceof BadRequest && e.code === "VALIDATION_ERROR");
});

test("the stream resumes across JWT expiries without a gap or a repeat", { skip: jwtTtl === 0 }, async () => {
  const { brain, writer } = await signedUp("Hal");
  let resumed = 0;
  const stream = brain.streamEvents({ after: 0, onResume: () => { resumed += 1; } });
  const count = Math.ceil((jwtTtl * 2.5) / 0.5);
  const posting = (async () => {
    for (let i = 0; i < count; i++) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      await writer.postEvent("tick.tock", i);
    }
  })();
  const seen = (await take(stream, count)).map((e) => e.data);
  await posting;
  await stream.return();
  assert.deepEqual(seen, [...Array(count).keys()]);
  assert.ok(resumed >= 1, "the posts outlasted a JWT, so the stream was resumed");
});
