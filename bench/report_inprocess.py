"""The in-process parts of the report: ours against the naive pipeline and the peer, fp32 against int8, the floor.

`bench.report` assembles BENCHMARKS.md and the printed table; the sections and
lines that come from one process scoring clips one at a time are drawn here.
"""

from __future__ import annotations

import math
from typing import Any

from bench.results import Results

STAGES = ("decode", "features", "inference", "total")
CHECKS = {
    "ours_vs_detector_max_rel_diff": "ours (`score_upload`) vs `Detector.score_file`",
    "ours_vs_training_score_files_max_rel_diff": "ours vs `training.evaluate.score_files`",
    "ours_vs_naive_max_rel_diff": "ours' CAE score vs the naive pipeline (librosa features, Keras inference)",
    "ours_vs_peer_max_rel_diff": "ours' CAE score vs the peer (librosa features, onnxruntime defaults)",
    "ours_one_thread_vs_ours_max_rel_diff": "ours on 1 onnxruntime thread vs ours on the default threads",
    # With an int8 ours: ours' path on the fp32 folder the librosa pipelines' weights come from.
    "fp32_vs_naive_max_rel_diff": "ours' CAE score on the fp32 folder vs the naive pipeline (librosa features, Keras inference)",
    "fp32_vs_peer_max_rel_diff": "ours' CAE score on the fp32 folder vs the peer (librosa features, onnxruntime defaults)",
}


def ours_precision(results: Results) -> str:
    """The precision of the folder ours ran ("fp32" for runs that did not record it: they all ran fp32)."""
    return str(results.detector.get("precision", "fp32"))


def fmt(value: float | None, digits: int = 1) -> str:
    """`value` with `digits` decimals; "n/a" for None or NaN."""
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def ratio(results: Results, stage: str, other: str = "naive") -> float:
    """Median ms of pipeline `other` ("naive" or "peer") over ours' for `stage`: how many times faster ours is."""
    theirs = getattr(results, other)
    if not results.ours or not theirs:
        return float("nan")
    ours = results.ours["stages"][stage]["median_ms"]
    return float(theirs["stages"][stage]["median_ms"] / ours) if ours > 0 else float("nan")


def _stage_cells(row: dict[str, Any], digits: int) -> list[str]:
    return [fmt(row["median_ms"], digits), fmt(row["p95_ms"], digits), fmt(row["cpu_median_ms"], digits)]


