"""The quality benchmark's tables: QUALITY.md for people, QUALITY.json (every number) for scripts.

Every table is computed from the cells' per-ID numbers (`CellResult.ids`,
`CellResult.kinds`) by the functions here, so the JSON's tables and the
markdown agree and a test can recompute them. A *run* is one data set
(family, seed, SNR) with one fit seed; a detector's value for a run is its
mean over the machine IDs. Failed cells appear in every table as FAILED and
in the Failures table with their reason; means are over the runs that
succeeded, and each table says how many those were.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.benchmark import BASELINE, CellResult, Config, Outcome

RunKey = tuple[str, int, str, int]  # family, seed, SNR, fit seed
METRICS = ("auc", "pauc")


def format_seconds(seconds: float) -> str:
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_key(cell: CellResult) -> RunKey:
    return (cell.family, cell.seed, cell.snr, cell.fit_seed)


def cell_mean(cell: CellResult, metric: str) -> float:
    return float(np.mean([values[metric] for values in cell.ids.values()]))


def _by_run(cells: Sequence[CellResult]) -> dict[RunKey, dict[str, CellResult]]:
    runs: dict[RunKey, dict[str, CellResult]] = {}
    for cell in cells:
        runs.setdefault(run_key(cell), {})[cell.detector] = cell
    return runs


def _at_least_on_every_id(cell: CellResult, baseline: CellResult) -> bool:
    return set(cell.ids) == set(baseline.ids) and all(
        cell.ids[mid]["auc"] >= baseline.ids[mid]["auc"] for mid in baseline.ids
    )


def summary_table(
    cells: Sequence[CellResult], detectors: Sequence[str], baseline: str = BASELINE
) -> dict[str, Any]:
    """Per run: each detector's mean AUC and pAUC, its difference to `baseline` and whether its AUC is at
    least the baseline's on every ID; then the mean over runs (``"overall"``)."""
    rows = []
    for (family, seed, snr, fit_seed), per in _by_run(cells).items():
        base = per.get(baseline)
        entry: dict[str, Any] = {
            "family": family,
            "seed": seed,
            "snr": snr,
            "fit_seed": fit_seed,
            "detectors": {},
        }
        for name in detectors:
            cell = per.get(name)
            if cell is None or not cell.ok:
                entry["detectors"][name] = {"status": "failed", "stage": cell.stage if cell else "missing"}
                continue
            values: dict[str, Any] = {"status": "ok", **{m: cell_mean(cell, m) for m in METRICS}}
            if name != baseline and base is not None and base.ok:
                for m in METRICS:
                    values[f"{m}_vs_{baseline}"] = values[m] - cell_mean(base, m)
                values[f"every_id_at_least_{baseline}"] = _at_least_on_every_id(cell, base)
            entry["detectors"][name] = values
        rows.append(entry)
    overall = {}
    for name in detectors:
        ok = [row["detectors"][name] for row in rows if row["detectors"][name]["status"] == "ok"]
        summary: dict[str, Any] = {"runs": len(ok), "of": len(rows)}
        for m in METRICS:
            summary[m] = float(np.mean([v[m] for v in ok])) if ok else None
        compared = [v for v in ok if f"auc_vs_{baseline}" in v]
        if name != baseline:
            for m in METRICS:
                key = f"{m}_vs_{baseline}"
                summary[key] = float(np.mean([v[key] for v in compared])) if compared else None
            summary["compared"] = len(compared)
            flag = f"every_id_at_least_{baseline}"
            summary[flag] = sum(v[flag] for v in compared)
        overall[name] = summary
    return {"baseline": baseline, "rows": rows, "overall": overall}


