"""The optional API key."""

from __future__ import annotations

import logging

import pytest

from service.logs import JsonFormatter
from tests.service.conftest import DEFAULT_MODEL, assert_error
from tests.service.sounds import encode, noise

KEY = "k3y-that-must-never-be-logged"
CLIP = encode(noise(2.0))


@pytest.fixture(scope="module")
def keyed(models_dir):
    from tests.service.conftest import make_settings, serve

    with serve(make_settings(models_dir, api_key=KEY)) as app_client:
        yield app_client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/models"),
        ("get", f"/v1/models/{DEFAULT_MODEL}"),
        ("post", "/v1/score"),
        ("post", f"/v1/models/{DEFAULT_MODEL}/score"),
        ("post", f"/v1/models/{DEFAULT_MODEL}/score/batch"),
    ],
)
def test_protected_routes_need_the_key(keyed, method, path):
    error = assert_error(getattr(keyed, method)(path), 401, "unauthorized")
    assert "X-API-Key" in error["message"]
    wrong = getattr(keyed, method)(path, headers={"X-API-Key": KEY + "x"})
    assert_error(wrong, 401, "unauthorized")
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert_error(getattr(keyed, method)(path, headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
    assert_error(getattr(keyed, method)(path, headers={"Authorization": f"Basic {KEY}"}), 401, "unauthorized")


def test_the_right_key_passes_in_either_header(keyed):
    assert keyed.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200
    assert keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    scored = keyed.post("/v1/score", files={"file": ("a.wav", CLIP)}, headers={"X-API-Key": KEY})
    assert scored.status_code == 200, scored.text


def test_key_is_checked_before_anything_else(keyed):
    # No model lookup or body parsing for a caller without the key.
    assert_error(
        keyed.post("/v1/models/nope/score", content=b"junk", headers={"content-type": "text/plain"}), 401
    )


@pytest.mark.parametrize(
    "path",
    ["/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json", "/", "/static/js/main.js"],
)
def test_open_routes_stay_open(keyed, path):
    assert keyed.get(path).status_code == 200


def test_no_key_configured_means_open(client):
    assert client.get("/v1/models").status_code == 200


def test_the_key_never_reaches_the_logs(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    keyed.post("/v1/score", files={"file": ("a.wav", CLIP)}, headers={"X-API-Key": KEY})
    keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    keyed.get("/v1/models", headers={"X-API-Key": KEY[:-1]})
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert any('"status": 200' in line for line in lines)
    assert not [line for line in lines if KEY[:-1] in line]
    settings = keyed.app.state.settings
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
