// The gallery's entry point: the session (an API key kept in sessionStorage, checked with GET /v1/me),
// the hash routes (#/ the grid and uploads, #/jobs/<id> one job) and the page-wide notice.

import { Api, ApiError } from "./api.js";
import { GalleryView } from "./gallery.js";
import { JobPage } from "./job.js";

// sessionStorage, not localStorage: the key lives as long as this tab, and is never sent by the browser
// on its own (unlike a cookie), so no other site can make requests with it.
const STORAGE_KEY = "rmbg.apiKey";

const $ = (id) => document.getElementById(id);

const state = { api: null, me: null, gallery: null, jobPage: null };

let noticeTimer = 0;

/** One message at a time in the live region; errors stay until replaced, others fade after a while. */
function notice(message, { error = false } = {}) {
  const el = $("notice");
  clearTimeout(noticeTimer);
  el.textContent = message;
  el.classList.toggle("error", error);
  el.hidden = !message;
  if (message && !error) noticeTimer = setTimeout(() => (el.hidden = true), 6000);
}

function messageOf(err) {
  return err instanceof ApiError ? err.message : String(err?.message || err);
}

function signOut(message = "") {
  sessionStorage.removeItem(STORAGE_KEY);
  state.gallery?.destroy();
  state.jobPage?.destroy();
  Object.assign(state, { api: null, me: null, gallery: null, jobPage: null });
  $("account").hidden = true;
  $("gallery-view").hidden = true;
  $("job-view").hidden = true;
  $("job-view").replaceChildren();
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("api-key").setAttribute("aria-invalid", message ? "true" : "false");
  notice("");
}

/** Checks `key` with GET /v1/me; on success the session starts. Throws ApiError otherwise. */
async function signIn(key) {
  const api = new Api(key);
  const me = await api.json("/v1/me");
  // Only now: a wrong key at sign-in is an error on the form, not a sign-out.
  api.onUnauthorized = () => signOut("The server refused the key (revoked or expired). Sign in again.");
  sessionStorage.setItem(STORAGE_KEY, key);
  Object.assign(state, { api, me });
  $("whoami").textContent = `Signed in as ${me.user_id}${me.is_admin ? " (admin)" : ""}`;
  $("account").hidden = false;
  $("sign-in").hidden = true;
  $("sign-in-error").textContent = "";
  $("api-key").value = "";
  state.gallery = new GalleryView(state.api, { notice });
  route();
}

function route() {
  if (!state.api) return;
  // A passing message belongs to the view it was about; an error stays until something replaces it.
  if (!$("notice").classList.contains("error")) notice("");
  const match = /^#\/jobs\/([^/?#]+)$/.exec(location.hash);
  state.jobPage?.destroy();
  state.jobPage = null;
  if (match) {
    // The grid stays alive, hidden, so uploads keep following and the grid is as it was on return.
    $("gallery-view").hidden = true;
    const view = $("job-view");
    view.hidden = false;
    state.jobPage = new JobPage(state.api, decodeURIComponent(match[1]), view, { notice });
    view.querySelector("h1")?.focus();
  } else {
    $("job-view").hidden = true;
    $("job-view").replaceChildren();
    $("gallery-view").hidden = false;
    document.title = "rmbg gallery";
  }
}

async function submitSignIn(event) {
  event.preventDefault();
  const input = $("api-key");
  const key = input.value.trim();
  const error = $("sign-in-error");
  if (!key) {
    error.textContent = "Enter an API key.";
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  const button = $("sign-in-button");
  button.disabled = true;
  error.textContent = "";
  try {
    await signIn(key);
  } catch (err) {
    error.textContent =
      err instanceof ApiError && err.status === 401 ? `That key was refused: ${err.message}` : messageOf(err);
    input.setAttribute("aria-invalid", "true");
    input.focus();
  } finally {
    button.disabled = false;
  }
}

async function start() {
  $("sign-in-form").addEventListener("submit", submitSignIn);
  $("sign-out").addEventListener("click", () => {
    signOut();
    notice("Signed out.");
    $("api-key").focus();
  });
  window.addEventListener("hashchange", route);
  // A file dropped outside the drop zone would otherwise replace the page with the file.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (ev) => ev.preventDefault());

  const saved = sessionStorage.getItem(STORAGE_KEY);
  if (!saved) return signOut();
  try {
    await signIn(saved);
  } catch (err) {
    const refused = err instanceof ApiError && err.status === 401;
    signOut(refused ? "Your saved key was refused. Sign in again." : "");
    if (!refused) {
      // The server, not the key, failed: keep the key in the form so one click tries again.
      $("api-key").value = saved;
      notice(`Could not check the saved key: ${messageOf(err)}`, { error: true });
    }
  }
}

start();
