"""Audio fuzzing: mutated WAV/FLAC/OGG bytes through decoding and scoring, in a process of its own.

    python -m tests.reliability.audio_fuzz --models models --examples 2000 --seed 7 --out /tmp/fuzz

Hypothesis takes small valid recordings (WAV PCM 8/16/24-bit, float, 8 channels,
WAVE_FORMAT_EXTENSIBLE, RF64, FLAC, OGG Vorbis) and applies one to four mutations:
bit flips, byte overwrites, truncations, header fields set to edge values
(channels, rate, bits, block align, chunk and data sizes, FLAC STREAMINFO),
random chunks inserted, byte ranges duplicated or deleted. Each input goes through
`service.scoring.score_upload` (`read_audio` then `Detector.score`, what the API
runs) and must end in a finite score or a clean error: an `AudioError` subclass or
`ClipTooShortError` (the API answers those 400/422). A few go through the HTTP app too
and must answer 200, 400 or 422 in the error shape.

It runs in its own process because a crash in libsndfile would otherwise take
pytest down with it: the parent test sees the signal instead. Before each input
the bytes are written to `<out>/current.bin`, so a crash leaves the input behind.
Each input gets `--deadline` seconds in a worker thread; past that the input is
saved as `<out>/hang.bin` and the process exits 3 (a thread cannot be killed).
Exit 0: all fine, 1: a property failed (hypothesis prints the shrunk input and it
is saved as `<out>/failure.bin`), 3: a hang. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import os
import struct
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import NoReturn

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from service.audio import AudioError
from service.detector import ClipTooShortError, Detector
from service.scoring import score_upload

RATE = 16000
CLEAN = (AudioError, ClipTooShortError)
# Edge values for integer header fields.
EDGES_16 = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 24, 32, 63, 64, 65, 255, 256, 0x7FFF, 0x8000, 0xFFFF]
EDGES_32 = [0, 1, 2, 8, 44, 100, 1000, 8000, 16000, 44100, 384000, 384001, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def _encode(samples: np.ndarray, *, format: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, RATE, format=format, subtype=subtype)
    return buffer.getvalue()


def seed_files(seconds: float = 1.2) -> dict[str, bytes]:
    """Small valid recordings, each long enough for the model (about 1 s) before mutation."""
    rng = np.random.default_rng(0)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    mono = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)[:, None]
    multi = np.repeat(mono, 8, axis=1) * np.linspace(0.2, 1.0, 8, dtype=np.float32)
    return {
        "wav-pcm16": _encode(mono, format="WAV", subtype="PCM_16"),
        "wav-pcm24": _encode(mono, format="WAV", subtype="PCM_24"),
        "wav-u8": _encode(mono, format="WAV", subtype="PCM_U8"),
        "wav-float": _encode(mono, format="WAV", subtype="FLOAT"),
        "wav-8ch": _encode(multi, format="WAV", subtype="PCM_16"),
        "wavex-pcm16": _encode(mono, format="WAVEX", subtype="PCM_16"),
        "rf64-pcm16": _encode(mono, format="RF64", subtype="PCM_16"),
        "flac-16": _encode(mono, format="FLAC", subtype="PCM_16"),
        "flac-8ch": _encode(multi, format="FLAC", subtype="PCM_24"),
        "ogg-vorbis": _encode(mono, format="OGG", subtype="VORBIS"),
    }


SEEDS = seed_files()
SEED_NAMES = sorted(SEEDS)


def header_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the integer fields worth lying in: RIFF/fmt/data sizes, FLAC STREAMINFO."""
    fields: list[tuple[int, int]] = []
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        fields.append((4, 4))
        position = 12
        while position + 8 <= len(data) and len(fields) < 40:
            size = struct.unpack_from("<I", data, position + 4)[0]
            fields.append((position + 4, 4))
            if data[position : position + 4] == b"fmt ":
                base = position + 8
                # format tag, channels, rate, byte rate, block align, bits (+ extensible fields)
                fields += [
                    (base, 2),
                    (base + 2, 2),
                    (base + 4, 4),
                    (base + 8, 4),
                    (base + 12, 2),
                    (base + 14, 2),
                ]
                if size >= 24:
                    fields += [(base + 16, 2), (base + 18, 2), (base + 20, 4), (base + 24, 2)]
            if data[position : position + 4] == b"ds64":
                fields += [(position + 8 + k, 4) for k in range(0, 24, 4)]
            if data[position : position + 4] == b"data":
                break
            position += 8 + size + (size & 1)
    elif data[:4] == b"fLaC":
        # STREAMINFO: block sizes, frame sizes, then rate(20) | channels-1(3) | bits-1(5) | samples(36).
        fields += [(8, 2), (10, 2), (12, 3), (15, 3), (18, 4), (22, 4), (26, 16)]
    elif data[:4] == b"OggS":
        fields += [(14, 4), (18, 4), (22, 4), (26, 1)]
    return [(o, w) for o, w in fields if o + w <= len(data)]


