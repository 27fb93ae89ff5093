"""int8 detectors: `asd-train quantize` on an existing folder and `asd-train fit --precision int8`.

Both must pass the parity gate, record `model.precision: "int8"`, fit every threshold to the int8
graph's own scores, serve through the service unchanged, and write nothing when the gate fails.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.bundle import MODEL_FILE, Bundle, sha256_of
from service.detector import Detector
from tests.service.conftest import make_settings, serve
from training import export, quantize
from training.cli import main
from training.errors import QuantizationError
from training.evaluate import score_files
from training.quantize import PARITY_RTOL, cae_score, check_parity, quantize_detector
from training.threshold import calibrate, fit_gamma_threshold

from .conftest import GARBAGE, SHORT, TINY_FIT_ARGS, Fitted
from .tiny_detector import make_detector, write_test_set

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Quantized:
    result: quantize.QuantizeResult
    folder: Path
    source_sha256: str


def _normal_paths(tiny_root: Path) -> list[Path]:
    """The readable normal clips of the tiny training folder (the fit skipped the two broken ones)."""
    train = tiny_root / "slider" / "train"
    return sorted(p for p in train.glob("normal_*.wav") if p.name not in (GARBAGE, SHORT))


def _run(argv: list[str]) -> tuple[int, str, str]:
    """`asd-train ARGV` in-process: (exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


def _quantize_argv(fitted: Fitted, tiny_root: Path, out: Path) -> list[str]:
    return [
        "quantize",
        str(fitted.model_dir),
        str(tiny_root / "slider" / "train"),
        "--out",
        str(out),
        "--quiet",
    ]


@pytest.fixture(scope="module")
def quantized(fitted: Fitted, tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Quantized:
    assert fitted.exit_code == 0, fitted.stderr
    before = sha256_of(fitted.model_dir / MODEL_FILE)
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    result = quantize_detector(
        fitted.model_dir, tiny_root / "slider" / "train", out, command="asd-train quantize (test)"
    )
    return Quantized(result=result, folder=out, source_sha256=before)


def test_quantize_writes_an_int8_folder_and_leaves_the_fp32_one(quantized: Quantized, fitted: Fitted) -> None:
    bundle = Bundle.read(quantized.folder)
    assert bundle.model.precision == "int8" and Bundle.read(fitted.model_dir).model.precision == "fp32"
    assert bundle.model.sha256 == sha256_of(quantized.folder / MODEL_FILE) != quantized.source_sha256
    assert sha256_of(fitted.model_dir / MODEL_FILE) == quantized.source_sha256
    ops = {node.op_type for node in onnx.load(str(quantized.folder / MODEL_FILE)).graph.node}
    assert {"QLinearConv", "QLinearMatMul", "Resize"} <= ops
    assert not {"Conv", "MatMul", "Tile", "Shape"} & ops
    assert bundle.name == "tiny-int8"
    assert sorted(p.name for p in quantized.folder.parent.iterdir()) == ["tiny-int8"]  # no leftovers


def test_the_gate_passed_on_every_readable_normal_clip(quantized: Quantized, tiny_root: Path) -> None:
    parity = quantized.result.parity
    assert parity.n_clips == len(_normal_paths(tiny_root)) == 16
    assert 0 < parity.max_relative_difference <= PARITY_RTOL and parity.rank_correlation >= 0.99
    assert "int8 graph: 16 clips' scores within" in quantize.format_summary(quantized.result)


def test_the_thresholds_are_refitted_on_the_int8_scores(
    quantized: Quantized, fitted: Fitted, tiny_root: Path
) -> None:
    bundle = Bundle.read(quantized.folder)
    old = Bundle.read(fitted.model_dir).threshold
    paths = _normal_paths(tiny_root)
    scores = np.asarray(score_files(quantized.folder, paths))
    assert bundle.threshold.value == pytest.approx(calibrate(scores, quantile=old.quantile).value, rel=1e-9)
    assert bundle.threshold.value != old.value
    assert bundle.threshold.scores_from == "site"
    event = bundle.threshold.calibration_history[-1]
    assert event.command == "asd-train quantize (test)" and event.n_clips == 16


def test_a_fused_bundles_cae_standardisation_moves_to_the_int8_scale(
    quantized: Quantized, fitted: Fitted, tiny_root: Path
) -> None:
    old = Bundle.read(fitted.model_dir).scoring
    if old is None or not old.fused:
        pytest.skip("the tiny fit has no fused scoring section")
    new = Bundle.read(quantized.folder).scoring
    assert new is not None and new.model_wide is not None and old.model_wide is not None
    paths = _normal_paths(tiny_root)
    fp32_detector, int8_detector = Detector(fitted.model_dir), Detector(quantized.folder)
    fp32 = [cae_score(fp32_detector.score_file(p)) for p in paths]
    int8 = [cae_score(int8_detector.score_file(p)) for p in paths]
    ratio = np.mean(int8) / np.mean(fp32)
    before, after = old.model_wide.standardisation, new.model_wide.standardisation
    assert after["cae"].mean == pytest.approx(before["cae"].mean * ratio, rel=1e-9)
    assert after["cae"].std == pytest.approx(before["cae"].std * ratio, rel=1e-9)
    assert after["envelope"] == before["envelope"]  # the envelope scorer has no graph


def test_the_service_serves_the_int8_model(quantized: Quantized, tmp_path: Path, tiny_root: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(quantized.folder, models / "tiny-int8")
    path = tiny_root / "slider" / "test" / "anomaly_id_00_00000000.wav"
    with serve(make_settings(models, default_model="tiny-int8")) as client:
        info = client.get("/v1/models/tiny-int8").json()
        assert info["status"] == "ready" and info["precision"] == "int8"
        assert info["model"]["precision"] == "int8"
        answer = client.post("/v1/models/tiny-int8/score", files={"file": ("a.wav", path.read_bytes())})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["score"] == pytest.approx(Detector(quantized.folder).score_file(path).score, rel=1e-6)
    assert body["threshold"] == pytest.approx(Bundle.read(quantized.folder).threshold.value)


def test_a_failing_gate_is_a_clear_error_and_writes_nothing(
    fitted: Fitted, tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "PARITY_RTOL", 0.0)  # any int8 difference is too much
    code, _, message = _run(_quantize_argv(fitted, tiny_root, tmp_path / "tiny-int8"))
    assert code == 2
    assert message.startswith(
        "asd-train quantize: error: the int8 graph does not score as the fp32 one on 16"
    )
    assert "apart (tolerance 0 %)" in message and "nothing was written" in message
    assert list(tmp_path.iterdir()) == []


def test_quantize_never_imports_tensorflow(fitted: Fitted, tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = _quantize_argv(fitted, tiny_root, out)
    code = (
        "import sys\n"
        "from training.cli import main\n"
        f"status = main({argv!r})\n"
        "print(status, sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 []"
    assert Bundle.read(out).model.precision == "int8"


def test_the_gate_checks_each_clip_and_the_clips_order() -> None:
    fp32 = np.linspace(1.0, 1.01, 20)  # close scores: 0.5 % apart at most
    names = [f"clip{i}.wav" for i in range(20)]
    fine = check_parity(fp32, fp32 * 1.003, names=names)
    assert fine.n_clips == 20 and fine.rank_correlation == pytest.approx(1.0)
    assert fine.mean_relative_difference == pytest.approx(0.003)
    with pytest.raises(QuantizationError, match=r"rank correlation is -1\.0000 \(needs >= 0\.99\)") as caught:
        check_parity(fp32, fp32[::-1], names=names)  # every clip within 1 %, their order reversed
    assert "apart" not in str(caught.value)
    with pytest.raises(
        QuantizationError, match=r"clip3\.wav scores 1\.5\d* with int8 and 1\.00\d* with fp32"
    ):
        check_parity(fp32, np.where(np.arange(20) == 3, 1.5, fp32), names=names)
    with pytest.raises(QuantizationError, match="rank correlation is nan"):
        check_parity(np.ones(5), np.ones(5), names=names[:5])  # no order to keep


def test_an_int8_folder_is_not_quantized_again(quantized: Quantized, tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="holds an int8 graph already"):
        quantize_detector(quantized.folder, tiny_root / "slider" / "train", tmp_path / "again")
    assert list(tmp_path.iterdir()) == []


def test_an_own_threshold_without_enough_clips_is_refused_before_anything_runs(tmp_path: Path) -> None:
    model = make_detector(tmp_path / "model", per_id={"00": 1.0})
    normal = write_test_set(tmp_path / "site", ids=("00", "02"), n_normal=3, n_anomaly=0) / "slider" / "test"
    with pytest.raises(QuantizationError, match=r"too few normal clips .*\(00: 3\)"):
        quantize_detector(model, normal, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def quantize_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of patches of each graph the export quantizes, in order."""
    calls: list[int] = []
    real = export.quantize_folder

    def spy(folder: Path, patches: np.ndarray) -> Bundle:
        calls.append(len(patches))
        return real(folder, patches)

    monkeypatch.setattr(export, "quantize_folder", spy)
    return calls


def test_fit_precision_int8_fits_the_thresholds_to_the_int8_graph(
    tiny_root: Path, tmp_path: Path, quantize_calls: list[int]
) -> None:
    out = tmp_path / "tiny-int8"
    code, stdout, stderr = _run(
        ["fit", str(tiny_root), "--out", str(out), *TINY_FIT_ARGS, "--precision", "int8"]
    )
    assert code == 0, stderr
    assert "  precision  int8 graph: 4 clips' scores within" in stdout
    assert len(quantize_calls) == 1  # holdout: the exported graph only
    bundle = Bundle.read(out)
    assert bundle.model.precision == "int8"
    train = tiny_root / "slider" / "train"
    scores = score_files(out, [train / name for name in bundle.training.validation_files or []])
    assert bundle.threshold.value == pytest.approx(fit_gamma_threshold(scores, quantile=0.9).value, rel=1e-9)


def test_a_cross_fit_quantizes_every_graph_that_scores_a_calibration_clip(
    tiny_root: Path, tmp_path: Path, quantize_calls: list[int]
) -> None:
    args = [*TINY_FIT_ARGS, "--calibration", "cross-fit", "--folds", "2"]  # the last --calibration wins
    out = tmp_path / "tiny-int8-cv"
    code, stdout, stderr = _run(["fit", str(tiny_root), "--out", str(out), *args, "--precision", "int8"])
    assert code == 0, stderr
    # Two fold models, the final model's level on its training clips, the exported graph.
    assert len(quantize_calls) == 4 and all(n > 0 for n in quantize_calls)
    bundle = Bundle.read(out)
    assert bundle.model.precision == "int8" and bundle.threshold.scores_from == "cross_fit"
    assert "  precision  int8 graph: 16 clips' scores within" in stdout
