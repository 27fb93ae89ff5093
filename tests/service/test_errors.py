"""Bad input answers a 4xx in the one error shape, never a 500."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.conftest import DEFAULT_MODEL, assert_error
from tests.service.sounds import encode, float_wav_with, noise, wav_header

GOOD = encode(noise(2.0))


def _ten_minutes() -> bytes:
    # A valid 10-minute WAV, kept small: 8-bit at 8 kHz is 4.8 MB.
    return wav_header(channels=1, rate=8000, bits=8, data_bytes=8000 * 600) + b"\x80" * (8000 * 600)


BAD_UPLOADS = {
    "truncated header": (GOOD[:20], 400, "undecodable_audio"),
    "wrong magic": (b"RIFX" + GOOD[4:], 400, "undecodable_audio"),
    "not audio": (b"hello, this is a text file\n" * 40, 400, "undecodable_audio"),
    "zero length": (b"", 400, "empty_audio"),
    "header only": (wav_header(channels=1, rate=16000, bits=16, data_bytes=0), 400, "empty_audio"),
    # The header promises 10 s; 100 bytes follow. libsndfile reads what is there: 50 samples.
    "header claims more data than sent": (
        wav_header(channels=1, rate=16000, bits=16, data_bytes=320000) + b"\x00\x01" * 50,
        422,
        "audio_too_short",
    ),
    "unknown codec tag": (
        wav_header(channels=1, rate=16000, bits=16, data_bytes=64000, fmt_tag=0x1234) + b"\x00" * 64000,
        400,
        "undecodable_audio",
    ),
    "one sample": (encode(np.zeros((1, 1), dtype=np.float32)), 422, "audio_too_short"),
    "ten minutes": (_ten_minutes(), 422, "audio_too_long"),
    "NaN samples": (float_wav_with(float("nan")), 400, "invalid_audio"),
    "infinite samples": (float_wav_with(float("inf")), 400, "invalid_audio"),
    "5000 channels": (
        wav_header(channels=5000, rate=16000, bits=16, data_bytes=5000 * 2 * 100)
        + b"\x00" * (5000 * 2 * 100),
        400,
        "undecodable_audio",
    ),
    "65 channels": (encode(noise(0.5, 16000, 65)), 400, "invalid_audio"),
    "sample rate of 100 Hz": (encode(noise(20.0, 100), 100), 400, "invalid_audio"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_bad_audio_gets_a_4xx_json_error(client, case, how):
    data, status, code = BAD_UPLOADS[case]
    if how == "multipart":
        response = client.post("/v1/score", files={"file": ("upload.wav", data, "audio/wav")})
    else:
        response = client.post("/v1/score", content=data, headers={"content-type": "audio/wav"})
    assert_error(response, status, code)


def test_random_bytes_labelled_flac(client):
    data = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    assert_error(
        client.post("/v1/score", content=data, headers={"content-type": "audio/flac"}),
        400,
        "undecodable_audio",
    )


def test_too_short_for_one_patch_is_422_and_says_the_minimum(client):
    detector = client.app.state.registry.get(DEFAULT_MODEL).detector
    need = detector.min_samples / 16000
    error = assert_error(client.post("/v1/score", files={"file": ("a.wav", encode(noise(need * 0.9)))}), 422)
    assert error["code"] == "audio_too_short" and f"{need:g}"[:4] in error["message"]
    just_enough = client.post("/v1/score", files={"file": ("a.wav", encode(noise(need + 0.01)))})
    assert just_enough.status_code == 200, just_enough.text


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/plain", b"hello"), ("application/json", b'{"file": "x"}'), (None, GOOD), ("image/png", GOOD)],
)
def test_unsupported_content_type_is_415(client, content_type, body):
    headers = {"content-type": content_type} if content_type else {}
    error = assert_error(
        client.post("/v1/score", content=body, headers=headers), 415, "unsupported_media_type"
    )
    assert "multipart/form-data" in error["message"]


def test_wrong_multipart_field_name(client):
    error = assert_error(client.post("/v1/score", files={"audio": ("a.wav", GOOD)}), 422, "missing_file")
    assert "'file'" in error["message"]


def test_malformed_multipart_is_400(client):
    response = client.post(
        "/v1/score", content=b"--xyz\r\nnonsense", headers={"content-type": "multipart/form-data"}
    )
    error = assert_error(response, 400, "bad_request")
    assert "boundary" in error["message"]


def test_unknown_model_and_route_and_method(client):
    error = assert_error(
        client.post("/v1/models/no-such-model/score", files={"file": ("a.wav", GOOD)}), 404, "model_not_found"
    )
    assert "no-such-model" in error["message"]
    assert_error(client.get("/v1/models/no-such-model"), 404, "model_not_found")
    assert_error(client.get("/v2/anything"), 404, "not_found")
    assert_error(client.delete("/v1/models"), 405, "method_not_allowed")


# Percent-encoded, so the client sends them as they are (a literal "/../" would
# be resolved by the HTTP client before it reaches the server).
@pytest.mark.parametrize(
    "name",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E",
        "%2E%2E%2F%2E%2E",
        "slider%2F..%2Fslider",
        "..%5C..%5Cwindows",
        ".hidden",
        "a" * 65,
    ],
)
def test_model_names_cannot_reach_outside_the_registry(client, name):
    assert_error(client.get(f"/v1/models/{name}"), 404)
    assert_error(client.post(f"/v1/models/{name}/score", files={"file": ("a.wav", GOOD)}), 404)


def test_validation_errors_use_the_error_shape(client):
    error = assert_error(
        client.post("/v1/score?channel=abc", files={"file": ("a.wav", GOOD)}), 422, "validation_error"
    )
    assert error["details"][0]["loc"] == ["query", "channel"]


def test_oversize_bodies_are_413(serve_with, real_recordings):
    small = real_recordings / "dcase2020-dev" / "normal_id_00_00000000.wav"  # 320 044 bytes
    large = real_recordings / "mimii-8ch" / "fan_normal.wav"  # 2.5 MB
    with serve_with(max_upload_size=400_000) as limited:
        assert (
            limited.post(
                "/v1/score", content=small.read_bytes(), headers={"content-type": "audio/wav"}
            ).status_code
            == 200
        )
        assert limited.post("/v1/score", files={"file": ("s.wav", small.read_bytes())}).status_code == 200

        big = large.read_bytes()
        # Declared too large: refused on Content-Length.
        error = assert_error(
            limited.post("/v1/score", content=big, headers={"content-type": "audio/wav"}),
            413,
            "payload_too_large",
        )
        assert "400000" in error["message"]
        assert_error(limited.post("/v1/score", files={"file": ("big.wav", big)}), 413, "payload_too_large")
        assert_error(
            limited.post(
                f"/v1/models/{DEFAULT_MODEL}/score/batch",
                files=[("files", ("a.wav", small.read_bytes()))] * 2,
            ),
            413,
            "payload_too_large",
        )

        # No Content-Length (chunked): counted while streaming and cut off.
        def chunks():
            for start in range(0, len(big), 64 * 1024):
                yield big[start : start + 64 * 1024]

        streamed = limited.post("/v1/score", content=chunks(), headers={"content-type": "audio/wav"})
        assert "content-length" not in {k.lower() for k in streamed.request.headers}
        assert_error(streamed, 413, "payload_too_large")
        # Even on a route that never reads its body, and outside /v1.
        assert_error(limited.post("/health", content=big), 413, "payload_too_large")


def test_streamed_multipart_over_the_limit_is_413(serve_with):
    boundary = "b0undary"
    payload = encode(noise(30.0))  # ~960 kB

    def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        ).encode()
        for start in range(0, len(payload), 32 * 1024):
            yield payload[start : start + 32 * 1024]
        yield f"\r\n--{boundary}--\r\n".encode()

    with serve_with(max_upload_size=200_000) as limited:
        response = limited.post(
            "/v1/score", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
        assert_error(response, 413, "payload_too_large")


def test_unexpected_exceptions_become_a_json_500(serve_with, monkeypatch):
    import service.api.routes.scoring as routes

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes, "score_upload", broken)
    with serve_with() as app_client:
        error = assert_error(
            app_client.post("/v1/score", files={"file": ("a.wav", GOOD)}), 500, "internal_error"
        )
        assert "a bug" not in error["message"]  # no internals to the client
        assert error["request_id"] in error["message"]
