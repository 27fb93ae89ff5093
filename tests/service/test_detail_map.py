"""`detail=map`: the log-mel and reconstruction-error map in a score answer, and what builds it."""

from __future__ import annotations

import numpy as np
import pytest

from service.detector import Detector
from service.errormap import MAX_COLUMNS, MAX_ROWS, block_edges, block_means, round_significant, worst_region
from tests.service.conftest import DEFAULT_MODEL, assert_error
from tests.service.sounds import encode, noise

SCORE_PATHS = ["/v1/score", f"/v1/models/{DEFAULT_MODEL}/score"]


@pytest.fixture(scope="module")
def ten_seconds(real_recordings) -> bytes:
    return (real_recordings / "mimii-8ch" / "slider_normal.wav").read_bytes()


def three_digits(values) -> bool:
    return all(float(f"{v:.3g}") == v for v in values)


@pytest.mark.parametrize("model", ["slider", "slider-dense"])
def test_the_map_of_a_ten_second_clip_is_small_and_consistent(client, ten_seconds, model):
    response = client.post(
        f"/v1/models/{model}/score", params={"detail": "map"}, files={"file": ("a.wav", ten_seconds)}
    )
    assert response.status_code == 200, response.text
    assert len(response.content) < 200_000
    body = response.json()
    grid = body["map"]
    rows, columns = grid["n_rows"], grid["n_columns"]
    # 128 mel bins and about 313 frames, averaged down to the bounds.
    assert (rows, columns) == (MAX_ROWS, MAX_COLUMNS)
    for name in ("errors", "log_mel_db"):
        assert len(grid[name]) == rows and {len(row) for row in grid[name]} == {columns}
    assert three_digits(v for row in grid["errors"] for v in row)
    assert all(round(v, 1) == v for row in grid["log_mel_db"] for v in row)  # tenths of a dB
    errors = np.array(grid["errors"])
    assert (errors >= 0).all()
    assert -120 < np.min(grid["log_mel_db"]) < np.max(grid["log_mel_db"]) < 120
    assert len(grid["row_hz"]) == rows and np.all(np.diff(grid["row_hz"]) > 0)
    edges = grid["column_edges_s"]
    assert len(edges) == columns + 1 and edges[0] == 0 and np.all(np.diff(edges) > 0)
    assert 9.9 < edges[-1] <= body["clip"]["duration_s"]
    # The blocks are near equal in size, so their mean is the mean patch error: the score, or in
    # a fused model (the default) the CAE's part of it.
    mean_error = body["score"] if body["components"] is None else body["components"]["cae"]
    assert errors.mean() == pytest.approx(mean_error, rel=0.02)

    worst = grid["worst"]
    height, width = worst["row_end"] - worst["row_start"], worst["column_end"] - worst["column_start"]
    assert height == rows // 8 and edges[worst["column_end"]] - edges[worst["column_start"]] == pytest.approx(
        1, abs=0.1
    )
    assert (
        0 <= worst["row_start"] < worst["row_end"] <= rows
        and 0 <= worst["column_start"] < worst["column_end"] <= columns
    )
    assert (worst["start_s"], worst["end_s"]) == (edges[worst["column_start"]], edges[worst["column_end"]])
    assert (worst["low_hz"], worst["high_hz"]) == (
        grid["row_hz"][worst["row_start"]],
        grid["row_hz"][worst["row_end"] - 1],
    )
    region = errors[worst["row_start"] : worst["row_end"], worst["column_start"] : worst["column_end"]]
    assert worst["error"] == pytest.approx(region.mean(), rel=0.01)
    # No box of that size has a higher mean.
    boxes = np.lib.stride_tricks.sliding_window_view(errors, (height, width)).mean(axis=(2, 3))
    assert region.mean() >= boxes.max() - 1e-9


@pytest.mark.parametrize("path", SCORE_PATHS)
def test_the_map_leaves_the_score_alone_and_is_absent_unless_asked_for(client, ten_seconds, path):
    files = {"file": ("a.wav", ten_seconds)}
    plain = client.post(path, files=files).json()
    none = client.post(path, params={"detail": "none"}, files=files).json()
    mapped = client.post(path, params={"detail": "map"}, files=files).json()
    assert plain["map"] is None and none["map"] is None
    assert mapped["map"]["n_rows"] > 0
    for key in ("score", "decision", "segments", "input_check"):
        assert plain[key] == none[key] == mapped[key]


def test_a_short_clip_has_a_map_as_large_as_its_frames(client):
    body = client.post(
        "/v1/score", params={"detail": "map"}, files={"file": ("a.wav", encode(noise(1.5)))}
    ).json()
    grid = body["map"]
    # 1.5 s: 47 frames, 5 patches of 8 cover 40; every row of 128 mel bins halves to 64.
    assert (grid["n_rows"], grid["n_columns"]) == (64, 40)
    assert grid["worst"]["column_end"] - grid["worst"]["column_start"] == 31  # about 1 s of 32 ms columns


