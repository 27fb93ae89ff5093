"""Pooling of patch errors, the envelope Gaussian, fusion, and the bundle's `scoring` section.

numpy unit tests of `service.scorers`, then tiny constant-factor detectors
(tests/training/tiny_detector.py) with a scoring section: round trip,
refusal of malformed sections, the machine ID choosing the entry, and the API.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from service.audio import read_audio
from service.bundle import THRESHOLD_FILE, Bundle
from service.bundle_scoring import EnvelopeModel, Scoring, ScoringEntry, SpectrumBands, Standardisation
from service.detector import Detector
from service.errors import DetectorError
from service.features import long_term_spectrum
from service.scorers import (
    ENVELOPE_BANDS,
    band_edges,
    check_pooling,
    coarse_bands,
    fit_gaussian,
    fuse,
    ledoit_wolf,
    mahalanobis,
    pool,
    spectrum_edges,
    topk_count,
)
from tests.service.conftest import make_settings, serve
from tests.service.sounds import encode, noise
from tests.training.tiny_detector import fused_entry, make_detector

N_MELS = 128
ERRORS = np.array([1.0, 4.0, 2.0, 8.0, 5.0], dtype=np.float32)


# Pooling


def test_mean_and_max_pooling() -> None:
    assert pool(ERRORS, pooling="mean") == 4.0
    assert pool(ERRORS, pooling="max") == 8.0


def test_topk_averages_the_largest_errors() -> None:
    assert pool(ERRORS, pooling="topk", param=0.4) == 6.5  # ceil(0.4 * 5) = 2 patches: 8 and 5
    assert pool(ERRORS, pooling="topk", param=3) == pytest.approx(17 / 3)
    assert pool(ERRORS, pooling="topk", param=0.01) == 8.0  # at least one patch
    assert pool(ERRORS, pooling="topk", param=50) == 4.0  # more than there are: all
    assert topk_count(0.1, 30) == 3 and topk_count(0.1, 39) == 4 and topk_count(2, 39) == 2


def test_gwrp_weights_ranks_geometrically() -> None:
    weights = 0.5 ** np.arange(5)
    expected = float(np.array([8, 5, 4, 2, 1]) @ weights / weights.sum())
    assert pool(ERRORS, pooling="gwrp", param=0.5) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(11.8125 / 1.9375)
    assert pool(ERRORS, pooling="gwrp", param=1.0) == pytest.approx(pool(ERRORS, pooling="mean"), rel=1e-12)
    assert pool(ERRORS, pooling="gwrp", param=1e-6) == pytest.approx(8.0, rel=1e-5)


@pytest.mark.parametrize(("pooling", "param"), [("mean", None), ("max", None), ("topk", 0.4), ("gwrp", 0.7)])
def test_every_pooling_commutes_with_a_positive_affine_map(pooling: str, param: float | None) -> None:
    # What lets a fused bundle put patch errors on the clip score's scale.
    errors = np.random.default_rng(0).gamma(2.0, size=39).astype(np.float32)
    mapped = 3.0 * errors.astype(np.float64) - 2.0
    assert pool(mapped, pooling=pooling, param=param) == pytest.approx(
        3.0 * pool(errors, pooling=pooling, param=param) - 2.0, rel=1e-6
    )


def test_pooling_parameters_are_checked_and_defaulted() -> None:
    assert check_pooling("topk", None) == 0.1 and check_pooling("gwrp", None) == 0.9
    assert check_pooling("mean", None) is None and check_pooling("topk", 4) == 4.0
    for pooling, param in (
        ("topk", 1.5),
        ("topk", 0.0),
        ("gwrp", 1.2),
        ("gwrp", -0.5),
        ("mean", 0.5),
        ("max", 1.0),
        ("median", None),
        ("gwrp", float("nan")),
    ):
        with pytest.raises(ValueError, match=r"pooling|parameter|fraction|ratio"):
            check_pooling(pooling, param)


# The envelope Gaussian


def _levels(n: int, *, seed: int) -> np.ndarray:
    """Mean log-mel levels (n, 128) in dB: a sloped envelope, a shared level wobble, band noise."""
    rng = np.random.default_rng(seed)
    envelope = -20.0 - 0.3 * np.arange(N_MELS)
    level = rng.normal(0.0, 0.3, size=(n, 1))
    # Neighbouring mel bins move together (over about 8 bins), as real spectra do.
    kernel = np.ones(8) / np.sqrt(8)
    local = np.stack([np.convolve(row, kernel, mode="same") for row in rng.normal(0.0, 0.4, (n, N_MELS))])
    return envelope + level + local + rng.normal(0.0, 0.3, size=(n, N_MELS))


def test_ledoit_wolf_is_sklearns() -> None:
    x = _levels(10, seed=1)
    mine, shrinkage = ledoit_wolf(x)
    theirs, their_shrinkage = sklearn_ledoit_wolf(x)
    np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12)
    assert shrinkage == pytest.approx(their_shrinkage, rel=1e-10)


def test_a_gain_moves_the_envelope_far_while_normal_clips_stay_close() -> None:
    edges = band_edges(n_mels=N_MELS)
    assert len(edges) == ENVELOPE_BANDS + 1 and edges[0] == 0 and edges[-1] == N_MELS
    gaussian = fit_gaussian(coarse_bands(_levels(200, seed=2), edges))
    fresh = coarse_bands(_levels(100, seed=3), edges)
    normal = np.asarray(gaussian.distance(fresh))
    louder = np.asarray(gaussian.distance(fresh + 5.0))
    assert normal.shape == louder.shape == (100,)
    # About sqrt(32) for a well-fitted 32-band Gaussian.
    assert 3.0 < np.median(normal) < 10.0
    # +5 dB is about 17 standard deviations of the clips' own level (0.3 dB): fully separated.
    assert louder.min() > normal.max() + 5.0 and np.median(louder) > 2.5 * np.median(normal)


def test_ten_clips_in_128_bands_give_a_finite_positive_definite_precision() -> None:
    levels = _levels(10, seed=4)
    gaussian = fit_gaussian(levels)
    assert 0.0 < gaussian.shrinkage <= 1.0 and gaussian.n_clips == 10
    eigenvalues = np.linalg.eigvalsh(gaussian.precision)
    assert np.isfinite(gaussian.precision).all() and eigenvalues.min() > 0
    assert eigenvalues.max() / eigenvalues.min() < 1e4  # well-conditioned, not merely invertible
    fresh = _levels(20, seed=5)
    normal = np.asarray(gaussian.distance(fresh))
    assert np.isfinite(normal).all() and (normal > 0).all()
    assert np.asarray(gaussian.distance(fresh + 5.0)).min() > np.max(normal)
    # Identical clips: the variance floor keeps it finite.
    same = fit_gaussian(np.repeat(levels[:1], 5, axis=0))
    assert np.isfinite(same.precision).all() and float(same.distance(levels[0])) < 1e-9


def test_one_vector_and_a_batch_give_the_same_distance() -> None:
    gaussian = fit_gaussian(coarse_bands(_levels(30, seed=6), band_edges(n_mels=N_MELS)))
    x = coarse_bands(_levels(3, seed=7), band_edges(n_mels=N_MELS))
    batch = np.asarray(mahalanobis(x, mean=gaussian.mean, precision=gaussian.precision))
    single = [mahalanobis(row, mean=gaussian.mean, precision=gaussian.precision) for row in x]
    np.testing.assert_allclose(batch, single, rtol=1e-12)
    diff = x[0] - gaussian.mean
    assert single[0] == pytest.approx(float(np.sqrt(diff @ gaussian.precision @ diff)), rel=1e-12)


def test_coarse_bands_average_their_mel_bins() -> None:
    x = np.arange(N_MELS, dtype=np.float64)
    coarse = coarse_bands(x, band_edges(n_mels=N_MELS))
    np.testing.assert_allclose(coarse, np.arange(ENVELOPE_BANDS) * 4 + 1.5)
    assert band_edges(n_mels=20) == list(range(21))  # fewer mels than bands: one band each


# Fusion


def test_fusion_is_the_offset_plus_the_mean_of_floored_z_scores() -> None:
    assert fuse([1.0, 3.0], offset=5.0) == 7.0
    assert fuse([-8.0, 3.0], offset=5.0) == 5.0 + (-5.0 + 3.0) / 2  # far below normal counts as -offset
    assert fuse([-9.0, -7.0], offset=5.0) == 0.0  # never negative
    np.testing.assert_allclose(fuse([np.array([0.0, 2.0]), 4.0], offset=5.0), [7.0, 8.0])


def test_max_fusion_is_the_offset_plus_the_larger_floored_z_score() -> None:
    assert fuse([1.0, 3.0], offset=5.0, rule="max") == 8.0
    assert fuse([-8.0, -6.0], offset=5.0, rule="max") == 0.0  # both far below normal: floored, never negative
    assert fuse([-8.0, 0.5], offset=5.0, rule="max") == 5.5
    np.testing.assert_allclose(
        fuse([np.array([0.0, 2.0, 7.0]), 4.0], offset=5.0, rule="max"), [9.0, 9.0, 12.0]
    )
    with pytest.raises(ValueError, match="unknown fusion rule 'median'"):
        fuse([1.0, 2.0], rule="median")


# The scoring section of a bundle

CLIP = encode(0.1 * noise(2.0))


def _samples(clip: bytes = CLIP) -> np.ndarray:
    return read_audio(clip, sample_rate=16000).samples


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> tuple[float, np.ndarray]:
    """The tiny graph's mean-pooled score of CLIP and CLIP's mean level per mel bin."""
    scored = Detector(make_detector(tmp_path_factory.mktemp("probe") / "probe")).score(_samples())
    assert scored.band_db is not None
    return scored.score, scored.band_db


def fused_scoring(
    score: float,
    band_db: np.ndarray,
    *,
    pooling: str = "max",
    param: float | None = None,
    own_shift_db: float = 10.0,
) -> Scoring:
    """Model-wide Gaussian around `band_db`; ID 02's own `own_shift_db` higher, so CLIP looks off for 02."""
    rng = np.random.default_rng(0)
    levels = band_db + rng.normal(0.0, 1.0, size=(40, N_MELS))
    return Scoring(
        pooling=pooling,
        pooling_param=param,
        scorers=["cae", "envelope"],
        band_edges=band_edges(n_mels=N_MELS),
        offset=5.0,
        standardised_from="holdout",
        model_wide=fused_entry(levels, cae=(score, 0.1 * score), envelope=(6.0, 1.0)),
        per_id={
            "02": fused_entry(levels + own_shift_db, cae=(0.9 * score, 0.2 * score), envelope=(5.0, 2.0))
        },
    )


