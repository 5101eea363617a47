// The timeline: the user's events newest first, grouped by day, older pages as the reader
// scrolls (the cursor of GET /events), new ones live from GET /events/stream.

import { $, bytes, h, localTime, notify } from "./dom.js";
import { parseExact, pretty, sourceOf } from "./json.js";
import { api, refresh, signedOut } from "./session.js";

const PAGE = 50;
const RETRY_MS = 2000;

let generation = 0; // bumped on every restart: answers for an older one are dropped
let type = "";
let cursor = null;
let done = false;
let loading = false;
let oldest = null; // the oldest event shown: {time, id}
let lastSeq = 0; // the highest commit sequence seen: where the stream resumes
let source = null;
const shown = new Map(); // event id -> its list item
const days = new Map(); // day key -> its list of events
const types = new Set();
const observer = new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting)) loadOlder(generation);
}, { rootMargin: "600px" });

/** Start over (after sign-in, or with another type filter). */
export async function start() {
  stop();
  const run = generation;
  $("live-state").textContent = "Connecting…";
  observer.observe($("older"));
  await loadOlder(run);
  if (run !== generation) return;
  lastSeq = Math.max(0, ...shown.keys());
  openStream(run);
}

/** Close the stream and empty the page (sign-out). */
export function stop() {
  generation += 1;
  closeStream();
  observer.disconnect();
  cursor = null;
  done = false;
  loading = false;
  oldest = null;
  lastSeq = 0;
  shown.clear();
  days.clear();
  $("days").replaceChildren();
  $("single").replaceChildren();
  $("single").hidden = true;
  $("older").hidden = true;
  $("timeline-empty").hidden = true;
}

/** Show only events of this type ("" for all). */
export function filter(newType) {
  type = newType.trim();
  return start();
}

async function loadOlder(run) {
  if (loading || done || run !== generation) return;
  loading = true;
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (type) query.set("type", type);
  if (cursor) query.set("cursor", cursor);
  try {
    const page = await api(`/events?${query}`, { exact: true });
    if (run !== generation) return;
    for (const event of page.events) add(event, false);
    const last = page.events[page.events.length - 1];
    if (last) oldest = { time: Date.parse(last.created_at), id: last.id };
    cursor = page.next_cursor;
    done = !cursor;
  } catch (error) {
    notify(`Could not load events: ${error.message}`, { error: true });
    done = true;
  } finally {
    loading = false;
  }
  if (run !== generation) return;
  $("older").hidden = done;
  $("timeline-empty").hidden = shown.size > 0;
  // Observe again: if the button is still in view, the observer says so and the next page comes.
  observer.unobserve($("older"));
  if (!done) observer.observe($("older"));
}

function openStream(run) {
  api("/events/stream/ticket", { method: "POST" }).then(({ ticket }) => {
    if (run !== generation) return;
    // EventSource cannot send the JWT: a single-use ticket stands in for it.
    const query = new URLSearchParams({ ticket, after: String(lastSeq) });
    if (type) query.set("type", type);
    const stream = new EventSource(`/events/stream?${query}`);
    source = stream;
    let ended = false;
    const end = (delay, freshToken) => () => {
      if (ended) return;
      ended = true;
      reopen(run, delay, freshToken);
    };
    stream.onopen = () => live("Live", "live");
    stream.onmessage = (message) => {
      const event = parseExact(message.data);
      lastSeq = Math.max(lastSeq, Number(message.lastEventId) || event.id);
      add(event, true);
    };
    stream.addEventListener("token-expired", end(0, true));
    stream.addEventListener("too-slow", end(0, false));
    stream.addEventListener("shutting-down", end(RETRY_MS, false));
    stream.addEventListener("revoked", () => { ended = true; closeStream(); signedOut(); });
    // The server's `error` event and a lost connection alike; the browser would retry with the
    // spent ticket, so the page reconnects itself with a new one.
    stream.onerror = end(RETRY_MS, false);
  }).catch(() => {
    if (run === generation) reopen(run, RETRY_MS * 2, true);
  });
}

function reopen(run, delay, freshToken) {
  closeStream();
  if (run !== generation) return;
  live("Reconnecting…", "");
  setTimeout(async () => {
    if (run !== generation) return;
    if (freshToken) await refresh().catch(() => {});
    openStream(run);
  }, delay);
}

function closeStream() {
  if (source) source.close();
  source = null;
}

function live(text, kind) {
  const badge = $("live-state");
  badge.textContent = text;
  badge.className = `badge ${kind}`;
}