def in_process_section(results: Results) -> list[str]:
    """ "## In-process" with its table (ours, naive and, when measured, the peer) and the score checks."""
    out: list[str] = []
    o, n, p = results.ours, results.naive, results.peer
    if o and n:
        threads = results.detector.get("intra_op_threads_in_process")
        header = "| stage | ours median | ours p95 | ours CPU median | naive median | naive p95 | naive CPU median | naive / ours (median) |"
        if p:
            header += " peer median | peer p95 | peer CPU median | peer / ours (median) |"
        width = header.count("|") - 1
        out += [
            "## In-process: one process, one clip at a time",
            "",
            f"{o['n_clips']} clips. Ours: `service.scoring.score_upload` on the {ours_precision(results)} folder (decode from",
            f"bytes, log-mel, onnxruntime with {threads} intra-op thread(s), which is what one worker gets on this",
            "machine, errors, segments).",
            "Naive: `librosa.load` -> `librosa.feature.melspectrogram` -> `librosa.power_to_db` -> standardise ->",
            "patches -> Keras `model.predict`."
            + (
                " Peer, the competent user's version: the same librosa steps, then the exported fp32"
                " `model.onnx` in onnxruntime with its default `SessionOptions` (one run per clip)."
                if p
                else ""
            ),
            "Times in ms per clip.",
            "",
            header,
            "| --- |" + " ---: |" * (width - 1),
        ]
        for stage in STAGES:
            cells = [
                *_stage_cells(o["stages"][stage], 2),
                *_stage_cells(n["stages"][stage], 1),
                f"{fmt(ratio(results, stage), 1)} x",
            ]
            if p:
                cells += [*_stage_cells(p["stages"][stage], 1), f"{fmt(ratio(results, stage, 'peer'), 1)} x"]
            out.append(f"| {stage} | " + " | ".join(cells) + " |")
        one = results.ours_one_thread
        peer_blank = ["", "", ""] if p else []
        if one:
            t1 = one["stages"]["total"]
            cells = [
                *_stage_cells(t1, 2),
                "",
                "",
                "",
                f"{fmt(n['stages']['total']['median_ms'] / t1['median_ms'], 1)} x",
            ]
            if p:
                cells += [*peer_blank, f"{fmt(p['stages']['total']['median_ms'] / t1['median_ms'], 1)} x"]
            out.append("| total, ours on 1 onnxruntime thread | " + " | ".join(cells) + " |")
        per_second = [fmt(o["clips_per_second"], 1), "", "", fmt(n["clips_per_second"], 1), "", ""]
        per_second.append(f"{fmt(o['clips_per_second'] / n['clips_per_second'], 1)} x")
        real_time = [
            f"{fmt(o['real_time_factor'], 0)} x",
            "",
            "",
            f"{fmt(n['real_time_factor'], 0)} x",
            "",
            "",
            "",
        ]
        if p:
            per_second += [
                fmt(p["clips_per_second"], 1),
                "",
                "",
                f"{fmt(o['clips_per_second'] / p['clips_per_second'], 1)} x",
            ]
            real_time += [f"{fmt(p['real_time_factor'], 0)} x", "", "", ""]
        peer_warm = f"; peer {p['warmup_s']:.2f} s (its session's first runs)" if p else ""
        out += [
            "| clips per second, one process | " + " | ".join(per_second) + " |",
            "| real-time factor (median clip) | " + " | ".join(real_time) + " |",
            "",
            "The pipelines run clip by clip, interleaved. Ours' total is a second, whole `score_upload` of the",
            "clip, so it also holds the error, segment and answer work that is in none of the three stages.",
            "The row on 1 onnxruntime thread is a third `score_upload` of each clip by the same model in a session",
            "with one thread (`ASD_ORT_THREADS=1`); the targets use the default row above it.",
            f"Warm-up, not in the times: ours {o['warmup_s']:.2f} s for its first 3 clips; naive {n['warmup_s']:.2f} s for its",
            f"first 3 clips (librosa's one-off numba compilation and Keras' tracing of `predict`){peer_warm}.",
            "",
            "Where ours spends its CPU per clip (medians): "
            + ", ".join(
                f"{stage} {o['stages'][stage]['cpu_median_ms']:.2f} ms "
                f"({100 * o['stages'][stage]['cpu_median_ms'] / o['stages']['total']['cpu_median_ms']:.0f} %)"
                for stage in ("decode", "features", "inference")
            )
            + f" of {o['stages']['total']['cpu_median_ms']:.2f} ms.",
            "",
        ]
    if results.checks:
        out += ["Scores agree (largest relative difference over all clips):", ""]
        out += [f"- {CHECKS.get(key, key)}: {value:.2e}" for key, value in results.checks.items()]
        out += [
            "",
            "The librosa pipelines compute the mean patch error, which is ours' CAE component (`components.cae`);",
            "a fused bundle's score adds the envelope scorer to it."
            + (
                " They run the fp32 weights, so they are held against ours' path on the fp32 folder;"
                " int8 against fp32 is in the next section."
                if ours_precision(results) != "fp32"
                else ""
            ),
            "",
        ]
    return out


