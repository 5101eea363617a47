// The console's entry point: which page shows, the sign-in forms, and what a link that brings
// the browser back here (an OAuth flow's end, an emailed link) says.

import * as account from "./account.js";
import { $, busy, notify } from "./dom.js";
import * as mail from "./mail.js";
import * as search from "./search.js";
import * as session from "./session.js";
import * as timeline from "./timeline.js";

const PAGES = ["timeline", "mail", "account"];
// What an emailed link's error code means to the person who followed it.
const LINK_ERRORS = {
  INVALID_TOKEN: "it was used already, or replaced by a newer one",
  TOKEN_EXPIRED: "it has expired",
};
// The token of a password reset link followed here: the reset page shows until it is used.
let resetToken = null;
// Whether this load came from a verification link (what to say depends on the session).
let verifiedNow = false;

function route() {
  const signedIn = session.user() !== null;
  const wanted = location.hash.slice(1);
  // A reset link wins over any session: whoever followed it wants a new password now.
  const page = resetToken ? "reset" : !signedIn ? "signin" : PAGES.includes(wanted) ? wanted : "timeline";
  for (const name of ["signin", "reset", ...PAGES]) $(`page-${name}`).hidden = name !== page;
  for (const name of PAGES) {
    const link = $(`nav-${name}`);
    if (name === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (page === "mail") mail.show();
  else mail.hide();
  if (page === "account") account.show();
  const event = /^event-([0-9]+)$/.exec(wanted);
  if (page === "timeline" && event) {
    search.close();
    timeline.reveal(Number(event[1]));
  }
  document.title = `brain console: ${{ signin: "sign in", reset: "new password" }[page] || page}`;
}

session.onChange((user) => {
  $("nav").hidden = !user;
  $("sign-out").hidden = !user;
  $("who").textContent = user ? (user.name ? `${user.name} <${user.email}>` : user.email) : "";
  if (user) {
    timeline.start();
  } else {
    timeline.stop();
    account.hideNewKey();
    search.close();
    // The next one to sign in here starts at the timeline, not on this user's last page.
    history.replaceState(null, "", "/console/");
  }
  route();
});

// What the query says when a flow sends the browser back: an OAuth connect's end
// (?status=connected|error), a password reset link (?reset=1&token=), a verification link
// (?verified=1), either of them failed (?error=). The query is then dropped from the address bar
// (a reset token must not linger there, nor in the history).
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
    const code = query.get("error");
    const what = query.has("reset") ? "password reset link" : query.has("verified") ? "verification link" : "link";
    notify(`The ${what} did not work: ${Object.hasOwn(LINK_ERRORS, code) ? LINK_ERRORS[code] : code}. Ask for a new one.`, { error: true });
    if (query.has("verified")) $("resend-form").hidden = false;
  } else if (query.has("reset") && query.get("token")) {
    resetToken = query.get("token");
  } else if (query.has("verified")) {
    verifiedNow = true;
  }
  history.replaceState(null, "", `/console/${hash}`);
}

function on(id, handler) {
  $(id).addEventListener("submit", (e) => {
    e.preventDefault();
    busy(e.target, () => handler(e.target));
  });
}

// Where a verification link brings the browser back to.
const verifiedUrl = () => `${session.pageUrl()}?verified=1`;

function offerResend(email) {
  $("resend-email").value = email;
  $("resend-form").hidden = false;
}

on("sign-in-form", async (form) => {
  const email = $("sign-in-email").value;
  try {
    await session.signIn(email, $("sign-in-password").value);
  } catch (error) {
    if (error.code === "EMAIL_NOT_VERIFIED") offerResend(email);
    throw error;
  }
  form.reset();
  $("resend-form").hidden = true;
  notify("");
});
on("sign-up-form", async (form) => {
  const email = $("sign-up-email").value;
  const signedIn = await session.signUp($("sign-up-name").value, email, $("sign-up-password").value, verifiedUrl());
  form.reset();
  if (!signedIn) offerResend(email);
  notify(signedIn ? "Welcome to your brain." : "Check your mail: the link in it finishes the sign-up.");
});
on("resend-form", async () => {
  await session.auth("/api/auth/send-verification-email", {
    method: "POST", body: { email: $("resend-email").value, callbackURL: verifiedUrl() },
  });
  notify("If that address waits for verification, a new link is on its way.");
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
  // The reset ended every session of the account, this browser's too.
  session.signedOut();
  route();
  notify("Password set: sign in with it.");
});
on("filter-form", () => timeline.filter($("type-filter").value));
$("sign-out").addEventListener("click", () => {
  session.signOut().then(() => notify("Signed out.")).catch((error) => notify(error.message, { error: true }));
});
// The skip link moves the focus into the page shown: following its #main would route away from it.
$("skip").addEventListener("click", (e) => {
  e.preventDefault();
  $("main").focus();
});
window.addEventListener("hashchange", route);
mail.setup();
account.setup();
search.setup();
readOutcome();
session.restore().then((signedIn) => {
  if (!signedIn) route();
  if (verifiedNow) notify(signedIn ? "Your email address is verified." : "Your email address is verified: sign in.");
});
