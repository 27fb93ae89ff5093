"""`detail=map`: the log-mel and reconstruction-error map in a score answer, and what builds it."""

from __future__ import annotations

import base64
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from service.detector import Detector
from service.errormap import MAX_COLUMNS, MAX_ROWS, block_edges, block_means, worst_region
from tests.service.conftest import DEFAULT_MODEL, assert_error
from tests.service.sounds import encode, noise

SCORE_PATHS = ["/v1/score", f"/v1/models/{DEFAULT_MODEL}/score"]


@pytest.fixture(scope="module")
def ten_seconds(real_recordings) -> bytes:
    return (real_recordings / "mimii-8ch" / "slider_normal.wav").read_bytes()


def grid(answer_map: dict[str, Any], name: str) -> np.ndarray:
    """One of the map's grids decoded as its schema says: base64url of little-endian float32, row-major."""
    data = base64.urlsafe_b64decode(answer_map[name])
    assert len(data) == answer_map["n_rows"] * answer_map["n_columns"] * 4
    return np.frombuffer(data, dtype="<f4").reshape(answer_map["n_rows"], answer_map["n_columns"])


def naive_block_means(values: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Each block's mean, one block at a time in float64."""
    return np.array(
        [
            [values[..., r0:r1, c0:c1].mean(axis=(-2, -1), dtype=np.float64) for c0, c1 in pairwise(columns)]
            for r0, r1 in pairwise(rows)
        ]
    ).transpose(*range(2, values.ndim), 0, 1)


@pytest.mark.parametrize("model", ["slider", "slider-dense"])
def test_the_map_of_a_ten_second_clip_is_small_and_consistent(client, models_dir, ten_seconds, model):
    response = client.post(
        f"/v1/models/{model}/score", params={"detail": "map"}, files={"file": ("a.wav", ten_seconds)}
    )
    assert response.status_code == 200, response.text
    assert len(response.content) < 200_000
    body = response.json()
    answer_map = body["map"]
    rows, columns = answer_map["n_rows"], answer_map["n_columns"]
    # 128 mel bins and about 313 frames, averaged down to the bounds.
    assert (rows, columns) == (MAX_ROWS, MAX_COLUMNS)
    errors, levels = grid(answer_map, "errors"), grid(answer_map, "log_mel_db")
    # The grids are the block means of the detector's full-resolution arrays, to float32 precision.
    detector = Detector(models_dir / model)
    scored = detector.score(detector.read(ten_seconds).samples, error_map=True)
    assert scored.error_map is not None and scored.log_mel is not None
    n_mels, n_frames = scored.error_map.shape
    row_edges, column_edges = block_edges(n_mels, rows), block_edges(n_frames, columns)
    np.testing.assert_allclose(
        errors, naive_block_means(scored.error_map, row_edges, column_edges), rtol=2e-6
    )
    np.testing.assert_allclose(
        levels, naive_block_means(scored.log_mel[:, :n_frames], row_edges, column_edges), rtol=2e-6
    )
    assert (errors >= 0).all()
    assert -120 < levels.min() < levels.max() < 120
    assert len(answer_map["row_hz"]) == rows and np.all(np.diff(answer_map["row_hz"]) > 0)
    edges = answer_map["column_edges_s"]
    assert len(edges) == columns + 1 and edges[0] == 0 and np.all(np.diff(edges) > 0)
    assert 9.9 < edges[-1] <= body["clip"]["duration_s"]
    # The blocks are near equal in size, so their mean is the mean patch error (the default score).
    assert errors.mean() == pytest.approx(scored.patch_errors.mean(), rel=0.02)

    worst = answer_map["worst"]
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
        answer_map["row_hz"][worst["row_start"]],
        answer_map["row_hz"][worst["row_end"] - 1],
    )
    region = errors[worst["row_start"] : worst["row_end"], worst["column_start"] : worst["column_end"]]
    assert worst["error"] == pytest.approx(region.mean(dtype=np.float64), rel=5e-3)
    assert float(f"{worst['error']:.3g}") == worst["error"]  # 3 significant digits
    # No box of that size has a higher mean.
    boxes = np.lib.stride_tricks.sliding_window_view(errors, (height, width)).mean(
        axis=(2, 3), dtype=np.float64
    )
    assert region.mean(dtype=np.float64) >= boxes.max() - 1e-9


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
    answer_map = body["map"]
    # 1.5 s: 47 frames, 5 patches of 8 cover 40; every row of 128 mel bins halves to 64.
    assert (answer_map["n_rows"], answer_map["n_columns"]) == (64, 40)
    assert grid(answer_map, "errors").shape == grid(answer_map, "log_mel_db").shape == (64, 40)
    assert answer_map["worst"]["column_end"] - answer_map["worst"]["column_start"] == 31  # about 1 s of 32 ms


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
    properties = schemas["ErrorMap"]["properties"]
    assert {"n_rows", "n_columns", "row_hz", "column_edges_s", "log_mel_db", "errors", "worst"} <= set(
        properties
    )
    for name in ("log_mel_db", "errors"):
        assert properties[name]["type"] == "string" and properties[name]["format"] == "base64url"
    assert "little-endian float32, row-major" in " ".join(schemas["ErrorMap"]["description"].split())


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


def test_block_means_average_near_equal_blocks():
    values = np.arange(12.0).reshape(2, 6)
    rows, columns = block_edges(2, 64), block_edges(6, 3)
    assert rows.tolist() == [0, 1, 2] and columns.tolist() == [0, 2, 4, 6]
    assert block_means(values, rows, columns).tolist() == [[0.5, 2.5, 4.5], [6.5, 8.5, 10.5]]
    assert block_edges(313, 128)[-1] == 313 and np.diff(block_edges(313, 128)).min() >= 2


@pytest.mark.parametrize(
    ("shape", "most"),
    [
        ((2, 128, 313), (64, 128)),  # a 10 s clip: equal rows, columns of 2 or 3 frames
        ((80, 313), (64, 128)),  # rows of 1 or 2 mel bins
        ((2, 80, 50), (64, 32)),  # both unequal, behind a leading axis
        ((7, 10), (3, 4)),
        ((5, 9), (64, 128)),  # fewer items than blocks: one each
    ],
)
def test_block_means_of_unequal_blocks_are_each_blocks_mean(shape, most):
    values = np.random.default_rng(1).random(shape, dtype=np.float32)
    rows, columns = block_edges(shape[-2], most[0]), block_edges(shape[-1], most[1])
    means = block_means(values, rows, columns)
    assert means.shape == (*shape[:-2], len(rows) - 1, len(columns) - 1)
    np.testing.assert_allclose(means, naive_block_means(values, rows, columns), rtol=1e-6)


def test_worst_region_finds_a_planted_hot_box():
    errors = np.random.default_rng(0).random((64, 128))
    errors[40:48, 90:103] += 5
    assert worst_region(errors, rows=8, columns=13)[:2] == (40, 90)


@pytest.mark.parametrize(
    ("shape", "box"), [((64, 128), (8, 13)), ((64, 40), (8, 31)), ((5, 7), (1, 1)), ((9, 6), (9, 6))]
)
def test_worst_region_is_the_box_with_the_highest_mean(shape, box):
    errors = np.random.default_rng(2).random(shape, dtype=np.float32)
    row, column, mean = worst_region(errors, rows=box[0], columns=box[1])
    means = np.lib.stride_tricks.sliding_window_view(errors, box).mean(axis=(2, 3), dtype=np.float64)
    assert (row, column) == np.unravel_index(np.argmax(means), means.shape)
    assert mean == pytest.approx(means.max(), rel=1e-12)
