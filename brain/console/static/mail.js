// Mail accounts: connect one (brain's OAuth connect link, then the provider, then back here),
// watch its sync, sync now, reconnect one that needs it, disconnect.

import { $, busy, h, localTime, notify } from "./dom.js";
import { api } from "./session.js";

const BUSY_POLL_MS = 1000;
const QUIET_POLL_MS = 5000;
let timer = null;
let visible = false;

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
  $("accounts").replaceChildren(...accounts.map(card));
  $("accounts-empty").hidden = accounts.length > 0;
}

function card(account) {
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
  return h("li", { class: "card account", id: `account-${account.account}`, "data-state": account.state },
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
    account.last_error ? h("p", { class: "last-error" },
      `Last error${account.last_error_at ? ` (${localTime(account.last_error_at)})` : ""}: ${account.last_error}`) : null,
    actions);
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
