// A job's images (original, mask, cut-out) as <img>s. A job's `urls` are presigned object-store URLs an
// <img> loads without the key. Where they are the API's own paths instead (result_delivery = "stream"),
// or where an API without `urls` answers, the bytes come through the key-checked GET /v1/jobs/{id}/{kind}
// and show as a blob: URL (revoked when its view goes away).

import { h, sleep } from "./dom.js";

// Which field says the object exists, for an API without `urls`.
const PATH_FIELD = { original: "original_path", mask: "mask_path", cutout: "processed_path" };

const LABEL = { original: "Original", mask: "Mask", cutout: "Cut-out" };

/** The URLs made for one view, revoked together when the view is replaced. */
export class BlobScope {
  constructor() {
    this.urls = new Set();
  }
  add(url) {
    this.urls.add(url);
    return url;
  }
  revokeAll() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls.clear();
  }
}

/** The src for `kind` of `job`, or null while the object does not exist. */
export async function imageSrc(api, job, kind, scope) {
  if (job.urls && typeof job.urls === "object") {
    const url = job.urls[kind];
    if (!url) return null;
    const target = new URL(url, location.href);
    // The API's own path wants the key, which an <img> cannot send.
    if (target.origin === location.origin && target.pathname.startsWith("/v1/")) return viaApi(api, target.pathname, scope);
    return url;
  }
  if (!job[PATH_FIELD[kind]]) return null;
  return viaApi(api, `/v1/jobs/${encodeURIComponent(job.job_id)}/${kind}`, scope);
}

// Downloads through the API at a time: a grid of them at once would spend a key's request burst.
const MAX_DOWNLOADS = 4;
let downloads = 0;
const waiting = [];

async function viaApi(api, path, scope) {
  // A slot is handed from one download to the next waiting one directly, so there are never more.
  if (downloads >= MAX_DOWNLOADS) await new Promise((resolve) => waiting.push(resolve));
  else downloads += 1;
  try {
    for (let attempt = 0; ; attempt += 1) {
      const resp = await api.request(path);
      if (resp.ok) return scope.add(URL.createObjectURL(await resp.blob()));
      // Rate limited: wait as told (a little, at most) and try again, a few times.
      if (resp.status !== 429 || attempt >= 3) return null;
      await sleep(Math.min(Number(resp.headers.get("Retry-After")) || 1, 5) * 1000);
    }
  } finally {
    const next = waiting.shift();
    if (next) next();
    else downloads -= 1;
  }
}

/**
 * A frame showing `kind` of `job`: a placeholder until the image exists, the cut-out on a checkerboard.
 * `refresh()` is called once when a presigned URL fails to load (it may have expired) and resolves with
 * a newer view of the job.
 */
export function imageFrame(api, job, kind, { scope, label = false, refresh = null } = {}) {
  const frame = h("div", { class: `frame${kind === "cutout" ? " checker" : ""}`, "data-kind": kind });
  if (label) frame.append(h("span", { class: "frame-label", "aria-hidden": "true" }, LABEL[kind]));
  const pending = job.status === "pending" || job.status === "processing";
  const placeholder = (text, loading = false) => {
    frame.classList.toggle("loading", loading);
    frame.querySelector(".placeholder")?.remove();
    frame.querySelector("img")?.remove();
    frame.append(h("span", { class: "placeholder" }, text));
  };
  const show = (src, retried) => {
    const img = h("img", {
      src,
      alt: `${LABEL[kind]} of job ${job.job_id}`,
      loading: "lazy",
      decoding: "async",
      "data-kind": kind,
      width: job.image_width || null,
      height: job.image_height || null,
    });
    img.addEventListener("error", async () => {
      if (retried || !refresh) return placeholder("Image unavailable");
      try {
        const fresh = await refresh();
        const again = await imageSrc(api, fresh, kind, scope);
        if (again) return show(again, true);
      } catch {
        // The job could not be read again: say so in place of the image.
      }
      placeholder("Image unavailable");
    });
    frame.classList.remove("loading");
    frame.querySelector(".placeholder")?.remove();
    frame.querySelector("img")?.remove();
    frame.append(img);
  };
  placeholder(pending && kind !== "original" ? "Working…" : "Loading…", true);
  imageSrc(api, job, kind, scope).then(
    (src) => {
      if (src) show(src, false);
      else if (job.status === "failed" && kind !== "original") placeholder("No result (failed)");
      else if (pending && kind !== "original") placeholder("Working…", true);
      else placeholder("Not available");
    },
    () => placeholder("Image unavailable"),
  );
  return frame;
}
