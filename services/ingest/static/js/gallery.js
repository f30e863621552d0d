// The signed-in home: the upload form (many files, drag and drop, each file's progress and then its
// job's status, live) and the grid of the user's jobs with filters and "Load more" over next_cursor.

import { ApiError } from "./api.js";
import { badge, h, randomHex, shortId, time } from "./dom.js";
import { TERMINAL, followJob } from "./follow.js";
import { BlobScope, imageFrame } from "./images.js";

const PAGE_SIZE = 24;
// Uploads at once: enough to keep the link busy, few enough to leave connections for the rest.
const MAX_UPLOADS = 2;

const $ = (id) => document.getElementById(id);

export class GalleryView {
  constructor(api, { notice }) {
    this.api = api;
    this.notice = notice;
    // Aborting this ends every listener, stream, poll and request of the view (sign-out).
    this.life = new AbortController();
    this.scope = new BlobScope();
    this.tiles = new Map(); // job_id -> {li, job}
    this.following = new Set();
    this.cursor = null;
    this.loadGeneration = 0;
    this.queue = [];
    this.activeUploads = 0;
    this.bind();
    this.load({ reset: true });
  }

  destroy() {
    this.life.abort(new DOMException("signed out", "AbortError"));
    this.scope.revokeAll();
    for (const entry of this.queue) entry.row.remove();
    $("uploads").replaceChildren();
    $("grid").replaceChildren();
    $("filters").reset();
    $("upload-form").reset();
    $("load-more").hidden = true;
    $("jobs-empty").hidden = true;
  }

  bind() {
    const on = (el, type, fn) => el.addEventListener(type, fn, { signal: this.life.signal });
    on($("files"), "change", (ev) => {
      this.addFiles(ev.target.files);
      ev.target.value = ""; // the same file chosen again is a new upload
    });
    const zone = $("dropzone");
    on(zone, "dragenter", (ev) => {
      ev.preventDefault();
      zone.classList.add("over");
    });
    on(zone, "dragover", (ev) => {
      ev.preventDefault();
      ev.dataTransfer.dropEffect = "copy";
      zone.classList.add("over");
    });
    on(zone, "dragleave", (ev) => {
      if (!zone.contains(ev.relatedTarget)) zone.classList.remove("over");
    });
    on(zone, "drop", (ev) => {
      ev.preventDefault();
      zone.classList.remove("over");
      if (ev.dataTransfer?.files?.length) this.addFiles(ev.dataTransfer.files);
    });
    on($("upload-form"), "submit", (ev) => ev.preventDefault());
    on($("filters"), "submit", (ev) => {
      ev.preventDefault();
      this.load({ reset: true });
    });
    // After the reset has cleared the fields (the event comes before it).
    on($("filters"), "reset", () => setTimeout(() => this.load({ reset: true })));
    on($("load-more"), "click", () => this.load({ reset: false }));
  }

  // ---- the grid -------------------------------------------------------------------------------------

  filters() {
    const form = new FormData($("filters"));
    const out = {};
    const status = form.get("status");
    const tag = String(form.get("tag") || "").trim().toLowerCase(); // tags are stored lower-case
    if (status) out.status = status;
    if (tag) out.tag = tag;
    // Dates are the reader's local days; created_to is exclusive in the API, so "to" is the next midnight.
    const from = form.get("created_from");
    const to = form.get("created_to");
    if (from) out.created_from = new Date(`${from}T00:00:00`).toISOString();
    if (to) {
      const end = new Date(`${to}T00:00:00`);
      end.setDate(end.getDate() + 1);
      out.created_to = end.toISOString();
    }
    return out;
  }

  async load({ reset }) {
    const generation = ++this.loadGeneration;
    const filters = this.filters();
    if (filters.created_from && filters.created_to && filters.created_from >= filters.created_to) {
      this.notice("“Created from” must be on or before “Created to”.", { error: true });
      return;
    }
    const query = new URLSearchParams({ ...filters, limit: String(PAGE_SIZE) });
    if (!reset && this.cursor) query.set("cursor", this.cursor);
    const grid = $("grid");
    const more = $("load-more");
    grid.setAttribute("aria-busy", "true");
    more.disabled = true;
    let page;
    try {
      page = await this.api.json(`/v1/jobs?${query}`, { signal: this.life.signal });
    } catch (err) {
      if (this.life.signal.aborted || generation !== this.loadGeneration) return;
      this.notice(`Could not list jobs: ${err.message}`, { error: true });
      grid.setAttribute("aria-busy", "false");
      more.disabled = false;
      return;
    }
    // A newer load (filters changed while this one was in flight) owns the grid now.
    if (generation !== this.loadGeneration) return;
    if (reset) {
      this.tiles.clear();
      this.scope.revokeAll();
      grid.replaceChildren();
      this.activeFilters = filters;
    }
    for (const job of page.items) {
      if (this.tiles.has(job.job_id)) continue; // already shown (uploaded here since the first page)
      grid.append(this.tile(job));
      if (!TERMINAL.has(job.status)) this.follow(job.job_id);
    }
    this.cursor = page.next_cursor || null;
    more.hidden = !this.cursor;
    more.disabled = false;
    grid.setAttribute("aria-busy", "false");
    this.updateEmpty();
  }

