// One job's page (#/jobs/<id>): its three images, timings, model, params, tags, attempts, error, and
// the webhook deliveries made for it. A job still running is followed live and the page kept current.

import { ApiError } from "./api.js";
import { badge, bytes, duration, h, time } from "./dom.js";
import { TERMINAL, followJob } from "./follow.js";
import { BlobScope, imageFrame } from "./images.js";

export class JobPage {
  constructor(api, jobId, root, { notice }) {
    this.api = api;
    this.jobId = jobId;
    this.root = root;
    this.notice = notice;
    this.life = new AbortController();
    this.scope = new BlobScope();
    this.job = null;
    this.shownKey = "";
    root.replaceChildren(
      backLink(),
      h("h1", { id: "job-title", tabindex: "-1" }, "Job"),
      h("p", { class: "empty" }, "Loading…"),
    );
    this.start();
  }

  destroy() {
    this.life.abort(new DOMException("left the page", "AbortError"));
    this.scope.revokeAll();
  }

  path() {
    return `/v1/jobs/${encodeURIComponent(this.jobId)}`;
  }

  async start() {
    const signal = this.life.signal;
    let job;
    try {
      job = await this.api.json(this.path(), { signal });
    } catch (err) {
      if (signal.aborted) return;
      this.root.replaceChildren(
        backLink(),
        h("h1", { id: "job-title", tabindex: "-1" }, "Job not shown"),
        h("p", { class: "error-text", role: "alert" }, err.message),
      );
      return;
    }
    this.show(job);
    if (TERMINAL.has(job.status)) return;
    try {
      await followJob(this.api, this.jobId, (update) => this.show({ ...this.job, ...update }), { signal });
    } catch (err) {
      if (!signal.aborted) this.notice(`Stopped following the job: ${err.message}`, { error: true });
    }
  }

  /** Renders `job`; the images and webhooks are rebuilt only when the status or the objects changed. */
  show(job) {
    const previous = this.job;
    this.job = job;
    const key = [job.status, job.mask_path, job.processed_path, Boolean(job.urls)].join("|");
    const rebuild = key !== this.shownKey;
    this.shownKey = key;
    document.title = `Job ${job.job_id.slice(0, 8)} · ${job.status} · rmbg gallery`;
    if (!rebuild && previous) {
      this.root.querySelector("#job-facts")?.replaceWith(facts(job));
      return;
    }
    const hadFocus = this.root.contains(document.activeElement) && document.activeElement.id === "job-title";
    this.scope.revokeAll();
    const refresh = () => this.api.json(this.path(), { signal: this.life.signal });
    const webhooks = h("section", { class: "webhooks", "aria-labelledby": "webhooks-title" });
    this.root.replaceChildren(
      backLink(),
      h(
        "div",
        { class: "job-head" },
        h("h1", { id: "job-title", tabindex: "-1" }, `Job ${job.job_id}`),
        badge(job.status),
      ),
      h(
        "div",
        { class: "images" },
        ["original", "mask", "cutout"].map((kind) => this.figure(job, kind, refresh)),
      ),
      h("h2", {}, "Details"),
      facts(job),
      webhooks,
    );
    if (hadFocus) this.root.querySelector("#job-title")?.focus();
    this.loadWebhooks(webhooks);
  }

  figure(job, kind, refresh) {
    const captions = { original: "Original", mask: "Mask", cutout: "Cut-out" };
    const frame = imageFrame(this.api, job, kind, { scope: this.scope, refresh });
    const url = job.urls?.[kind];
    return h(
      "figure",
      { "data-kind": kind },
      frame,
      h(
        "figcaption",
        {},
        captions[kind],
        url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, "Open full size") : null,
      ),
    );
  }

  async loadWebhooks(section) {
    section.replaceChildren(h("h2", { id: "webhooks-title" }, "Webhook deliveries"), h("p", {}, "Loading…"));
    let body = null;
    let why = "";
    try {
      body = await this.api.json(`${this.path()}/webhooks`, { signal: this.life.signal });
    } catch (err) {
      if (this.life.signal.aborted) return;
      // 404: the job has no webhook (or this API serves none); both are "none". Anything else is "none"
      // too, as far as this page can tell, with the reason beside it.
      if (!(err instanceof ApiError && err.status === 404)) why = ` (could not load them: ${err.message})`;
    }
    const items = Array.isArray(body) ? body : body?.items || [];
    const parts = [];
    if (body && !Array.isArray(body) && body.url) parts.push(webhookSummary(body));
    if (items.length) parts.push(attemptsTable(items));
    else if (parts.length) parts.push(h("p", { "data-webhooks": "no-attempts" }, "No attempts yet."));
    else parts.push(h("p", { "data-webhooks": "none" }, "none", why ? h("span", { class: "hint" }, why) : null));
    section.lastChild.replaceWith(...parts);
  }
}

