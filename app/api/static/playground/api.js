// The API calls the panels make. The bearer key lives here, in this tab's memory only (never in
// storage); a failed call throws an ApiError carrying the API's own words.

let key = "";
const unauthorizedListeners = [];

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function setKey(value) {
  key = value;
}

// `listener(error)` runs on every 401, so the page can ask for the key.
export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

// /v1 and /v2 answer {"error": "..."}, /v1/completions {"error": {"message": "..."}}.
async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    const error = body.error ?? body.detail;
    message = typeof error === "string" ? error : (error?.message ?? JSON.stringify(body));
  } catch {
    // Not JSON: the status line is all there is.
  }
  const error = new ApiError(response.status, message);
  if (response.status === 401) unauthorizedListeners.forEach((listener) => listener(error));
  return error;
}

// GET `path` (relative, so the page works under a root path), or POST `body` as JSON.
export async function call(path, body, signal) {
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const init = { headers, signal };
  if (body !== undefined) {
    Object.assign(init, { method: "POST", body: JSON.stringify(body) });
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson(path) {
  return (await call(path)).json();
}

export async function postJson(path, body) {
  return (await call(path, body)).json();
}

// A server-sent event stream: yields each event's data as JSON, until `[DONE]`.
export async function* events(path, body, signal) {
  const response = await call(path, body, signal);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += value;
    const complete = buffered.split("\n\n");
    buffered = complete.pop();
    for (const event of complete) {
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trim())
        .join("\n");
      if (data === "[DONE]") return;
      if (!data) continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(200, chunk.error.message ?? String(chunk.error));
      yield chunk;
    }
  }
}

export function modelPath(prefix, name, suffix = "") {
  return `${prefix}/models/${encodeURIComponent(name)}${suffix}`;
}