def precision_section(results: Results) -> list[str]:
    """ "## fp32 against int8" from `bench.precision.measure`'s row; [] when it did not run."""
    row = results.int8
    if not row:
        return []
    out = ["## fp32 against int8: the same detector quantized", ""]
    count = f"{row['n_normal']} " if row.get("n_normal") else ""
    what = (
        "`training.quantize.quantize_detector` (what `asd-train quantize MODEL NORMAL_DIR --out NEW` runs) on the "
        f"benchmark's fp32 folder, NORMAL_DIR the {count}synthetic training clips"
    )
    if row.get("status") != "quantized":
        label = "refused it" if row.get("status") == "refused" else "could not run"
        return [*out, f"Not measured: {what}; it {label}: {row.get('reason')}", ""]
    f32, i8 = row["fp32"], row["int8"]
    size = row.get("onnx_bytes", {})
    out += [
        f"{what}: {row['parity']}; quantized and recalibrated in {row['seconds']:.1f} s. ONNX "
        f"{size.get('fp32', 0) / 1024:.0f} KiB (fp32) and {size.get('int8', 0) / 1024:.0f} KiB (int8).",
        "",
        f"{row['n_clips']} clips, each decoded once; then on both folders, who goes first swapping from clip to",
        f"clip, with {row['intra_op_threads']} onnxruntime thread(s) as ours: inference (`Detector.reconstruct` of",
        "the clip's patches) and the score (`Detector.score` of its samples: log-mel, patches, inference, errors,",
        "pooling). Times in ms per clip.",
        "",
        "| | fp32 median | fp32 p95 | fp32 CPU median | int8 median | int8 p95 | int8 CPU median | fp32 / int8 (median) | fp32 / int8 (CPU median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage, label in (
        ("inference", "inference, `Detector.reconstruct`"),
        ("score", "score, `Detector.score`"),
    ):
        cells = [
            *_stage_cells(f32[stage], 2),
            *_stage_cells(i8[stage], 2),
            f"{fmt(row['speedup'][stage], 2)} x",
            f"{fmt(row['speedup_cpu'][stage], 2)} x",
        ]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"Largest relative difference of a clip's CAE score (pooled patch error), int8 against fp32: "
        f"{row['max_rel_score_diff']:.2e}.",
        "",
    ]
    return out


