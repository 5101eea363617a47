// The console's entry point: which page shows, the sign-in forms, and what a link that brings
// the browser back here (an OAuth flow's end, an emailed link) says.

import * as account from "./account.js";
import { $, busy, notify } from "./dom.js";
import * as mail from "./mail.js";
import * as session from "./session.js";
import * as timeline from "./timeline.js";

const PAGES = ["timeline", "mail", "account"];
let resetToken = null;

function route() {
  const signedIn = session.user() !== null;
  const wanted = location.hash.slice(1);
  const page = !signedIn ? "signin" : PAGES.includes(wanted) ? wanted : "timeline";
  for (const name of ["signin", ...PAGES]) $(`page-${name}`).hidden = name !== page;
  for (const name of PAGES) {
    const link = $(`nav-${name}`);
    if (name === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (page === "mail") mail.show();
  else mail.hide();
  if (page === "account") account.show();
  document.title = `brain console: ${page === "signin" ? "sign in" : page}`;
}

session.onChange((user) => {
  $("nav").hidden = !user;
  $("sign-out").hidden = !user;
  $("who").textContent = user ? (user.name ? `${user.name} <${user.email}>` : user.email) : "";
  if (user) {
    timeline.start();
  } else {
    timeline.stop();
    // The next one to sign in here starts at the timeline, not on this user's last page.
    history.replaceState(null, "", "/console/");
  }
  route();
});

// What the query says when a flow sends the browser back: an OAuth connect's end
// (?status=connected|error), a password reset link (?reset=1&token=), a failed link (?error=).
// The query is then dropped from the address bar (a reset token must not linger there).
function readOutcome() {
  const query = new URLSearchParams(location.search);
  if (![...query.keys()].length) return;
  let hash = location.hash;
  if (query.get("status") === "connected") {
    notify(`Mailbox connected (${query.get("provider") || "mail"}): its mail is syncing into your brain.`);
    hash = "#mail";
  } else if (query.get("status") === "error") {
    notify(`The mailbox was not connected: ${query.get("message") || query.get("code") || "unknown error"}`, { error: true });
    hash = "#mail";
  } else if (query.get("error")) {
    notify(`The link did not work: ${query.get("error")}`, { error: true });
  } else if (query.has("reset") && query.get("token")) {
    resetToken = query.get("token");
    $("reset-form").hidden = false;
    notify("Choose a new password.");
  }
  history.replaceState(null, "", `/console/${hash}`);
}

function on(id, handler) {
  $(id).addEventListener("submit", (e) => {
    e.preventDefault();
    busy(e.target, () => handler(e.target));
  });
}

on("sign-in-form", async (form) => {
  await session.signIn($("sign-in-email").value, $("sign-in-password").value);
  form.reset();
  notify("");
});
on("sign-up-form", async (form) => {
  const signedIn = await session.signUp($("sign-up-name").value, $("sign-up-email").value, $("sign-up-password").value);
  form.reset();
  notify(signedIn ? "Welcome to your brain." : "Check your mail: the link in it finishes the sign-up.");
});
on("forgot-form", async (form) => {
  await session.auth("/api/auth/request-password-reset", {
    method: "POST", body: { email: $("forgot-email").value, redirectTo: `${session.pageUrl()}?reset=1` },
  });
  form.reset();
  notify("If that address has an account, a reset link is on its way.");
});
on("reset-form", async (form) => {
  await session.auth("/api/auth/reset-password", {
    method: "POST", body: { newPassword: $("reset-password").value, token: resetToken },
  });
  resetToken = null;
  form.reset();
  form.hidden = true;
  notify("Password set: sign in with it.");
});
on("filter-form", () => timeline.filter($("type-filter").value));
$("sign-out").addEventListener("click", () => {
  session.signOut().then(() => notify("Signed out.")).catch((error) => notify(error.message, { error: true }));
});
window.addEventListener("hashchange", route);
mail.setup();
account.setup();
readOutcome();
session.restore().then((signedIn) => {
  if (!signedIn) route();
});
