// The clip's pictures: waveform, log-mel and error map on canvases, segment scores in SVG.

const SVG = "http://www.w3.org/2000/svg";
const MARGIN = { left: 46, right: 16, top: 6, bottom: 20 };
const AXIS = "#566274";
const FONT = "11px system-ui, sans-serif";

// Perceptually even colour maps (matplotlib's viridis and inferno), nine stops each.
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];
const INFERNO = [
  [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
  [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164],
];

function lookupTable(stops) {
  const table = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const at = (i / 255) * (stops.length - 1);
    const low = Math.floor(at);
    const high = Math.min(low + 1, stops.length - 1);
    const t = at - low;
    for (let c = 0; c < 3; c++) table[i * 3 + c] = stops[low][c] * (1 - t) + stops[high][c] * t;
  }
  return table;
}

const TABLES = { viridis: lookupTable(VIRIDIS), inferno: lookupTable(INFERNO) };

// A canvas sized to its CSS box in device pixels; drawing uses CSS pixels.
function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, canvas.clientWidth);
  const height = Math.max(1, canvas.clientHeight);
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  return { context, width, height };
}

function plotBox(width, height) {
  return {
    x: MARGIN.left,
    y: MARGIN.top,
    w: Math.max(1, width - MARGIN.left - MARGIN.right),
    h: Math.max(1, height - MARGIN.top - MARGIN.bottom),
  };
}

function niceStep(span, most) {
  const raw = span / Math.max(1, most);
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw) || raw;
}

function timeAxis(context, box, start, end) {
  context.fillStyle = AXIS;
  context.font = FONT;
  context.textAlign = "center";
  context.textBaseline = "top";
  const step = niceStep(end - start, Math.floor(box.w / 60));
  for (let t = Math.ceil(start / step) * step; t <= end + 1e-9; t += step) {
    const x = box.x + ((t - start) / (end - start)) * box.w;
    context.fillRect(x, box.y + box.h, 1, 4);
    context.fillText(`${+t.toFixed(2)} s`, x, box.y + box.h + 5);
  }
}

function hz(value) {
  return value >= 1000 ? `${+(value / 1000).toFixed(1)} kHz` : `${Math.round(value)} Hz`;
}

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))];
}

export function drawWaveform(canvas, samples, { duration, worst }) {
  const { context, width, height } = prepare(canvas);
  const box = plotBox(width, height);
  if (worst) {
    context.fillStyle = "rgba(163, 22, 29, 0.12)";
    const x0 = box.x + (worst.start_s / duration) * box.w;
    const x1 = box.x + (worst.end_s / duration) * box.w;
    context.fillRect(x0, box.y, Math.max(1, x1 - x0), box.h);
  }
  let peak = 1e-9;
  for (let i = 0; i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
  const middle = box.y + box.h / 2;
  const scale = box.h / 2 / peak;
  const columns = Math.max(1, Math.round(box.w));
  const perColumn = samples.length / columns;
  context.fillStyle = "#14325c";
  for (let x = 0; x < columns; x++) {
    const from = Math.floor(x * perColumn);
    const to = Math.max(from + 1, Math.floor((x + 1) * perColumn));
    let low = Infinity;
    let high = -Infinity;
    for (let i = from; i < to && i < samples.length; i++) {
      if (samples[i] < low) low = samples[i];
      if (samples[i] > high) high = samples[i];
    }
    if (low === Infinity) continue;
    const top = middle - high * scale;
    context.fillRect(box.x + x, top, 1, Math.max(1, (high - low) * scale));
  }
  context.fillStyle = AXIS;
  context.font = FONT;
  context.textAlign = "right";
  context.textBaseline = "middle";
  context.fillText(`±${peak.toPrecision(2)}`, box.x - 4, box.y + 6);
  timeAxis(context, box, 0, duration);
}

// A grid of n_rows x n_columns values, row-major, row 0 the lowest frequency, as an image.
export function drawHeatmap(canvas, map, grid, { colours, logScale = false, region = null }) {
  const { context, width, height } = prepare(canvas);
  const box = plotBox(width, height);
  const rows = map.n_rows;
  const columns = map.n_columns;
  const values = new Float64Array(rows * columns);
  for (let i = 0; i < values.length; i++) {
    values[i] = logScale ? Math.log10(Math.max(grid[i], 1e-6)) : grid[i];
  }
  const sorted = Float64Array.from(values).sort();
  const low = percentile(sorted, 0.02);
  const high = sorted[sorted.length - 1];
  const span = high - low || 1;
  const table = TABLES[colours];
  const image = new ImageData(columns, rows);
  for (let r = 0; r < rows; r++) {
    const y = rows - 1 - r; // low frequencies at the bottom
    for (let c = 0; c < columns; c++) {
      const level = Math.round(Math.min(1, Math.max(0, (values[r * columns + c] - low) / span)) * 255);
      const at = (y * columns + c) * 4;
      image.data[at] = table[level * 3];
      image.data[at + 1] = table[level * 3 + 1];
      image.data[at + 2] = table[level * 3 + 2];
      image.data[at + 3] = 255;
    }
  }
  const cells = document.createElement("canvas");
  cells.width = columns;
  cells.height = rows;
  cells.getContext("2d").putImageData(image, 0, 0);
  context.imageSmoothingEnabled = false;
  context.drawImage(cells, box.x, box.y, box.w, box.h);

  if (region) {
    const x = box.x + (region.column_start / columns) * box.w;
    const w = ((region.column_end - region.column_start) / columns) * box.w;
    const y = box.y + (1 - region.row_end / rows) * box.h;
    const h = ((region.row_end - region.row_start) / rows) * box.h;
    context.lineWidth = 3;
    context.strokeStyle = "#000";
    context.strokeRect(x, y, w, h);
    context.lineWidth = 1.5;
    context.strokeStyle = "#fff";
    context.strokeRect(x, y, w, h);
  }

  context.fillStyle = AXIS;
  context.font = FONT;
  context.textAlign = "right";
  context.textBaseline = "middle";
  for (const r of [0, Math.floor(rows / 2), rows - 1]) {
    const y = box.y + (1 - (r + 0.5) / rows) * box.h;
    context.fillText(hz(map.row_hz[r]), box.x - 4, y);
  }
  const edges = map.column_edges_s;
  timeAxis(context, box, edges[0], edges[edges.length - 1]);
}

function svgElement(name, attributes, parent) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (parent) parent.appendChild(element);
  return element;
}

