"""Audio fuzzing (tests/reliability/audio_fuzz.py) run in a subprocess, so a decoder crash is a failure.

ASD_FUZZ_EXAMPLES sets the number of mutated inputs (default 600, about 20 s;
a tenth of them, at least 10, also go through the HTTP app), ASD_FUZZ_SEED the seed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability import audio_fuzz
from tests.service.conftest import REPO

EXAMPLES = int(os.environ.get("ASD_FUZZ_EXAMPLES", "600"))
SEED = int(os.environ.get("ASD_FUZZ_SEED", "0"))


def run_fuzz(models_dir: Path, out: Path, examples: int, *, deadline: float = 10.0) -> tuple[int, str, dict]:
    command = [
        sys.executable,
        "-W",
        "ignore::RuntimeWarning",
        "-m",
        "tests.reliability.audio_fuzz",
        "--models",
        str(models_dir),
        "--examples",
        str(examples),
        "--seed",
        str(SEED),
        "--deadline",
        str(deadline),
        "--out",
        str(out),
    ]
    # Generous: 10 s per input is the hang deadline; this only stops a wedged child.
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120 + examples * 2, check=False
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    summary = json.loads(lines[-1]) if lines else {}
    return result.returncode, result.stdout[-4000:] + result.stderr[-4000:], summary


def test_mutated_audio_scores_or_fails_cleanly(models_dir, tmp_path):
    code, output, summary = run_fuzz(models_dir, tmp_path, EXAMPLES)
    if code < 0:
        crashed = tmp_path / "current.bin"
        pytest.fail(
            f"the decoder crashed the process ({signal.Signals(-code).name}); "
            f"input kept at {crashed}\n{output}"
        )
    assert code != 3, f"an input hung past the deadline; kept at {tmp_path / 'hang.bin'}\n{output}"
    assert code == 0, output
    # Mutations decoded into every kind of outcome, and every seed scored before being mutated.
    assert summary["examples"] >= EXAMPLES, summary
    assert (
        summary["outcomes"].get("scored", 0) > 0 and summary["outcomes"].get("UndecodableAudioError", 0) > 0
    )
    assert sum(summary["http"].values()) >= 10 and summary["http"].get("200", 0) > 0, summary
    print(f"\naudio fuzz: {json.dumps(summary)}")


def test_the_harness_catches_what_it_should(models_dir, tmp_path, monkeypatch):
    """The property fails on a NaN score and on an escaping exception (so a pass means something)."""
    harness = audio_fuzz.Harness(models_dir, tmp_path, deadline=10.0)
    good = harness.run_one(audio_fuzz.SEEDS["wav-pcm16"])
    assert audio_fuzz.check(good, b"", tmp_path) == "scored"
    nan = good.model_copy(update={"score": float("nan")})
    with pytest.raises(AssertionError, match="not a finite score"):
        audio_fuzz.check(nan, b"x", tmp_path)
    assert (tmp_path / "failure.bin").read_bytes() == b"x"

    def boom(self, data):
        raise IndexError("escaped")

    monkeypatch.setattr(audio_fuzz.Harness, "score", boom)
    with pytest.raises(IndexError):
        harness.run_one(b"whatever")


def test_a_hang_is_reported_not_waited_for(models_dir, tmp_path):
    """A decode that never ends makes the child exit 3 with the input saved, within the deadline."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.reliability import audio_fuzz\n"
        "h = audio_fuzz.Harness(Path(sys.argv[1]), Path(sys.argv[2]), deadline=1.0)\n"
        "h.score = lambda data: time.sleep(60)\n"
        "h.run_one(b'never-ending')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(models_dir), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert (tmp_path / "hang.bin").read_bytes() == b"never-ending"


def test_a_crash_is_seen_as_a_signal(tmp_path):
    """What the parent relies on: a child killed by a signal has a negative return code."""
    result = subprocess.run(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"],
        timeout=30,
        check=False,
    )
    assert result.returncode == -signal.SIGSEGV
