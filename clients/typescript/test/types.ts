// Compiled by `tsc` (tests/test_client_typescript.py): the declarations hang together with the
// generated schema, and a wrong use is a type error.
import {
  BrainClient, BrainError, type Event, type EventsPage, type MailAccount, type SearchPage, type Stats,
} from "../src/index.js";

export async function typed(client: BrainClient): Promise<number> {
  const stored: Event = await client.postEvent("note.created", { text: "hi" });
  const page: EventsPage = await client.listEvents({ type: "note.created", limit: 10 });
  const accounts: MailAccount[] = await client.mailStatus();
  for await (const event of client.iterEvents({ pageSize: 50 })) {
    event.created_at.toUpperCase();
  }
  // @ts-expect-error: limit is a number
  await client.listEvents({ limit: "ten" });
  const found: SearchPage = await client.search("lease", { limit: 5 });
  for await (const result of client.iterSearch("lease")) {
    result.event.type.toUpperCase();
  }
  const stats: Stats = await client.meStats();
  // @ts-expect-error: q is a string
  await client.search(42);
  try {
    await client.me();
  } catch (error) {
    if (error instanceof BrainError) return error.status + error.code.length;
  }
  return stored.id + page.events.length + accounts.length + found.results.length + stats.events;
}
