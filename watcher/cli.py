"""`asd-watch FOLDER`: score every complete WAV file a recorder writes into FOLDER, exactly once.

Scored files move to FOLDER/done/, refused ones (not audio, too short, an unknown machine ID) to
FOLDER/failed/ with the service's reason beside them (`NAME.error.json`); every outcome is a JSON
line in the results file. While the service is away or overloaded the watcher waits, backing off,
and sends the same files again; nothing is lost and nothing is counted twice. Ctrl-C lets the
requests in flight finish and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from watcher.client import Backoff, Outcome, Refused, Retry, Scored, ServiceClient, Vanished
from watcher.folder import DONE, FAILED, Candidate, Folder, Journal
from watcher.recorder import Recorder, sound_card

_ID_IN_NAME = re.compile(r"id_(\d+)")
_Inflight = dict[Path, tuple[Candidate, Future[Outcome]]]


@dataclass
class Tally:
    scored: int = 0
    failed: int = 0
    recovered: int = 0  # recorded before a stop, moved after it
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    last_wait: str = ""

    def line(self, pending: int) -> str:
        rate = self.scored / max(1e-9, time.monotonic() - self.started)
        text = f"scored {self.scored} ({rate:.1f}/s), failed {self.failed}, pending {pending}"
        if self.recovered:
            text += f", recovered {self.recovered}"
        if self.last_wait:
            text += f"; waiting: {self.last_wait}"
        return text


def machine_id_for(path: Path, fixed: str | None) -> str | None:
    if fixed:
        return fixed
    found = _ID_IN_NAME.search(path.name)
    return found.group(1) if found else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Watcher:
    def __init__(
        self,
        folder: Folder,
        journal: Journal,
        client: ServiceClient,
        *,
        machine_id: str | None = None,
        concurrency: int = 4,
        poll_s: float = 0.2,
        progress_s: float | None = 2.0,
        once: bool = False,
        out: Any = sys.stderr,
    ) -> None:
        self.folder, self.journal, self.client = folder, journal, client
        self.machine_id, self.concurrency, self.poll_s = machine_id, concurrency, poll_s
        self.progress_s, self.once, self.out = progress_s, once, out
        self.stop = threading.Event()
        self.backoff = Backoff()
        self.tally = Tally()
        self._queue: deque[Candidate] = deque()

    def say(self, text: str) -> None:
        print(f"asd-watch: {text}", file=self.out, flush=True)

    def run(self) -> int:
        inflight: _Inflight = {}
        next_progress = time.monotonic() + (self.progress_s or 0)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="asd-watch") as pool:
            while True:
                now = time.monotonic()
                busy = self._collect(inflight, now)
                if self.stop.is_set():
                    if not inflight:
                        break
                elif not self.backoff.waiting(now):
                    busy |= self._submit(pool, inflight, now)
                if self.progress_s and now >= next_progress:
                    self.say(self.tally.line(self.folder.pending()))
                    next_progress = now + self.progress_s
                if not busy:
                    if self.once and not inflight and not self.folder.pending():
                        break
                    time.sleep(self.poll_s)
        self.say(f"stopped: {self.tally.line(self.folder.pending())}")
        return 0

    def _submit(self, pool: ThreadPoolExecutor, inflight: _Inflight, now: float) -> bool:
        if not self._queue:
            # One scan feeds many submissions: rescanning a folder of thousands per request would
            # cost more than the requests.
            self._queue.extend(c for c in self.folder.complete(now) if c.path not in inflight)
        submitted = False
        while self._queue and len(inflight) < 2 * self.concurrency:
            candidate = self._queue.popleft()
            if candidate.key in self.journal.keys:
                # Recorded before the watcher last stopped, not yet moved: move, do not send again.
                self._move(candidate, DONE)
                self.tally.recovered += 1
                continue
            mid = machine_id_for(candidate.path, self.machine_id)
            inflight[candidate.path] = (
                candidate,
                pool.submit(self.client.score, candidate.path, machine_id=mid),
            )
            submitted = True
        return submitted

    def _collect(self, inflight: _Inflight, now: float) -> bool:
        done = [path for path, (_, future) in inflight.items() if future.done()]
        handled: list[tuple[Candidate, Outcome, dict[str, Any]]] = []
        for path in done:
            candidate, future = inflight.pop(path)
            outcome = future.result()
            record = self._record(candidate, outcome, now)
            if record is not None:
                handled.append((candidate, outcome, record))
        if not handled:
            return bool(done)
        try:
            # One write and one fsync for all answers collected now; the moves come after it.
            self.journal.append_many([record for _, _, record in handled])
        except OSError as error:
            # Not recorded, so not moved: the files are sent again once the results file takes writes.
            wait = self.backoff.failed(now)
            self.say(
                f"cannot write {self.journal.path}: {error}; {len(handled)} file(s) stay, "
                f"trying again in {wait:.1f} s"
            )
            self.tally.last_wait = f"results file not writable ({error.strerror or error})"
            self._queue.clear()
            return True
        self.backoff.succeeded()
        self.tally.last_wait = ""
        for candidate, outcome, record in handled:
            if isinstance(outcome, Refused):
                self.tally.failed += 1
                self.say(
                    f"{candidate.path.name}: refused, HTTP {outcome.status} {outcome.code}: {outcome.message}"
                )
                self._write_reason(candidate, record)
                self._move(candidate, FAILED)
            else:
                self.tally.scored += 1
                self._move(candidate, DONE)
        return True

    def _record(self, candidate: Candidate, outcome: Outcome, now: float) -> dict[str, Any] | None:
        """The journal line of an answer, or None for a file that stays (retry) or is gone."""
        name = candidate.path.name
        if isinstance(outcome, Retry):
            self.tally.retries += 1
            wait = self.backoff.failed(now, outcome.after_s)
            if outcome.reason != self.tally.last_wait:
                self.say(f"{outcome.reason}; trying again in {wait:.1f} s")
            self.tally.last_wait = outcome.reason
            self._queue.clear()  # rescan after the wait: the same files, in order
            return None
        if isinstance(outcome, Vanished):
            self.say(f"{name}: {outcome.reason}; skipped")
            self.folder.forget(candidate.path)
            return None
        mid = machine_id_for(candidate.path, self.machine_id)
        record: dict[str, Any] = {"time": _now(), "file": name, "key": candidate.key, "machine_id": mid}
        if isinstance(outcome, Scored):
            answer = outcome.answer
            check = answer.get("input_check") or {}
            return record | {
                "outcome": "scored",
                "model": answer.get("model"),
                "decision": answer.get("decision"),
                "score": answer.get("score"),
                "threshold": answer.get("threshold"),
                "input_check": check.get("status"),
                "findings": [f.get("code") for f in check.get("findings", [])],
            }
        return record | {
            "outcome": "failed",
            "status": outcome.status,
            "code": outcome.code,
            "message": outcome.message,
        }

    def _move(self, candidate: Candidate, where: str) -> None:
        try:
            self.folder.move(candidate, where)
        except FileNotFoundError:
            self.folder.forget(candidate.path)  # recorded; someone else took the file
        except OSError as error:
            self.say(f"{candidate.path.name}: recorded, but could not move it to {where}/: {error}")

    def _write_reason(self, candidate: Candidate, record: dict[str, Any]) -> None:
        target = self.folder.root / FAILED / f"{candidate.path.name}.error.json"
        try:
            target.parent.mkdir(exist_ok=True)
            target.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            self.say(f"{candidate.path.name}: could not write its reason to {FAILED}/: {error}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asd-watch",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", type=Path, help="where the recorder writes its WAV files")
    parser.add_argument(
        "--url", default=os.environ.get("ASD_URL", "http://127.0.0.1:8000"), help="the service"
    )
    parser.add_argument("--model", default=None, help="model name (default: the service's default model)")
    parser.add_argument(
        "--machine-id",
        default=None,
        help="every file's machine ID (default: `id_NN` in the file name, if any)",
    )
    parser.add_argument(
        "--api-key-env",
        default="ASD_API_KEY",
        help="environment variable holding the API key (default ASD_API_KEY)",
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="JSON lines of outcomes (default FOLDER/results.jsonl)"
    )
    parser.add_argument("--pattern", default="*.wav", help="file names to pick up (default *.wav, any case)")
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds a file must stay unchanged before it is sent (default 1)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument(
        "--once", action="store_true", help="stop when the folder is empty instead of watching"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines (refusals are still reported)"
    )
    card = parser.add_argument_group("sound card (needs the sounddevice package)")
    card.add_argument(
        "--device", default=None, help="record from this input device into FOLDER (name or index)"
    )
    card.add_argument("--sample-rate", type=int, default=16000)
    card.add_argument("--channels", type=int, default=1)
    card.add_argument("--clip-seconds", type=float, default=10.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.settle < 0 or args.timeout <= 0 or args.clip_seconds <= 0:
        parser.error("--concurrency must be >= 1, --settle >= 0, --timeout and --clip-seconds > 0")
    folder_path: Path = args.folder
    if not folder_path.is_dir():
        parser.error(f"{folder_path} is not a folder")
    results = args.results or folder_path / "results.jsonl"
    try:
        journal = Journal(results)
        with open(results, "a", encoding="utf-8"):
            pass
    except OSError as error:
        parser.error(f"cannot write the results file {results}: {error}")
    client = ServiceClient(
        args.url,
        model=args.model,
        api_key=os.environ.get(args.api_key_env) or None,
        timeout_s=args.timeout,
        connections=args.concurrency,
    )
    watcher = Watcher(
        Folder(folder_path, pattern=args.pattern, settle_s=args.settle),
        journal,
        client,
        machine_id=args.machine_id,
        concurrency=args.concurrency,
        progress_s=None if args.quiet else 2.0,
        once=args.once,
    )
    recorder: Recorder | None = None
    close_card = None
    if args.device is not None:
        device = int(args.device) if args.device.isdecimal() else args.device
        try:
            read, close_card = sound_card(device, sample_rate=args.sample_rate, channels=args.channels)
        except Exception as error:  # PortAudio raises its own types for a missing or busy device
            parser.exit(1, f"asd-watch: error: {error}\n")
        recorder = Recorder(read, folder_path, sample_rate=args.sample_rate, seconds=args.clip_seconds)
        threading.Thread(target=recorder.run, name="asd-watch-recorder", daemon=True).start()

    def stop(signum: int, _frame: FrameType | None) -> None:
        if watcher.stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: leave now
        watcher.say("stopping after the requests in flight (Ctrl-C again to leave now)")
        watcher.stop.set()
        if recorder is not None:
            recorder.stop.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    watcher.say(f"watching {folder_path} for {args.pattern}; results in {results}; service {args.url}")
    try:
        return watcher.run()
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
        if close_card is not None:
            close_card()


if __name__ == "__main__":
    sys.exit(main())