def test_a_fused_bundle_round_trips_and_scores_by_machine_id(probe, tmp_path: Path) -> None:
    s, band_db = probe
    scoring = fused_scoring(s, band_db)
    folder = make_detector(tmp_path / "fused", scoring=scoring)
    assert Bundle.read(folder).scoring == scoring
    assert json.loads((folder / THRESHOLD_FILE).read_text())["scoring"]["scorers"] == ["cae", "envelope"]
    detector = Detector(folder)
    wide = detector.score(_samples())
    own = detector.score(_samples(), machine_id="02")
    unknown_own = detector.score(_samples(), machine_id="00")  # no entry of its own: the model-wide one
    assert wide.scoring_id is None and own.scoring_id == "02" and unknown_own.score == wide.score
    # The score is the documented arithmetic of the raw scores and the entry's standardisation.
    for scored, entry in ((wide, scoring.model_wide), (own, scoring.per_id["02"])):
        cae, env = entry.standardisation["cae"], entry.standardisation["envelope"]
        raw = scored.components
        assert raw["cae"] == pytest.approx(float(scored.patch_errors.max()), rel=1e-7)
        assert raw["envelope"] == pytest.approx(
            float(
                mahalanobis(
                    coarse_bands(scored.band_db, scoring.band_edges),
                    mean=np.asarray(entry.envelope.mean),
                    precision=np.asarray(entry.envelope.precision),
                )
            ),
            rel=1e-12,
        )
        z = [(raw["cae"] - cae.mean) / cae.std, (raw["envelope"] - env.mean) / env.std]
        assert scored.score == pytest.approx(5.0 + max(z[0], -5.0) / 2 + max(z[1], -5.0) / 2, rel=1e-12)
        # Patch scores are on the clip score's scale: max-pooled they give the score.
        assert float(scored.patch_scores.max()) == pytest.approx(scored.score, rel=1e-9)
    # CLIP sits 10 dB below ID 02's own envelope: far more anomalous for 02 than model-wide.
    assert own.components["envelope"] > 5 * wide.components["envelope"]
    assert own.score > wide.score + 5
    # Louder by 6 dB: the envelope moves, the CAE's error changes far less.
    louder = detector.score(2.0 * _samples())
    assert louder.score > wide.score + 10


