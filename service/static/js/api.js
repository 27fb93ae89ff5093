// Calls to the service's public API. Paths are relative, so the page also works behind a
// proxy that serves the service under a prefix.

export class ApiError extends Error {
  constructor(message, { status = 0, code = "" } = {}) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(key) {
  return key ? { "X-API-Key": key } : {};
}

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: a proxy's page, say. The status is all there is to tell.
  }
  if (response.ok && body !== null) return body;
  const error = body && body.error;
  if (error && error.message) {
    throw new ApiError(error.message, { status: response.status, code: error.code });
  }
  throw new ApiError(`The service answered HTTP ${response.status} ${response.statusText}`.trim(), {
    status: response.status,
  });
}

async function call(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(`The service did not answer: ${error.message}`);
  }
  return answer(response);
}

export function listModels(key) {
  return call("v1/models", { headers: headers(key) });
}

export function describeModel(name, key) {
  return call(`v1/models/${encodeURIComponent(name)}`, { headers: headers(key) });
}

export function scoreClip(file, { model, machineId, key }) {
  const query = new URLSearchParams({ detail: "map" });
  if (machineId) query.set("machine_id", machineId);
  const form = new FormData();
  form.append("file", file, file.name);
  return call(`v1/models/${encodeURIComponent(model)}/score?${query}`, {
    method: "POST",
    headers: headers(key),
    body: form,
  });
}