  updateEmpty() {
    const empty = $("jobs-empty");
    const filtered = Object.keys(this.activeFilters || {}).length > 0;
    empty.textContent = filtered ? "No jobs match these filters." : "No jobs yet: upload an image above.";
    empty.hidden = this.tiles.size > 0;
  }

  /** Whether a job just submitted belongs in the grid under the filters it shows. */
  matches(job) {
    const f = this.activeFilters || {};
    if (f.status && f.status !== job.status) return false;
    if (f.tag && !(job.tags || []).includes(f.tag.toLowerCase())) return false;
    const now = new Date().toISOString();
    if (f.created_from && now < f.created_from) return false;
    if (f.created_to && now >= f.created_to) return false;
    return true;
  }

  tile(job) {
    const li = h("li", { class: "tile" });
    const entry = { li, job };
    this.tiles.set(job.job_id, entry);
    this.renderTile(entry);
    return li;
  }

  /** Merges `update` into the tile's job; images are rebuilt only when something they show changed. */
  updateTile(update) {
    const entry = this.tiles.get(update.job_id);
    if (!entry) return;
    const before = entry.job;
    entry.job = { ...before, ...update };
    const changed =
      before.status !== entry.job.status ||
      (!before.urls && entry.job.urls) ||
      before.processed_path !== entry.job.processed_path;
    if (changed) this.renderTile(entry);
  }

  renderTile(entry) {
    const { li, job } = entry;
    const link = `#/jobs/${encodeURIComponent(job.job_id)}`;
    const refresh = () => this.refreshJob(job.job_id);
    li.dataset.jobId = job.job_id;
    li.dataset.status = job.status;
    li.setAttribute("aria-label", `Job ${shortId(job.job_id)}, ${job.status}`);
    li.replaceChildren(
      h(
        "div",
        { class: "pair" },
        imageFrame(this.api, job, "original", { scope: this.scope, label: true, refresh }),
        imageFrame(this.api, job, "cutout", { scope: this.scope, label: true, refresh }),
      ),
      h(
        "div",
        { class: "tile-body" },
        h(
          "div",
          { class: "tile-head" },
          h("a", { class: "tile-link", href: link, title: job.job_id }, shortId(job.job_id)),
          badge(job.status),
        ),
        h(
          "div",
          { class: "tile-meta" },
          job.created_at ? time(job.created_at, { short: true }) : null,
          job.image_width ? h("span", {}, `${job.image_width}×${job.image_height}`) : null,
        ),
        job.tags?.length ? h("ul", { class: "tags", "aria-label": "Tags" }, job.tags.map((t) => h("li", {}, t))) : null,
        job.status === "failed" && job.error_message ? h("p", { class: "tile-error" }, job.error_message) : null,
      ),
    );
  }

