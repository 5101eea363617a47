// The account page: who is signed in, their sessions (revoke), API keys (create, delete),
// export, password change, deletion.

import { $, busy, h, localTime, notify } from "./dom.js";
import { auth, signedOut, user } from "./session.js";

const SECONDS_A_DAY = 86400;

/** Forget a key shown once (the user signed out, or comes back to the page). */
export function hideNewKey() {
  $("new-key").value = "";
  $("new-key-box").hidden = true;
}

/** Read the profile, the sessions and the API keys. */
export async function show() {
  hideNewKey();
  try {
    const current = await auth("/api/auth/get-session");
    if (!current) {
      signedOut();
      return;
    }
    const u = current.user;
    $("profile").replaceChildren(
      h("dt", {}, "Name"), h("dd", { id: "profile-name" }, u.name || ""),
      h("dt", {}, "Email"), h("dd", { id: "profile-email" }, `${u.email}${u.emailVerified ? " (verified)" : " (not verified)"}`),
      h("dt", {}, "Member since"), h("dd", {}, localTime(u.createdAt)));
    await Promise.all([sessions(current.session.id), keys()]);
  } catch (error) {
    notify(`Could not read the account: ${error.message}`, { error: true });
  }
}

async function sessions(currentId) {
  let list;
  try {
    list = await auth("/api/auth/list-sessions");
  } catch (error) {
    const why = error.code === "SESSION_NOT_FRESH" ? "sign in again to see your sessions" : error.message;
    $("sessions").replaceChildren(h("li", {}, why));
    return;
  }
  $("sessions").replaceChildren(...list.map((s) => {
    const here = s.id === currentId;
    return h("li", { class: "session", "data-session": s.id },
      h("span", {}, here ? "This browser" : (s.userAgent || "unknown client"),
        h("span", { class: "figures" }, ` · ${s.ipAddress || "unknown address"} · since ${localTime(s.createdAt)}`)),
      here ? null : h("button", { type: "button", class: "secondary revoke",
        onclick: () => auth("/api/auth/revoke-session", { method: "POST", body: { token: s.token } })
          .then(() => notify("Session revoked."))
          .then(() => sessions(currentId))
          .catch((error) => notify(error.message, { error: true })) }, "Revoke"));
  }));
}

async function keys() {
  let answer;
  try {
    answer = await auth("/api/auth/api-key/list?sortBy=createdAt&sortDirection=desc");
  } catch (error) {
    $("api-keys").replaceChildren(h("li", {}, `Could not read the keys: ${error.message}`));
    return;
  }
  $("api-keys").replaceChildren(...answer.apiKeys.map((key) => h("li", { class: "api-key", "data-key": key.id },
    h("span", {},
      h("strong", { class: "key-name" }, key.name || "(no name)"),
      h("span", { class: "figures" }, ` · ${key.start}… · ${scopes(key.permissions)} · made ${localTime(key.createdAt)}`,
        key.expiresAt ? ` · expires ${localTime(key.expiresAt)}` : " · never expires", key.enabled ? "" : " · disabled")),
    deleteKeyButton(key))));
  $("api-keys-empty").hidden = answer.apiKeys.length > 0;
}

function scopes(permissions) {
  const granted = Object.entries(permissions || {}).flatMap(([resource, actions]) => actions.map((a) => `${resource} ${a}`));
  return granted.length ? granted.join(", ") : "no permissions";
}

function deleteKeyButton(key) {
  const ask = h("button", { type: "button", class: "secondary delete-key" }, "Delete");
  const sure = h("button", { type: "button", class: "danger confirm-delete-key", hidden: true }, "Yes, delete it");
  ask.addEventListener("click", () => { ask.hidden = true; sure.hidden = false; sure.focus(); });
  sure.addEventListener("click", () => {
    auth("/api/auth/api-key/delete", { method: "POST", body: { keyId: key.id } })
      .then(() => notify(`The key ${key.name || key.start} is deleted: it no longer works.`))
      .then(keys)
      .catch((error) => notify(error.message, { error: true }));
  });
  return h("span", {}, ask, sure);
}

/** Wire the API key, export, password and deletion forms. */
export function setup() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    busy(e.target, async () => {
      const permissions = {};
      for (const box of e.target.querySelectorAll(".key-scope:checked")) {
        const [resource, action] = box.value.split(" ");
        (permissions[resource] ||= []).push(action);
      }
      const days = $("key-expires").value;
      const created = await auth("/api/auth/api-key/create", { method: "POST", body: {
        name: $("key-name").value, permissions, ...(days ? { expiresIn: Number(days) * SECONDS_A_DAY } : {}),
      } });
      e.target.reset();
      $("new-key").value = created.key;
      $("new-key-box").hidden = false;
      $("new-key").select();
      notify(`Key ${created.name} made: copy it now, it is not shown again.`);
      await keys();
    });
  });
  $("export-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const progress = $("export-progress");
    busy(e.target, async () => {
      // Loaded when asked for: the page's first load does not pay for it.
      const { download } = await import("./export.js");
      await download((n) => { progress.textContent = `${n} events read…`; });
      progress.textContent = "Done: the zip is in your downloads.";
    });
  });
  $("password-form").addEventListener("submit", (e) => {
    e.preventDefault();
    busy(e.target, async () => {
      await auth("/api/auth/change-password", { method: "POST", body: {
        currentPassword: $("current-password").value,
        newPassword: $("new-password").value,
        revokeOtherSessions: $("revoke-others").checked,
      } });
      e.target.reset();
      notify("Password changed.");
      await show();
    });
  });
  $("delete-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const me = user();
    if (!me || $("delete-confirm").value.trim().toLowerCase() !== String(me.email).toLowerCase()) {
      notify("Type your own email address to confirm the deletion.", { error: true });
      return;
    }
    busy(e.target, async () => {
      await auth("/api/auth/delete-user", { method: "POST", body: { password: $("delete-password").value } });
      e.target.reset();
      signedOut();
      notify("Your account and everything in it was deleted.");
    });
  });
}