class Mutant:
    """One fuzz input; its repr (what hypothesis prints) names the seed and mutations, not 200 kB."""

    def __init__(self, name: str, data: bytes, applied: list[str]) -> None:
        self.name, self.data, self.applied = name, data, applied

    def __repr__(self) -> str:
        digest = hashlib.sha256(self.data).hexdigest()[:12]
        return f"Mutant({self.name}, {self.applied}, {len(self.data)} bytes, sha256 {digest}...)"


@st.composite
def mutated_audio(draw: st.DrawFn) -> Mutant:
    name = draw(st.sampled_from(SEED_NAMES))
    data = bytearray(SEEDS[name])
    applied: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(["flip", "overwrite", "truncate", "field", "insert", "duplicate", "delete"])
        )
        size = len(data)
        if size == 0:
            break
        # Headers are where decoders go wrong: half the positions fall in the first 64 bytes.
        where = st.one_of(st.integers(0, min(63, size - 1)), st.integers(0, size - 1))
        if kind == "flip":
            at, bit = draw(where), draw(st.integers(0, 7))
            data[at] ^= 1 << bit
            applied.append(f"flip {at}:{bit}")
        elif kind == "overwrite":
            at = draw(where)
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
            applied.append(f"overwrite {at}+{len(chunk)}")
        elif kind == "truncate":
            at = draw(st.one_of(st.integers(0, min(80, size)), st.integers(0, size)))
            del data[at:]
            applied.append(f"truncate {at}")
        elif kind == "field":
            fields = header_fields(bytes(data))
            if not fields:
                continue
            offset, width = draw(st.sampled_from(fields))
            edges = EDGES_16 if width <= 2 else EDGES_32
            value = draw(st.one_of(st.sampled_from(edges), st.integers(0, (1 << (8 * width)) - 1)))
            value &= (1 << (8 * width)) - 1
            order = "big" if data[:4] == b"fLaC" else "little"
            data[offset : offset + width] = value.to_bytes(width, order)
            applied.append(f"field {offset}/{width}={value}")
        elif kind == "insert":
            at = draw(where)
            if draw(st.booleans()):
                body = draw(st.binary(max_size=64))
                tag = draw(
                    st.sampled_from(
                        [b"LIST", b"fmt ", b"data", b"fact", b"JUNK", b"ds64", b"\x00\x00\x00\x00"]
                    )
                )
                claimed = draw(st.one_of(st.just(len(body)), st.sampled_from(EDGES_32)))
                chunk = tag + struct.pack("<I", claimed & 0xFFFFFFFF) + body
            else:
                chunk = draw(st.binary(min_size=1, max_size=256))
            data[at:at] = chunk
            applied.append(f"insert {at}+{len(chunk)}")
        elif kind == "duplicate":
            at = draw(where)
            length = draw(st.integers(1, 512))
            data[at:at] = data[at : at + length]
            applied.append(f"duplicate {at}+{length}")
        elif kind == "delete":
            at = draw(where)
            length = draw(st.integers(1, 512))
            del data[at : at + length]
            applied.append(f"delete {at}+{length}")
    return Mutant(name, bytes(data), applied)


class Harness:
    def __init__(self, models: Path, out: Path, deadline: float) -> None:
        self.detector = Detector(models / "slider")
        self.out = out
        self.deadline = deadline
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuzz")
        self.outcomes: Counter[str] = Counter()
        self.slowest = 0.0
        self.examples = 0

    def score(self, data: bytes) -> object:
        return score_upload("slider", self.detector, data, max_seconds=300.0)

    def run_one(self, data: bytes) -> object:
        """The outcome of one input: a ScoreResult or a clean error; hangs end the process."""
        (self.out / "current.bin").write_bytes(data)
        started = time.monotonic()
        future = self.pool.submit(self.score, data)
        try:
            result = future.result(timeout=self.deadline)
        except FutureTimeout:
            _hang(self.out, data, self.deadline)
        except CLEAN as error:
            result = error
        finally:
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.examples += 1
        return result


def _hang(out: Path, data: bytes, deadline: float) -> NoReturn:
    """An input took longer than the deadline: keep it and end the process (a thread cannot be killed)."""
    (out / "hang.bin").write_bytes(data)
    print(json.dumps({"hang": True, "deadline_s": deadline, "saved": str(out / "hang.bin")}))
    sys.stdout.flush()
    os._exit(3)


