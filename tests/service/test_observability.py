"""Metrics, request ids and JSON logs."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.bundle import Bundle
from service.logs import JsonFormatter, request_id_var
from tests.service.conftest import DEFAULT_MODEL, assert_error
from tests.service.sounds import encode, noise


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_requests_decisions_and_ratios(serve_with, real_recordings):
    clip = (real_recordings / "mimii-8ch" / "slider_normal.wav").read_bytes()
    with serve_with() as app_client:
        before = samples(app_client.get("/metrics").text)
        assert value(before, "asd_models", status="ready") >= 1
        assert value(before, "asd_models", status="broken") == 0
        assert value(before, "asd_model_threshold", model=DEFAULT_MODEL) > 0

        decisions = [
            app_client.post("/v1/score", files={"file": ("a.wav", clip)}).json()["decision"] for _ in range(2)
        ]
        assert (
            app_client.post("/v1/score", content=b"junk", headers={"content-type": "audio/wav"}).status_code
            == 400
        )
        app_client.get("/nowhere")

        response = app_client.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        after = samples(response.text)
    route = "/v1/score"
    assert value(after, "asd_http_requests_total", method="POST", route=route, status="200") == 2
    assert value(after, "asd_http_requests_total", method="POST", route=route, status="400") == 1
    assert value(after, "asd_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert value(after, "asd_http_request_duration_seconds_count", method="POST", route=route) == 3
    assert (
        value(after, "asd_decisions_total", model=DEFAULT_MODEL, machine="unspecified", decision=decisions[0])
        == 2
    )
    assert value(after, "asd_score_ratio_count", model=DEFAULT_MODEL, machine="unspecified") == 2
    assert value(after, "asd_score_ratio_sum", model=DEFAULT_MODEL, machine="unspecified") > 0
    assert value(after, "asd_scoring_duration_seconds_count", model=DEFAULT_MODEL) == 2
    assert value(after, "asd_scoring_errors_total", model=DEFAULT_MODEL, code="undecodable_audio") == 1
    # The +Inf bucket holds every observation; the 1.0 bucket the normal decisions.
    assert value(after, "asd_score_ratio_bucket", model=DEFAULT_MODEL, machine="unspecified", le="+Inf") == 2


def test_metrics_carry_each_machine_ids_own_threshold(client, models_dir):
    per_id = Bundle.read(models_dir / DEFAULT_MODEL).threshold.per_id
    assert per_id, "the default model has per-ID thresholds"
    metrics = samples(client.get("/metrics").text)
    for machine_id, fit in per_id.items():
        got = value(metrics, "asd_model_id_threshold", model=DEFAULT_MODEL, machine_id=machine_id)
        assert got == pytest.approx(fit.value)
    assert value(metrics, "asd_model_id_threshold", model=DEFAULT_MODEL, machine_id="07") == 0.0


def test_metrics_carry_the_calibrated_rate_and_when_it_was_fitted(client, models_dir):
    bundle = Bundle.read(models_dir / DEFAULT_MODEL)
    metrics = samples(client.get("/metrics").text)
    rate = value(metrics, "asd_model_false_alarm_rate", model=DEFAULT_MODEL)
    assert rate == pytest.approx(bundle.threshold.target_false_alarm_rate) and 0 < rate < 1
    history = bundle.threshold.calibration_history
    fitted = history[-1].at if history else bundle.training.trained_at
    when = value(metrics, "asd_model_calibrated_timestamp_seconds", model=DEFAULT_MODEL)
    assert when == pytest.approx(fitted.timestamp()) and when > 1.6e9


def _access_line(caplog, request_id: str) -> dict:
    records = [
        r for r in caplog.records if r.name == "service.access" and r.__dict__.get("request_id") == request_id
    ]
    assert len(records) == 1
    return json.loads(JsonFormatter().format(records[0]))


def test_request_log_line_names_the_machine_id_even_when_refused(client, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    clip = encode(noise(2.0))
    ok = client.post(
        "/v1/score?machine_id=6", files={"file": ("a.wav", clip)}, headers={"X-Request-ID": "mid-1"}
    )
    assert ok.status_code == 200
    assert _access_line(caplog, "mid-1")["machine_id"] == "06"
    refused = client.post(
        "/v1/score?machine_id=07", files={"file": ("a.wav", clip)}, headers={"X-Request-ID": "mid-2"}
    )
    assert refused.status_code == 422
    line = _access_line(caplog, "mid-2")
    assert line["machine_id"] == "07" and line["error_code"] == "unknown_machine_id"
    client.post("/v1/score", files={"file": ("a.wav", clip)}, headers={"X-Request-ID": "mid-3"})
    assert "machine_id" not in _access_line(caplog, "mid-3")


def test_request_id_is_taken_or_made_and_returned(client):
    given = client.get("/health", headers={"X-Request-ID": "trace-42.a:b"})
    assert given.headers["x-request-id"] == "trace-42.a:b"
    made = client.get("/health")
    assert len(made.headers["x-request-id"]) == 32
    # A value that could forge log lines is replaced, not echoed.
    forged = client.get("/health", headers={"X-Request-ID": "x" * 200})
    assert forged.headers["x-request-id"] != "x" * 200
    error = assert_error(client.get("/v1/models/none", headers={"X-Request-ID": "abc"}), 404)
    assert error["request_id"] == "abc"


def test_request_log_line_has_the_fields(client, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    response = client.post(
        f"/v1/models/{DEFAULT_MODEL}/score",
        files={"file": ("a.wav", encode(noise(2.0)))},
        headers={"X-Request-ID": "log-test-1"},
    )
    assert response.status_code == 200
    records = [
        r
        for r in caplog.records
        if r.name == "service.access" and r.__dict__.get("request_id") == "log-test-1"
    ]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["message"] == "request" and line["level"] == "INFO" and line["logger"] == "service.access"
    assert line["request_id"] == "log-test-1"
    assert line["method"] == "POST" and line["path"] == f"/v1/models/{DEFAULT_MODEL}/score"
    assert line["status"] == 200 and line["duration_ms"] > 0
    assert line["model"] == DEFAULT_MODEL and line["decision"] == response.json()["decision"]
    assert line["time"].endswith("+00:00")


def test_json_formatter_uses_the_request_context_and_exceptions():
    token = request_id_var.set("ctx-id")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            record = logging.getLogger("t").makeRecord(
                "t", logging.ERROR, __file__, 1, "failed %s", ("here",), exc_info=True, extra={"model": "m"}
            )
            import sys

            record.exc_info = sys.exc_info()
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "failed here" and line["request_id"] == "ctx-id" and line["model"] == "m"
    assert "ValueError: boom" in line["exception"]