def test_max_fusion_scores_by_the_larger_z_score(probe, tmp_path: Path) -> None:
    s, band_db = probe
    mean_rule = fused_scoring(s, band_db, pooling="mean")
    max_rule = mean_rule.model_copy(update={"fusion": "max"})
    folder = make_detector(tmp_path / "max", scoring=max_rule)
    assert Bundle.read(folder).scoring == max_rule
    assert json.loads((folder / THRESHOLD_FILE).read_text())["scoring"]["fusion"] == "max"
    by_max = Detector(folder)
    by_mean = Detector(make_detector(tmp_path / "mean", scoring=mean_rule))
    for samples in (_samples(), 2.0 * _samples()):
        for machine_id in (None, "02"):
            a, b = by_max.score(samples, machine_id=machine_id), by_mean.score(samples, machine_id=machine_id)
            assert a.components == b.components  # the rule acts after the scorers
            _, entry = max_rule.entry_for(machine_id)
            cae, env = entry.standardisation["cae"], entry.standardisation["envelope"]
            z = [(a.components["cae"] - cae.mean) / cae.std, (a.components["envelope"] - env.mean) / env.std]
            assert a.score == pytest.approx(5.0 + max(*z, -5.0), rel=1e-12)
            assert a.score >= b.score - 1e-9  # the larger of two never falls below their mean
            # Each patch takes the larger of its own CAE z and the clip's envelope z: the mean of
            # those is at least the clip score, and the worst patch's is the clip's when the CAE leads.
            assert float(a.patch_scores.mean()) >= a.score - 1e-9
            np.testing.assert_allclose(
                a.patch_scores,
                5.0
                + np.maximum(
                    np.maximum((a.patch_errors.astype(np.float64) - cae.mean) / cae.std, z[1]), -5.0
                ),
                rtol=1e-9,
            )


