"""threshold.json: its published JSON Schema, and format-1 folders migrating to format 2.

The fixture `tests/fixtures/format1-slider` is the default slide-rail detector as it shipped in
bundle format 1; every detector written today is format 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema_rs
import numpy as np
import pytest
from pydantic import ValidationError

from service.bundle import FORMAT_VERSION, THRESHOLD_FILE, Bundle, upgrade
from service.detector import Detector

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "docs" / "threshold.schema.json"
FORMAT_1 = REPO / "tests" / "fixtures" / "format1-slider"
sys.path.insert(0, str(REPO / "scripts"))

from threshold_schema import schema_text  # noqa: E402 (scripts/ is no package)


@pytest.fixture(scope="module")
def validator() -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(json.loads(SCHEMA.read_text(encoding="utf-8")))


@pytest.fixture
def format1(tmp_path: Path) -> Path:
    folder = tmp_path / "legacy"
    shutil.copytree(FORMAT_1, folder)
    return folder


def test_the_published_schema_is_the_one_the_model_generates() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == schema_text(), (
        "docs/threshold.schema.json is stale: make schema"
    )


def test_the_check_mode_fails_on_a_stale_schema(tmp_path: Path) -> None:
    script = REPO / "scripts" / "threshold_schema.py"
    ok = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / "scripts"
    shutil.copytree(REPO / "scripts", stale)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "threshold.schema.json").write_text("{}\n")
    # The copy resolves docs/ beside itself, so it sees the stale file; `service` comes from the repo.
    done = subprocess.run(
        [sys.executable, str(stale / "threshold_schema.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert done.returncode == 1 and "stale" in done.stderr, done.stderr


@pytest.mark.parametrize("folder", ["models/slider", "models/slider-dense", "tests/fixtures/format1-slider"])
def test_every_shipped_threshold_json_validates_against_the_schema(folder: str, validator) -> None:
    document = json.loads((REPO / folder / THRESHOLD_FILE).read_text(encoding="utf-8"))
    validator.validate(document)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d.update(format_version=3), "a format this code does not know"),
        (lambda d: d.update(surprise=1), "a key the format does not have"),
        (lambda d: d["threshold"].update(value="high"), "a threshold that is no number"),
        (lambda d: d.pop("features"), "a missing section"),
        (lambda d: d["model"].update(precision="fp16"), "a precision the service has no graph for"),
    ],
)
def test_the_schema_refuses_what_the_service_refuses(change, why, validator, format1: Path) -> None:
    document = json.loads((format1 / THRESHOLD_FILE).read_text(encoding="utf-8"))
    change(document)
    assert not validator.is_valid(document), why
    with pytest.raises(ValidationError):
        Bundle.model_validate(document)


def test_a_format_1_folder_loads_as_format_2(format1: Path) -> None:
    raw = json.loads((format1 / THRESHOLD_FILE).read_text(encoding="utf-8"))
    assert raw["format_version"] == 1 and FORMAT_VERSION == 2
    bundle = Bundle.read(format1)
    assert bundle.format_version == 2
    # Everything format 1 said survives the migration unchanged.
    assert bundle.threshold.value == raw["threshold"]["value"] == 0.3280930803129083
    assert (
        bundle.threshold.gamma is not None
        and bundle.threshold.gamma.shape == raw["threshold"]["gamma"]["shape"]
    )
    assert bundle.model.sha256 == raw["model"]["sha256"]
    assert bundle.normalization.mean == raw["normalization"]["mean"]
    # What format 2 added is absent, not invented: no per-ID fits, no curve, no fingerprint.
    assert bundle.threshold.per_id is None and bundle.threshold.curve is None and bundle.fingerprint is None
    assert bundle.threshold.calibration_history == []
    assert "precision" not in raw["model"] and bundle.model.precision == "fp32"


def test_a_folder_without_a_precision_holds_an_fp32_graph_and_int8_is_valid(validator) -> None:
    document = json.loads((REPO / "models" / "slider" / THRESHOLD_FILE).read_text(encoding="utf-8"))
    document["model"].pop("precision", None)  # format 2 as written before the field
    assert Bundle.model_validate(document).model.precision == "fp32"
    document["model"]["precision"] = "int8"
    validator.validate(document)
    assert Bundle.model_validate(document).model.precision == "int8"


def test_upgrade_is_pure_and_idempotent(format1: Path) -> None:
    raw = json.loads((format1 / THRESHOLD_FILE).read_text(encoding="utf-8"))
    once = upgrade(raw)
    assert raw["format_version"] == 1, "upgrade must not change its argument"
    assert once["format_version"] == 2 and upgrade(once) == once
    with pytest.raises(ValueError, match="format_version 7"):
        upgrade({**raw, "format_version": 7})


def test_a_migrated_folder_scores_and_writes_back_as_format_2(
    format1: Path, tmp_path: Path, validator
) -> None:
    detector = Detector(format1)
    rng = np.random.default_rng(0)
    scored = detector.score((0.05 * rng.standard_normal(16000 * 10)).astype(np.float32))
    assert np.isfinite(scored.score) and scored.patch_errors.size > 1

    out = tmp_path / "written"
    out.mkdir()
    detector.bundle.write(out)
    written = json.loads((out / THRESHOLD_FILE).read_text(encoding="utf-8"))
    assert written["format_version"] == 2
    validator.validate(written)
    assert Bundle.read(out) == detector.bundle
