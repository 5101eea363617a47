// Drives brain's /mcp with the TypeScript MCP SDK's own client (Streamable HTTP): the handshake,
// every tool, a tool error and a protocol error, then the end of the session. Prints
// {"steps": {...}} for tests/test_mcp_js.py; a step that throws records its stack.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { stepsInto } from "./steps.mjs";

const out = { steps: {} };
const step = stepsInto(out);
const url = new URL(`${process.env.API_URL}/mcp`);
const transport = new StreamableHTTPClientTransport(url, {
  requestInit: { headers: { Authorization: `Bearer ${process.env.TOKEN}` } },
});
const client = new Client({ name: "brain-tests", version: "1.0.0" });
const call = async (name, args) => {
  const result = await client.callTool({ name, arguments: args });
  return { isError: result.isError ?? false, structured: result.structuredContent ?? null, text: result.content?.[0]?.text ?? null };
};

await step("connect", async () => {
  await client.connect(transport);
  return { session: Boolean(transport.sessionId), version: transport.protocolVersion ?? null, server: client.getServerVersion() };
});
await step("tools", async () => {
  const { tools } = await client.listTools();
  return tools.map((t) => ({ name: t.name, readOnly: t.annotations?.readOnlyHint ?? null, output: Boolean(t.outputSchema) }));
});
await step("add_note", () => call("add_note", { text: "from TypeScript", idempotency_key: "ts-1" }));
await step("add_note_again", () => call("add_note", { text: "from TypeScript", idempotency_key: "ts-1" }));
await step("add_event", () => call("add_event", { type: "ts.ran", data: { ok: true } }));
await step("list_events", () => call("list_events", { limit: 10 }));
await step("get_event", () => call("get_event", { id: out.steps.add_note.structured.event.id }));
await step("search", () => call("search", { q: "TypeScript" }));
await step("no_thread", () => call("get_mail_thread", { thread_id: "nope" }));
await step("mail_accounts", () => call("mail_accounts", {}));
await step("bad_argument", () => call("list_events", { limit: -1 }));
await step("unknown_tool", async () => {
  try {
    await client.callTool({ name: "no_such_tool", arguments: {} });
    return { code: null };
  } catch (e) {
    return { code: e.code ?? null, message: e.message };
  }
});
await step("close", async () => {
  await transport.terminateSession();
  await client.close();
  return { closed: true };
});
console.log(JSON.stringify(out));
