// Every call to the API goes through here: the key on each request, and the API's one error shape
// ({"error": {"code", "message"}}) turned into an ApiError whose message is meant for people.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** The error a failed response carries; its own message when it has the API's shape. */
export async function errorOf(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch {
    // Not JSON (a proxy's page, an empty body): the status alone says what happened.
  }
  return errorFromBody(resp.status, body, resp.headers.get("Retry-After"));
}

function errorFromBody(status, body, retryAfter) {
  const error = body && typeof body === "object" ? body.error : null;
  let message = error?.message || (status === 0 ? "the server could not be reached" : `the server answered ${status}`);
  if (retryAfter && (status === 429 || status === 503)) message += ` (retry in ${retryAfter} s)`;
  return new ApiError(status, error?.code || "http_error", message);
}

export class Api {
  /**
   * @param {string} key an API key (rk_...)
   * @param {() => void} onUnauthorized called when the API refuses the key (revoked while signed in)
   */
  constructor(key, onUnauthorized = () => {}) {
    this.key = key;
    this.onUnauthorized = onUnauthorized;
  }

  /** The raw response of an authenticated request; a network failure becomes ApiError(0). */
  async request(path, { method = "GET", headers = {}, body, signal } = {}) {
    let resp;
    try {
      resp = await fetch(path, {
        method,
        body,
        signal,
        headers: { Authorization: `Bearer ${this.key}`, ...headers },
        // The key travels in the header alone: no cookies, and the Fetch standard drops Authorization on
        // a cross-origin redirect (the image endpoints redirect to the object store).
        credentials: "omit",
        cache: "no-store",
      });
    } catch (err) {
      if (err?.name === "AbortError") throw err;
      throw new ApiError(0, "network", "the server could not be reached");
    }
    if (resp.status === 401) this.onUnauthorized();
    return resp;
  }

  /** The JSON body of a successful request, or ApiError. */
  async json(path, options) {
    const resp = await this.request(path, options);
    if (!resp.ok) throw await errorOf(resp);
    return resp.json();
  }

  /**
   * POST /v1/jobs with an upload's progress. XMLHttpRequest, because fetch() reports no upload progress.
   * @returns {{promise: Promise<object>, abort: () => void}}
   */
  submit(form, { idempotencyKey, onProgress = () => {} } = {}) {
    const xhr = new XMLHttpRequest();
    const promise = new Promise((resolve, reject) => {
      xhr.open("POST", "/v1/jobs");
      xhr.setRequestHeader("Authorization", `Bearer ${this.key}`);
      if (idempotencyKey) xhr.setRequestHeader("Idempotency-Key", idempotencyKey);
      xhr.responseType = "json";
      xhr.upload.addEventListener("progress", (ev) => {
        if (ev.lengthComputable) onProgress(ev.loaded, ev.total);
      });
      xhr.addEventListener("load", () => {
        if (xhr.status === 401) this.onUnauthorized();
        if (xhr.status >= 200 && xhr.status < 300 && xhr.response) resolve(xhr.response);
        else reject(errorFromBody(xhr.status, xhr.response, xhr.getResponseHeader("Retry-After")));
      });
      xhr.addEventListener("error", () => reject(errorFromBody(0, null, null)));
      xhr.addEventListener("abort", () => reject(new DOMException("upload cancelled", "AbortError")));
      xhr.send(form);
    });
    return { promise, abort: () => xhr.abort() };
  }
}
