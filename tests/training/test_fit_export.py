"""End to end: synthetic clips -> fit -> ONNX export -> threshold.json -> Detector -> evaluate."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.audio import read_audio
from service.bundle import MODEL_FILE, Bundle, sha256_of
from service.detector import Detector
from service.features import log_mel, mel_filterbank
from service.patches import PatchLayout
from training import onnx_export, quantize
from training.dataset import Normalizer, patch_array
from training.errors import ExportError, QuantizationError
from training.evaluate import score_files
from training.export import Calibration, Candidate, export_detector
from training.model import CaeConfig, build_cae, build_dense
from training.report import evaluate_model
from training.report_output import format_table
from training.threshold import fit_gamma_threshold

from .conftest import GARBAGE, IDS, N_TRAIN, SHORT, Fitted, biased_cae


def test_fit_exits_0_and_prints_the_summary(fitted: Fitted) -> None:
    assert fitted.exit_code == 0, fitted.stderr
    out = fitted.stdout
    assert "fit summary (cae)" in out
    assert "skipped    2" in out and GARBAGE in out and SHORT in out
    assert "threshold" in out and "empirical false-alarm rate" in out
    for step in ("features", "training", "export"):
        assert f"{step} " in out.split("time", 1)[1]


def test_bundle_validates_and_matches_the_model(fitted: Fitted, tiny_root: Path) -> None:
    bundle = Bundle.read(fitted.model_dir)
    assert sorted(p.name for p in fitted.model_dir.iterdir()) == [
        MODEL_FILE,
        "threshold.json",
        "training_curves.png",
    ]
    assert (fitted.model_dir / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bundle.model.sha256 == sha256_of(fitted.model_dir / MODEL_FILE)
    assert (bundle.model.arch, bundle.model.input_name, bundle.model.output_name) == (
        "cae",
        "log_mel",
        "reconstruction",
    )
    assert bundle.model.opset == 17
    assert (bundle.patching.frames, bundle.patching.hop) == (16, 8)
    np.testing.assert_array_equal(bundle.features.mel_basis(), mel_filterbank(bundle.features.params()))
    assert bundle.machine_type == "slider" and bundle.machine_ids == list(IDS)
    training = bundle.training
    assert training.clips_per_id == dict.fromkeys(IDS, N_TRAIN)
    assert training.n_clips + training.n_validation_clips == N_TRAIN * len(IDS)
    assert training.validation_clips_per_id == dict.fromkeys(IDS, 2)  # 25 % of 8 per ID
    assert training.skipped_files == 2 and sorted(training.skipped_names or []) == sorted([SHORT, GARBAGE])
    assert training.epochs_run == 2 and training.seed == 3
    assert training.hours == pytest.approx(N_TRAIN * len(IDS) * 3.0 / 3600)
    assert training.command is not None and training.command.startswith("asd-train fit")
    assert training.final_loss is not None and np.isfinite(training.final_loss)
    for package in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy", "librosa"):
        assert bundle.versions[package][0].isdigit()
    threshold = bundle.threshold
    assert threshold.quantile == pytest.approx(0.9) and threshold.n_calibration_clips == 4
    assert np.isfinite(threshold.value) and threshold.value > 0


def test_threshold_comes_from_onnx_scores_of_the_validation_clips(fitted: Fitted, tiny_root: Path) -> None:
    bundle = Bundle.read(fitted.model_dir)
    train = tiny_root / "slider" / "train"
    paths = [train / name for name in bundle.training.validation_files or []]
    scores = score_files(fitted.model_dir, paths)
    refit = fit_gamma_threshold(scores, quantile=bundle.threshold.quantile)
    assert bundle.threshold.value == pytest.approx(refit.value, rel=1e-9)
    assert bundle.threshold.empirical_false_alarm_rate == refit.empirical_false_alarm_rate
    # The normalisation was fitted on the training clips only, not the validation ones.
    assert not set(bundle.training.validation_files or []) & {GARBAGE, SHORT}


def test_detector_scores_like_training_prepared_the_patches(fitted: Fitted, tiny_root: Path) -> None:
    detector = Detector(fitted.model_dir)
    path = tiny_root / "slider" / "test" / "anomaly_id_02_00000000.wav"
    samples = read_audio(path, sample_rate=16000).samples
    result = detector.score(samples)
    assert result.patch_errors.shape == result.patch_start.shape == result.patch_end.shape
    # The default fit fuses the envelope scorer; the CAE's own part is the mean patch error.
    assert result.components is not None
    assert result.components["cae"] == pytest.approx(float(result.patch_errors.mean()))
    assert score_files(fitted.model_dir, [path]) == [result.score]
    # training's patch layout is the detector's
    b = detector.bundle
    normalizer = Normalizer(
        mean=np.asarray(b.normalization.mean, np.float32), std=np.asarray(b.normalization.std, np.float32)
    )
    layout = PatchLayout(frames=16, hop=8, arch="cae", params=detector.params)
    assert detector.layout == layout
    ours = patch_array([log_mel(samples, detector.params)], normalizer=normalizer, layout=layout)
    theirs, _ = detector.model_inputs(detector.features(samples))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_evaluate_reports_auc_per_id(fitted: Fitted, tiny_root: Path, tmp_path: Path) -> None:
    report = evaluate_model(fitted.model_dir, tiny_root, out=tmp_path, progress=False)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["model"] == "tiny" and data["machine_type"] == "slider"
    assert set(data["ids"]) == set(IDS)
    for row in data["ids"].values():
        assert (row["n_normal"], row["n_anomaly"]) == (3, 3)
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["pauc"] <= 1.0
    assert data["mean"]["auc"] == pytest.approx(np.mean([r["auc"] for r in data["ids"].values()]))
    assert "mean" in format_table(report)


@pytest.fixture(scope="module")
def untrained_cae():
    import keras

    keras.utils.set_random_seed(0)
    return build_cae(n_mels=128, frames=16, config=CaeConfig(filters=(4, 8), bottleneck=4))


@pytest.fixture(scope="module")
def biased():
    return biased_cae(frames=16, config=CaeConfig(filters=(4, 8), bottleneck=4))


def _export(
    model, out: Path, tiny_root: Path, *, arch: str = "cae", frames: int = 16, hop: int = 8, precision="fp32"
):
    from datetime import datetime

    from service.bundle import Training
    from service.features import FeatureParams

    params = FeatureParams()
    paths = sorted((tiny_root / "slider" / "train").glob("normal_id_00_0000000[0-3].wav"))
    specs = [log_mel(read_audio(p, sample_rate=16000).samples, params) for p in paths]
    normalizer = Normalizer(mean=np.full(128, -40.0, np.float32), std=np.full(128, 10.0, np.float32))
    layout = PatchLayout(frames=frames, hop=hop, arch=arch, params=params)
    inputs = patch_array(specs, normalizer=normalizer, layout=layout)
    training = Training(
        trained_at=datetime.now(UTC), data_root=str(tiny_root), n_clips=4, n_validation_clips=4,
        hours=0.01, clips_per_id={"00": 4}, skipped_files=0, epochs_run=0, seed=0,
    )  # fmt: skip
    candidate = Candidate(
        arch=arch, params=params, frames=frames, hop=hop, normalizer=normalizer, machine_type="slider",
        machine_ids=["00"], precision=precision,
    )  # fmt: skip
    calibration = Calibration(paths=paths, machine_ids=["00"] * len(paths))
    return export_detector(
        model, out=out, candidate=candidate, check_inputs=inputs, calibration=calibration, channel=0,
        quantile=0.9, training=training, quantize_inputs=inputs,
    )  # fmt: skip


def test_export_refuses_an_onnx_model_that_differs_and_leaves_nothing(
    untrained_cae, tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "ONNX_TOLERANCE", -1.0)  # any difference is too much
    with pytest.raises(ExportError, match="differs from Keras"):
        _export(untrained_cae, tmp_path / "model", tiny_root)
    assert list(tmp_path.iterdir()) == []  # no model folder, no temporary folder


def test_an_int8_export_that_fails_the_parity_gate_leaves_nothing(
    biased, tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "PARITY_RTOL", 0.0)  # any int8 difference is too much
    with pytest.raises(QuantizationError, match=r"does not score as the fp32 one on 4 calibration clips"):
        _export(biased, tmp_path / "model", tiny_root, precision="int8")
    assert list(tmp_path.iterdir()) == []


def test_an_int8_export_fits_its_threshold_to_the_int8_scores(
    biased, tiny_root: Path, tmp_path: Path
) -> None:
    result = _export(biased, tmp_path / "model", tiny_root, precision="int8")
    assert result.bundle.model.precision == "int8" and result.parity is not None
    # The scores moved (so the threshold below is the int8 graph's), within the gate.
    assert result.parity.n_clips == 4 and 0 < result.parity.max_relative_difference <= quantize.PARITY_RTOL
    ops = {node.op_type for node in onnx.load(str(tmp_path / "model" / MODEL_FILE)).graph.node}
    assert {"QLinearConv", "QLinearMatMul", "Resize"} <= ops and "Conv" not in ops
    paths = sorted((tiny_root / "slider" / "train").glob("normal_id_00_0000000[0-3].wav"))
    int8 = score_files(tmp_path / "model", paths)
    assert result.threshold.value == pytest.approx(fit_gamma_threshold(int8, quantile=0.9).value, rel=1e-9)


def test_export_replaces_a_model_but_not_other_folders(
    untrained_cae, tiny_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    first = _export(untrained_cae, out, tiny_root)
    assert first.max_onnx_difference <= 1e-4
    second = _export(untrained_cae, out, tiny_root)
    assert Detector(out).bundle.model.sha256 == second.bundle.model.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="holds no model"):
        _export(untrained_cae, precious, tiny_root)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_dense_baseline_exports_in_the_detector_layout(tiny_root: Path, tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = build_dense(n_mels=128, frames=5)
    assert model.count_params() > 0 and model.input_shape == (None, 640)
    result = _export(model, tmp_path / "dense", tiny_root, arch="dense", frames=5, hop=1)
    detector = Detector(tmp_path / "dense")
    assert detector.input_shape == (640,)
    samples = read_audio(
        tiny_root / "slider" / "test" / "normal_id_00_00000000.wav", sample_rate=16000
    ).samples
    assert len(detector.score(samples).patch_errors) == (1 + samples.size // 512) - 5 + 1
    assert result.threshold.n_calibration_clips == 4
