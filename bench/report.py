"""The benchmark's results as a plain-text table (printed) and as BENCHMARKS.md.

The in-process sections (ours, naive and peer; fp32 against int8; the floor)
are drawn by `bench.report_inprocess`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.report_inprocess import (
    floor_section,
    in_process_section,
    in_process_text,
    ours_precision,
    precision_section,
    ratio,
)
from bench.report_inprocess import fmt as _f
from bench.results import HttpRow, Results

# The targets against the two librosa pipelines (same run, total median per clip).
NAIVE_SPEEDUP = 5.0
PEER_SPEEDUP = 3.0


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    met: bool | None  # None: not measured in this run


def _split(row: HttpRow) -> str:
    """Each worker's part of the server CPU of a run, e.g. "51 / 49 %"; "" for one worker or no data."""
    shares = row.worker_cpu_shares
    return " / ".join(f"{100 * share:.0f}" for share in shares) + " %" if len(shares) > 1 else ""


def _share_cause(row: HttpRow) -> str:
    """Why a run got less than the whole machine, as far as the workers' CPU split tells."""
    shares = row.worker_cpu_shares
    if len(shares) > 1 and max(shares) > 0.75:
        return (
            f"one worker did {100 * max(shares):.0f} % of the server's work: the connections "
            "were not spread over the workers"
        )
    return "the rest went to other processes"


def cpu_share(row: HttpRow, cores: int) -> float:
    """Fraction of all cores' time that the server and the client used during a load run."""
    used_ms = (row.server_cpu_ms + row.client_cpu_ms) * row.ok
    return used_ms / (row.seconds * 1000 * cores) if row.seconds > 0 else float("nan")


def capacity(row: HttpRow, cores: int) -> float:
    """Requests per second that the measured CPU cost per request allows on `cores` cores."""
    per_request = row.server_cpu_ms + row.client_cpu_ms
    return cores * 1000 / per_request if per_request > 0 else float("nan")


def http_row(results: Results, workers: int, concurrency: int) -> HttpRow | None:
    for row in results.http:
        if row.workers == workers and row.concurrency == concurrency:
            return row
    return None


