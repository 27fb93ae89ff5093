"""`fit --scorer cae+envelope` and `--pooling`: a tiny CAE fused with the envelope Gaussian, end to end.

The cross-fitted pair (CAE only, and fused) is the fixture of test_crossfit.py:
10 clips of ID 00 and 12 of ID 02, 2 folds, a 4-8 filter CAE for 2 epochs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from service.audio import read_audio
from service.bundle import Bundle
from service.detector import Detector
from service.features import long_term_spectrum
from service.scorers import coarse_bands, fuse, mahalanobis
from training.errors import DatasetError
from training.export import score_paths
from training.fit import run_fit
from training.fit_options import FitOptions
from training.fit_summary import FitSummary
from training.fusion import default_spectrum_bands, fused_scores
from training.model import CaeConfig
from training.synth import generate_dataset
from training.threshold import calibrate

IDS = ("00", "02")
CLIPS = {"00": 10, "02": 12}
TINY = {
    "frames": 16,
    "patch_hop": 8,
    "epochs": 2,
    "batch_size": 32,
    "seed": 5,
    "folds": 2,
    "cae": CaeConfig(filters=(4, 8), bottleneck=4),
    "progress": False,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("few")
    generate_dataset(
        root, ids=IDS, n_train=max(CLIPS.values()), n_test_normal=3, n_test_anomaly=0, seed=4, duration=2.0
    )
    train = root / "slider" / "train"
    for extra in range(CLIPS["00"], max(CLIPS.values())):
        (train / f"normal_id_00_{extra:08d}.wav").unlink()
    return root


def _fit(root: Path, out: Path, **options) -> FitSummary:
    return run_fit(root, out, FitOptions(**{**TINY, **options}), stream=io.StringIO())


@pytest.fixture(scope="module")
def fits(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[FitSummary, Path]]:
    """The same tiny cross-fit, CAE only and fused."""
    models = tmp_path_factory.mktemp("models")
    found = {}
    for name, scorer, fusion in (
        ("cae", "cae", None),
        ("fused", "cae+envelope", None),
        ("max", "cae+envelope", "max"),
        ("spectrum", "cae+envelope+spectrum", "max"),
    ):
        found[name] = (_fit(data_root, models / name, scorer=scorer, fusion=fusion), models / name)
    return found


def _test_clips(root: Path) -> list[tuple[np.ndarray, str]]:
    paths = sorted((root / "slider" / "test").glob("normal_*.wav"))
    return [(read_audio(p, sample_rate=16000).samples, p.name.split("_")[2]) for p in paths]


def test_a_6_db_louder_clip_stands_out_of_the_fused_score_far_more(fits, data_root: Path) -> None:
    separation = {}
    for name, (summary, out) in fits.items():
        detector = Detector(out)
        shifts = [
            detector.score(2.0 * y, machine_id=mid).score - detector.score(y, machine_id=mid).score
            for y, mid in _test_clips(data_root)
        ]
        # In units of the spread of normal clips' (held-out) scores.
        separation[name] = float(np.median(shifts)) / float(np.std(summary.calibration_scores))
        if name == "fused":
            louder = [detector.score(2.0 * y, machine_id=mid) for y, mid in _test_clips(data_root)]
            threshold = Bundle.read(out).threshold
            assert all(
                s.score > threshold.for_id(mid).value
                for s, (_, mid) in zip(louder, _test_clips(data_root), strict=True)
            )
    assert separation["fused"] > 10
    assert separation["fused"] > 3 * separation["cae"], separation


def test_the_plain_cae_fit_writes_no_scoring_section(fits) -> None:
    summary, out = fits["cae"]
    assert Bundle.read(out).scoring is None and summary.raw_scores is None
    assert summary.calibration_scores_wide is None


def test_calibration_scores_are_recomputable_from_the_stored_standardisation(fits) -> None:
    summary, out = fits["fused"]
    bundle = Bundle.read(out)
    scoring, raw, ids = bundle.scoring, summary.raw_scores, np.asarray(summary.calibration_ids)
    assert scoring is not None and raw is not None and scoring.standardised_from == "cross_fit"
    assert sorted(scoring.per_id) == list(IDS) and scoring.offset == 5.0
    # By hand: offset + mean of the floored z-scores, with each ID's entry, and the model-wide one.
    for mid in IDS:
        rows = ids == mid
        entry = scoring.per_id[mid]
        cae, env = entry.standardisation["cae"], entry.standardisation["envelope"]
        # The standardisation is that of the out-of-fold scores themselves.
        assert cae.mean == pytest.approx(raw.cae[rows].mean(), rel=1e-12) and cae.n_clips == CLIPS[mid]
        assert env.std == pytest.approx(raw.envelope_own[rows].std(ddof=1), rel=1e-12)
        z = [(raw.cae[rows] - cae.mean) / cae.std, (raw.envelope_own[rows] - env.mean) / env.std]
        expected = 5.0 + (np.maximum(z[0], -5.0) + np.maximum(z[1], -5.0)) / 2
        np.testing.assert_allclose(summary.calibration_scores[rows], expected, rtol=1e-12)
        fit = bundle.threshold.per_id[mid]
        assert fit.value == pytest.approx(calibrate(summary.calibration_scores[rows]).value, rel=1e-9)
    wide = scoring.model_wide
    z = [
        (raw.cae - wide.standardisation["cae"].mean) / wide.standardisation["cae"].std,
        (raw.envelope_wide - wide.standardisation["envelope"].mean) / wide.standardisation["envelope"].std,
    ]
    np.testing.assert_allclose(summary.calibration_scores_wide, fuse(z, offset=5.0), rtol=1e-12)
    assert bundle.threshold.value == pytest.approx(calibrate(summary.calibration_scores_wide).value, rel=1e-9)
    own, wide_scores = fused_scores(raw, summary.calibration_ids, scoring)
    np.testing.assert_array_equal(own, summary.calibration_scores)
    np.testing.assert_array_equal(wide_scores, summary.calibration_scores_wide)


def test_the_envelope_scores_that_standardise_are_out_of_fold(fits, data_root: Path) -> None:
    summary, out = fits["fused"]
    scoring = Bundle.read(out).scoring
    assert scoring is not None and summary.raw_scores is not None
    # The exported Gaussians learned from every clip ...
    assert scoring.model_wide.envelope.n_clips == sum(CLIPS.values())
    assert {mid: e.envelope.n_clips for mid, e in scoring.per_id.items()} == CLIPS
    # ... so they place their own training clips closer than the fold models placed them.
    detector = Detector(out)
    paths = sorted((data_root / "slider" / "train").glob("*.wav"))
    in_sample = [
        detector.score(read_audio(p, sample_rate=16000).samples, machine_id=p.name.split("_")[2])
        for p in paths
    ]
    assert [p.name.split("_")[2] for p in paths] == summary.calibration_ids
    distances = np.array([s.components["envelope"] for s in in_sample])
    assert np.median(distances) < 0.8 * np.median(summary.raw_scores.envelope_own)
    # The CAE's component is the pooled patch error, and the envelope's the distance of the mean level.
    first = in_sample[0]
    entry = scoring.per_id[summary.calibration_ids[0]].envelope
    diff = coarse_bands(first.band_db, scoring.band_edges) - np.asarray(entry.mean)
    by_hand = float(np.sqrt(diff @ np.asarray(entry.precision) @ diff))
    assert first.components["envelope"] == pytest.approx(by_hand, rel=1e-12)
    assert first.components["cae"] == pytest.approx(float(first.patch_errors.mean()), rel=1e-6)


def test_max_fusion_calibrates_on_the_larger_z_score_of_each_clip(fits) -> None:
    summary, out = fits["max"]
    bundle = Bundle.read(out)
    scoring, raw, ids = bundle.scoring, summary.raw_scores, np.asarray(summary.calibration_ids)
    assert scoring is not None and raw is not None and scoring.fusion == "max"
    assert Bundle.read(fits["fused"][1]).scoring.fusion == "mean"
    for mid in IDS:
        rows = ids == mid
        cae, env = scoring.per_id[mid].standardisation["cae"], scoring.per_id[mid].standardisation["envelope"]
        z = np.maximum((raw.cae[rows] - cae.mean) / cae.std, (raw.envelope_own[rows] - env.mean) / env.std)
        np.testing.assert_allclose(summary.calibration_scores[rows], 5.0 + np.maximum(z, -5.0), rtol=1e-12)
        assert bundle.threshold.per_id[mid].value == pytest.approx(
            calibrate(summary.calibration_scores[rows]).value, rel=1e-9
        )
    own, wide = fused_scores(raw, summary.calibration_ids, scoring)
    np.testing.assert_array_equal(own, summary.calibration_scores)
    np.testing.assert_array_equal(wide, summary.calibration_scores_wide)
    assert bundle.threshold.value == pytest.approx(calibrate(wide).value, rel=1e-9)


def test_the_spectrum_scorer_is_fitted_standardised_and_fused_out_of_fold(fits, data_root: Path) -> None:
    summary, out = fits["spectrum"]
    bundle = Bundle.read(out)
    scoring, raw, ids = bundle.scoring, summary.raw_scores, np.asarray(summary.calibration_ids)
    assert scoring is not None and raw is not None and scoring.scorers == ["cae", "envelope", "spectrum"]
    assert scoring.spectrum == default_spectrum_bands() and scoring.fusion == "max"
    assert raw.spectrum_own is not None and raw.spectrum_wide is not None
    for mid in IDS:
        rows = ids == mid
        entry = scoring.per_id[mid]
        assert entry.spectrum is not None and entry.spectrum.n_clips == CLIPS[mid]  # the exported model's
        st = entry.standardisation
        assert st["spectrum"].mean == pytest.approx(raw.spectrum_own[rows].mean(), rel=1e-12)
        z = np.maximum.reduce(
            [
                (raw.cae[rows] - st["cae"].mean) / st["cae"].std,
                (raw.envelope_own[rows] - st["envelope"].mean) / st["envelope"].std,
                (raw.spectrum_own[rows] - st["spectrum"].mean) / st["spectrum"].std,
            ]
        )
        np.testing.assert_allclose(summary.calibration_scores[rows], 5.0 + np.maximum(z, -5.0), rtol=1e-12)
    own, wide = fused_scores(raw, summary.calibration_ids, scoring)
    np.testing.assert_array_equal(own, summary.calibration_scores)
    np.testing.assert_array_equal(wide, summary.calibration_scores_wide)
    # The service scores a clip with all three, and each component is the documented distance.
    detector = Detector(out)
    samples, mid = _test_clips(data_root)[0]
    scored = detector.score(samples, machine_id=mid)
    assert set(scored.components) == {"cae", "envelope", "spectrum"} and scored.spectrum_db.shape == (2049,)
    gaussian = scoring.per_id[mid].spectrum
    expected = mahalanobis(
        coarse_bands(long_term_spectrum(samples, n_fft=4096, hop=2048), scoring.spectrum.bin_edges),
        mean=np.asarray(gaussian.mean),
        precision=np.asarray(gaussian.precision),
    )
    assert scored.components["spectrum"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("scorer", "fusion"),
    [("cae+envelope", "mean"), ("cae+envelope", "max"), ("cae+envelope+spectrum", "max")],
)
def test_a_fused_holdout_calibrates_on_the_scores_the_service_gives(
    scorer: str, fusion: str, data_root: Path, tmp_path: Path
) -> None:
    summary = _fit(
        data_root,
        tmp_path / "holdout",
        scorer=scorer,
        calibration="holdout",
        val_fraction=0.25,
        pooling="gwrp",
        pooling_param=0.8,
        fusion=fusion,
    )
    bundle = Bundle.read(tmp_path / "holdout")
    scoring = bundle.scoring
    assert scoring is not None and scoring.pooling == "gwrp" and scoring.pooling_param == 0.8
    assert scoring.fusion == fusion and (scoring.spectrum is not None) == scorer.endswith("spectrum")
    assert scoring.standardised_from == "holdout" and scoring.per_id is None  # 3 held-out clips per ID
    assert scoring.model_wide.envelope.n_clips == summary.n_train
    root = data_root / "slider" / "train"
    paths = [root / name for name in bundle.training.validation_files]
    detector = Detector(tmp_path / "holdout")
    np.testing.assert_array_equal(
        score_paths(detector, paths, machine_ids=summary.calibration_ids), summary.calibration_scores
    )
    np.testing.assert_array_equal(score_paths(detector, paths), summary.calibration_scores_wide)
    assert bundle.threshold.value == pytest.approx(calibrate(summary.calibration_scores_wide).value, rel=1e-9)


def test_pooling_options_are_checked_before_training() -> None:
    with pytest.raises(DatasetError, match="gwrp"):
        FitOptions(pooling="gwrp", pooling_param=1.5).resolved()
    with pytest.raises(DatasetError, match="takes no parameter"):
        FitOptions(pooling="mean", pooling_param=0.5).resolved()
    with pytest.raises(DatasetError, match="scorer"):
        FitOptions(scorer="envelope").resolved()  # type: ignore[arg-type]
    assert FitOptions(pooling="topk").resolved().pooling_param == 0.1
    with pytest.raises(DatasetError, match="--fusion max combines scorers"):
        FitOptions(scorer="cae", fusion="max").resolved()
    with pytest.raises(DatasetError, match="--fusion max combines scorers"):
        FitOptions(arch="dense", fusion="max").resolved()
    with pytest.raises(DatasetError, match="unknown fusion"):
        FitOptions(fusion="median").resolved()  # type: ignore[arg-type]


def test_the_cae_fuses_the_envelope_scorer_by_default_and_the_dense_baseline_does_not() -> None:
    assert FitOptions().resolved().fused
    assert not FitOptions(arch="dense").resolved().fused
    assert not FitOptions(scorer="cae").resolved().fused


def test_evaluation_scores_each_clip_as_a_request_naming_its_machine(fits, data_root: Path) -> None:
    from service.detector import Detector
    from training.clip_scores import score_clips

    _, out = fits["fused"]
    detector = Detector(out)
    paths = sorted((data_root / "slider" / "test").glob("normal_*.wav"))
    clips = {mid: [(p, 0) for p in paths if f"_id_{mid}_" in p.name] for mid in IDS}
    (scored,) = score_clips([detector], clips, progress=False, workers=1)
    for mid in IDS:
        got = scored.ids[mid]
        files = got.files if hasattr(got, "files") else got["files"]
        values = got.scores if hasattr(got, "scores") else got["scores"]
        for file, value in zip(files, values, strict=True):
            samples = read_audio(Path(file), sample_rate=16000).samples
            assert value == pytest.approx(detector.score(samples, machine_id=mid).score, rel=1e-9)
    # The ID matters for this model: scored without it, some clip's score differs.
    samples = read_audio(paths[0], sample_rate=16000).samples
    mid = paths[0].name.split("_")[2]
    assert detector.score(samples).score != pytest.approx(
        detector.score(samples, machine_id=mid).score, rel=1e-6
    )
