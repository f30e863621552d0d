// Server-Sent Events read with fetch(): EventSource cannot send an Authorization header, so the stream
// is parsed here, as the HTML standard's event-stream rules say (fields, comments, CR/LF/CRLF lines).

/**
 * A parser fed text in chunks of any size (a line or a CRLF may be split between chunks); calls
 * onEvent({type, data, id}) for each complete event. Comments (": ping") are keep-alives and dropped.
 */
export function createParser(onEvent) {
  let buffer = "";
  let type = "";
  let data = [];
  let lastId = "";

  function line(text) {
    if (text === "") {
      // A blank line ends an event; one with no data line is no event (the standard's rule).
      if (data.length > 0) onEvent({ type: type || "message", data: data.join("\n"), id: lastId });
      type = "";
      data = [];
      return;
    }
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id" && !value.includes("\0")) lastId = value;
    // "retry" and unknown fields: nothing to do (reconnecting is the caller's, with its own backoff).
  }

  return {
    feed(chunk) {
      buffer += chunk;
      const eol = /\r\n|\r|\n/g;
      let start = 0;
      let match;
      while ((match = eol.exec(buffer)) !== null) {
        // A CR at the very end may be the first half of a CRLF still in flight: wait for the next chunk.
        if (match[0] === "\r" && match.index === buffer.length - 1) break;
        line(buffer.slice(start, match.index));
        start = eol.lastIndex;
      }
      buffer = buffer.slice(start);
    },
    /** The stream ended: a held CR ends its line; an event without its blank line is dropped. */
    end() {
      if (buffer.endsWith("\r")) line(buffer.slice(0, -1));
      buffer = "";
    },
  };
}

/** Reads a response body of text/event-stream to its end, calling onEvent for each event. */
export async function readEvents(body, onEvent, signal) {
  const parser = createParser(onEvent);
  // TextDecoderStream also drops a leading BOM, as the standard asks.
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const cancel = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", cancel, { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.feed(value);
    }
    parser.end();
  } finally {
    signal?.removeEventListener("abort", cancel);
    reader.releaseLock();
  }
}
