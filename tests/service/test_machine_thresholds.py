"""Per-machine-ID thresholds, the `false_alarm_rate` option and the input checks, through the API.

The detectors are tiny constant-factor graphs (tests/training/tiny_detector.py)
whose thresholds are set around the score `S` of the test clip, so that one
clip is normal with one machine ID and anomalous with another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.audio import read_audio
from service.bundle import Bundle, FalseAlarmCurve, GammaFit, ThresholdFit
from service.config import Settings
from service.detector import Detector
from service.inputcheck import Fingerprint, FingerprintPart
from service.schemas import ModelInfo, ScoreResult
from tests.service.conftest import assert_error, make_settings, serve
from tests.service.sounds import encode, noise
from tests.service.test_observability import samples, value
from tests.training.tiny_detector import make_detector

IDS = ("00", "02", "04", "06")
# About -40 dB FS, the level of the fingerprint's training audio.
CLIP = encode(0.1 * noise(2.0))
# About -20 dB FS: 20 dB above that, the level of machine ID 02's own training audio.
LOUD = encode(noise(2.0, seed=1))
N_MELS = 128


def _fit(value: float, *, quantile: float = 0.9, curve: FalseAlarmCurve | None = None) -> ThresholdFit:
    return ThresholdFit(
        value=value,
        quantile=quantile,
        gamma=GammaFit(shape=2.0, loc=0.0, scale=value / 4),
        n_calibration_clips=20,
        empirical_false_alarm_rate=1 - quantile,
        curve=curve,
    )


def _part(level_db: float, band_db: float) -> FingerprintPart:
    return FingerprintPart(
        n_clips=20,
        level_db=(level_db, 1.0),
        band_db=[band_db] * N_MELS,
        clipping_rate=0.0,
        silence_fraction=0.0,
        dc_offset=0.001,
        bandwidth_hz=7800.0,
    )


@pytest.fixture(scope="module")
def score_of_clip(tmp_path_factory: pytest.TempPathFactory) -> float:
    """S: what the tiny graph scores CLIP (decoded as the service decodes it)."""
    detector = Detector(make_detector(tmp_path_factory.mktemp("probe") / "probe"))
    return detector.score(read_audio(CLIP, sample_rate=16000).samples).score


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, score_of_clip: float) -> Path:
    s = score_of_clip
    root = tmp_path_factory.mktemp("machine-models")
    make_detector(
        root / "machine",
        machine_ids=IDS,
        threshold=0.8 * s,
        curve=FalseAlarmCurve(rates=[0.001, 0.01, 0.1, 0.5], values=[4 * s, 2 * s, 0.8 * s, 0.3 * s]),
        per_id={
            "00": 0.5 * s,  # no curve of its own
            "02": _fit(
                2 * s,
                quantile=0.95,
                curve=FalseAlarmCurve(rates=[0.01, 0.05, 0.3], values=[5 * s, 2 * s, 0.9 * s]),
            ),
            # A curve that goes below zero at high rates (a gamma fit with a negative location).
            "06": _fit(3 * s, curve=FalseAlarmCurve(rates=[0.01, 0.1, 0.5], values=[6 * s, 3 * s, -s])),
        },
        fingerprint=Fingerprint(**_part(-40.0, -27.0).model_dump(), per_id={"02": _part(-20.0, -7.0)}),
    )
    # Exported before format 2: one threshold, no curve, no fingerprint.
    make_detector(root / "legacy", machine_ids=("00", "02"), threshold=0.8 * s, format_version=1)
    make_detector(root / "bad-id-threshold", per_id={"00": _fit(1.0).model_copy(update={"value": -1.0})})
    return root


@pytest.fixture(scope="module")
def client(models: Path) -> Iterator:
    with serve(make_settings(models, default_model="machine")) as app_client:
        yield app_client


def bundle(models: Path, name: str = "machine") -> Bundle:
    return Bundle.read(models / name)


def score(client, params: dict | None = None, *, clip: bytes = CLIP, path: str = "/v1/models/machine/score"):
    response = client.post(path, params=params or {}, files={"file": ("a.wav", clip, "audio/wav")})
    assert response.status_code == 200, response.text
    body = response.json()
    # Decision, ratio and segments all follow the threshold the answer names.
    assert body["decision"] == ("anomalous" if body["score"] > body["threshold"] else "normal")
    assert body["ratio"] == pytest.approx(body["score"] / body["threshold"])
    for segment in body["segments"]:
        assert segment["ratio"] == pytest.approx(segment["score"] / body["threshold"])
    return body


def test_each_machine_id_decides_with_its_own_threshold(client, models, score_of_clip):
    threshold = bundle(models).threshold
    low, high = score(client, {"machine_id": "00"}), score(client, {"machine_id": "02"})
    model_wide = score(client)
    assert low["score"] == high["score"] == model_wide["score"] == pytest.approx(score_of_clip, rel=1e-6)

    assert (low["decision"], high["decision"]) == ("anomalous", "normal")
    assert low["threshold"] == threshold.per_id["00"].value
    assert high["threshold"] == threshold.per_id["02"].value
    assert (low["machine_id"], low["threshold_scope"]) == ("00", "machine_id")
    assert (high["machine_id"], high["threshold_scope"]) == ("02", "machine_id")
    # Each fit's own target rate: 1 - its quantile.
    assert (low["false_alarm_rate"], high["false_alarm_rate"]) == (pytest.approx(0.1), pytest.approx(0.05))

    assert model_wide["threshold"] == threshold.value
    assert (model_wide["machine_id"], model_wide["threshold_scope"]) == (None, "model")
    assert model_wide["false_alarm_rate"] == pytest.approx(0.1)


def test_an_id_without_its_own_fit_falls_back_to_the_model_wide_threshold(client, models):
    body = score(client, {"machine_id": "04"})
    assert body["threshold"] == bundle(models).threshold.value
    assert (body["machine_id"], body["threshold_scope"]) == ("04", "model")


@pytest.mark.parametrize("spelling", ["06", "6", "id_06", "id_6", "0006"])
def test_machine_id_spellings_are_one_id(client, models, spelling):
    body = score(client, {"machine_id": spelling})
    assert body["machine_id"] == "06" and body["threshold_scope"] == "machine_id"
    assert body["threshold"] == bundle(models).threshold.per_id["06"].value


@pytest.mark.parametrize("path", ["/v1/score", "/v1/models/machine/score", "/v1/models/machine/score/batch"])
@pytest.mark.parametrize("machine_id", ["07", "id_99"])
def test_an_unknown_machine_id_is_refused_with_the_known_ones(client, path, machine_id):
    field = "files" if path.endswith("batch") else "file"
    response = client.post(path, params={"machine_id": machine_id}, files=[(field, ("a.wav", CLIP))])
    error = assert_error(response, 422, "unknown_machine_id")
    assert "00, 02, 04, 06" in error["message"]


@pytest.mark.parametrize("machine_id", ["abc", "id-06", "06a", "ID_06", "12345"])
def test_a_machine_id_that_is_no_number_is_a_validation_error(client, machine_id):
    error = assert_error(
        client.post("/v1/score", params={"machine_id": machine_id}, files={"file": ("a.wav", CLIP)}),
        422,
        "validation_error",
    )
    assert "machine_id" in error["message"]


@pytest.mark.parametrize("path", ["/v1/score", "/v1/models/machine/score/batch"])
@pytest.mark.parametrize("rate", ["0", "1", "-0.1", "1.5", "abc", "nan", "inf"])
def test_false_alarm_rate_must_be_between_0_and_1(client, path, rate):
    field = "files" if path.endswith("batch") else "file"
    response = client.post(path, params={"false_alarm_rate": rate}, files=[(field, ("a.wav", CLIP))])
    error = assert_error(response, 422, "validation_error")
    assert "false_alarm_rate" in error["message"]


def test_false_alarm_rate_reads_the_threshold_off_the_curve(client, models, score_of_clip):
    threshold = bundle(models).threshold
    between = score(client, {"false_alarm_rate": 0.05})  # between two grid points
    assert between["threshold"] == pytest.approx(threshold.threshold_for(0.05), rel=1e-12)
    assert 0.8 * score_of_clip < between["threshold"] < 2 * score_of_clip
    assert (between["false_alarm_rate"], between["threshold_scope"]) == (0.05, "model")

    # Machine ID 02 is normal at its calibrated 5 %, anomalous when 30 % false alarms are accepted.
    strict = score(client, {"machine_id": "02", "false_alarm_rate": 0.3})
    assert strict["threshold"] == pytest.approx(threshold.per_id["02"].threshold_for(0.3), rel=1e-12)
    assert strict["threshold"] == pytest.approx(0.9 * score_of_clip)
    assert (strict["decision"], strict["false_alarm_rate"], strict["threshold_scope"]) == (
        "anomalous",
        0.3,
        "machine_id",
    )


@pytest.mark.parametrize(
    ("model", "params", "says"),
    [
        ("machine", {"false_alarm_rate": 0.0005}, "outside the calibrated range"),
        ("machine", {"machine_id": "02", "false_alarm_rate": 0.5}, "outside the calibrated range"),
        ("machine", {"machine_id": "00", "false_alarm_rate": 0.1}, "without a false-alarm curve"),
        ("machine", {"machine_id": "06", "false_alarm_rate": 0.45}, "no positive threshold"),
        ("legacy", {"false_alarm_rate": 0.1}, "without a false-alarm curve"),
    ],
)
def test_a_rate_the_calibration_cannot_answer_is_refused(client, model, params, says):
    response = client.post(f"/v1/models/{model}/score", params=params, files={"file": ("a.wav", CLIP)})
    error = assert_error(response, 422, "false_alarm_rate_unavailable")
    assert says in error["message"]


def test_the_default_model_endpoint_honours_both(client, models):
    body = score(client, {"machine_id": "id_02", "false_alarm_rate": 0.3}, path="/v1/score")
    assert body["model"] == "machine" and body["machine_id"] == "02"
    assert body["threshold"] == pytest.approx(bundle(models).threshold.per_id["02"].threshold_for(0.3))


def test_the_batch_endpoint_honours_both(client, models):
    per_id = bundle(models).threshold.per_id
    files = [("files", ("a.wav", CLIP)), ("files", ("junk.wav", b"junk")), ("files", ("b.wav", LOUD))]
    own = client.post("/v1/models/machine/score/batch", params={"machine_id": "2"}, files=files)
    assert own.status_code == 200, own.text
    results = own.json()["results"]
    assert [r["status"] for r in results] == [200, 400, 200]
    for entry in (results[0], results[2]):
        result = entry["result"]
        assert (result["machine_id"], result["threshold_scope"]) == ("02", "machine_id")
        assert result["threshold"] == per_id["02"].value and result["false_alarm_rate"] == pytest.approx(0.05)
        assert result["input_check"]["status"] in ("ok", "warning")
    assert results[0]["result"]["decision"] == "normal"

    at_rate = client.post(
        "/v1/models/machine/score/batch", params={"machine_id": "02", "false_alarm_rate": 0.3}, files=files
    ).json()["results"]
    assert at_rate[0]["result"]["threshold"] == pytest.approx(per_id["02"].threshold_for(0.3))
    assert at_rate[0]["result"]["decision"] == "anomalous"

    refused = client.post(
        "/v1/models/machine/score/batch", params={"machine_id": "00", "false_alarm_rate": 0.2}, files=files
    )
    assert_error(refused, 422, "false_alarm_rate_unavailable")


def test_a_format_1_folder_still_scores(client, models):
    body = score(client, path="/v1/models/legacy/score")
    assert body["threshold"] == bundle(models, "legacy").threshold.value
    assert (body["machine_id"], body["threshold_scope"]) == (None, "model")
    assert body["input_check"] == {"status": "unchecked", "findings": []}
    with_id = score(client, {"machine_id": "02"}, path="/v1/models/legacy/score")
    assert (with_id["machine_id"], with_id["threshold_scope"]) == ("02", "model")
    assert with_id["threshold"] == body["threshold"]
    error = assert_error(
        client.post("/v1/models/legacy/score", params={"machine_id": "04"}, files={"file": ("a.wav", CLIP)}),
        422,
        "unknown_machine_id",
    )
    assert "00, 02" in error["message"]


def test_the_input_check_compares_the_clip_with_the_training_audio(client):
    assert score(client)["input_check"] == {"status": "ok", "findings": []}

    loud = score(client, clip=LOUD)
    assert loud["input_check"]["status"] == "warning"
    codes = [f["code"] for f in loud["input_check"]["findings"]]
    assert codes == ["level_offset"]
    assert loud["input_check"]["findings"][0]["value"] == pytest.approx(20.0, abs=1.0)
    # The finding does not change the decision: the same graph and threshold without a fingerprint agree.
    unchecked = score(client, clip=LOUD, path="/v1/models/legacy/score")
    assert (unchecked["score"], unchecked["threshold"]) == (loud["score"], loud["threshold"])
    assert unchecked["decision"] == loud["decision"] == "anomalous"

    # Machine ID 02 was trained 20 dB louder: compared with its own part of the fingerprint, no finding.
    assert score(client, {"machine_id": "02"}, clip=LOUD)["input_check"] == {"status": "ok", "findings": []}
    # Machine ID 00 has no part of its own: the whole fingerprint is used.
    assert score(client, {"machine_id": "00"}, clip=LOUD)["input_check"]["status"] == "warning"


def test_level_offset_setting_sets_where_a_level_change_is_a_finding(models, monkeypatch):
    monkeypatch.setenv("ASD_LEVEL_OFFSET_DB", "30")
    settings = Settings(models_dir=models, default_model="machine")
    assert settings.level_offset_db == 30.0
    with serve(settings) as tolerant:
        assert score(tolerant, clip=LOUD)["input_check"] == {"status": "ok", "findings": []}
    assert Settings().level_offset_db == 30.0
    monkeypatch.delenv("ASD_LEVEL_OFFSET_DB")
    assert Settings().level_offset_db == 6.0
    for bad in ("0", "-1", "nan", "inf", "loud"):
        monkeypatch.setenv("ASD_LEVEL_OFFSET_DB", bad)
        with pytest.raises(ValidationError):
            Settings()


def test_metrics_count_input_checks_and_findings(models):
    with serve(make_settings(models, default_model="machine")) as app_client:
        for clip in (LOUD, LOUD, CLIP):
            score(app_client, clip=clip)
        score(app_client, {"machine_id": "6"}, clip=LOUD)
        score(app_client, path="/v1/models/legacy/score")
        metrics = samples(app_client.get("/metrics").text)
    none = "unspecified"
    assert value(metrics, "asd_input_findings_total", model="machine", machine=none, code="level_offset") == 2
    assert value(metrics, "asd_input_findings_total", model="machine", machine=none, code="clipping") == 0
    assert value(metrics, "asd_input_checks_total", model="machine", machine=none, status="warning") == 2
    assert value(metrics, "asd_input_checks_total", model="machine", machine=none, status="ok") == 1
    assert value(metrics, "asd_input_checks_total", model="legacy", machine=none, status="unchecked") == 1
    # A clip scored with its machine ID counts in that machine's series (the ID normalised).
    assert value(metrics, "asd_input_checks_total", model="machine", machine="06", status="warning") == 1
    decided = sum(
        value(metrics, "asd_decisions_total", model="machine", machine="06", decision=d)
        for d in ("normal", "anomalous")
    )
    assert decided == 1
    assert value(metrics, "asd_score_ratio_count", model="machine", machine="06") == 1


def test_model_info_shows_each_ids_threshold_and_the_fingerprint(client, models):
    info = client.get("/v1/models/machine").json()
    exported = bundle(models)
    assert info["threshold"] == json.loads(exported.threshold.model_dump_json())
    assert set(info["threshold"]["per_id"]) == {"00", "02", "06"}
    assert info["threshold"]["per_id"]["00"]["value"] == exported.threshold.per_id["00"].value
    assert info["threshold"]["curve"]["rates"] == [0.001, 0.01, 0.1, 0.5]
    assert info["fingerprint"] == json.loads(exported.fingerprint.model_dump_json())

    legacy = client.get("/v1/models/legacy").json()
    assert legacy["threshold"]["per_id"] is None and legacy["fingerprint"] is None


def test_a_machine_id_threshold_that_is_not_positive_breaks_the_model(client):
    info = client.get("/v1/models/bad-id-threshold").json()
    assert info["status"] == "broken" and "machine ID thresholds" in info["error"]


def test_the_documented_examples_are_valid_answers(client):
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for model in (ScoreResult, ModelInfo):
        (example,) = schemas[model.__name__]["examples"]
        model.model_validate(example)
    for path in ("/v1/score", "/v1/models/{name}/score", "/v1/models/{name}/score/batch"):
        names = {p["name"] for p in document["paths"][path]["post"]["parameters"]}
        assert {"machine_id", "false_alarm_rate"} <= names, path