function newer(a, b) {
  return a.time > b.time || (a.time === b.time && a.id > b.id);
}

function add(event, isLive) {
  if (event.type === "event.deleted") {
    // A deletion's tombstone (GET /events/stream sends them): the event goes from the page.
    const gone = event.data && shown.get(event.data.id);
    if (gone) {
      shown.delete(event.data.id);
      gone.remove();
    }
    return;
  }
  if (shown.has(event.id)) return;
  const at = { time: Date.parse(event.created_at), id: event.id };
  // Older than everything shown while older pages remain: paging will bring it in its place.
  if (isLive && !done && oldest && newer(oldest, at)) return;
  const item = render(event);
  item.order = at;
  place(item, event.created_at);
  shown.set(event.id, item);
  $("timeline-empty").hidden = true;
  if (!types.has(event.type)) {
    types.add(event.type);
    $("known-types").append(h("option", { value: event.type }));
  }
}

function dayKey(iso) {
  const date = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

function place(item, createdAt) {
  const key = dayKey(createdAt);
  let list = days.get(key);
  if (!list) {
    list = h("ol", { class: "events" });
    const label = localTime(createdAt, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
    const day = h("li", { class: "day", "data-day": key }, h("h2", {}, label), list);
    const later = [...$("days").children].find((other) => other.dataset.day < key);
    $("days").insertBefore(day, later || null);
    days.set(key, list);
  }
  const last = list.lastElementChild;
  if (!last || newer(last.order, item.order)) {
    list.append(item);
    return;
  }
  const before = [...list.children].find((other) => newer(item.order, other.order));
  list.insertBefore(item, before || null);
}

/** One event as a list item: mail as mail, anything else as its exact JSON. */
export function render(event) {
  const mail = isMail(event);
  return h("li", { class: mail ? "event mail" : "event", id: `event-${event.id}` },
    h("div", { class: "meta" },
      h("span", { class: "type" }, event.type),
      h("time", { datetime: event.created_at }, localTime(event.created_at)),
      h("span", {}, `#${event.id}`)),
    mail ? mailView(event.data) : null,
    mail ? jsonDetails(event) : h("pre", { class: "json" }, pretty(sourceOf(event, "data"))));
}

function isMail(event) {
  const data = event.data;
  return event.type.startsWith("mail.message.") && data !== null && typeof data === "object"
    && ("subject" in data || "from" in data);
}

function person(mailbox) {
  if (!mailbox || typeof mailbox !== "object") return "";
  const address = String(mailbox.address || "");
  return mailbox.name ? `${mailbox.name} <${address}>` : address;
}

function mailView(data) {
  const list = (value) => (Array.isArray(value) ? value : []);
  const to = list(data.to).map(person).filter(Boolean).join(", ");
  const files = list(data.attachments).filter((a) => a && !a.inline);
  return h("div", {},
    h("div", {}, h("span", { class: "from" }, person(data.from) || "(no sender)"),
      data.direction && data.direction !== "received" ? h("span", { class: "badge" }, String(data.direction)) : null),
    to ? h("div", { class: "figures" }, `to ${to}`) : null,
    h("p", { class: "subject" }, data.subject ? String(data.subject) : "(no subject)"),
    data.snippet ? h("p", { class: "snippet" }, String(data.snippet)) : null,
    files.length ? h("ul", { class: "attachments", "aria-label": "Attachments" },
      files.map((a) => h("li", {}, `Attachment: ${a.filename || "(unnamed)"} `, h("span", { class: "figures" }, `${a.mime_type || ""} ${bytes(a.size)}`)))) : null);
}

function jsonDetails(event) {
  const pre = h("pre", { class: "json" });
  const details = h("details", {}, h("summary", {}, "JSON"), pre);
  // Mail can be large: its JSON is laid out only when asked for.
  details.addEventListener("toggle", () => {
    if (details.open && !pre.firstChild) pre.textContent = pretty(sourceOf(event, "data"));
  });
  return details;
}

/** Bring one event into view: from the timeline if it is shown, else read on its own. */
export async function reveal(id) {
  const single = $("single");
  const item = shown.get(id);
  if (item) {
    single.hidden = true;
    item.scrollIntoView({ block: "center" });
    return;
  }
  try {
    const event = await api(`/events/${id}`, { exact: true });
    const alone = render(event);
    alone.id = `single-${id}`;
    single.replaceChildren(alone);
    single.hidden = false;
    single.scrollIntoView();
  } catch (error) {
    notify(`Event #${id}: ${error.message}`, { error: true });
  }
}
