"""The serving path's cheaper steps give the same answers: segments, raw bodies, the body idle timeout."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import tracemalloc

import numpy as np
import pytest
from pydantic import TypeAdapter
from starlette.requests import Request

from service.api.errors import PayloadTooLarge
from service.audio import read_audio
from service.detector import Detector, Score
from service.schemas import Segment
from service.scoring import group_segments
from service.uploads import BodySizeLimitMiddleware, read_body
from tests.service.conftest import DEFAULT_MODEL

SEGMENTS = TypeAdapter(list[Segment])


def selected_segments(scored: Score, *, duration: float, threshold: float, seconds: float) -> list[Segment]:
    """The reference: one boolean selection of the patches per segment (what group_segments did before)."""
    centres = (scored.patch_start + scored.patch_end) / 2
    index = np.floor(centres / seconds).astype(np.int64)
    segments = []
    for position, k in enumerate(np.unique(index)):
        errors = scored.segment_values[index == k]
        value = float(errors.mean())
        segments.append(
            Segment(
                index=position,
                start_s=round(float(k * seconds), 6),
                end_s=round(float(min((k + 1) * seconds, duration)), 6),
                score=value,
                ratio=value / threshold,
                n_patches=int(errors.size),
                worst=False,
            )
        )
    worst = max(range(len(segments)), key=lambda i: segments[i].score)
    segments[worst].worst = True
    return segments


def _shuffled(scored: Score, seed: int) -> Score:
    # Patches out of time order: each segment's patches then come in an order of their own.
    order = np.random.default_rng(seed).permutation(scored.patch_errors.size)
    scores = None if scored.patch_scores is None else scored.patch_scores[order]
    return dataclasses.replace(
        scored,
        patch_errors=scored.patch_errors[order],
        patch_start=scored.patch_start[order],
        patch_end=scored.patch_end[order],
        patch_scores=scores,
    )


@pytest.mark.parametrize("seconds", [1.0, 0.37, 2.5, 0.064, 100.0])
def test_segments_are_the_json_of_a_selection_per_segment(models_dir, model_names, real_recordings, seconds):
    clips = [
        real_recordings / "dcase2020-dev" / "anomaly_id_01_00000000.wav",
        real_recordings / "mimii-8ch" / "slider_abnormal.wav",
    ]
    for name in model_names:  # a fused CAE (float64 patch scores) and a dense model (float32 errors)
        detector = Detector(models_dir / name)
        for path in clips:
            samples = read_audio(path, sample_rate=detector.params.sample_rate).samples
            scored = detector.score(samples)
            for case in (scored, _shuffled(scored, seed=1)):
                args = {
                    "duration": samples.size / detector.params.sample_rate,
                    "threshold": detector.threshold,
                    "seconds": max(seconds, detector.hop * detector.params.hop_length / 16000),
                }
                expected = SEGMENTS.dump_json(selected_segments(case, **args))
                assert SEGMENTS.dump_json(group_segments(case, **args)) == expected, (name, path.name)


def test_the_answers_segments_are_byte_identical_to_the_reference(client, models_dir, real_recordings):
    path = real_recordings / "mimii-8ch" / "pump_abnormal.wav"
    detector = Detector(models_dir / DEFAULT_MODEL)
    samples = read_audio(path, sample_rate=detector.params.sample_rate).samples
    expected = SEGMENTS.dump_json(
        selected_segments(
            detector.score(samples),
            duration=samples.size / detector.params.sample_rate,
            threshold=detector.threshold,
            seconds=1.0,
        )
    )
    data = path.read_bytes()
    for response in (
        client.post("/v1/score", files={"file": (path.name, data, "audio/wav")}),
        client.post("/v1/score", content=data, headers={"content-type": "audio/wav"}),
    ):
        assert response.status_code == 200, response.text
        # The answer's own bytes, between its keys: FastAPI writes the JSON compactly, in field order.
        text = response.content
        start = text.index(b'"segments":') + len(b'"segments":')
        assert text[start : text.index(b',"worst_segment":', start)] == expected
        assert json.loads(expected) == response.json()["segments"]


def _request(chunks: list[bytes]) -> Request:
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> dict:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    return Request(scope, receive)


def test_a_raw_body_is_read_as_bytes_that_decoding_does_not_copy():
    chunks = [bytes([i]) * 70_000 for i in range(5)]
    body = asyncio.run(read_body(_request(chunks), limit=350_000))
    assert type(body) is bytes and body == b"".join(chunks)
    # io.BytesIO (read_audio wraps raw bytes in one) shares a bytes object; a bytearray it copies.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        shared = io.BytesIO(body)
        assert shared.read(4) == body[:4]
        assert tracemalloc.get_traced_memory()[0] - before < 10_000
    finally:
        tracemalloc.stop()


def test_a_raw_body_over_the_limit_is_refused_while_it_streams():
    chunks = [b"x" * 100_000] * 4
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(_request(chunks), limit=350_000))
    assert asyncio.run(read_body(_request(chunks), limit=400_000)) == b"x" * 400_000


async def _drain(receive) -> None:
    while (await receive()).get("more_body"):
        pass


def _run_middleware(idle_s: float, receive) -> tuple[dict, bytes]:
    """BodySizeLimitMiddleware around an app that reads the whole body: the response it gets."""
    sent: list[dict] = []

    async def app(scope, receive, send):
        await _drain(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", b"audio/wav")]}
    middleware = BodySizeLimitMiddleware(app, limit=1_000_000, body_idle_timeout_s=idle_s)
    asyncio.run(asyncio.wait_for(middleware(scope, receive, send), 10))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_body_that_stalls_is_answered_408():
    calls = 0

    async def receive():
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"RIFF", "more_body": True}
        await asyncio.sleep(60)  # the client stops sending
        raise AssertionError("not reached")

    start, body = _run_middleware(0.1, receive)
    assert start["status"] == 408
    assert (b"connection", b"close") in [(k.lower(), v) for k, v in start["headers"]]
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_body_that_keeps_moving_is_read_to_the_end():
    pieces = [b"x" * 1000] * 5

    async def receive():
        await asyncio.sleep(0.05)  # each piece well inside the 0.2 s idle limit; all five take longer
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    start, body = _run_middleware(0.2, receive)
    assert (start["status"], body) == (200, b"read")
