// The table of this page's results and its CSV download.

const COLUMNS = [
  "index", "file", "model", "machine_id", "decision", "score", "threshold", "ratio",
  "input_check", "worst_segment_s", "message",
];

// A row per clip: what the answer said, or the API's message when it refused the clip.
export function resultRow(index, file, model, machineId, answer, error) {
  if (error) {
    return {
      index, file, model, machine_id: machineId, decision: "error",
      score: "", threshold: "", ratio: "", input_check: "", worst_segment_s: "", message: error,
    };
  }
  const worst = answer.segments[answer.worst_segment];
  const findings = answer.input_check.findings.map((f) => f.code).join(" ");
  return {
    index,
    file,
    model: answer.model,
    machine_id: answer.machine_id || "",
    decision: answer.decision,
    score: answer.score.toPrecision(4),
    threshold: answer.threshold.toPrecision(4),
    ratio: answer.ratio.toFixed(3),
    input_check: findings ? `${answer.input_check.status}: ${findings}` : answer.input_check.status,
    worst_segment_s: `${worst.start_s}-${worst.end_s}`,
    message: "",
  };
}

function csvField(value) {
  let text = String(value);
  // A spreadsheet would run a file name such as "=cmd|..." as a formula.
  if (/^[=+\-@\t\r]/.test(text) && !/^-?\d/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function toCsv(rows) {
  const lines = [COLUMNS.join(",")];
  for (const row of rows) lines.push(COLUMNS.map((c) => csvField(row[c])).join(","));
  return `${lines.join("\r\n")}\r\n`;
}

export function appendRow(tbody, row, onShow) {
  const tr = document.createElement("tr");
  tr.dataset.index = String(row.index);
  const cells = [
    [row.index, "num"], [row.file, ""], [row.model, ""], [row.machine_id || "none", ""],
    [row.decision, `tag ${row.decision === "error" ? "failed" : row.decision}`],
    [row.score, "num"], [row.threshold, "num"], [row.ratio, "num"],
    [row.input_check, ""], [row.worst_segment_s ? `${row.worst_segment_s} s` : "", ""],
  ];
  for (const [text, className] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    tr.appendChild(td);
  }
  const last = document.createElement("td");
  if (row.message) {
    last.className = "note";
    last.textContent = row.message;
  } else {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = "Show";
    button.setAttribute("aria-label", `Show clip ${row.index}, ${row.file}`);
    button.addEventListener("click", () => onShow(row.index));
    last.appendChild(button);
  }
  tr.appendChild(last);
  tbody.appendChild(tr);
  return tr;
}
