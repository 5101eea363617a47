// Building the page: every text goes in as a text node, never as markup (the CSP's Trusted
// Types refuse innerHTML-style strings anyway).

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/** An element: `attrs` become attributes (functions under on* become listeners), `children`
 * nodes or text. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (typeof value === "function") element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

/** A short notice for everybody (and screen readers: the region is aria-live). */
export function notify(text, { error = false } = {}) {
  const notice = $("notice");
  notice.textContent = text;
  notice.className = error ? "error" : "";
}

/** A date and time as the reader's locale writes it. */
export function localTime(iso, options = { dateStyle: "medium", timeStyle: "short" }) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString(undefined, options);
}

/** A size in bytes, kB or MB. */
export function bytes(n) {
  if (typeof n !== "number") return "";
  if (n < 1000) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  return `${(n / 1e6).toFixed(1)} MB`;
}

/** Runs `action` with the form's submit button disabled; reports a failure as a notice. */
export async function busy(form, action) {
  const button = form.querySelector("button[type=submit]");
  if (button) button.disabled = true;
  try {
    await action();
  } catch (error) {
    notify(error.message, { error: true });
  } finally {
    if (button) button.disabled = false;
  }
}