function backLink() {
  return h("a", { class: "back", href: "#/" }, "← All jobs");
}

function fact(name, value, id) {
  return [h("dt", {}, name), h("dd", { id: id ? `fact-${id}` : null }, value)];
}

function facts(job) {
  const size = job.image_width ? `${job.image_width} × ${job.image_height} px` : "—";
  const model = job.model_revision ? `${job.model_name} @ ${job.model_revision}` : job.model_name || "—";
  const params = job.params && Object.keys(job.params).length ? JSON.stringify(job.params, null, 2) : null;
  return h(
    "dl",
    { class: "facts", id: "job-facts" },
    fact("Status", badge(job.status), "status"),
    fact("Created", time(job.created_at), "created"),
    fact("Completed", time(job.completed_at), "completed"),
    fact("Processing time", duration(job.processing_time_ms), "processing-time"),
    fact("Image", job.file_size_kb ? `${size}, ${bytes(job.file_size_kb * 1024)}` : size, "image"),
    fact("Model", model, "model"),
    fact("Params", params ? h("pre", {}, params) : "defaults", "params"),
    fact("Tags", job.tags?.length ? h("ul", { class: "tags" }, job.tags.map((t) => h("li", {}, t))) : "none", "tags"),
    fact("Attempts", String(job.attempts ?? "—"), "attempts"),
    fact("Reused result", job.reused_result ? "yes (same image and params as an earlier job)" : "no", "reused"),
    job.error_message ? fact("Error", h("span", { class: "error-text" }, job.error_message), "error") : null,
    fact("Job id", h("code", {}, job.job_id), "job-id"),
  );
}

/** Where the job's webhook stands (the endpoint's summary fields beside its attempts). */
// The webhook's states in the colours of the job badges they resemble.
const HOOK_BADGE = { delivered: "completed", gave_up: "failed", sending: "processing" };

function webhookSummary(hook) {
  const state = hook.sending ? "sending" : hook.state || "unknown";
  return h(
    "dl",
    { class: "facts", "data-webhooks": "summary" },
    fact("URL", h("code", {}, hook.url)),
    fact("State", h("span", { class: `badge ${HOOK_BADGE[state] || "pending"}` }, state.replace("_", " "))),
    hook.event_type ? fact("Event", hook.event_type) : null,
    fact("Registered", time(hook.registered_at)),
    hook.delivered_at ? fact("Delivered", time(hook.delivered_at)) : null,
    hook.next_attempt_at ? fact("Next attempt", time(hook.next_attempt_at)) : null,
    hook.last_status ? fact("Last answer", `HTTP ${hook.last_status}`) : null,
    hook.last_error ? fact("Last error", h("span", { class: "error-text" }, hook.last_error)) : null,
  );
}

/** The attempts as a table, one column per field they carry (so a field added later shows too). */
function attemptsTable(items) {
  const columns = [];
  for (const item of items) {
    for (const key of Object.keys(item)) if (!columns.includes(key)) columns.push(key);
  }
  const heading = { at: "when", status_code: "HTTP status", latency_ms: "latency" };
  const cell = (key, value) => {
    if (value === null || value === undefined) return "—";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (typeof value === "object") return h("code", {}, JSON.stringify(value));
    if ((key === "at" || key.endsWith("_at")) && typeof value === "string") return time(value, { short: true });
    if (key.endsWith("_ms") && typeof value === "number") return duration(value);
    return String(value);
  };
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { "data-webhooks": "attempts" },
      h("caption", { class: "visually-hidden" }, "Delivery attempts"),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, heading[c] || c.replaceAll("_", " "))))),
      h("tbody", {}, items.map((item) => h("tr", {}, columns.map((c) => h("td", {}, cell(c, item[c])))))),
    ),
  );
}
