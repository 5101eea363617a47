// A 429 waited out: two IMAP connects hang at a server that never answers ([mail]
// connects_per_user = 2), so a third is refused with 429 TOO_MANY_CONNECTS and Retry-After;
// the client waits, the hanging ones end meanwhile, and its retry reaches the provider (gone by
// then: 502). tests/test_client_typescript.py starts brain with the IMAP provider on loopback.
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";

import { BrainClient, RateLimited, ServerError } from "../src/index.js";

const urls = { apiUrl: process.env.BRAIN_API_URL, authUrl: process.env.BRAIN_AUTH_URL };

test("a 429 is retried after its Retry-After", async () => {
  const sockets = [];
  const silent = net.createServer((socket) => sockets.push(socket));
  await new Promise((resolve) => silent.listen(0, "127.0.0.1", resolve));
  const imap = { host: "127.0.0.1", port: silent.address().port, tls: "plain", username: "u", password: "p" };
  const brain = new BrainClient(urls);
  await brain.signUp({ name: "Flo", email: `ts-retry-${process.pid}@example.com`, password: "correct horse battery" });
  const hanging = [0, 1].map(() => new BrainClient({ ...urls, jwt: brain.jwt, maxRetries: 0 }).mailConnect("imap", imap).catch((e) => e));
  while (sockets.length < 2) await new Promise((resolve) => setTimeout(resolve, 50));

  const impatient = new BrainClient({ ...urls, jwt: brain.jwt, maxRetries: 0 });
  await assert.rejects(impatient.mailConnect("imap", imap),
    (e) => e instanceof RateLimited && e.code === "TOO_MANY_CONNECTS" && e.retryAfter >= 1);
  setTimeout(() => { silent.close(); for (const socket of sockets) socket.destroy(); }, 1000);
  await assert.rejects(brain.mailConnect("imap", imap),
    (e) => e instanceof ServerError && e.status === 502 && e.code === "PROVIDER_UNAVAILABLE");
  assert.equal(brain.retries, 1);
  for (const answer of await Promise.all(hanging)) assert.equal(answer.status, 502);
});
