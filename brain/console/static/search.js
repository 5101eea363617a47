// Search: the query language of GET /search, ranked results with the words found marked, each
// linking to its event.

import { $, h, notify } from "./dom.js";
import { api } from "./session.js";
import { render } from "./timeline.js";

const PAGE = 20;
let query = "";
let cursor = null;
let run = 0;

// The server marks the words found with <mark> and escapes everything else as HTML: read it
// back into text and <mark> elements, never as markup.
const ENTITIES = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };

function unescapeHtml(text) {
  return text.replace(/&(?:#x([0-9a-fA-F]+)|#([0-9]+)|([a-z]+));/g, (whole, hex, dec, name) => {
    if (hex) return String.fromCodePoint(parseInt(hex, 16));
    if (dec) return String.fromCodePoint(parseInt(dec, 10));
    return ENTITIES[name] ?? whole;
  });
}

/** A highlight snippet as nodes: text, and the <mark>ed words as <mark> elements. */
export function highlighted(snippet) {
  return String(snippet).split(/(<mark>.*?<\/mark>)/s).filter(Boolean).map((part) => (
    part.startsWith("<mark>") && part.endsWith("</mark>")
      ? h("mark", {}, unescapeHtml(part.slice(6, -7)))
      : unescapeHtml(part)));
}

function result({ event, highlights }) {
  const item = render(event);
  item.id = `result-${event.id}`;
  const found = Object.entries(highlights || {}).map(([field, snippet]) =>
    h("div", { class: "highlight" }, h("span", { class: "field" }, `${field}: `), highlighted(snippet)));
  item.insertBefore(h("div", { class: "highlights" }, found,
    h("a", { href: `#event-${event.id}`, class: "open" }, "Open the event")), item.children[1] || null);
  return item;
}

async function page(current) {
  const params = new URLSearchParams({ q: query, limit: String(PAGE) });
  if (cursor) params.set("cursor", cursor);
  const answer = await api(`/search?${params}`, { exact: true });
  if (current !== run) return;
  $("search-results").append(...answer.results.map(result));
  cursor = answer.next_cursor;
  $("search-more").hidden = !cursor;
  if (!$("search-results").children.length) $("search-results").append(h("li", { class: "none" }, "Nothing found."));
  if (answer.partial) notify("The search index is still being built: some events may be missing.");
}

/** Search for `text`; the timeline makes way for the results. */
export async function search(text) {
  run += 1;
  query = text.trim();
  cursor = null;
  $("search-results").replaceChildren();
  showResults(Boolean(query));
  if (!query) return;
  try {
    await page(run);
  } catch (error) {
    notify(error.code === "INVALID_QUERY" ? `Search: ${error.message}` : `Search failed: ${error.message}`, { error: true });
  }
}

function showResults(on) {
  // The timeline stays as it is underneath (still live), out of sight while results show.
  $("page-timeline").classList.toggle("searching", on);
  $("search-results").hidden = !on;
  $("search-clear").hidden = !on;
  $("search-more").hidden = true;
}

/** Leave the results (a link to an event was followed). */
export function close() {
  if (!$("search-results").hidden) {
    $("search-query").value = "";
    search("");
  }
}

/** Wire the search form. */
export function setup() {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search($("search-query").value);
  });
  $("search-clear").addEventListener("click", () => {
    $("search-query").value = "";
    search("");
  });
  $("search-more").addEventListener("click", () => page(run).catch((error) => notify(error.message, { error: true })));
}
