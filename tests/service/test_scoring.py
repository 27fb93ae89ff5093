"""Scoring real recordings and every audio format, through multipart and raw bodies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.detector import Detector
from tests.service.conftest import DEFAULT_MODEL, assert_error
from tests.service.sounds import encode, noise

SCORE_KEYS = {
    "model",
    "machine_id",
    "score",
    "components",
    "threshold",
    "threshold_scope",
    "false_alarm_rate",
    "ratio",
    "decision",
    "input_check",
    "clip",
    "segments",
    "worst_segment",
    "n_patches",
    "processing_ms",
    "map",
}


def real_files(root: Path) -> list[Path]:
    files = sorted(root.glob("*/*.wav"))
    assert len(files) >= 11, f"expected the 8 MIMII and 3 DCASE clips under {root}"
    return files


def check_result(body: dict, *, model: str, channels: int, duration: float) -> None:
    """The answer schema, and that its numbers agree with each other."""
    assert set(body) == SCORE_KEYS
    assert body["model"] == model
    assert body["score"] > 0 and np.isfinite(body["score"])
    assert body["ratio"] == pytest.approx(body["score"] / body["threshold"])
    assert body["decision"] == ("anomalous" if body["score"] > body["threshold"] else "normal")
    assert body["clip"]["channels"] == channels
    assert body["clip"]["duration_s"] == pytest.approx(duration, abs=1e-3)
    assert body["clip"]["sample_rate"] == 16000
    assert body["processing_ms"] > 0
    segments = body["segments"]
    # Grouped: about one segment per second, never one per patch.
    assert 1 <= len(segments) <= int(np.ceil(duration)) + 1
    assert [s["index"] for s in segments] == list(range(len(segments)))
    assert sum(s["n_patches"] for s in segments) == body["n_patches"]
    # The clip score is the mean over patches, so the patch-weighted segment mean.
    weighted = sum(s["score"] * s["n_patches"] for s in segments) / body["n_patches"]
    assert weighted == pytest.approx(body["score"], rel=1e-5)
    worst = max(segments, key=lambda s: s["score"])
    assert body["worst_segment"] == worst["index"]
    assert [s["worst"] for s in segments].count(True) == 1 and worst["worst"]
    for segment in segments:
        assert 0 <= segment["start_s"] < segment["end_s"] <= duration + 1e-6
        assert segment["ratio"] == pytest.approx(segment["score"] / body["threshold"])
    starts = [s["start_s"] for s in segments]
    assert starts == sorted(starts)


def test_every_real_recording_scores_multipart_and_raw(client, real_recordings):
    for path in real_files(real_recordings):
        info = sf.info(path)
        data = path.read_bytes()
        multipart = client.post(
            f"/v1/models/{DEFAULT_MODEL}/score", files={"file": (path.name, data, "audio/wav")}
        )
        assert multipart.status_code == 200, (path.name, multipart.text)
        check_result(multipart.json(), model=DEFAULT_MODEL, channels=info.channels, duration=info.duration)
        assert multipart.json()["clip"]["filename"] == path.name

        raw = client.post(
            f"/v1/models/{DEFAULT_MODEL}/score", content=data, headers={"content-type": "audio/wav"}
        )
        assert raw.status_code == 200, (path.name, raw.text)
        check_result(raw.json(), model=DEFAULT_MODEL, channels=info.channels, duration=info.duration)
        # Same bytes, same model: the same answer whichever way they came.
        assert raw.json()["score"] == multipart.json()["score"]
        assert raw.json()["segments"] == multipart.json()["segments"]


def test_default_model_route_equals_named_route(client, real_recordings):
    data = (real_recordings / "mimii-8ch" / "slider_abnormal.wav").read_bytes()
    default = client.post("/v1/score", files={"file": ("a.wav", data)})
    named = client.post(f"/v1/models/{DEFAULT_MODEL}/score", files={"file": ("a.wav", data)})
    assert default.status_code == named.status_code == 200
    assert default.json()["model"] == DEFAULT_MODEL
    assert default.json()["score"] == named.json()["score"]


def test_every_model_scores_a_real_clip(client, model_names, real_recordings):
    data = (real_recordings / "dcase2020-dev" / "anomaly_id_01_00000000.wav").read_bytes()
    for name in model_names:
        response = client.post(
            f"/v1/models/{name}/score", content=data, headers={"content-type": "audio/x-wav"}
        )
        assert response.status_code == 200, response.text
        check_result(response.json(), model=name, channels=1, duration=11.0)


def test_scores_equal_the_detector_called_directly(client, models_dir, real_recordings):
    """The HTTP path adds nothing to the number: same as Detector.score on the decoded clip."""
    detector = Detector(models_dir / DEFAULT_MODEL)
    path = real_recordings / "mimii-8ch" / "pump_normal.wav"
    samples = sf.read(path, dtype="float32", always_2d=True)[0][:, 0]
    expected = detector.score(samples)
    body = client.post(
        f"/v1/models/{DEFAULT_MODEL}/score", files={"file": (path.name, path.read_bytes())}
    ).json()
    assert body["score"] == pytest.approx(expected.score, rel=1e-6)
    assert body["n_patches"] == expected.patch_errors.size
    # The default model fuses the CAE with the envelope scorer; the answer shows both parts.
    assert expected.components is not None and set(body["components"]) == {"cae", "envelope"}
    for name, value in expected.components.items():
        assert body["components"][name] == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize(
    ("format", "subtype", "rate", "channels"),
    [
        ("WAV", "PCM_U8", 16000, 1),
        ("WAV", "PCM_16", 16000, 1),
        ("WAV", "PCM_24", 16000, 2),
        ("WAV", "PCM_32", 16000, 1),
        ("WAV", "FLOAT", 16000, 1),
        ("WAV", "DOUBLE", 16000, 1),
        ("WAV", "PCM_16", 44100, 2),  # resampled to the model's 16 kHz
        ("WAV", "PCM_16", 8000, 1),
        ("FLAC", "PCM_16", 48000, 1),
        ("OGG", "VORBIS", 22050, 1),
        ("AIFF", "PCM_16", 16000, 1),
    ],
)
def test_audio_formats_score(client, format, subtype, rate, channels):
    data = encode(noise(3.0, rate, channels), rate, format=format, subtype=subtype)
    response = client.post("/v1/score", files={"file": (f"clip.{format.lower()}", data)})
    assert response.status_code == 200, response.text
    body = response.json()
    check_result(body, model=DEFAULT_MODEL, channels=channels, duration=3.0)
    assert body["clip"]["source_sample_rate"] == rate
    assert body["clip"]["format"] == format


@pytest.mark.parametrize(
    "content_type", ["audio/wave", "audio/flac", "audio/ogg", "application/octet-stream"]
)
def test_raw_body_content_types(client, content_type):
    # The label only has to say "audio": libsndfile reads the format from the bytes.
    data = encode(noise(2.0), format="FLAC") if "flac" in content_type else encode(noise(2.0))
    if content_type == "audio/ogg":
        data = encode(noise(2.0), format="OGG", subtype="VORBIS")
    response = client.post("/v1/score", content=data, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert response.json()["clip"]["duration_s"] == pytest.approx(2.0)


def test_channel_parameter(client, real_recordings):
    path = real_recordings / "mimii-8ch" / "valve_abnormal.wav"
    data = path.read_bytes()
    channels = sf.read(path, dtype="float32", always_2d=True)[0]
    detector = client.app.state.registry.get(DEFAULT_MODEL).detector

    def score(query: str) -> dict:
        response = client.post(f"/v1/score{query}", files={"file": (path.name, data)})
        assert response.status_code == 200, response.text
        return response.json()

    default, third, mean = score(""), score("?channel=3"), score("?channel=mean")
    assert (
        default["clip"]["channel"] == 0
        and third["clip"]["channel"] == 3
        and mean["clip"]["channel"] == "mean"
    )
    assert default["score"] == pytest.approx(detector.score(channels[:, 0]).score, rel=1e-6)
    assert third["score"] == pytest.approx(detector.score(channels[:, 3]).score, rel=1e-6)
    assert mean["score"] == pytest.approx(detector.score(channels.mean(axis=1)).score, rel=1e-6)
    assert len({default["score"], third["score"], mean["score"]}) == 3

    error = assert_error(
        client.post("/v1/score?channel=8", files={"file": (path.name, data)}), 422, "invalid_channel"
    )
    assert "8 channel" in error["message"]
    assert_error(
        client.post("/v1/score?channel=1", content=encode(noise(2.0)), headers={"content-type": "audio/wav"}),
        422,
        "invalid_channel",
    )
    for bad in ("-1", "left", "1.5", ""):
        assert_error(
            client.post(f"/v1/score?channel={bad}", files={"file": (path.name, data)}),
            422,
            "validation_error",
        )


def test_batch_scores_good_files_and_reports_bad_ones(client, real_recordings):
    good = real_recordings / "dcase2020-dev" / "normal_id_00_00000000.wav"
    files = [
        ("files", ("first.wav", good.read_bytes(), "audio/wav")),
        ("files", ("garbage.wav", b"definitely not audio" * 10, "audio/wav")),
        ("files", ("empty.wav", b"", "audio/wav")),
        ("files", ("tiny.wav", encode(noise(0.01)), "audio/wav")),
        ("files", ("second.flac", encode(noise(2.0), format="FLAC"), "audio/flac")),
    ]
    response = client.post(f"/v1/models/{DEFAULT_MODEL}/score/batch", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["n_files"], body["n_scored"], body["n_failed"]) == (DEFAULT_MODEL, 5, 2, 3)
    results = body["results"]
    assert [r["filename"] for r in results] == [
        "first.wav",
        "garbage.wav",
        "empty.wav",
        "tiny.wav",
        "second.flac",
    ]
    assert [r["status"] for r in results] == [200, 400, 400, 422, 200]
    assert [r.get("code") for r in results] == [
        None,
        "undecodable_audio",
        "empty_audio",
        "audio_too_short",
        None,
    ]
    assert all(r["message"] for r in results if r["status"] != 200)
    check_result(results[0]["result"], model=DEFAULT_MODEL, channels=1, duration=10.0)
    single = client.post(
        f"/v1/models/{DEFAULT_MODEL}/score", files={"file": ("x.wav", good.read_bytes())}
    ).json()
    assert results[0]["result"]["score"] == single["score"]


def test_batch_needs_files_field(client):
    response = client.post(
        f"/v1/models/{DEFAULT_MODEL}/score/batch", files={"file": ("a.wav", encode(noise(2.0)))}
    )
    error = assert_error(response, 422, "validation_error")
    assert "files" in error["message"]


def test_batch_file_count_is_limited(serve_with):
    with serve_with(max_batch_files=2) as limited:
        clip = encode(noise(2.0))
        ok = limited.post(
            f"/v1/models/{DEFAULT_MODEL}/score/batch", files=[("files", (f"{i}.wav", clip)) for i in range(2)]
        )
        assert ok.status_code == 200 and ok.json()["n_scored"] == 2
        too_many = limited.post(
            f"/v1/models/{DEFAULT_MODEL}/score/batch", files=[("files", (f"{i}.wav", clip)) for i in range(3)]
        )
        error = assert_error(too_many, 400, "too_many_files")
        assert "2" in error["message"]


def test_scoring_runs_off_the_event_loop(serve_with, monkeypatch):
    """While one clip is being scored, the server still answers: the work is in a thread."""
    import threading

    import service.api.routes.scoring as routes

    started, release = threading.Event(), threading.Event()
    real = routes.score_upload

    def slow_score(*args, **kwargs):
        started.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(routes, "score_upload", slow_score)
    with serve_with() as app_client:
        outcome: dict = {}
        worker = threading.Thread(
            target=lambda: outcome.update(
                response=app_client.post("/v1/score", files={"file": ("a.wav", encode(noise(2.0)))})
            )
        )
        worker.start()
        try:
            assert started.wait(30)
            # Scoring is blocked in its thread; the event loop must still serve this.
            assert app_client.get("/health").status_code == 200
            assert outcome == {}
        finally:
            release.set()
            worker.join(30)
        assert outcome["response"].status_code == 200
