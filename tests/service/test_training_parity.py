"""The service's numbers are training's numbers: same files, same model, same scores."""

from __future__ import annotations

import pytest

from tests.service.conftest import DEFAULT_MODEL


def test_service_scores_equal_training_scores(client, models_dir, model_names, real_recordings):
    # Imported here: the training package (and TensorFlow) stays out of the
    # service's import path; only this comparison needs it.
    from training.evaluate import score_files

    paths = sorted(real_recordings.glob("*/*.wav"))
    for name in [DEFAULT_MODEL, *(n for n in model_names if n != DEFAULT_MODEL)]:
        expected = score_files(models_dir / name, paths, channel=0)
        served = []
        for path in paths:
            response = client.post(f"/v1/models/{name}/score", files={"file": (path.name, path.read_bytes())})
            assert response.status_code == 200, response.text
            served.append(response.json()["score"])
        assert served == pytest.approx(expected, rel=1e-6), name
