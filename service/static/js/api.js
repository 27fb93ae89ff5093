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

// A map grid as the API sends it (schema ErrorMap): base64url of n_rows x n_columns little-endian
// float32 values, row-major, row 0 the lowest band. Returns them as a Float32Array in that order.
export function decodeGrid(text, rows, columns) {
  let binary;
  try {
    binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  } catch {
    throw new ApiError("The service's error map is not base64url");
  }
  if (binary.length !== rows * columns * 4) {
    throw new ApiError(`The service's error map has ${binary.length} bytes, not ${rows} x ${columns} float32 values`);
  }
  const view = new DataView(new ArrayBuffer(binary.length));
  for (let i = 0; i < binary.length; i++) view.setUint8(i, binary.charCodeAt(i));
  const values = new Float32Array(rows * columns);
  for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(i * 4, true);
  return values;
}

// The answer with its map's grids decoded: log_mel_db and errors become Float32Arrays.
export async function scoreClip(file, { model, machineId, key }) {
  const query = new URLSearchParams({ detail: "map" });
  if (machineId) query.set("machine_id", machineId);
  const form = new FormData();
  form.append("file", file, file.name);
  const answer = await call(`v1/models/${encodeURIComponent(model)}/score?${query}`, {
    method: "POST",
    headers: headers(key),
    body: form,
  });
  const map = answer.map;
  if (map) {
    map.log_mel_db = decodeGrid(map.log_mel_db, map.n_rows, map.n_columns);
    map.errors = decodeGrid(map.errors, map.n_rows, map.n_columns);
  }
  return answer;
}