def test_max_fusion_needs_two_scorers() -> None:
    with pytest.raises(ValueError, match="fusion max needs two scorers"):
        Scoring(fusion="max")


def test_pooling_alone_changes_only_the_clip_score(probe, tmp_path: Path) -> None:
    plain = Detector(make_detector(tmp_path / "plain"))
    pooled = Detector(make_detector(tmp_path / "topk", scoring=Scoring(pooling="topk", pooling_param=0.25)))
    mean = Detector(make_detector(tmp_path / "mean", scoring=Scoring()))
    a, b, c = plain.score(_samples()), pooled.score(_samples()), mean.score(_samples())
    np.testing.assert_array_equal(a.patch_errors, b.patch_errors)
    assert b.score == pytest.approx(pool(a.patch_errors, pooling="topk", param=0.25), rel=1e-12)
    assert b.score > a.score and c.score == a.score  # an explicit mean section is bit-for-bit the default
    assert b.patch_scores is None and b.components == {"cae": b.score}
    assert plain.bundle.scoring is None and a.components is None


def _break(folder: Path, change) -> Path:
    data = json.loads((folder / THRESHOLD_FILE).read_text())
    change(data["scoring"])
    (folder / THRESHOLD_FILE).write_text(json.dumps(data))
    return folder


def _not_positive_definite(scoring: dict) -> None:
    precision = np.asarray(scoring["model_wide"]["envelope"]["precision"])
    precision[0, 0] = -1.0
    scoring["model_wide"]["envelope"]["precision"] = precision.tolist()


