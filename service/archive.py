"""`asd-score MODEL DATA --out scores.csv`: score an archive of recordings with an exported detector.

Runs where the service runs (onnxruntime and numpy, no TensorFlow), so the service image can
score a fleet's archive as a Kubernetes Indexed Job (deploy/k8s/score-job.yaml): `--shard I/N`
takes every N-th file of the sorted list, starting at the I-th, and N pods together score all of
it. A process pool (`--jobs`) uses the cores of one machine. The CSV is appended row by row; a
rerun with the same arguments skips what it holds, so a stopped run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from service.audio import Channel
from service.bundle import normalize_machine_id
from service.detector import Detector
from service.errors import AudioError, DetectorError, FeatureError, ServiceError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
COLUMNS = ("path", "machine_id", "score", "threshold", "decision", "error")
_ID_IN_NAME = re.compile(r"(?:^|_)id_(\d+)(?=_|\.|$)", re.IGNORECASE)
_CHUNK = 16  # files per task: fewer round trips to the pool, still a fine-grained resume


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"--shard wants I/N, e.g. 0/4, got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 0 <= index < count:
            raise ValueError(
                f"--shard {text}: need 0 <= I < N (shards are numbered from 0, as Kubernetes does)"
            )
        return cls(index, count)

    def take(self, items: Sequence[Path]) -> list[Path]:
        return list(items[self.index :: self.count])


def find_audio(root: Path) -> list[Path]:
    """Every audio file under `root`, as paths relative to it, in one stable order for every shard."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            if name.lower().endswith(AUDIO_SUFFIXES) and not name.startswith("."):
                found.append(Path(folder, name).relative_to(root))
    return sorted(found, key=lambda p: p.as_posix())


def already_scored(out: Path) -> set[str]:
    """Paths the CSV holds; a last line cut short by a stop is dropped from the file first."""
    if not out.is_file() or out.stat().st_size == 0:
        return set()
    with open(out, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {row["path"] for row in rows if row.get("path")}


# --- the worker processes -----------------------------------------------------------------------

_worker: dict[str, Detector] = {}  # this worker process's detector, loaded once


def _load(model: str) -> None:
    # In the worker: each process has its own onnxruntime session, one thread each.
    _worker["detector"] = Detector(Path(model), intra_op_threads=1)


def _score(root: str, paths: list[str], channel: Channel) -> list[dict[str, str]]:
    _detector = _worker["detector"]
    rows = []
    for rel in paths:
        found = _ID_IN_NAME.search(Path(rel).name)
        machine_id = normalize_machine_id(found.group(1)) if found else None
        known = _detector.bundle.threshold.per_id or {}
        use_id = machine_id if machine_id in known else None
        row = {
            "path": rel,
            "machine_id": machine_id or "",
            "score": "",
            "threshold": "",
            "decision": "",
            "error": "",
        }
        try:
            scored = _detector.score_file(Path(root) / rel, channel=channel, machine_id=use_id)
        except (AudioError, FeatureError) as error:
            row["error"] = f"{getattr(error, 'code', 'invalid_audio')}: {error}"
        else:
            threshold = _detector.bundle.threshold.for_id(use_id).value if use_id else _detector.threshold
            row |= {
                "score": f"{scored.score:.6g}",
                "threshold": f"{threshold:.6g}",
                "decision": "anomalous" if scored.score > threshold else "normal",
            }
        rows.append(row)
    return rows


# --- the command --------------------------------------------------------------------------------


def _chunks(items: list[Path]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield [p.as_posix() for p in items[start : start + _CHUNK]]


def run(model: Path, data: Path, out: Path, *, jobs: int, shard: Shard, channel: Channel, quiet: bool) -> int:
    Detector(model)  # refuses a broken folder here, once, before any worker starts
    files = shard.take(find_audio(data))
    done = already_scored(out)
    todo = [p for p in files if p.as_posix() not in done]

    def say(text: str) -> None:
        if not quiet:
            print(f"asd-score: {text}", file=sys.stderr, flush=True)

    say(
        f"{len(files)} file(s) in shard {shard.index}/{shard.count}; {len(files) - len(todo)} already in {out}"
    )
    new_file = not out.is_file() or out.stat().st_size == 0
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = scored = 0
    began = time.perf_counter()
    with open(out, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=get_context("spawn"), initializer=_load, initargs=(str(model),)
        ) as pool:
            chunks = list(_chunks(todo))
            for rows in pool.map(_score, [str(data)] * len(chunks), chunks, [channel] * len(chunks)):
                writer.writerows(rows)
                f.flush()  # each finished chunk survives a stop
                failed += sum(1 for r in rows if r["error"])
                scored += len(rows)
                if scored % (_CHUNK * 8) == 0:
                    say(f"{scored}/{len(todo)} scored ({scored / (time.perf_counter() - began):.1f}/s)")
    seconds = time.perf_counter() - began
    say(
        f"scored {scored} file(s) in {seconds:.1f} s ({scored / max(seconds, 1e-9):.1f}/s); {failed} could not be read"
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asd-score`, also those of `asd-train score`."""
    parser.add_argument("model", type=Path, help="an exported detector folder")
    parser.add_argument("data", type=Path, help="a folder of recordings (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (appended to and resumed)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)"
    )
    parser.add_argument(
        "--shard", default="0/1", help="I/N: this run's share of the files (default 0/1, all)"
    )
    parser.add_argument("--channel", default="0", help="channel of multi-channel files: an index or 'mean'")
    parser.add_argument("--quiet", action="store_true")


def run_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check parsed options (usage errors through `parser.error`, exit 2) and score; 1 on a broken model."""
    try:
        shard = Shard.parse(args.shard)
    except ValueError as error:
        parser.error(str(error))
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if not args.data.is_dir():
        parser.error(f"{args.data} is not a folder")
    if args.channel != "mean" and not args.channel.isdecimal():
        parser.error(f"--channel wants an index or 'mean', got {args.channel!r}")
    channel: Channel = "mean" if args.channel == "mean" else int(args.channel)
    try:
        return run(
            args.model, args.data, args.out, jobs=args.jobs, shard=shard, channel=channel, quiet=args.quiet
        )
    except (DetectorError, ServiceError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asd-score", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_args(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