def _spread(values: Sequence[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return {"mean": None, "min": None, "max": None, "std": None}
    return {
        "mean": float(array.mean()),
        "min": float(array.min()),
        "max": float(array.max()),
        # Sample standard deviation over the runs (n - 1); undefined for one run.
        "std": float(array.std(ddof=1)) if array.size > 1 else None,
    }


def family_table(cells: Sequence[CellResult], detectors: Sequence[str]) -> list[dict[str, Any]]:
    """Per family, SNR variant and detector: mean over IDs and seeds, with min-max and std over the runs."""
    groups: dict[tuple[str, str], list[CellResult]] = {}
    for cell in cells:
        groups.setdefault((cell.family, cell.snr), []).append(cell)
    rows = []
    for (family, snr), group in groups.items():
        for name in detectors:
            mine = [c for c in group if c.detector == name]
            ok = [c for c in mine if c.ok]
            rows.append(
                {
                    "family": family,
                    "snr": snr,
                    "detector": name,
                    "runs": len(ok),
                    "failed": len(mine) - len(ok),
                    **{m: _spread([cell_mean(c, m) for c in ok]) for m in METRICS},
                }
            )
    return rows


def cell_kind_means(cell: CellResult) -> dict[str, float]:
    """A cell's AUC per fault kind: the mean over the IDs that have clips of the kind."""
    kinds = sorted({kind for per in cell.kinds.values() for kind in per})
    return {k: float(np.mean([per[k] for per in cell.kinds.values() if k in per])) for k in kinds}


def kind_table(cells: Sequence[CellResult], detectors: Sequence[str]) -> list[dict[str, Any]]:
    """Per family, SNR variant and fault kind: each detector's AUC, the mean over its successful runs."""
    groups: dict[tuple[str, str], list[CellResult]] = {}
    for cell in cells:
        groups.setdefault((cell.family, cell.snr), []).append(cell)
    rows = []
    for (family, snr), group in groups.items():
        means = {
            name: [cell_kind_means(c) for c in group if c.detector == name and c.ok] for name in detectors
        }
        kinds = sorted({k for per in means.values() for m in per for k in m})
        for kind in kinds:
            values = {}
            for name in detectors:
                found = [m[kind] for m in means[name] if kind in m]
                values[name] = {"auc": float(np.mean(found)) if found else None, "runs": len(found)}
            rows.append({"family": family, "snr": snr, "kind": kind, "detectors": values})
    return rows


# -- markdown ----------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cell_text(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell_text(c) for c in row) + " |" for row in rows]
    return lines


def _failed(stage: str | None) -> str:
    return f"FAILED ({stage})" if stage else "FAILED"


def summary_lines(summary: Mapping[str, Any], detectors: Sequence[str]) -> list[str]:
    baseline = summary["baseline"]
    others = [d for d in detectors if d != baseline]
    has_base = baseline in detectors
    header = ["family", "seed", "SNR", "fit seed"]
    for name in detectors:
        header += [f"{name} AUC", f"{name} pAUC"]
        if has_base and name != baseline:
            header += [
                f"{name} - {baseline} AUC",
                f"{name} - {baseline} pAUC",
                f"{name} >= {baseline} every ID",
            ]
    rows = []
    for row in summary["rows"]:
        cells: list[object] = [row["family"], row["seed"], row["snr"], row["fit_seed"]]
        for name in detectors:
            v = row["detectors"][name]
            extra = has_base and name != baseline
            if v["status"] != "ok":
                cells += [_failed(v["stage"]), _failed(v["stage"])] + (["-", "-", "-"] if extra else [])
                continue
            cells += [_num(v["auc"]), _num(v["pauc"])]
            if extra:
                key = f"every_id_at_least_{baseline}"
                cells += [
                    _num(v.get(f"auc_vs_{baseline}"), signed=True),
                    _num(v.get(f"pauc_vs_{baseline}"), signed=True),
                    "-" if key not in v else ("yes" if v[key] else "no"),
                ]
        rows.append(cells)
    total: list[object] = ["mean over data sets", "", "", ""]
    for name in detectors:
        o = summary["overall"][name]
        runs = "" if o["runs"] == o["of"] else f" ({o['runs']} of {o['of']})"
        total += [_num(o["auc"]) + runs, _num(o["pauc"]) + runs]
        if has_base and name != baseline:
            total += [
                _num(o[f"auc_vs_{baseline}"], signed=True),
                _num(o[f"pauc_vs_{baseline}"], signed=True),
                f"{o[f'every_id_at_least_{baseline}']} of {o['compared']}",
            ]
    rows.append(total)
    notes = [
        f"Each cell: the detector's mean over the machine IDs of the data set. `- {baseline}`: the "
        f"difference to the {baseline} baseline on the same data set; `>= {baseline} every ID`: its "
        f"AUC is at least {baseline}'s on every ID."
    ]
    if not has_base:
        notes = [f"No `{baseline}` detector in this run: no differences to the baseline."]
    if others and has_base:
        notes.append(
            "Last row: means over the data sets where the detector (and, for differences, "
            f"{baseline} too) succeeded; `k of n` counts data sets."
        )
    return [*notes, "", *_table(header, rows)]


def family_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    header = [
        "family",
        "SNR",
        "detector",
        "runs",
        "mean AUC",
        "AUC min-max",
        "AUC std",
        "mean pAUC",
        "pAUC min-max",
        "pAUC std",
    ]
    body = []
    for r in rows:
        runs = f"{r['runs']}" + (f" ({r['failed']} FAILED)" if r["failed"] else "")
        cells: list[object] = [r["family"], r["snr"], r["detector"], runs]
        for m in METRICS:
            s = r[m]
            span = "-" if s["min"] is None else f"{s['min']:.3f}-{s['max']:.3f}"
            cells += [_num(s["mean"]), span, _num(s["std"])]
        body.append(cells)
    note = (
        "Per family, SNR variant and detector: the mean over machine IDs and seeds; min-max and the "
        "sample standard deviation (n - 1) of the per-run means over the seeds (and fit seeds)."
    )
    return [note, "", *_table(header, body)]


def kind_lines(rows: Sequence[Mapping[str, Any]], detectors: Sequence[str]) -> list[str]:
    if not rows:
        return ["No fault kinds: no successful evaluation, or no anomaly_kinds.csv beside the test clips."]
    header = ["family", "SNR", "kind", *detectors]
    body = [
        [r["family"], r["snr"], r["kind"], *(_num(r["detectors"][d]["auc"]) for d in detectors)] for r in rows
    ]
    note = (
        "AUC of each fault kind's clips against all normal clips of their ID, averaged over the IDs, "
        "then over the seeds."
    )
    return [note, "", *_table(header, body)]


def per_id_lines(cells: Sequence[CellResult], detectors: Sequence[str]) -> list[str]:
    header = ["family", "seed", "SNR", "fit seed", "ID"]
    for name in detectors:
        header += [f"{name} AUC", f"{name} pAUC"]
    body = []
    for key, per in _by_run(cells).items():
        ids = sorted({mid for c in per.values() if c.ok for mid in c.ids})
        if not ids:
            body.append([*key, "all", *(x for d in detectors for x in [_failed(_stage(per, d))] * 2)])
            continue
        for mid in ids:
            row: list[object] = [*key, mid]
            for name in detectors:
                cell = per.get(name)
                if cell is None or not cell.ok or mid not in cell.ids:
                    row += [_failed(_stage(per, name))] * 2
                else:
                    row += [_num(cell.ids[mid]["auc"]), _num(cell.ids[mid]["pauc"])]
            body.append(row)
    return _table(header, body)


def _stage(per: Mapping[str, CellResult], name: str) -> str | None:
    cell = per.get(name)
    return cell.stage if cell is not None else "missing"


def fit_lines(cells: Sequence[CellResult]) -> list[str]:
    header = ["family", "seed", "SNR", "fit seed", "detector", "fit", "evaluate", "skipped train files"]
    body = []
    for c in cells:
        if c.fit_seconds is None:
            fit = "-"
        else:
            fit = format_seconds(c.fit_seconds) + (" (re-used; measured when fitted)" if c.fit_reused else "")
        if c.fit_reused and c.fit_seconds is None:
            fit = "re-used"
        evaluate = "-" if c.evaluate_seconds is None else format_seconds(c.evaluate_seconds)
        body.append(
            [
                c.family,
                c.seed,
                c.snr,
                c.fit_seed,
                c.detector,
                fit,
                evaluate,
                len(c.skipped_train_files) or "-",
            ]
        )
    return _table(header, body)


def failure_lines(cells: Sequence[CellResult]) -> list[str]:
    failed = [c for c in cells if not c.ok]
    if not failed:
        return ["None: every cell was made, fitted and evaluated."]
    rows = [[c.family, c.seed, c.snr, c.fit_seed, c.detector, "FAILED", c.stage, c.reason] for c in failed]
    return _table(["family", "seed", "SNR", "fit seed", "detector", "status", "stage", "reason"], rows)


def build_tables(cells: Sequence[CellResult], detectors: Sequence[str]) -> dict[str, Any]:
    return {
        "summary": summary_table(cells, detectors),
        "families": family_table(cells, detectors),
        "kinds": kind_table(cells, detectors),
    }


def render_markdown(
    outcome: Outcome,
    config: Config,
    *,
    machine: Mapping[str, Any],
    command: str,
    json_name: str,
    tables: Mapping[str, Any],
) -> str:
    detectors = list(config.detectors)
    cells = outcome.cells
    fitted = [c.fit_seconds for c in cells if not c.fit_reused and c.stage != "fit" and c.fit_seconds]
    reused = sum(c.fit_reused for c in cells)
    if fitted:
        per_fit = (
            f"{len(fitted)} fitted in this run, {format_seconds(float(np.mean(fitted)))} per fit on "
            f"average ({format_seconds(min(fitted))}-{format_seconds(max(fitted))})"
        )
    else:
        per_fit = "none fitted in this run"
    load = machine.get("load_average_at_start")
    usable = machine.get("usable_cores")
    cores = f"{machine['cores']} cores"
    if usable not in (None, machine["cores"]):
        cores += f", {usable} usable"
    snrs = ", ".join(s.text for s in config.snrs)
    lines = [
        "# Detection quality benchmark",
        "",
        "Written by `asd-train benchmark` (`training/benchmark.py`); every number is also in "
        f"[{json_name}]({json_name}). Synthetic data sets (`asd-train synth`) per family, seed and SNR "
        "variant; each detector configuration fitted by `asd-train fit` and scored by the code of "
        "`asd-train evaluate`. AUC and pAUC per machine ID (pAUC: scikit-learn's "
        "`roc_auc_score(max_fpr=0.1)`, as the DCASE 2020 evaluator).",
        "",
        f"- Machine: {machine['cpu']}, {cores}"
        + (f"; load average {load[0]:.2f} at the start" if load else ""),
        f"- Command: `{command}`",
        f"- Started {outcome.started}; wall time {format_seconds(outcome.seconds)} in all (measured); fits: "
        f"{per_fit}; {reused} re-used from the work folder",
        f"- Grid: families {', '.join(config.families)}; seeds {', '.join(map(str, config.seeds))}; SNR "
        f"variants {snrs} (`default`: the family's own); machine IDs {', '.join(config.ids)}; per ID "
        f"{config.n_train} training clips, {config.n_test_normal} normal + {config.n_test_anomaly} anomalous "
        f"test clips of {config.duration:g} s; fit seed "
        + ("the data set's seed" if config.fit_seeds is None else ", ".join(map(str, config.fit_seeds))),
        f"- Cells: {len(cells)}, of which {len(outcome.failed)} FAILED (see Failures)",
        "",
        "Detector configurations (extra `asd-train fit` arguments"
        + (f", after `{' '.join(config.fit_args)}` for all" if config.fit_args else "")
        + "):",
        "",
        *_table(
            ["detector", "fit arguments"],
            [
                [name, f"`{' '.join(args)}`" if args else "(the defaults)"]
                for name, args in config.detectors.items()
            ],
        ),
        "",
        "## Summary",
        "",
        *summary_lines(tables["summary"], detectors),
        "",
        "## Per family and detector",
        "",
        *family_lines(tables["families"]),
        "",
        "## Per fault kind",
        "",
        *kind_lines(tables["kinds"], detectors),
        "",
        "## Per data set and machine ID",
        "",
        *per_id_lines(cells, detectors),
        "",
        "## Fits",
        "",
        *fit_lines(cells),
        "",
        "## Failures",
        "",
        *failure_lines(cells),
    ]
    return "\n".join(lines) + "\n"


def write_outputs(
    outcome: Outcome, config: Config, *, machine: Mapping[str, Any], command: str, out: Path, json_out: Path
) -> None:
    tables = build_tables(outcome.cells, list(config.detectors))
    out = Path(out)
    json_out = Path(json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": 1,
        "machine": dict(machine),
        "command": command,
        "started": outcome.started,
        "seconds": round(outcome.seconds, 1),
        "config": config.describe(),
        "baseline": BASELINE,
        "failed": len(outcome.failed),
        "cells": [c.to_dict() for c in outcome.cells],
        **tables,
    }
    json_out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    json_name = os.path.relpath(json_out, out.parent)
    out.write_text(
        render_markdown(
            outcome, config, machine=machine, command=command, json_name=json_name, tables=tables
        ),
        encoding="utf-8",
    )