def test_the_batch_endpoint_maps_every_file(client, ten_seconds):
    response = client.post(
        f"/v1/models/{DEFAULT_MODEL}/score/batch",
        params={"detail": "map"},
        files=[("files", ("a.wav", ten_seconds)), ("files", ("b.wav", b"not audio"))],
    )
    assert response.status_code == 200, response.text
    scored, failed = response.json()["results"]
    assert scored["result"]["map"]["n_columns"] == MAX_COLUMNS
    assert failed["code"] == "undecodable_audio"


@pytest.mark.parametrize("value", ["maps", "MAP", "", "full"])
@pytest.mark.parametrize("path", [*SCORE_PATHS, f"/v1/models/{DEFAULT_MODEL}/score/batch"])
def test_an_unknown_detail_is_a_422_in_the_error_shape(client, path, value):
    name = "files" if path.endswith("batch") else "file"
    response = client.post(path, params={"detail": value}, files=[(name, ("a.wav", encode(noise(2.0))))])
    error = assert_error(response, 422, "validation_error")
    assert "detail" in error["message"] and "'map'" in error["message"]


def test_openapi_documents_the_option_and_the_map(client):
    document = client.get("/openapi.json").json()
    for path in ("/v1/score", "/v1/models/{name}/score", "/v1/models/{name}/score/batch"):
        [detail] = [p for p in document["paths"][path]["post"]["parameters"] if p["name"] == "detail"]
        assert detail["in"] == "query" and detail["schema"]["enum"] == ["none", "map"]
        assert detail["schema"]["default"] == "none" and detail["description"]
    schemas = document["components"]["schemas"]
    assert {"$ref": "#/components/schemas/ErrorMap"} in schemas["ScoreResult"]["properties"]["map"]["anyOf"]
    assert {"n_rows", "n_columns", "row_hz", "column_edges_s", "log_mel_db", "errors", "worst"} <= set(
        schemas["ErrorMap"]["properties"]
    )


@pytest.mark.parametrize("model", ["slider", "slider-dense"])
def test_the_detector_map_is_each_frames_mean_over_the_patches_covering_it(models_dir, model):
    detector = Detector(models_dir / model)
    samples = noise(3.0)[:, 0]
    scored = detector.score(samples, error_map=True)
    assert scored.score == detector.score(samples).score

    # By hand: every patch's squared error laid back onto the frames it came from.
    spec = detector.features(samples)
    batch, starts = detector.model_inputs(spec)
    squared = np.square(batch - detector.reconstruct(batch))
    n_mels, frames = detector.params.n_mels, detector.frames
    per_patch = (
        squared.reshape(len(batch), n_mels, frames)
        if detector.bundle.model.arch == "cae"
        else squared.reshape(len(batch), frames, n_mels).transpose(0, 2, 1)
    )
    total = np.zeros((n_mels, starts[-1] + frames))
    count = np.zeros(starts[-1] + frames)
    for patch, start in zip(per_patch, starts, strict=True):
        total[:, start : start + frames] += patch
        count[start : start + frames] += 1
    np.testing.assert_allclose(scored.error_map, total / count, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(scored.log_mel, detector.log_mel(samples))


def test_the_default_score_keeps_no_map(models_dir):
    scored = Detector(models_dir / DEFAULT_MODEL).score(noise(2.0)[:, 0])
    assert scored.error_map is None and scored.log_mel is None


@pytest.mark.parametrize(
    ("value", "rounded"),
    [(0.0, 0.0), (12345.0, 12300.0), (0.0012345, 0.00123), (-53.26, -53.3), (1.0, 1.0), (0.1 + 0.2, 0.3)],
)
def test_round_significant(value, rounded):
    [result] = round_significant(np.array([value])).tolist()
    assert result == rounded and repr(result) == repr(rounded)  # the short decimal, as JSON shows it


def test_block_means_average_near_equal_blocks():
    values = np.arange(12.0).reshape(2, 6)
    rows, columns = block_edges(2, 64), block_edges(6, 3)
    assert rows.tolist() == [0, 1, 2] and columns.tolist() == [0, 2, 4, 6]
    assert block_means(values, rows, columns).tolist() == [[0.5, 2.5, 4.5], [6.5, 8.5, 10.5]]
    assert block_edges(313, 128)[-1] == 313 and np.diff(block_edges(313, 128)).min() >= 2


def test_worst_region_finds_a_planted_hot_box():
    errors = np.random.default_rng(0).random((64, 128))
    errors[40:48, 90:103] += 5
    assert worst_region(errors, rows=8, columns=13)[:2] == (40, 90)