BROKEN = {
    "topk without its parameter": (lambda s: s.update(pooling="topk", pooling_param=None), "pooling_param"),
    "unknown pooling": (lambda s: s.update(pooling="median"), "pooling"),
    "gwrp ratio above 1": (lambda s: s.update(pooling="gwrp", pooling_param=2.0), "gwrp"),
    "envelope only": (lambda s: s.update(scorers=["envelope"]), "scorers"),
    "no model-wide entry": (lambda s: s.update(model_wide=None), "model_wide"),
    "a scorer not standardised": (
        lambda s: s["per_id"]["02"]["standardisation"].pop("envelope"),
        "standardisation",
    ),
    "zero std": (lambda s: s["model_wide"]["standardisation"]["cae"].update(std=0.0), "std"),
    "bands that do not cover the mels": (
        lambda s: s.update(band_edges=[e // 2 for e in s["band_edges"]]),
        "band_edges",
    ),
    "precision of the wrong size": (
        lambda s: s["model_wide"]["envelope"].update(precision=s["model_wide"]["envelope"]["precision"][1:]),
        "precision",
    ),
    "precision not positive definite": (_not_positive_definite, "positive definite"),
    "an unknown machine ID": (lambda s: s["per_id"].update({"09": s["per_id"]["02"]}), "09"),
    "an unknown field": (lambda s: s.update(weights=[1, 2]), "weights"),
    "an unknown fusion rule": (lambda s: s.update(fusion="median"), "fusion"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_malformed_scoring_section_is_refused(case: str, probe, tmp_path: Path) -> None:
    change, says = BROKEN[case]
    folder = make_detector(tmp_path / "broken", scoring=fused_scoring(*probe))
    Detector(folder)  # loads before the change
    with pytest.raises(DetectorError, match=r"invalid threshold.json") as caught:
        Detector(_break(folder, change))
    assert says in str(caught.value)


def test_the_envelope_adds_well_under_a_millisecond_per_clip(probe, tmp_path: Path) -> None:
    detector = Detector(
        make_detector(tmp_path / "fused", scoring=fused_scoring(*probe, pooling="gwrp", param=0.9))
    )
    scored = detector.score(encode_samples_10s())
    errors, band_db = scored.patch_errors, scored.band_db
    timings = []
    for _ in range(200):
        began = time.perf_counter()
        detector.combine(errors, band_db, machine_id="02")
        timings.append(time.perf_counter() - began)
    # Median over repeats: robust to the other processes of a loaded machine.
    assert float(np.median(timings)) < 1e-3


def encode_samples_10s() -> np.ndarray:
    return _samples(encode(0.1 * noise(10.0, seed=3)))


def test_the_api_scores_with_the_named_ids_entry_and_shows_the_scoring(probe, tmp_path: Path) -> None:
    s, band_db = probe
    root = tmp_path / "models"
    scoring = fused_scoring(s, band_db)
    make_detector(root / "fused", machine_ids=("00", "02"), threshold=6.0, scoring=scoring)
    direct = Detector(root / "fused")
    with serve(make_settings(root, default_model="fused")) as client:
        for machine_id in (None, "02", "id_02"):
            params = {} if machine_id is None else {"machine_id": machine_id}
            response = client.post(
                "/v1/models/fused/score", params=params, files={"file": ("a.wav", CLIP, "audio/wav")}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            expected = direct.score(_samples(), machine_id=None if machine_id is None else "02")
            assert body["score"] == pytest.approx(expected.score, rel=1e-9)
            # Segments are on the score's scale: their ratios use the same threshold.
            worst = next(seg for seg in body["segments"] if seg["worst"])
            assert worst["score"] <= body["score"] + 1e-9 and worst["ratio"] == pytest.approx(
                worst["score"] / body["threshold"]
            )
        shown = client.get("/v1/models/fused").json()["scoring"]
        assert client.get("/v1/models").json()["models"][0]["scoring"] == shown
    # Everything but the envelope matrices, which stay in threshold.json.
    assert {k: v for k, v in shown.items() if k not in ("model_wide", "per_id")} == scoring.model_dump(
        exclude={"model_wide", "per_id"}
    )
    assert (
        shown["per_id"]["02"]["standardisation"]
        == json.loads(scoring.per_id["02"].model_dump_json())["standardisation"]
    )
    shrinkage = scoring.model_wide.envelope.shrinkage
    assert shown["model_wide"]["envelope"] == {"n_bands": 32, "shrinkage": shrinkage, "n_clips": 40}
    assert len(json.dumps(shown)) < 5000


# The spectrum scorer


def _tone(hz: float, seconds: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(int(hz))
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _spectral_scoring(probe_detector: Detector, normal: list[np.ndarray]) -> Scoring:
    """cae+envelope+spectrum around `normal` clips, standardised on their own scores."""
    scored = [probe_detector.score(x) for x in normal]
    bands = SpectrumBands(n_fft=4096, hop=2048, bin_edges=spectrum_edges())
    spectra = np.stack([long_term_spectrum(x, n_fft=bands.n_fft, hop=bands.hop) for x in normal])
    levels = np.stack([s.band_db for s in scored])
    envelope = fit_gaussian(coarse_bands(levels, band_edges(n_mels=N_MELS)))
    spectrum = fit_gaussian(coarse_bands(spectra, bands.bin_edges))
    env_d = envelope.distance(coarse_bands(levels, band_edges(n_mels=N_MELS)))
    spec_d = spectrum.distance(coarse_bands(spectra, bands.bin_edges))
    cae = np.array([s.score for s in scored])

    def model(g):
        return EnvelopeModel(
            mean=g.mean.tolist(), precision=g.precision.tolist(), shrinkage=g.shrinkage, n_clips=g.n_clips
        )

    def stats(x):
        return Standardisation(mean=float(x.mean()), std=float(x.std(ddof=1)), n_clips=x.size)

    entry = ScoringEntry(
        envelope=model(envelope),
        spectrum=model(spectrum),
        standardisation={"cae": stats(cae), "envelope": stats(env_d), "spectrum": stats(spec_d)},
    )
    return Scoring(
        scorers=["cae", "envelope", "spectrum"],
        band_edges=band_edges(n_mels=N_MELS),
        spectrum=bands,
        offset=5.0,
        fusion="max",
        standardised_from="holdout",
        model_wide=entry,
    )


def test_the_spectrum_scorer_hears_a_tone_move_and_joins_the_max(tmp_path: Path) -> None:
    plain = Detector(make_detector(tmp_path / "plain"))
    normal = [_tone(hz) for hz in (400.0, 400.5, 401.0, 401.5, 402.0, 402.5, 403.0, 403.5)]
    scoring = _spectral_scoring(plain, normal)
    folder = make_detector(tmp_path / "spectral", scoring=scoring)
    assert Bundle.read(folder).scoring == scoring
    detector = Detector(folder)
    usual, moved = detector.score(_tone(401.2)), detector.score(_tone(415.0))  # 415 Hz: 3 bins away
    z = {
        name: [(s.components[name] - st.mean) / st.std for s in (usual, moved)]
        for name, st in scoring.model_wide.standardisation.items()
    }
    assert z["spectrum"][0] < 5 < z["spectrum"][1]
    assert moved.score == pytest.approx(5.0 + max(*(v[1] for v in z.values()), -5.0), rel=1e-9)
    assert moved.score > usual.score
    assert moved.spectrum_db is not None and moved.spectrum_db.shape == (2049,)
    # Without its spectrum, a spectral bundle cannot combine a clip (training must pass it).
    with pytest.raises(ValueError, match="spectrum"):
        detector.combine(moved.patch_errors, moved.band_db)


SPECTRAL_BROKEN = {
    "a spectrum section without the scorer": (
        lambda s: s.update(scorers=["cae", "envelope"]),
        "spectrum section",
    ),
    "the scorer without its section": (lambda s: s.update(spectrum=None), "spectrum"),
    "an entry without its spectrum model": (
        lambda s: s["model_wide"].update(spectrum=None),
        "spectrum model",
    ),
    "bin edges past the last bin": (lambda s: s["spectrum"].update(bin_edges=[2, 3, 5000]), "bin_edges"),
    "a hop longer than the frame": (lambda s: s["spectrum"].update(hop=8192), "hop"),
}


@pytest.mark.parametrize("case", sorted(SPECTRAL_BROKEN))
def test_a_malformed_spectrum_section_is_refused(case: str, tmp_path: Path) -> None:
    plain = Detector(make_detector(tmp_path / "plain"))
    folder = make_detector(
        tmp_path / "spectral", scoring=_spectral_scoring(plain, [_tone(400 + i) for i in range(4)])
    )
    change, says = SPECTRAL_BROKEN[case]
    with pytest.raises(DetectorError, match=r"invalid threshold.json") as caught:
        Detector(_break(folder, change))
    assert says in str(caught.value)
