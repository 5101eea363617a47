// The account page: who is signed in, their sessions (revoke), export, password change, deletion.

import { $, busy, h, localTime, notify } from "./dom.js";
import { auth, signedOut, user } from "./session.js";

/** Read the profile and the sessions. */
export async function show() {
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
    await sessions(current.session.id);
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

/** Wire the export, password and deletion forms. */
export function setup() {
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