def targets(results: Results) -> list[Target]:
    out = []
    if results.ours:
        total = results.ours["stages"]["total"]["median_ms"]
        out.append(Target("in-process total <= 20 ms median per 10 s clip", f"{total:.2f} ms", total <= 20.0))
        speedup = ratio(results, "total")
        out.append(
            Target(
                f">= {NAIVE_SPEEDUP:g} x faster than the naive pipeline (same run)",
                f"{speedup:.1f} x",
                speedup >= NAIVE_SPEEDUP,
            )
        )
        if results.peer:
            peer = ratio(results, "total", "peer")
            out.append(
                Target(
                    f">= {PEER_SPEEDUP:g} x faster than the peer (librosa + onnxruntime defaults, same run)",
                    f"{peer:.1f} x",
                    peer >= PEER_SPEEDUP,
                )
            )
    row = http_row(results, 2, 8)
    if row is not None:
        out.append(
            Target(
                "HTTP, 2 workers, concurrency 8: >= 60 clips/s",
                f"{row.throughput:.1f} clips/s",
                row.throughput >= 60,
            )
        )
        out.append(Target("... p99 <= 250 ms", f"{row.p99:.0f} ms", row.p99 <= 250))
        out.append(Target("... no errors", f"{row.errors} errors", row.errors == 0))
    else:
        out.append(Target("HTTP, 2 workers, concurrency 8", "not measured", None))
    for server in results.servers:
        cold = sorted(server.cold_start_s)[len(server.cold_start_s) // 2]
        out.append(
            Target(
                f"cold start to /ready <= 3 s ({server.workers} worker(s), median)",
                f"{cold:.2f} s",
                cold <= 3.0,
            )
        )
        worst = max((m["VmRSS"] for m in server.memory), default=float("nan"))
        out.append(
            Target(
                f"resident memory <= 300 MB per worker ({server.workers} worker(s), after {server.requests_served} requests)",
                f"{worst:.0f} MB (largest worker)",
                worst <= 300 if not math.isnan(worst) else None,
            )
        )
    out.append(
        Target(
            "`make bench` within 10 minutes", f"{results.duration_s / 60:.1f} min", results.duration_s <= 600
        )
    )
    return out


def missed_notes(results: Results, cores: int) -> list[str]:
    """For each missed target, the measured figure and where its time went, from this run's numbers."""
    notes = []
    load = " / ".join(str(x) for x in results.machine["load_average"])
    if results.ours and results.ours["stages"]["total"]["median_ms"] > 20:
        st = results.ours["stages"]
        notes.append(
            f"- In-process total: {st['total']['median_ms']:.1f} ms median wall, {st['total']['cpu_median_ms']:.1f} ms CPU; "
            f"inference alone is {st['inference']['cpu_median_ms']:.1f} ms CPU "
            f"({100 * st['inference']['cpu_median_ms'] / st['total']['cpu_median_ms']:.0f} %), features "
            f"{st['features']['cpu_median_ms']:.1f} ms, decode {st['decode']['cpu_median_ms']:.1f} ms. With "
            f"{results.detector.get('intra_op_threads_in_process')} onnxruntime threads the inference could take about "
            "half its CPU time in wall time on two idle cores; the load average at the start was "
            f"{load} on {cores} cores."
            + (
                f" On 1 onnxruntime thread the total was {results.ours_one_thread['stages']['total']['median_ms']:.1f} ms."
                if results.ours_one_thread
                else ""
            )
        )
    if results.peer and ratio(results, "total", "peer") < PEER_SPEEDUP:
        notes.append(_peer_note(results))
    row = http_row(results, 2, 8)
    if row is not None and (row.throughput < 60 or row.p99 > 250 or row.errors):
        notes.append(
            f"- HTTP, 2 workers, concurrency 8: {row.throughput:.1f} clips/s, p99 {row.p99:.0f} ms. Each request cost "
            f"{row.server_cpu_ms:.1f} ms of server CPU and {row.client_cpu_ms:.1f} ms of client CPU; the run got "
            f"{100 * cpu_share(row, cores):.0f} % of the machine's CPU ({_share_cause(row)}), and with all "
            f"{cores} cores those costs would allow about {capacity(row, cores):.0f} clips/s. Latency at concurrency 8 "
            "is queueing: 8 requests share 2 single-threaded workers."
        )
    for server in results.servers:
        cold = sorted(server.cold_start_s)[len(server.cold_start_s) // 2]
        if cold > 3.0 and server.phases:
            phase = server.phases[len(server.phases) // 2]
            imports = results.imports.get("total_ms", float("nan")) if results.imports else float("nan")
            notes.append(
                f"- Cold start, {server.workers} worker(s): {cold:.2f} s to the first /ready 200. The uvicorn master "
                f"was up after {phase.get('master', float('nan')):.2f} s, every worker process after "
                f"{phase.get('workers', float('nan')):.2f} s and its models loaded after {phase.get('loaded', float('nan')):.2f} s: "
                f"the time is the workers' imports (about {imports:.0f} ms of importing each, measured alone), "
                "run at once by every worker on a machine that other jobs keep busy; loading the model takes "
                "well under 0.2 s."
            )
    return ["Missed targets, and where their time goes:", "", *notes, ""] if notes else []


def _peer_note(results: Results) -> str:
    """Where the peer's time goes against ours, stage by stage (a missed peer target's note)."""
    assert results.ours and results.peer
    o, p = results.ours["stages"], results.peer["stages"]
    return (
        f"- Against the peer: ours {o['total']['median_ms']:.1f} ms, the peer {p['total']['median_ms']:.1f} ms "
        "total median per clip; the peer over ours stage by stage: "
        + ", ".join(
            f"{stage} {_f(ratio(results, stage, 'peer'), 1)} x"
            for stage in ("decode", "features", "inference")
        )
        + f". CPU medians: ours {o['total']['cpu_median_ms']:.1f} ms, the peer {p['total']['cpu_median_ms']:.1f} ms "
        f"(its inference {p['inference']['cpu_median_ms']:.1f} ms on onnxruntime's default thread pool, which "
        "spins between runs)."
    )


def text_table(results: Results) -> str:
    lines = in_process_text(results)
    if results.http:
        lines.append("")
        lines.append("HTTP (multipart uploads, loopback)")
        lines.append(
            f"{'workers':>7} {'conc':>5} {'clips/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}"
        )
        for row in results.http:
            lines.append(
                f"{row.workers:>7} {row.concurrency:>5} {_f(row.throughput):>8} {_f(row.p50):>8} {_f(row.p95):>8}"
                f" {_f(row.p99):>8} {row.errors:>7}"
            )
    if results.servers:
        lines.append("")
        lines.append(f"{'workers':>7} {'cold start s':>13} {'RSS per worker MB':>30}")
        for s in results.servers:
            colds = ", ".join(f"{c:.2f}" for c in s.cold_start_s)
            rss = ", ".join(f"{m['VmRSS']:.0f}" for m in s.memory)
            lines.append(f"{s.workers:>7} {colds:>13} {rss:>30}")
    lines.append("")
    for t in targets(results):
        mark = {True: "met", False: "MISSED", None: "-"}[t.met]
        lines.append(f"[{mark:>6}] {t.name}: {t.measured}")
    return "\n".join(lines)


WHY_MODEL = """\
The naive pipeline needs the Keras model of the very detector our pipeline
serves, and the export keeps only ONNX, so the benchmark trains one itself:
the training package's own steps (`read_training_clips`, `split_validation`,
`fit_normalizer`, `patch_array`, `train_keras`, `export_detector`) on
synthetic slider clips in a temporary folder, for {epochs} epoch(s). The
in-memory Keras model feeds `model.predict` and the exported folder feeds
our `Detector`: the same weights on both sides, which the score agreement
below confirms.{twin} The architecture and patching are copied from
`{reference}`, so the work per clip is the shipped detector's; a model
trained for {epochs} epoch(s) detects badly, which does not change its
speed."""


def _precision_why(results: Results) -> str:
    """Why ours ran the precision it did, and what else ran the fp32 weights."""
    det = results.detector
    precision = ours_precision(results)
    if "precision_wanted" not in det:
        return "the fp32 folder (this run predates the choice)."
    wanted, source = det["precision_wanted"], det.get("precision_source", "?")
    if precision != wanted:
        return f"{wanted} was wanted ({source}), but {det.get('precision_reason', 'no twin was made')}."
    what = (
        "the trained detector's int8 twin (`training.quantize`; the fp32 against int8 section times both)"
        if precision == "int8"
        else "the trained detector's own folder"
    )
    return (
        f"the precision {source} gives; {what}, in process, over HTTP, at cold start and in memory. "
        "The naive pipeline (Keras) and the peer (the exported fp32 `model.onnx`) run the fp32 weights."
    )


def _served(results: Results) -> str:
    """Which folder the servers served, and the precision they reported for it."""
    name = results.config.get("model_name", "slider")
    said = sorted({str(s.settings["precision"]) for s in results.servers if s.settings.get("precision")})
    return f"`asd-serve` serves ours' {ours_precision(results)} folder as `{name}`" + (
        f" (its `GET /v1/models/{name}` says precision {' and '.join(said)})." if said else "."
    )


def render(results: Results, *, quick: bool = False) -> str:
    m = results.machine
    cfg = results.config
    det = results.detector
    out = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python -m bench.run`); do not edit by hand, run it again.",
        "The code is in `bench/` (each module's docstring says exactly what it measures).",
        "",
    ]
    if quick:
        out += ["> **Quick run** (`--quick`): fewer clips and requests; not for the record.", ""]
    load_end = results.load_at_end or ("n/a", "n/a", "n/a")
    out += [
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        f"| run | {results.started_at}, {results.duration_s / 60:.1f} min |",
        f"| CPU | {m['cpu']}, {m['cores']} cores online, {m['usable_cores']} usable (cgroup cpu.max: {m['cpu_quota']}) |",
        f"| RAM | {m['ram_gb']} GB |",
        f"| OS | {m['os']} |",
        f"| Python | {m['python']} |",
        "| libraries | " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + " |",
        f"| load average at start (1/5/15 min) | {' / '.join(str(x) for x in m['load_average'])} |",
        f"| load average at end | {' / '.join(str(x) for x in load_end)} |",
        "",
        "The machine is shared with other jobs (training runs, image builds), so absolute times move",
        "from run to run with the load above; the ratios within one run are what to compare. CPU",
        "times (process CPU, all threads) are given next to wall times because they move far less.",
        "",
        "## Commands",
        "",
        "```sh",
        *results.commands,
        "```",
        "",
        "The load generator is `httpx.AsyncClient` on asyncio inside the benchmark process (not the",
        "server's code), one keep-alive connection per concurrent client, multipart uploads (field",
        "`file`) of the clips round robin to `POST /v1/score`.",
        "",
        "## Clips and detector",
        "",
        f"- {results.clips.get('synthetic')} synthetic 10 s slider clips (`training.synth`, IDs "
        f"{', '.join(cfg['ids'])}, normal and anomalous test clips, mono PCM_16, 16 kHz) and "
        f"{results.clips.get('real')} real recordings from `../shared/data/real-recordings` (MIMII 8-channel and "
        f"DCASE mono PCM_16, 10-11 s; channel 0 scored): {results.clips.get('total')} clips, "
        f"{results.clips.get('audio_seconds')} s of audio, held in memory as file bytes.",
        f"- detector: {det.get('arch')}, patches of {det.get('frames')} frames every {det.get('hop')} "
        f"({det.get('patches_per_10s')} patches per 10 s clip), ONNX {det.get('onnx_bytes', 0) / 1024:.0f} KiB "
        f"({ours_precision(results)}), mel filters packed in threshold.json: {det.get('packed_mel_filters')}.",
        f"- ours ran **{ours_precision(results)}**: {_precision_why(results)}",
    ]
    if det.get("trained"):
        arch = det.get("architecture", {})
        out += [
            f"  Trained here in {sum(det.get('seconds', {}).values()):.0f} s "
            f"({', '.join(f'{k} {v} s' for k, v in det.get('seconds', {}).items())}).",
            "",
            WHY_MODEL.format(
                epochs=cfg.get("epochs"),
                reference=arch.get("source", "training defaults"),
                twin=" Ours then scores and serves the int8 twin quantized from that folder."
                if ours_precision(results) == "int8"
                else "",
            ),
        ]
    out.append("")

    out += in_process_section(results)
    out += precision_section(results)
    out += floor_section(results)

    cores = int(m.get("usable_cores") or m.get("cores") or 1)
    if results.http:
        out += [
            "## HTTP: `asd-serve` on loopback",
            "",
            _served(results),
            "",
            "| workers | ORT threads / scoring slots per worker | concurrency | requests | clips/s | p50 ms | p95 ms | p99 ms | errors | server CPU ms / request | client CPU ms / request | share of the machine's CPU the run got | clips/s that CPU cost allows on all cores | each worker's part of the server CPU |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        settings = {s.workers: s.settings for s in results.servers}
        for row in results.http:
            st = settings.get(row.workers, {})
            kinds = (
                f" ({', '.join(f'{k}: {v}' for k, v in row.error_kinds.items())})" if row.error_kinds else ""
            )
            out.append(
                f"| {row.workers} | {st.get('intra_op_threads', '?')} / {st.get('scoring_concurrency', '?')} | "
                f"{row.concurrency} | {row.requests} | {_f(row.throughput)} | {_f(row.p50)} | {_f(row.p95)} | "
                f"{_f(row.p99)} | {row.errors}{kinds} | {_f(row.server_cpu_ms)} | {_f(row.client_cpu_ms)} | "
                f"{_f(100 * cpu_share(row, cores), 0)} % | {_f(capacity(row, cores), 0)} | {_split(row)} |"
            )
        out += [
            "",
            "Latency is per request at the client, from sending the upload to having read the answer. The",
            "client runs on the same cores as the server and takes part of them. CPU per request is the",
            "workers' user + system time (/proc/<pid>/stat) and the load generator's own process time,",
            "divided by the requests: what a request costs, whatever else the machine was doing. The share",
            "is (server + client CPU) / (wall time x cores): below 100 % either other jobs on the machine",
            "had the rest, or workers idled: the last column shows each worker's part of the server CPU (each",
            "worker listens on a socket of its own, `ASD_REUSE_PORT`, and the kernel spreads new connections",
            "over them by a hash, not by load; one connection keeps one worker busy). The column before it is",
            "cores x 1000 / (server + client CPU ms per request): the rate those costs allow with the whole",
            "machine to themselves, an upper bound, not a measurement.",
            "",
        ]
    if results.servers:
        out += [
            "## Cold start and memory",
            "",
            "| workers | cold start: start to first /ready 200 (s) | every worker loaded (s) | requests served | VmRSS per worker (MB) | peak VmHWM per worker (MB) |",
            "| ---: | --- | --- | ---: | --- | --- |",
        ]
        for s in results.servers:
            rss = ", ".join(_f(m_["VmRSS"], 0) for m_ in s.memory)
            peak = ", ".join(_f(m_["VmHWM"], 0) for m_ in s.memory)
            out.append(
                f"| {s.workers} | {', '.join(_f(c, 2) for c in s.cold_start_s)} | "
                f"{', '.join(_f(c, 2) for c in s.all_ready_s)} | {s.requests_served} | {rss} | {peak} |"
            )
        for s in results.servers:
            loaded = ", ".join(s.heavy_packages_loaded) or "none"
            out.append(
                f"\nNative code of scipy, numba, llvmlite, tensorflow or librosa mapped into a worker "
                f"({s.workers} worker(s), /proc/<pid>/maps after the load): {loaded}."
            )
        if results.imports:
            imp = results.imports
            out += [
                "",
                f"Imports of one worker (`{imp['command']}`): {imp['total_ms']:.0f} ms; largest top-level packages: "
                + ", ".join(f"{name} {ms:.0f} ms" for name, ms in imp["top"][:5])
                + f". librosa, numba, scipy, tensorflow, keras or training among them: {', '.join(imp['heavy']) or 'none'}.",
            ]
        out += [
            "",
            "Where a start goes (seconds from process start, per start, from the server's own log lines):",
            "",
            "| workers | uvicorn master up | every worker process up (imports, app built) | every worker's models loaded |",
            "| ---: | --- | --- | --- |",
        ]
        for s in results.servers:
            cells = [
                ", ".join(_f(p.get(k, float("nan")), 2) for p in s.phases)
                for k in ("master", "workers", "loaded")
            ]
            out.append(f"| {s.workers} | {' | '.join(cells)} |")
        out.append("")

    cores = int(m.get("usable_cores") or m.get("cores") or 1)
    out += ["## Targets", "", "| target | measured | |", "| --- | --- | --- |"]
    for t in targets(results):
        out.append(f"| {t.name} | {t.measured} | {({True: 'met', False: '**missed**', None: '-'})[t.met]} |")
    out.append("")
    out += missed_notes(results, cores)
    out += [PROFILE_NOTES, ""]
    return "\n".join(out)


PROFILE_NOTES = """\
## Where the time went, and what changed

From the optimisation sessions (py-spy on a loaded server, per-stage CPU
timers in one process, the old and the new code run alternately on the same
clips and model), not from the run above. CPU milliseconds per 10 s clip on
1 onnxruntime thread, with the provisional `models/slider` of that time (CAE,
patch hop 16: 18 patches per clip). Scores before and after differ by at
most 1.3e-7 (relative); tests/bench/test_equivalence.py pins the fast paths
to the old results.

| | before | after | what it was, what changed |
| --- | ---: | ---: | --- |
| whole clip in one process (`score_upload`) | 80-86 | 23-29 | the rows below |
| HTTP, server CPU per request (1 or 2 workers, concurrency 8) | 75-90 | 31 | the rows below, plus the HTTP side: 3-4 ms for a mono 10 s upload, about 9 ms for an 8-channel one (2.5 MB of multipart, which Starlette spools to disk past 1 MB; sent as a raw `audio/wav` body it costs 3-5 ms less) |
| inference (onnxruntime, 18 patches) | 37-47 | 18-21 | the model itself did not change: the extra was the OpenBLAS thread woken by the dense mel product, spin-waiting beside onnxruntime (with `OPENBLAS_NUM_THREADS=1` the old code's inference also took 22 ms) |
| log-mel | 23-31 (25-100 ms wall) | 3-4 | numpy 2's FFT is ~10 x slower on float32 than on float64: the frames go to the FFT in float64; the STFT runs in blocks of 64 frames with per-thread buffers (fresh 2.5 MB temporaries cost more in page faults than the FFT); the mel projection uses only the ~1,000 non-zero weights of the 65,664, band by band on the calling thread, instead of a dense product that OpenBLAS ran on two threads |
| decode, mono PCM_16 | 1.6-2.0 | 0.6-0.9 | libsndfile converted every sample to float and the NaN check scanned integer data; integer subtypes are now read as integers and only the kept channel is converted (bit-identical), straight into one preallocated array instead of per-block copies and a concatenation |
| decode, 8-channel PCM_16 | 14-17 | 1.3-1.6 | the same: 8 channels converted to keep one |
| decode, 8-channel, `channel=mean` | 15-30 ms wall | 2-7 ms wall | an exact integer sum of the channels gives the same float32 mean as `np.mean` of the floats |
| onnxruntime with 2 threads | 64 | 37 | pool threads spin-waited between parallel sections; spinning is now off when a session has more than one thread |
| librosa's import at start-up, for a bundle without packed mel filters (the provisional model had none) | 2.5-6.5 s | 0 | the fallback filter bank is computed in numpy, bit-identical to librosa's |
| cold start, 2 workers (load average 7-9) | 16-20 s | 8-11 s | librosa gone; the uvicorn master no longer imports the app (FastAPI, numpy, onnxruntime): only the workers need it |
| resident memory per worker | 240 MB | 110-150 MB | no librosa, scipy, numba |
| resident memory after one 300 s clip | 561 MB | 194 MB | onnxruntime's arena keeps the largest run it saw; inference now runs in chunks of 32 CAE patches (bit-identical results) |

What is left is mostly inference, and that is the model's own work. The
model shipped after these changes (32-frame patches, hop 32: 9 patches per
clip; a dense bottleneck) needed about 10 ms of inference CPU per clip. Per
node (onnxruntime profiler, that model): the last convolution (16 channels to 1 at
128 x 32) takes 22 %, the decoder's last 3 x 3 convolution 15 %, and the
Tile/Transpose/Reorder chains that tf2onnx makes of Keras' `UpSampling2D`
about 15 %. Replacing each chain with one `Resize` (nearest) gives
bit-identical outputs and 12 % less inference CPU on the current model
(10.0 -> 8.8 ms, median of 80 alternating runs; 18.8 -> 16.3 ms on the
provisional one); the graph comes from the export in `training/`, so that
change belongs there. The default model has changed again since (8-frame
patches, hop 8: 39 patches per clip; its decoder up-samples before it
convolves, so two decoder convolutions run at full resolution): the tables above
measure it.
"""


# Sections measured by other commands (e.g. scripts/operator_page.py) go below this line in
# BENCHMARKS.md; a new run of `make bench` rewrites everything above it and keeps them.
KEPT_MARKER = "<!-- Measured by other commands; `make bench` keeps everything below this line. -->"


def with_kept_sections(report: str, previous: str | None) -> str:
    """`report` followed by the marker and what followed the marker in `previous`, if anything."""
    if previous is None or KEPT_MARKER not in previous:
        return report
    kept = previous.split(KEPT_MARKER, 1)[1].strip("\n")
    return report.rstrip("\n") + "\n\n" + KEPT_MARKER + "\n\n" + kept + "\n"