def floor_section(results: Results) -> list[str]:
    """ "## A floor" from `bench.floor.measure`'s row; [] when it did not run."""
    row = results.floor
    if not row:
        return []
    out = ["## A floor: the graph's multiply-adds at this machine's GEMM rate", ""]
    if "error" in row:
        return [*out, f"Not measured: {row['error']}", ""]
    nodes = row["nodes"]
    largest = max(nodes, key=lambda node: node["macs"], default=None)
    m, k, n = row["gemm_shape"]
    out += [
        "Multiply-adds per 10 s clip, counted from the exported `model.onnx` (onnx shape inference with the batch",
        f"set to the clip's {row['batch']} patches; Conv: output elements x kernel size x input channels / groups;",
        f"MatMul and Gemm: output elements x the shared axis): **{row['macs'] / 1e6:.1f} M** in {len(nodes)} nodes"
        + (
            f", the largest {largest['op_type']} `{largest['name']}` with {largest['macs'] / 1e6:.1f} M."
            if largest
            else "."
        ),
        "",
        f"GEMM rates on one core of this machine's {results.machine.get('cpu')}, for that largest product as one",
        f"matrix product (im2col: {m} x {k} times {k} x {n}), best of repeated runs after a warm-up:",
        "",
        "| kernel, one thread | best ms | GMAC/s |",
        "| --- | ---: | ---: |",
    ]
    out += [
        f"| {rate['kernel']} | {fmt(rate['best_ms'], 3)} | {fmt(rate['gmacs'], 1)} |" for rate in row["rates"]
    ]
    measured = {
        precision: (f"{precision} inference (fp32 against int8)", results.int8[precision]["inference"])
        for precision in ("fp32", "int8")
        if results.int8.get(precision)
    }
    if results.ours:
        measured[ours_precision(results)] = (
            "ours' inference (table above)",
            results.ours["stages"]["inference"],
        )
    out += [
        "",
        "The floor is the multiply-adds at the faster float32 rate (the integer rate for int8): what one core",
        "needs if every product ran as fast as that one well-shaped GEMM. Floor / measured is the share of that",
        "speed the inference reaches. CPU time counts every onnxruntime thread, so floor / CPU is the share of one",
        "core's GEMM speed the inference's work reaches; with more than one thread the wall time can beat the",
        "one-core floor.",
        "",
        "| precision | GEMM rate used (GMAC/s) | floor ms per clip | measured | CPU median ms | floor / CPU | wall median ms | floor / wall |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    reached = row.get("reached", {})
    for precision in ("fp32", "int8"):
        source, stage = measured.get(precision, ("not measured", None))
        share = reached.get(precision, {})
        cpu = stage["cpu_median_ms"] if stage else float("nan")
        wall = stage["median_ms"] if stage else float("nan")
        out.append(
            f"| {precision} | {fmt(row['gmacs'][precision], 1)} | {fmt(row['floor_ms'][precision], 2)} | {source} | "
            f"{fmt(cpu, 2)} | {_percent(share.get('cpu'))} | {fmt(wall, 2)} | {_percent(share.get('wall'))} |"
        )
    out.append("")
    return out


def _percent(share: float | None) -> str:
    return "n/a" if share is None or math.isnan(share) else f"{100 * share:.0f} %"


def in_process_text(results: Results) -> list[str]:
    """The printed table's in-process lines: ours, naive and peer per stage, int8 and the floor."""
    o, n, p = results.ours, results.naive, results.peer
    if not (o and n):
        return []
    lines = [
        f"in-process, per clip ({o['n_clips']} clips), ours on the {ours_precision(results)} folder, ms: "
        "median / p95 (CPU median)"
    ]
    head = f"{'stage':<10} {'ours':>24} {'naive':>26} {'naive/ours':>11}"
    lines.append(head + (f" {'peer':>26} {'peer/ours':>10}" if p else ""))
    for stage in STAGES:
        line = f"{stage:<10} {_text_cells(o['stages'][stage], 2, 8)} {_text_cells(n['stages'][stage], 1, 9)} {fmt(ratio(results, stage), 1):>10}x"
        if p:
            line += f" {_text_cells(p['stages'][stage], 1, 9)} {fmt(ratio(results, stage, 'peer'), 1):>9}x"
        lines.append(line)
    per_second = f"{'clips/s':<10} {fmt(o['clips_per_second'], 1):>24} {fmt(n['clips_per_second'], 1):>26}"
    lines.append(per_second + (f" {'':>11} {fmt(p['clips_per_second'], 1):>26}" if p else ""))
    row = results.int8
    if row.get("status") == "quantized":
        lines.append(
            f"int8: inference median {fmt(row['int8']['inference']['median_ms'], 2)} ms against fp32 "
            f"{fmt(row['fp32']['inference']['median_ms'], 2)} ms ({fmt(row['speedup']['inference'], 2)} x), "
            f"largest relative score difference {row['max_rel_score_diff']:.2e}"
        )
    elif row:
        lines.append(f"int8: {row.get('status')}: {row.get('reason')}")
    floor = results.floor
    if floor and "error" not in floor:
        precision = ours_precision(results)
        share = floor.get("reached", {}).get(precision, {})
        lines.append(
            f"floor: {floor['macs'] / 1e6:.1f} M multiply-adds per clip, fp32 {fmt(floor['floor_ms']['fp32'], 2)} ms "
            f"at {fmt(floor['gmacs']['fp32'], 1)} GMAC/s, int8 {fmt(floor['floor_ms']['int8'], 2)} ms at "
            f"{fmt(floor['gmacs']['int8'], 1)} GMAC/s; ours' inference reaches {_percent(share.get('cpu'))} (CPU) / "
            f"{_percent(share.get('wall'))} (wall) of the {precision} floor"
        )
    elif floor:
        lines.append(f"floor: {floor['error']}")
    return lines


def _text_cells(row: dict[str, Any], digits: int, width: int) -> str:
    return f"{fmt(row['median_ms'], digits):>{width}} / {fmt(row['p95_ms'], digits):>6} ({fmt(row['cpu_median_ms'], digits):>6})"
