"""`asd-watch` against a real `asd-serve`: every complete file scored exactly once, refusals kept with
their reason, half-written files left alone, and a service restart mid-run loses and repeats nothing."""

from __future__ import annotations

import errno
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.service.live import asd_serve, free_port
from tests.service.sounds import encode, noise
from watcher.cli import Watcher
from watcher.client import Retry, ServiceClient, Vanished
from watcher.folder import Folder, Journal, riff_incomplete
from watcher.recorder import Recorder


def write_clips(folder: Path, n: int, *, seconds: float = 1.5, prefix: str = "normal_id_00") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}_{i:08d}.wav"
        path.write_bytes(encode(noise(seconds, seed=i)))
        paths.append(path)
    return paths


def records(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]


def watcher_for(folder: Path, base: str, **options) -> Watcher:
    return Watcher(
        Folder(folder, settle_s=options.pop("settle_s", 0.0)),
        Journal(folder / "results.jsonl"),
        ServiceClient(base, connections=4),
        poll_s=0.05,
        progress_s=None,
        out=options.pop("out", io.StringIO()),
        **options,
    )


# --- the folder, without a service -------------------------------------------------------------


def test_a_wav_still_being_written_is_left_alone(tmp_path: Path) -> None:
    whole = encode(noise(1.0))
    path = tmp_path / "a.wav"
    path.write_bytes(whole[: len(whole) // 2])  # the header announces the whole clip
    assert riff_incomplete(path, path.stat().st_size)
    folder = Folder(tmp_path, settle_s=0.0)
    assert list(folder.complete(time.monotonic())) == []
    path.write_bytes(whole)
    assert not riff_incomplete(path, path.stat().st_size)
    assert [c.path for c in folder.complete(time.monotonic())] == [path]


def test_only_files_unchanged_for_the_settle_time_and_no_temporary_names(tmp_path: Path) -> None:
    write_clips(tmp_path, 1)
    (tmp_path / "b.wav.part").write_bytes(encode(noise(1.0)))
    (tmp_path / ".c.wav").write_bytes(encode(noise(1.0)))
    folder = Folder(tmp_path, settle_s=5.0)
    t0 = time.monotonic()
    assert list(folder.complete(t0)) == []  # first sighting
    assert list(folder.complete(t0 + 1)) == []  # not settled yet
    assert [c.path.name for c in folder.complete(t0 + 6)] == ["normal_id_00_00000000.wav"]


def test_the_journal_survives_a_cut_line_and_knows_its_keys(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text('{"key": "a:1:2", "outcome": "scored"}\n{"key": "b:1', encoding="utf-8")
    journal = Journal(results)
    assert journal.keys == {"a:1:2"}
    journal.append({"key": "c:3:4", "outcome": "scored"})
    assert [r["key"] for r in records_lenient(results)] == ["a:1:2", "c:3:4"]


def records_lenient(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def test_a_vanished_file_and_an_absent_service_are_told_apart(tmp_path: Path) -> None:
    client = ServiceClient(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    assert isinstance(client.score(tmp_path / "gone.wav", machine_id=None), Vanished)
    write_clips(tmp_path, 1)
    outcome = client.score(tmp_path / "normal_id_00_00000000.wav", machine_id=None)
    assert isinstance(outcome, Retry) and "unreachable" in outcome.reason
    client.close()


def test_the_recorder_writes_whole_clips_under_their_final_name_only(tmp_path: Path) -> None:
    chunks = iter([np.full((1600, 1), 0.1, np.float32), np.full((1600, 1), -0.1, np.float32)])
    recorder = Recorder(lambda frames: next(chunks)[:frames], tmp_path, sample_rate=16000, seconds=0.1)
    first, second = recorder.one_clip(), recorder.one_clip()
    assert first != second and first.suffix == ".wav" and not list(tmp_path.glob("*.part"))
    import soundfile as sf

    data, rate = sf.read(first)
    assert rate == 16000 and data.shape == (1600,)


# --- against a real asd-serve ------------------------------------------------------------------


def test_scores_once_and_keeps_refusals_with_their_reason(models_dir, tmp_path: Path) -> None:
    folder = tmp_path / "recorder"
    clips = write_clips(folder, 6)
    (folder / "normal_id_00_notaudio.wav").write_bytes(b"this is no audio at all" * 100)
    (folder / "normal_id_07_00000000.wav").write_bytes(encode(noise(1.5)))  # the model has no ID 07
    with asd_serve(models_dir, tmp_path / "asd.log") as base:
        watcher = watcher_for(folder, base, once=True)
        assert watcher.run() == 0
    done = sorted(p.name for p in (folder / "done").iterdir())
    assert done == sorted(p.name for p in clips)
    lines = records(folder / "results.jsonl")
    assert len(lines) == 8 and len({r["key"] for r in lines}) == 8
    scored = [r for r in lines if r["outcome"] == "scored"]
    assert len(scored) == 6 and all(
        r["decision"] in ("normal", "anomalous") and r["machine_id"] == "00" for r in scored
    )
    failed = {r["file"]: r for r in lines if r["outcome"] == "failed"}
    assert failed["normal_id_00_notaudio.wav"]["status"] == 400
    assert failed["normal_id_07_00000000.wav"]["code"] == "unknown_machine_id"
    reason = json.loads(
        (folder / "failed" / "normal_id_07_00000000.wav.error.json").read_text(encoding="utf-8")
    )
    assert "07" in reason["message"]
    assert sorted(p.name for p in (folder / "failed").glob("*.wav")) == sorted(failed)
    assert not list(folder.glob("*.wav"))


def test_a_service_restart_mid_run_loses_and_repeats_nothing(models_dir, tmp_path: Path) -> None:
    folder = tmp_path / "recorder"
    n = 200
    write_clips(folder, n)
    port = free_port()
    log = io.StringIO()
    with asd_serve(models_dir, tmp_path / "asd.log", port=port) as base:
        watcher = watcher_for(folder, base, once=True, out=log)
        runner = threading.Thread(target=watcher.run)
        began = time.monotonic()
        runner.start()
        while watcher.tally.scored < n // 3:
            assert runner.is_alive(), log.getvalue()
            time.sleep(0.02)
    # The service is down now; the watcher waits and retries.
    time.sleep(1.5)
    assert runner.is_alive() and watcher.tally.scored < n
    with asd_serve(models_dir, tmp_path / "asd2.log", port=port):
        runner.join(timeout=180)
    seconds = time.monotonic() - began
    assert not runner.is_alive()
    lines = records(folder / "results.jsonl")
    assert len(lines) == n and len({r["key"] for r in lines}) == n, "every clip exactly once"
    assert all(r["outcome"] == "scored" for r in lines)
    assert len(list((folder / "done").glob("*.wav"))) == n and not list(folder.glob("*.wav"))
    assert "unreachable" in log.getvalue()
    print(f"\n{n} clips with a restart in the middle: {seconds:.1f} s, {n / seconds:.1f} clips/s")


def test_a_full_results_disk_keeps_the_file_until_it_can_be_recorded(
    models_dir, tmp_path: Path, monkeypatch
) -> None:
    folder = tmp_path / "recorder"
    write_clips(folder, 3)
    real_append = Journal.append_many
    failures = {"left": 2}

    def flaky(self, batch):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, batch)

    monkeypatch.setattr(Journal, "append_many", flaky)
    out = io.StringIO()
    with asd_serve(models_dir, tmp_path / "asd.log") as base:
        assert watcher_for(folder, base, once=True, out=out).run() == 0
    lines = records(folder / "results.jsonl")
    assert len(lines) == 3 and len({r["key"] for r in lines}) == 3
    assert len(list((folder / "done").glob("*.wav"))) == 3
    assert "No space left on device" in out.getvalue()


def test_a_file_recorded_before_a_stop_is_moved_not_sent_again(models_dir, tmp_path: Path) -> None:
    folder = tmp_path / "recorder"
    (path,) = write_clips(folder, 1)
    stat = path.stat()
    key = f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"
    (folder / "results.jsonl").write_text(
        json.dumps({"key": key, "outcome": "scored"}) + "\n", encoding="utf-8"
    )
    # No service at all: had the watcher sent it, it would be waiting still.
    watcher = watcher_for(folder, f"http://127.0.0.1:{free_port()}", once=True)
    assert watcher.run() == 0
    assert watcher.tally.recovered == 1 and (folder / "done" / path.name).is_file()
    assert len(records(folder / "results.jsonl")) == 1


def test_asd_watch_stops_cleanly_on_ctrl_c(models_dir, tmp_path: Path) -> None:
    folder = tmp_path / "recorder"
    folder.mkdir()
    watch = subprocess.Popen(
        [sys.executable, "-m", "watcher.cli", str(folder), "--url", f"http://127.0.0.1:{free_port()}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watch.stderr is not None
    first = watch.stderr.readline()  # printed once the Ctrl-C handler is in place
    assert "watching" in first, first
    watch.send_signal(signal.SIGINT)
    _, err = watch.communicate(timeout=20)
    assert watch.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/folder"], "is not a folder"),
        (["{tmp}", "--concurrency", "0"], "--concurrency"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "watcher.cli", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
