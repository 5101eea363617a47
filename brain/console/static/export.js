// Export everything as a zip, built in the browser from the API's own answers: every event as
// one line of events.jsonl (its exact JSON as the server sent it), and each synced mail message
// as an .eml rebuilt from its headers and text (brain keeps a message's content, not its raw
// MIME, so the .eml holds the text body; attachments come on demand from the provider).

import { sourceOf } from "./json.js";
import { api } from "./session.js";

const PAGE = 1000;
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** A zip archive (stored, UTF-8 names) of [name, bytes] entries, as a Blob. */
export function zip(entries) {
  const encoder = new TextEncoder();
  const parts = [];
  const directory = [];
  let offset = 0;
  const now = new Date();
  const time = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
  const date = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
  for (const [name, data] of entries) {
    const nameBytes = encoder.encode(name);
    const crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(6, 0x0800, true); // names are UTF-8
    local.setUint16(10, time, true);
    local.setUint16(12, date, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true);
    local.setUint32(22, data.length, true);
    local.setUint16(26, nameBytes.length, true);
    const central = new DataView(new ArrayBuffer(46));
    central.setUint32(0, 0x02014b50, true);
    central.setUint16(4, 20, true);
    central.setUint16(6, 20, true);
    central.setUint16(8, 0x0800, true);
    central.setUint16(12, time, true);
    central.setUint16(14, date, true);
    central.setUint32(16, crc, true);
    central.setUint32(20, data.length, true);
    central.setUint32(24, data.length, true);
    central.setUint16(28, nameBytes.length, true);
    central.setUint32(42, offset, true);
    parts.push(local, nameBytes, data);
    directory.push(central, nameBytes);
    offset += 30 + nameBytes.length + data.length;
  }
  const size = directory.reduce((sum, part) => sum + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...directory, end], { type: "application/zip" });
}

// Header values go on one line (a CR or LF in a subject must not start a header of its own);
// anything beyond ASCII is an RFC 2047 encoded word.
function header(value) {
  const line = String(value ?? "").replace(/[\r\n]+/g, " ");
  if (/^[\x20-\x7e]*$/.test(line)) return line;
  const bytes = new TextEncoder().encode(line);
  return `=?UTF-8?B?${btoa(String.fromCharCode(...bytes))}?=`;
}

function mailbox(person) {
  if (!person || typeof person !== "object") return "";
  const address = String(person.address || "").replace(/[\r\n<>,]/g, "");
  if (!person.name) return address;
  const name = String(person.name).replace(/[\r\n]+/g, " ");
  // A quoted string (JSON's escapes of " and \ are RFC 5322's) when ASCII, else an encoded word.
  return `${/^[\x20-\x7e]*$/.test(name) ? JSON.stringify(name) : header(name)} <${address}>`;
}

/** One mail event's message as RFC 5322 text. */
export function eml(data) {
  const list = (value) => (Array.isArray(value) ? value : []);
  const lines = [];
  const add = (name, value) => { if (value) lines.push(`${name}: ${value}`); };
  add("From", mailbox(data.from));
  add("To", list(data.to).map(mailbox).filter(Boolean).join(", "));
  add("Cc", list(data.cc).map(mailbox).filter(Boolean).join(", "));
  add("Subject", header(data.subject));
  add("Date", data.date ? new Date(data.date).toUTCString().replace("GMT", "+0000") : "");
  add("Message-ID", header(data.internet_message_id));
  add("In-Reply-To", header(data.in_reply_to));
  add("References", list(data.references).map(header).join(" "));
  add("X-Brain-Message-Id", header(data.message_id));
  lines.push("MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "");
  return `${lines.join("\r\n")}\r\n${String(data.body_text || "").replace(/\r?\n/g, "\r\n")}\r\n`;
}

/** Every event of the user, page by page: the zip's entries. */
export async function exportEntries(progress = () => {}) {
  const encoder = new TextEncoder();
  const lines = [];
  const mails = [];
  let cursor = null;
  do {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (cursor) query.set("cursor", cursor);
    const page = await api(`/events?${query}`, { exact: true });
    page.events.forEach((event, i) => {
      // Line breaks in JSON source are whitespace between tokens (strings escape theirs).
      lines.push(sourceOf(page.events, i).replace(/[\r\n]+/g, " "));
      if (event.type === "mail.message.received" && event.data && typeof event.data === "object") {
        const name = String(event.data.message_id || event.id).replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 100);
        mails.push([`mail/${event.id}-${name}.eml`, encoder.encode(eml(event.data))]);
      }
    });
    cursor = page.next_cursor;
    progress(lines.length);
  } while (cursor);
  return [["events.jsonl", encoder.encode(lines.map((line) => `${line}\n`).join(""))], ...mails];
}

/** Build the zip and hand it to the browser as a download. */
export async function download(progress) {
  const blob = zip(await exportEntries(progress));
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `brain-export-${new Date().toISOString().slice(0, 10)}.zip`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}