  async refreshJob(jobId) {
    const job = await this.api.json(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal: this.life.signal });
    this.updateTile(job);
    return job;
  }

  /** Follows a job until it ends, updating its tile (and `onUpdate`, for an upload's row). */
  follow(jobId, onUpdate = () => {}) {
    if (this.following.has(jobId)) return;
    this.following.add(jobId);
    const update = (job) => {
      this.updateTile({ ...job, job_id: jobId });
      onUpdate(this.tiles.get(jobId)?.job || job);
    };
    followJob(this.api, jobId, update, { signal: this.life.signal })
      .then(update)
      .catch((err) => {
        if (this.life.signal.aborted) return;
        onUpdate({ job_id: jobId, status: "error", error_message: err.message });
      })
      .finally(() => this.following.delete(jobId));
  }

  // ---- uploads --------------------------------------------------------------------------------------

  /** The form's tags and params, or null (and a message) when they are invalid. */
  uploadSettings() {
    const form = new FormData($("upload-form"));
    const tags = String(form.get("tags") || "").trim();
    const params = {};
    const threshold = String(form.get("threshold") || "").trim();
    if (threshold) {
      const value = Number(threshold);
      if (!(value >= 0 && value <= 1)) {
        this.notice("Threshold must be a number from 0 to 1, or empty.", { error: true });
        $("upload-threshold").focus();
        return null;
      }
      params.threshold = value;
    }
    const format = form.get("cutout_format");
    if (format) params.cutout_format = format;
    return { tags, params };
  }

  addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    const settings = this.uploadSettings();
    if (!settings) return;
    for (const file of files) {
      // One Idempotency-Key per file, kept across retries: a retry after a lost answer is the same job.
      const entry = { file, settings, idempotencyKey: `gallery-${randomHex(16)}`, row: null, parts: null };
      this.uploadRow(entry);
      this.queue.push(entry);
    }
    this.notice(`${files.length} file${files.length === 1 ? "" : "s"} queued.`);
    this.pump();
  }

  pump() {
    while (this.activeUploads < MAX_UPLOADS && this.queue.length && !this.life.signal.aborted) {
      this.upload(this.queue.shift());
    }
  }

  uploadRow(entry) {
    const name = h("span", { class: "upload-name", title: entry.file.name }, entry.file.name);
    const progress = h("progress", { max: "1", value: "0", "aria-label": `Upload of ${entry.file.name}` });
    const state = h("span", { class: "upload-state" }, badge("queued"));
    const error = h("p", { class: "upload-error", hidden: true });
    entry.parts = { progress, state, error };
    entry.row = h("li", { class: "upload" }, name, progress, state, error);
    $("uploads").prepend(entry.row);
  }

  setRowState(entry, status, extra = null) {
    entry.row.dataset.status = status;
    entry.parts.state.replaceChildren(badge(status), extra || "");
  }

  async upload(entry) {
    this.activeUploads += 1;
    const { file, settings, parts } = entry;
    parts.error.hidden = true;
    parts.progress.value = 0;
    this.setRowState(entry, "uploading");
    const form = new FormData();
    form.append("image", file, file.name);
    if (settings.tags) form.append("tags", settings.tags);
    if (Object.keys(settings.params).length) form.append("params", JSON.stringify(settings.params));
    const call = this.api.submit(form, {
      idempotencyKey: entry.idempotencyKey,
      onProgress: (loaded, total) => (parts.progress.value = total ? loaded / total : 0),
    });
    const stop = () => call.abort();
    this.life.signal.addEventListener("abort", stop, { once: true });
    let accepted;
    try {
      accepted = await call.promise;
    } catch (err) {
      if (this.life.signal.aborted) return;
      this.uploadFailed(entry, err);
      return;
    } finally {
      this.life.signal.removeEventListener("abort", stop);
      this.activeUploads -= 1;
      this.pump();
    }
    this.accepted(entry, accepted);
  }

  uploadFailed(entry, err) {
    const retry = h("button", { type: "button", class: "secondary small" }, "Retry");
    retry.addEventListener("click", () => {
      this.setRowState(entry, "queued");
      this.queue.push(entry);
      this.pump();
    });
    this.setRowState(entry, "error", retry);
    entry.parts.error.textContent = err instanceof ApiError ? err.message : String(err);
    entry.parts.error.hidden = false;
  }

  accepted(entry, accepted) {
    const jobId = accepted.job_id;
    const { parts } = entry;
    parts.progress.removeAttribute("value"); // indeterminate: the upload is done, the job runs
    parts.progress.setAttribute("aria-label", `Job for ${entry.file.name}`);
    const link = h("a", { href: `#/jobs/${encodeURIComponent(jobId)}` }, "Details");
    entry.row.dataset.jobId = jobId;
    const job = {
      job_id: jobId,
      status: accepted.status || "pending",
      tags: entry.settings.tags
        ? [...new Set(entry.settings.tags.split(",").map((t) => t.trim().toLowerCase()).filter(Boolean))]
        : [],
    };
    if (!this.tiles.has(jobId) && this.matches(job)) {
      $("grid").prepend(this.tile(job));
      this.updateEmpty();
    }
    this.setRowState(entry, job.status, link);
    this.follow(jobId, (now) => {
      this.setRowState(entry, now.status, link);
      if (TERMINAL.has(now.status) || now.status === "error") {
        if (!parts.ended) this.notice(`${entry.file.name}: ${now.status}`); // announced once, for screen readers
        parts.ended = true;
        parts.progress.value = 1;
        if (now.status !== "completed" && now.error_message) {
          parts.error.textContent = now.error_message;
          parts.error.hidden = false;
        }
      }
    });
  }
}
