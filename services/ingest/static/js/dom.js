// Small DOM and formatting helpers. Elements are built with properties and text nodes only, never from
// HTML strings, so nothing a job carries (tags, error messages, file names) can inject markup.

/**
 * h("a", {href: "#/", class: "x"}, "text", child) -> the element.
 * Attributes: "class", "text", "on<event>" (a listener), dataset via "data-*", anything else via setAttribute
 * (false/null/undefined skip it, true sets it empty).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const shortDateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "short" });

/** A <time> for an ISO timestamp, in the reader's locale and zone; "—" when there is none. */
export function time(iso, { short = false } = {}) {
  if (!iso) return "—";
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return iso;
  return h("time", { datetime: iso, title: when.toISOString() }, (short ? shortDateTime : dateTime).format(when));
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status }, status);
}

export function shortId(jobId) {
  return jobId.slice(0, 8) + "…" + jobId.slice(-4);
}

/** Random hex of `n` bytes. getRandomValues, unlike randomUUID, works on plain-http origins too. */
export function randomHex(n = 16) {
  const buf = crypto.getRandomValues(new Uint8Array(n));
  return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}