export function drawSegments(svg, segments, { duration, threshold }) {
  const width = Math.max(1, svg.clientWidth);
  const height = Math.max(1, svg.clientHeight);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const box = plotBox(width, height);
  const top = Math.max(1.25, ...segments.map((s) => s.ratio)) * 1.1;
  const yOf = (ratio) => box.y + box.h * (1 - ratio / top);
  for (const segment of segments) {
    const x = box.x + (segment.start_s / duration) * box.w;
    const w = Math.max(1, ((segment.end_s - segment.start_s) / duration) * box.w - 2);
    const y = yOf(Math.max(0, segment.ratio));
    const bar = svgElement(
      "rect",
      {
        x: x + 1,
        y,
        width: w,
        height: Math.max(0, box.y + box.h - y),
        class: segment.ratio > 1 ? "bar over" : "bar",
        fill: segment.ratio > 1 ? "#a3161d" : "#3b6ea5",
        stroke: segment.worst ? "#1b2430" : "none",
        "stroke-width": segment.worst ? 2 : 0,
      },
      svg,
    );
    const title = svgElement("title", {}, bar);
    title.textContent =
      `${segment.start_s}–${segment.end_s} s: score ${segment.score.toPrecision(3)}, ` +
      `${segment.ratio.toFixed(2)}× the threshold${segment.worst ? " (worst)" : ""}`;
  }
  const line = yOf(1);
  svgElement("line", { x1: box.x, x2: box.x + box.w, y1: line, y2: line, stroke: "#f4b942", "stroke-width": 2, "stroke-dasharray": "6 3", class: "threshold" }, svg);
  const label = svgElement("text", { x: box.x - 4, y: line, "text-anchor": "end", "dominant-baseline": "middle", fill: AXIS, "font-size": 11 }, svg);
  label.textContent = threshold.toPrecision(3);
  svgElement("line", { x1: box.x, x2: box.x + box.w, y1: box.y + box.h, y2: box.y + box.h, stroke: AXIS }, svg);
  const step = niceStep(duration, Math.floor(box.w / 60));
  for (let t = 0; t <= duration + 1e-9; t += step) {
    const tick = svgElement("text", { x: box.x + (t / duration) * box.w, y: box.y + box.h + 14, "text-anchor": "middle", fill: AXIS, "font-size": 11 }, svg);
    tick.textContent = `${+t.toFixed(2)} s`;
  }
}