def check(result: object, data: bytes, out: Path) -> str:
    """The outcome's name, or an AssertionError (the input saved) when it is neither a score nor clean."""
    if isinstance(result, CLEAN):
        return type(result).__name__
    score = getattr(result, "score", None)
    finite = (
        score is not None
        and math.isfinite(score)
        and all(
            math.isfinite(s.score) and math.isfinite(s.ratio)
            for s in result.segments  # type: ignore[attr-defined]
        )
    )
    if not finite:
        (out / "failure.bin").write_bytes(data)
        raise AssertionError(f"scored, but not a finite score: {score!r} (input saved as failure.bin)")
    return "scored"


def run(models: Path, examples: int, seed_value: int, out: Path, deadline: float, http_examples: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    harness = Harness(models, out, deadline)
    started = time.monotonic()
    # Every seed must score before mutation, or the fuzz would test nothing.
    for name in SEED_NAMES:
        result = harness.run_one(SEEDS[name])
        assert getattr(result, "score", None) is not None, f"seed {name} does not score: {result!r}"

    common = {
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
        "print_blob": True,
    }

    @seed(seed_value)
    @settings(max_examples=examples, **common)
    @given(mutated_audio())
    def decode_and_score(sample: Mutant) -> None:
        name, data, applied = sample.name, sample.data, sample.applied
        try:
            outcome = check(harness.run_one(data), data, out)
        except Exception as error:
            if not isinstance(error, AssertionError):
                (out / "failure.bin").write_bytes(data)
                raise AssertionError(
                    f"{name} {applied}: {type(error).__name__} escaped (not an AudioError/ClipTooShortError): "
                    f"{error}\n{traceback.format_exc()}"
                ) from error
            raise
        harness.outcomes[outcome] += 1

    failed = 0
    try:
        decode_and_score()
    except AssertionError as error:
        print(f"FAILED: {error}")
        failed = 1

    http = Counter()
    if not failed and http_examples:
        http, failed = _through_http(models, http_examples, seed_value, out, deadline)

    summary = {
        "examples": harness.examples,
        "outcomes": dict(harness.outcomes),
        "http": dict(http),
        "slowest_s": round(harness.slowest, 3),
        "seconds": round(time.monotonic() - started, 1),
        "seed": seed_value,
        "failed": bool(failed),
    }
    print(json.dumps(summary))
    return failed


def _through_http(
    models: Path, examples: int, seed_value: int, out: Path, deadline: float
) -> tuple[Counter, int]:
    """Some of the same inputs as uploads to the app: 200, or 400/422 in the error shape."""
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    app = create_app(Settings(models_dir=models, log_level="WARNING"))
    statuses: Counter[str] = Counter()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuzz-http")
    with TestClient(app) as client:
        assert app.state.registry.wait(120)

        @seed(seed_value + 1)
        @settings(
            max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(mutated_audio(), st.booleans())
        def upload(sample: Mutant, raw: bool) -> None:
            name, data, applied = sample.name, sample.data, sample.applied
            (out / "current.bin").write_bytes(data)
            if raw:
                call = functools.partial(
                    client.post,
                    "/v1/score",
                    content=data,
                    headers={"content-type": "application/octet-stream"},
                )
            else:
                call = functools.partial(client.post, "/v1/score", files={"file": ("fuzz.bin", data)})
            try:
                response = pool.submit(call).result(timeout=deadline)
            except FutureTimeout:
                _hang(out, data, deadline)
            statuses[str(response.status_code)] += 1
            ok = response.status_code == 200 or (
                response.status_code in (400, 422) and set(response.json()) == {"error"}
            )
            if not ok:
                (out / "failure.bin").write_bytes(data)
            assert ok, f"{name} {applied}: HTTP {response.status_code}: {response.text[:500]}"
            if response.status_code == 200:
                assert math.isfinite(response.json()["score"]), response.text[:500]

        try:
            upload()
        except AssertionError as error:
            print(f"FAILED (HTTP): {error}")
            return statuses, 1
    return statuses, 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, required=True, help="models folder holding slider/")
    parser.add_argument("--examples", type=int, default=int(os.environ.get("ASD_FUZZ_EXAMPLES", "600")))
    parser.add_argument("--http-examples", type=int, default=None, help="default: a tenth of --examples")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("ASD_FUZZ_SEED", "0")))
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds one input may take")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    http = args.http_examples if args.http_examples is not None else max(10, args.examples // 10)
    return run(args.models, args.examples, args.seed, args.out, args.deadline, http)


if __name__ == "__main__":
    sys.exit(main())
