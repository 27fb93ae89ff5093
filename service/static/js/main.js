// The operator's page: choose a model and machine ID, score recordings, look at the answers.
// Timing: performance.measure("asd-answer-to-drawn-<n>") spans a clip's parsed answer to its
// drawn pictures.

import { ApiError, describeModel, listModels, scoreClip } from "./api.js";
import { drawHeatmap, drawSegments, drawWaveform } from "./draw.js";
import { appendRow, resultRow, toCsv } from "./results.js";

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("score-form"),
  key: $("api-key"),
  model: $("model"),
  machineId: $("machine-id"),
  files: $("files"),
  drop: $("drop-zone"),
  again: $("score-button"),
  status: $("status"),
  error: $("error"),
  detail: $("detail"),
  title: $("detail-title"),
  decision: $("decision"),
  scoreLine: $("score-line"),
  checks: $("checks"),
  waveform: $("waveform"),
  waveformCaption: $("waveform-caption"),
  segments: $("segments"),
  logmel: $("logmel"),
  logmelCaption: $("logmel-caption"),
  errmap: $("errmap"),
  errmapCaption: $("errmap-caption"),
  tbody: document.querySelector("#results tbody"),
  noResults: $("no-results"),
  csv: $("csv-link"),
};

const state = {
  model: null, // GET /v1/models/{name} of the chosen model
  clips: [], // {row, answer, audio, file} per clip scored, in order
  shown: null,
  lastFiles: [],
  queue: Promise.resolve(),
};

function say(text) {
  ui.status.textContent = text;
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

function option(value, text, { disabled = false, selected = false } = {}) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  element.disabled = disabled;
  element.selected = selected;
  return element;
}

async function loadModels() {
  clearError();
  ui.model.replaceChildren();
  state.model = null;
  try {
    const listing = await listModels(ui.key.value);
    for (const model of listing.models) {
      const broken = model.status === "broken";
      const label = `${model.name}${model.default ? " (default)" : ""}${broken ? " (broken)" : ""}`;
      ui.model.appendChild(
        option(model.name, label, { disabled: broken, selected: model.name === listing.default_model && !broken }),
      );
    }
    say(`${listing.models.length} model(s) on this service.`);
    await loadModel();
  } catch (error) {
    ui.model.appendChild(option("", "(no models)", { disabled: true, selected: true }));
    const hint = error instanceof ApiError && error.status === 401 ? " Enter the API key above." : "";
    showError(`Cannot list the models: ${error.message}${hint}`);
    say("");
  }
}

async function loadModel() {
  const name = ui.model.value;
  ui.machineId.replaceChildren(option("", "none: model-wide threshold", { selected: true }));
  state.model = null;
  if (!name) return;
  try {
    const info = await describeModel(name, ui.key.value);
    state.model = info;
    const own = (info.threshold && info.threshold.per_id) || {};
    for (const id of info.machine_ids || []) {
      ui.machineId.appendChild(option(id, `${id}${own[id] ? " (own threshold)" : " (model-wide threshold)"}`));
    }
  } catch (error) {
    showError(`Cannot read model ${name}: ${error.message}`);
  }
}

// The waveform as the model hears it: decoded at the model's rate. Never fails: null instead.
async function decode(file) {
  const rate = (state.model && state.model.features && state.model.features.sample_rate) || 16000;
  try {
    const context = new OfflineAudioContext(1, 1, rate);
    return await context.decodeAudioData(await file.arrayBuffer());
  } catch {
    return null;
  }
}

function channelSamples(audio, channel) {
  if (channel === "mean") {
    const mean = new Float32Array(audio.length);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      const data = audio.getChannelData(c);
      for (let i = 0; i < data.length; i++) mean[i] += data[i] / audio.numberOfChannels;
    }
    return mean;
  }
  return audio.getChannelData(channel < audio.numberOfChannels ? channel : 0);
}

function describeCheck(check) {
  const box = document.createDocumentFragment();
  const head = document.createElement("p");
  if (check.status === "ok") {
    head.className = "ok";
    head.textContent = "Input check: the clip looks like the training recordings.";
  } else if (check.status === "unchecked") {
    head.textContent = "Input check: not available (the model has no fingerprint of its training audio).";
  } else {
    head.className = "warning";
    head.textContent = "Input check: unlike the training audio; the alarm may come from the recording chain:";
  }
  box.appendChild(head);
  if (check.findings.length) {
    const list = document.createElement("ul");
    for (const finding of check.findings) {
      const item = document.createElement("li");
      item.textContent = `${finding.message} (${finding.code})`;
      list.appendChild(item);
    }
    box.appendChild(list);
  }
  return box;
}

