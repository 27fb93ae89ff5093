"""One way to score a file: training's scorers give each clip the score the service answers.

`training.evaluate.score_files`, `training.export.score_paths` (calibration at
export) and the evaluation report (`training.clip_scores.score_clips`) all score
through `Detector.score_file`; the service's request path
(`service.scoring.score_upload`) decodes the upload and scores it with the same
`Detector.score`. Tiny constant-factor detectors (CAE, dense and a fused
cae+envelope one, whose score depends on the machine ID) score a two-ID test
set every way, and every score must be the same number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.detector import Detector, Score
from service.scoring import choose_threshold, score_upload
from tests.training.tiny_detector import clip, make_detector, two_id_fused_scoring, write_test_set
from training.clip_scores import find_test_clips, score_clips
from training.evaluate import score_files
from training.export import score_paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("scoring-path")
    probe = Detector(make_detector(root / "probe")).score(clip(seed=0, anomalous=False))
    assert probe.band_db is not None
    detectors = {
        "cae": Detector(make_detector(root / "cae", arch="cae", factor=0.5)),
        "dense": Detector(make_detector(root / "dense", arch="dense", factor=0.7)),
        "fused": Detector(
            make_detector(root / "fused", scoring=two_id_fused_scoring(probe.score, probe.band_db))
        ),
    }
    clips = find_test_clips(write_test_set(root / "data", n_normal=2, n_anomaly=2), "slider")
    return {"detectors": detectors, "clips": clips}


@pytest.mark.parametrize("name", ["cae", "dense", "fused"])
def test_every_training_scorer_gives_the_service_score(setup: dict[str, Any], name: str) -> None:
    detector: Detector = setup["detectors"][name]
    clips: dict[str, list[tuple[Path, int]]] = setup["clips"]
    paths = [path for id_clips in clips.values() for path, _ in id_clips]
    ids = [mid for mid, id_clips in clips.items() for _ in id_clips]

    def service(path: Path, machine_id: str | None) -> float:
        chosen = choose_threshold(detector.bundle, machine_id=machine_id)
        return score_upload(name, detector, path.read_bytes(), threshold=chosen).score

    by_id = [service(p, mid) for p, mid in zip(paths, ids, strict=True)]
    wide = [service(p, None) for p in paths]
    if name == "fused":  # the machine ID reaches the score, or this test would prove less
        assert by_id[-1] != wide[-1]

    (report,) = score_clips([detector], clips, progress=False, workers=1)
    assert [s for mid in clips for s in report.ids[mid].scores] == by_id
    assert score_paths(detector, paths, machine_ids=ids).tolist() == by_id
    assert score_paths(detector, paths).tolist() == wide
    assert score_files(detector.folder, paths, detector=detector) == wide


def test_they_all_go_through_score_file(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    detector: Detector = setup["detectors"]["cae"]
    clips: dict[str, list[tuple[Path, int]]] = setup["clips"]
    paths = [path for id_clips in clips.values() for path, _ in id_clips]
    calls: list[Path] = []
    score_file = Detector.score_file

    def spy(self: Detector, source: Any, **kwargs: Any) -> Score:
        calls.append(source)
        return score_file(self, source, **kwargs)

    monkeypatch.setattr(Detector, "score_file", spy)

    score_files(detector.folder, paths, detector=detector)
    assert calls == paths
    calls.clear()
    score_paths(detector, paths)
    assert calls == paths
    calls.clear()
    score_clips([detector, setup["detectors"]["dense"]], clips, progress=False, workers=1)
    assert calls == [p for p in paths for _ in range(2)]  # each clip by each detector
