// Mail accounts: connect one (brain's OAuth connect link, then the provider, then back here),
// watch its sync, sync now, change what it syncs, reconnect one that needs it, disconnect.

import { $, busy, h, localTime, notify } from "./dom.js";
import { api } from "./session.js";

const BUSY_POLL_MS = 1000;
const QUIET_POLL_MS = 5000;
// The server's bound on an account's sync window (brain.mail.selection.MAX_WINDOW_DAYS).
const MAX_WINDOW_DAYS = 36500;
let timer = null;
let visible = false;
// Each account's card ({item, status, details}): a poll redraws the status only, and leaves
// the settings form (and the list, unless accounts came or went) in place, so that it neither
// wipes what the reader is typing nor takes the focus away.
const cards = new Map();

/** The page is shown: read the accounts now and keep them current while it is. */
export function show() {
  visible = true;
  poll();
}

/** The page is hidden (or the user signed out): stop polling. */
export function hide() {
  visible = false;
  clearTimeout(timer);
}

/** Start an OAuth connect: brain answers its connect link, which this browser opens. */
export async function connect(provider) {
  const flow = await api("/mail/connect", { method: "POST", body: { provider } });
  location.assign(flow.authorize_url);
}

async function poll() {
  clearTimeout(timer);
  if (!visible) return;
  let accounts = [];
  try {
    accounts = (await api("/mail/status")).accounts;
    draw(accounts);
  } catch (error) {
    notify(`Could not read the mail accounts: ${error.message}`, { error: true });
  }
  if (!visible) return;
  const moving = accounts.some((a) => a.state === "syncing" || a.backfill.running || !a.initial_sync.complete);
  timer = setTimeout(poll, moving ? BUSY_POLL_MS : QUIET_POLL_MS);
}

function draw(accounts) {
  const items = accounts.map(card);
  for (const id of [...cards.keys()]) {
    if (!accounts.some((a) => a.account === id)) cards.delete(id);
  }
  const list = $("accounts");
  const same = items.length === list.children.length && items.every((item, i) => list.children[i] === item);
  if (!same) list.replaceChildren(...items);
  $("accounts-empty").hidden = accounts.length > 0;
}

function card(account) {
  let kept = cards.get(account.account);
  if (!kept) {
    const box = h("div");
    const details = settingsForm(account);
    kept = { item: h("li", { class: "card account", id: `account-${account.account}` }, box, details), status: box, details };
    cards.set(account.account, kept);
  }
  kept.item.setAttribute("data-state", account.state);
  kept.status.replaceChildren(...status(account));
  kept.details.hidden = account.state === "disconnected";
  // An open form is the reader's: only a closed one follows the server.
  if (!kept.details.open) fillSettings(kept.details, account.sync);
  return kept.item;
}

function status(account) {
  const initial = account.initial_sync;
  const progress = initial.complete
    ? h("progress", { max: 1, value: 1, "aria-label": "Initial sync complete" })
    : h("progress", { max: initial.estimated_total || 1, value: initial.done,
      "aria-label": `Initial sync: ${initial.done} of ${initial.estimated_total ?? "?"}` });
  const actions = h("div", { class: "actions" });
  if (account.state === "needs_reauth" || account.state === "disconnected") {
    actions.append(h("button", { type: "button", class: "reconnect", onclick: () => act(connect(account.provider)) },
      "Connect again"));
  } else {
    actions.append(h("button", { type: "button", class: "sync-now",
      onclick: () => act(api(`/mail/accounts/${encodeURIComponent(account.account)}/sync`, { method: "POST" }).then(poll)) },
    "Sync now"));
  }
  if (account.state !== "disconnected") actions.append(disconnectButton(account));
  return [
    h("div", { class: "account-head" },
      h("h2", {}, account.address || "(address unknown)"),
      h("span", { class: "badge" }, account.provider),
      h("span", { class: `badge state ${account.state}` }, account.state),
      account.phase ? h("span", { class: "figures" }, `phase: ${account.phase}`) : null),
    progress,
    h("p", { class: "figures progress-text" },
      initial.complete ? `${account.messages_synced} messages synced` : `initial sync: ${initial.done} of ${initial.estimated_total ?? "?"}`,
      account.last_sync_at ? ` · last sync ${localTime(account.last_sync_at)}` : "",
      account.retry_at ? ` · next try ${localTime(account.retry_at)}` : ""),
    h("p", { class: "figures sync-summary" }, summary(account.sync)),
    account.state === "needs_reauth" ? h("p", { class: "last-error" },
      "The provider no longer accepts brain's access to this mailbox: connect it again to go on syncing.") : null,
    account.last_error ? h("p", { class: "last-error" },
      `Last error${account.last_error_at ? ` (${localTime(account.last_error_at)})` : ""}: ${account.last_error}`) : null,
    actions,
  ].filter(Boolean);
}