function show(clip) {
  const { answer, audio, row } = clip;
  state.shown = clip;
  ui.detail.hidden = false;
  ui.detail.dataset.index = String(row.index);
  ui.title.textContent = `${row.index}. ${row.file}`;
  const anomalous = answer.decision === "anomalous";
  ui.decision.textContent = anomalous ? "Anomalous" : "Normal";
  ui.decision.className = `decision ${answer.decision}`;
  const scope = answer.threshold_scope === "machine_id" ? `machine ID ${answer.machine_id}'s own` : "the model-wide";
  ui.scoreLine.textContent =
    `Score ${answer.score.toPrecision(3)} against threshold ${answer.threshold.toPrecision(3)}: ` +
    `${answer.ratio.toFixed(2)}× (${scope} threshold, ${+(answer.false_alarm_rate * 100).toFixed(2)} % false alarms). ` +
    `${answer.model}, ${answer.clip.duration_s.toFixed(2)} s, channel ${answer.clip.channel} of ${answer.clip.channels}.`;
  ui.checks.replaceChildren(describeCheck(answer.input_check));
  for (const tr of ui.tbody.rows) tr.classList.toggle("selected", tr.dataset.index === String(row.index));
  draw(clip);
}

function draw({ answer, audio }) {
  const map = answer.map;
  const duration = answer.clip.duration_s;
  const worst = answer.segments[answer.worst_segment];
  if (audio) {
    drawWaveform(ui.waveform, channelSamples(audio, answer.clip.channel), { duration: audio.duration, worst });
    ui.waveformCaption.textContent = `Waveform, channel ${answer.clip.channel}; the worst segment is shaded`;
  } else {
    ui.waveform.getContext("2d").clearRect(0, 0, ui.waveform.width, ui.waveform.height);
    ui.waveformCaption.textContent = "Waveform: this browser cannot decode the file";
  }
  drawSegments(ui.segments, answer.segments, { duration, threshold: answer.threshold });
  drawHeatmap(ui.logmel, map, map.log_mel_db, { colours: "viridis" });
  drawHeatmap(ui.errmap, map, map.errors, { colours: "inferno", logScale: true, region: map.worst });
  const region = map.worst;
  ui.errmapCaption.textContent =
    `Reconstruction error (log scale); outlined: the worst region, ${region.start_s}–${region.end_s} s, ` +
    `${Math.round(region.low_hz)}–${Math.round(region.high_hz)} Hz`;
}

function refreshCsv() {
  const rows = state.clips.map((clip) => clip.row);
  if (ui.csv.href) URL.revokeObjectURL(ui.csv.href);
  ui.csv.href = URL.createObjectURL(new Blob([toCsv(rows)], { type: "text/csv" }));
  ui.csv.hidden = rows.length === 0;
  ui.noResults.hidden = rows.length > 0;
}

function record(clip) {
  state.clips.push(clip);
  appendRow(ui.tbody, clip.row, (index) => show(state.clips[index - 1]));
  refreshCsv();
}

async function scoreOne(file, position, total) {
  const index = state.clips.length + 1;
  const model = ui.model.value;
  const machineId = ui.machineId.value;
  say(`Scoring ${file.name} (${position} of ${total}) with ${model}…`);
  const decoding = decode(file); // while the service scores
  let answer;
  try {
    if (!model) throw new ApiError("Choose a model first.");
    answer = await scoreClip(file, { model, machineId, key: ui.key.value });
  } catch (error) {
    record({ row: resultRow(index, file.name, model, machineId, null, error.message), answer: null, audio: null, file });
    showError(`${file.name}: ${error.message}`);
    return;
  }
  performance.mark(`asd-answer-${index}`);
  const clip = { row: resultRow(index, file.name, model, machineId, answer, null), answer, audio: await decoding, file };
  record(clip);
  show(clip);
  performance.mark(`asd-drawn-${index}`);
  performance.measure(`asd-answer-to-drawn-${index}`, `asd-answer-${index}`, `asd-drawn-${index}`);
  say(`${file.name}: ${answer.decision}, score ${answer.score.toPrecision(3)}, threshold ${answer.threshold.toPrecision(3)}.`);
}

function scoreFiles(files) {
  const list = Array.from(files);
  if (!list.length) return;
  state.lastFiles = list;
  ui.again.disabled = false;
  clearError();
  state.queue = state.queue.then(async () => {
    for (const [i, file] of list.entries()) await scoreOne(file, i + 1, list.length);
  });
}

ui.key.addEventListener("change", loadModels);
ui.model.addEventListener("change", loadModel);
ui.files.addEventListener("change", () => {
  scoreFiles(ui.files.files);
  ui.files.value = ""; // so that picking the same file again scores it again
});
ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  scoreFiles(state.lastFiles);
});
ui.drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  ui.drop.classList.add("over");
});
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
ui.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.drop.classList.remove("over");
  scoreFiles(event.dataTransfer.files);
});

let resizing = 0;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => state.shown && draw(state.shown), 150);
});

loadModels();
