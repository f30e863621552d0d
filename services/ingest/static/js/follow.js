// Follows a job to its end: live from GET /v1/jobs/{id}/events while that is served, by polling
// GET /v1/jobs/{id} otherwise (the events endpoint answers 404 where it is not deployed).

import { ApiError } from "./api.js";
import { sleep } from "./dom.js";
import { readEvents } from "./sse.js";

export const TERMINAL = new Set(["completed", "failed"]);

// A browser opens at most 6 HTTP/1.1 connections to one origin, and each open stream holds one for as
// long as its job runs: beyond this many, jobs are polled, so uploads and page loads never queue behind
// streams. A polled job takes a stream when one frees.
const MAX_STREAMS = 3;
let openStreams = 0;

// Once the events endpoint answered 404, this page stops asking it (it is the deployment, not the job).
let eventsServed = true;

const POLL_MS = [500, 750, 1000, 1500, 2000, 3000];

/**
 * Calls onUpdate(job) with each state seen and resolves with the terminal job, read once more at the
 * end so it carries every field (and fresh image URLs). Rejects with ApiError when the job cannot be
 * read (404, the key refused) and with the abort reason when `signal` aborts.
 */
export async function followJob(api, jobId, onUpdate, { signal } = {}) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;
  let polls = 0;
  let streamFailures = 0;
  let transientFailures = 0;
  for (;;) {
    signal?.throwIfAborted();
    let outcome = null;
    if (eventsServed && openStreams < MAX_STREAMS && streamFailures < 5) {
      openStreams += 1;
      try {
        outcome = await stream(api, path, onUpdate, signal);
      } finally {
        openStreams -= 1;
      }
      if (outcome === "missing") {
        eventsServed = false;
      } else if (outcome === "ended") {
        streamFailures = 0;
      } else {
        streamFailures += 1;
      }
    }
    // After a stream (ended early, dropped, or not served) and at each poll: the job as it is now.
    let job;
    try {
      job = await api.json(path, { signal });
    } catch (err) {
      // A restarting server or a moment offline is waited out; a refused key or a 404 is the answer.
      const transient = err instanceof ApiError && (err.status === 0 || err.status === 429 || err.status >= 500);
      if (signal?.aborted || !transient || ++transientFailures > 30) throw err;
      await sleep(POLL_MS[POLL_MS.length - 1], signal);
      continue;
    }
    transientFailures = 0;
    onUpdate(job);
    if (TERMINAL.has(job.status)) return job;
    // A stream that closed cleanly before the end is reopened at once; anything else waits longer each time.
    const wait = outcome === "ended" ? 250 : POLL_MS[Math.min(polls++, POLL_MS.length - 1)];
    await sleep(wait, signal);
  }
}

/**
 * One stream, read to its end: "ended" (it closed, maybe after the terminal event), "missing" (404: not
 * deployed), or "failed" (a network error or a 5xx: try again later).
 */
async function stream(api, path, onUpdate, signal) {
  let resp;
  try {
    resp = await api.request(`${path}/events`, { headers: { Accept: "text/event-stream" }, signal });
  } catch (err) {
    if (signal?.aborted) throw err;
    return "failed";
  }
  if (resp.status === 404) return "missing";
  if (resp.status === 401 || resp.status === 403) throw new ApiError(resp.status, "unauthenticated", "the key was refused");
  if (!resp.ok || !resp.body) return "failed";
  try {
    await readEvents(
      resp.body,
      (event) => {
        let job;
        try {
          job = JSON.parse(event.data);
        } catch {
          return; // not a job (a stray data line): the next poll or event tells the truth
        }
        // The event's name is the status it announces; the job JSON may be a partial view.
        if (!job.status && event.type !== "message") job.status = event.type;
        onUpdate(job);
      },
      signal,
    );
  } catch (err) {
    if (signal?.aborted) throw err;
    return "failed";
  }
  signal?.throwIfAborted();
  return "ended";
}