/** What an account syncs, in words. */
function summary(sync) {
  return [
    sync.folders ? `Syncs ${sync.folders.join(", ")}` : "Syncs the whole mailbox",
    sync.sync_window_days ? `mail of the last ${sync.sync_window_days} days` : "all of its mail",
    sync.exclude_spam_trash ? "without spam and trash" : "with spam and trash",
    sync.bodies ? "with bodies" : "headers only",
  ].join(" · ");
}

function settingsForm(account) {
  const id = (name) => `${name}-${account.account}`;
  const form = h("form", { class: "settings-form" },
    h("label", { for: id("folders") }, "Folders or labels, one a line (empty: the whole mailbox)"),
    h("textarea", { id: id("folders"), class: "folders", rows: 3, maxlength: 20000 }),
    h("label", { for: id("window") }, "Only mail of the last … days (empty: all of it)"),
    h("input", { id: id("window"), class: "window", type: "number", min: 1, max: MAX_WINDOW_DAYS, step: 1 }),
    h("label", { class: "check" }, h("input", { type: "checkbox", class: "exclude-spam-trash" }), " Leave out spam and trash"),
    h("label", { class: "check" }, h("input", { type: "checkbox", class: "bodies" }), " Keep message bodies (not only headers)"),
    h("button", { type: "submit", class: "save-settings" }, "Save settings"));
  const details = h("details", { class: "settings" }, h("summary", {}, "Sync settings"), form);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    busy(form, async () => {
      const folders = form.querySelector(".folders").value.split("\n").map((f) => f.trim()).filter(Boolean);
      const days = form.querySelector(".window").value;
      await api(`/mail/accounts/${encodeURIComponent(account.account)}`, { method: "PATCH", body: {
        folders: folders.length ? folders : null,
        sync_window_days: days ? Number(days) : null,
        exclude_spam_trash: form.querySelector(".exclude-spam-trash").checked,
        bodies: form.querySelector(".bodies").checked,
      } });
      details.open = false;
      notify(`Sync settings of ${account.address || account.account} saved; the mailbox syncs again with them.`);
      await poll();
    });
  });
  return details;
}

function fillSettings(details, sync) {
  details.querySelector(".folders").value = (sync.folders || []).join("\n");
  details.querySelector(".window").value = sync.sync_window_days ?? "";
  details.querySelector(".exclude-spam-trash").checked = sync.exclude_spam_trash;
  details.querySelector(".bodies").checked = sync.bodies;
}

function disconnectButton(account) {
  const ask = h("button", { type: "button", class: "danger disconnect" }, "Disconnect");
  const sure = h("button", { type: "button", class: "danger confirm-disconnect", hidden: true }, "Yes, disconnect");
  ask.addEventListener("click", () => { ask.hidden = true; sure.hidden = false; sure.focus(); });
  sure.addEventListener("click", () => act(
    api("/mail/disconnect", { method: "POST", body: { account: account.account } })
      .then(() => notify(`${account.address} is disconnected; its mail stays in your brain.`))
      .then(poll)));
  return h("span", {}, ask, sure);
}

function act(promise) {
  promise.catch((error) => notify(error.message, { error: true }));
}

/** Wire the connect form. */
export function setup() {
  $("connect-form").addEventListener("submit", (e) => {
    e.preventDefault();
    busy(e.target, () => connect($("connect-provider").value));
  });
}
