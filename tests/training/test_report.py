import argparse
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.audio import read_audio
from service.detector import Detector
from tests.training.tiny_detector import make_detector, with_threshold, write_test_set
from training import plots
from training.clip_scores import ModelScores, find_test_clips
from training.errors import ClipError, EvaluationError, MissingFolderError, ModelLoadError, NoTestDataError
from training.evaluate_command import add_evaluate_arguments, run_evaluate
from training.metrics import detection_metrics
from training.report import build_report, evaluate_model
from training.report_output import format_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ID_KEYS = {"auc", "pauc", "precision", "recall", "f1", "tp", "fp", "tn", "fn", "n_normal", "n_anomaly"}
MEAN_KEYS = {"auc", "pauc", "precision", "recall", "f1"}
N_NORMAL, N_ANOMALY = 4, 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny detectors (CAE and dense layout) and a two-ID synthetic test set."""
    root = tmp_path_factory.mktemp("evaluate")
    cae = make_detector(root / "slider-cae", arch="cae", factor=0.5)
    dense = make_detector(root / "slider-dense", arch="dense", factor=0.7)
    # Thresholds between the normal clips and most anomalous ones (see tiny_detector).
    with_threshold(cae, 15.7)
    with_threshold(dense, 5.66)
    data = write_test_set(root / "data", ids=("00", "02"), n_normal=N_NORMAL, n_anomaly=N_ANOMALY)
    return {"root": root, "cae": cae, "dense": dense, "data": data}


def _assert_png(path: Path, *, min_kb: float = 5) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_kb * 1024, f"{path} is only {len(data)} bytes"


def _read_csv(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    assert "\r" not in text  # the DCASE baseline writes "\n" line ends
    return list(csv.reader(text.splitlines()))


def _assert_section(section: dict, *, model: str) -> None:
    assert section["model"] == model
    assert section["machine_type"] == "slider"
    assert set(section["ids"]) == {"00", "02"}
    for metrics in section["ids"].values():
        assert set(metrics) == ID_KEYS
        assert all(0.0 <= metrics[k] <= 1.0 for k in MEAN_KEYS)
        assert (metrics["n_normal"], metrics["n_anomaly"]) == (N_NORMAL, N_ANOMALY)
        assert metrics["tp"] + metrics["fn"] == N_ANOMALY and metrics["tn"] + metrics["fp"] == N_NORMAL
    assert set(section["mean"]) == MEAN_KEYS
    for key in MEAN_KEYS:
        expected = sum(m[key] for m in section["ids"].values()) / 2
        assert section["mean"][key] == pytest.approx(expected)


def test_evaluate_writes_report_csvs_and_figures(setup, tmp_path, capsys):
    out = tmp_path / "report"
    report = evaluate_model(setup["cae"], setup["data"], out=out, progress=True)
    assert "scoring slider-cae" in capsys.readouterr().err  # the tqdm bar

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    assert set(on_disk) == {"model", "machine_type", "threshold", "ids", "mean"}
    assert on_disk["threshold"] == pytest.approx(15.7)
    _assert_section(on_disk, model="slider-cae")
    # The louder clips score higher, and the barely-audible anomaly of each ID is missed.
    assert on_disk["mean"]["auc"] > 0.8
    assert on_disk["ids"]["00"]["fn"] >= 1

    test_dir = setup["data"] / "slider" / "test"
    for machine_id in ("00", "02"):
        expected_names = sorted(p.name for p in test_dir.glob(f"*_id_{machine_id}_*.wav"))
        scores = _read_csv(out / f"anomaly_score_slider_id_{machine_id}.csv")
        decisions = _read_csv(out / f"decision_result_slider_id_{machine_id}.csv")
        assert len(scores) == len(decisions) == N_NORMAL + N_ANOMALY
        assert sorted(row[0] for row in scores) == expected_names
        assert [row[0] for row in decisions] == [row[0] for row in scores]
        assert all(len(row) == 2 for row in scores + decisions)
        # Decisions are score > threshold, and the report's metrics follow from the CSV.
        assert [int(d[1]) for d in decisions] == [int(float(s[1]) > 15.7) for s in scores]
        if machine_id == "00":
            # Scored in a thread pool, yet each row holds its own file's score.
            detector = Detector(setup["cae"])
            for name, value in scores:
                y = read_audio(test_dir / name, sample_rate=16000).samples
                assert float(value) == pytest.approx(detector.score(y).score, rel=1e-6)
        labels = [int(row[0].startswith("anomaly")) for row in scores]
        recomputed = detection_metrics(labels, [float(row[1]) for row in scores], 15.7)
        assert recomputed == on_disk["ids"][machine_id]

    for figure in ("roc.png", "score_histograms.png", "confusion_matrices.png", "bin_errors.png"):
        _assert_png(out / figure)
    assert not (out / "compare").exists()


def test_compare_puts_both_models_in_one_report(setup, tmp_path, capsys):
    out = tmp_path / "both"
    report = evaluate_model(setup["cae"], setup["data"], out=out, compare=setup["dense"], progress=False)
    _assert_section(report, model="slider-cae")
    _assert_section(report["compare"], model="slider-dense")
    assert "compare" not in report["compare"]
    assert json.loads((out / "report.json").read_text()) == report
    # Each model's CSVs: the first at the top, the compared one under compare/.
    for folder in (out, out / "compare"):
        assert len(_read_csv(folder / "anomaly_score_slider_id_02.csv")) == N_NORMAL + N_ANOMALY
    assert _read_csv(out / "anomaly_score_slider_id_00.csv") != _read_csv(
        out / "compare" / "anomaly_score_slider_id_00.csv"
    )
    for figure in ("roc.png", "score_histograms.png", "confusion_matrices.png", "bin_errors.png"):
        _assert_png(out / figure)

    table = format_table(report)
    assert "slider-cae" in table and "slider-dense" in table
    assert len(re.findall(r"^mean\s", table, flags=re.MULTILINE)) == 2
    assert len(re.findall(r"^0[02]\s", table, flags=re.MULTILINE)) == 4


def test_table_columns_are_aligned(setup):
    scores = ModelScores(
        model="m",
        machine_type="slider",
        threshold=0.5,
        ids={
            "00": {"files": ["a.wav", "b.wav", "c.wav"], "labels": [0, 1, 1], "scores": [0.3, 0.9, 0.2]},
            "04": {"files": ["d.wav", "e.wav"], "labels": [0, 1], "scores": [0.3, 0.7]},
        },
    )
    table = format_table(build_report(scores))
    rows = [line for line in table.splitlines() if re.match(r"^(ID|00|04|mean)\s", line)]
    assert len(rows) == 4
    assert len({len(row) for row in rows}) == 1  # same width: columns line up
    header = rows[0]
    mean_row = rows[-1]
    # Mean row: metrics averaged, counts summed. ID 00: AUC 0.5 (0.2 ranks below 0.3),
    # tp 1, fn 1, tn 1; ID 04: AUC 1, tp 1, tn 1.
    assert mean_row.split()[-4:] == ["2", "0", "2", "1"]
    assert mean_row.split()[2] == "0.7500"
    assert header.index("AUC") + len("AUC") == mean_row.index("0.7500") + len("0.7500")  # right-aligned


def test_build_report_refuses_an_id_with_one_class():
    scores = ModelScores(
        model="m",
        machine_type="slider",
        threshold=0.5,
        ids={"00": {"files": ["a.wav", "b.wav"], "labels": [0, 0], "scores": [0.1, 0.2]}},
    )
    with pytest.raises(NoTestDataError, match="ID 00: AUC is undefined without anomalous clips"):
        build_report(scores)


def test_write_report_checks_results_match_the_report(tmp_path):
    ids = {"00": {"files": ["a.wav", "b.wav"], "labels": [0, 1], "scores": [0.1, 0.9]}}
    first = ModelScores(model="a", machine_type="slider", threshold=0.5, ids=ids)
    other = ModelScores(model="b", machine_type="slider", threshold=0.5, ids=ids)
    with pytest.raises(ValueError, match="results are for"):
        write_report(build_report(first), other, tmp_path)
    written = write_report(build_report(first, other), [first, other], tmp_path)
    assert tmp_path / "compare" / "decision_result_slider_id_00.csv" in written
    assert _read_csv(tmp_path / "decision_result_slider_id_00.csv") == [["a.wav", "0"], ["b.wav", "1"]]


def test_ids_option_selects_a_subset(setup, tmp_path):
    report = evaluate_model(setup["cae"], setup["data"], ids=["2"], progress=False)
    assert list(report["ids"]) == ["02"]
    assert not list(tmp_path.iterdir())  # out=None writes nothing


def test_missing_folders_raise_missing_folder_error(setup, tmp_path):
    with pytest.raises(MissingFolderError, match=r"data folder .* does not exist"):
        evaluate_model(setup["cae"], tmp_path / "nowhere", progress=False)
    with pytest.raises(MissingFolderError, match=r"model folder .* does not exist"):
        evaluate_model(tmp_path / "no-model", setup["data"], progress=False)


def test_model_without_test_data_for_its_ids(setup, tmp_path):
    other_ids = write_test_set(tmp_path / "ids46", ids=("04", "06"), n_normal=1, n_anomaly=1)
    expected = r"no test clips for machine ID\(s\) 00, 02 in .* clips for 04, 06"
    with pytest.raises(NoTestDataError, match=expected):
        evaluate_model(setup["cae"], other_ids, progress=False)

    (tmp_path / "empty" / "slider" / "test").mkdir(parents=True)
    with pytest.raises(NoTestDataError, match=r"no WAV files in .*expected the DCASE layout"):
        evaluate_model(setup["cae"], tmp_path / "empty", progress=False)

    (tmp_path / "other-type" / "fan" / "test").mkdir(parents=True)
    with pytest.raises(NoTestDataError, match="no WAV files in"):
        evaluate_model(setup["cae"], tmp_path / "other-type", progress=False)

    only_normal = write_test_set(tmp_path / "normal-only", ids=("00", "02"), n_normal=2, n_anomaly=0)
    with pytest.raises(NoTestDataError, match="machine ID 00 has no anomalous test clips"):
        evaluate_model(setup["cae"], only_normal, progress=False)

    with pytest.raises(EvaluationError, match="machine IDs are numbers"):
        evaluate_model(setup["cae"], setup["data"], ids=["x1"], progress=False)


def test_unlabelled_evaluation_set_is_explained(tmp_path):
    test_dir = tmp_path / "slider" / "test"
    test_dir.mkdir(parents=True)
    (test_dir / "id_01_00000000.wav").write_bytes(b"")
    with pytest.raises(NoTestDataError, match="unlabelled"):
        find_test_clips(tmp_path, "slider")


def test_find_test_clips_accepts_the_machine_type_and_test_folders(setup):
    via_root = find_test_clips(setup["data"], "slider")
    assert via_root == find_test_clips(setup["data"] / "slider", "slider")
    assert via_root == find_test_clips(setup["data"] / "slider" / "test", "slider")
    assert [label for _, label in via_root["00"]] == [1] * N_ANOMALY + [0] * N_NORMAL


def test_an_undecodable_clip_is_named(setup, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(setup["data"], data)
    bad = data / "slider" / "test" / "normal_id_02_00000099.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(ClipError, match=r"normal_id_02_00000099.wav: cannot decode audio"):
        evaluate_model(setup["cae"], data, progress=False, workers=2)


def test_broken_model_and_other_machine_type(setup, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(setup["cae"], broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="sha256"):
        evaluate_model(broken, setup["data"], progress=False)

    fan = make_detector(tmp_path / "fan", machine_type="fan")
    with pytest.raises(EvaluationError, match="cannot compare a 'slider' model with a 'fan' model"):
        evaluate_model(setup["cae"], setup["data"], compare=fan, progress=False)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="asd-train evaluate")
    add_evaluate_arguments(parser)
    return parser.parse_args(argv)


def test_run_evaluate_exit_status_and_messages(setup, tmp_path, capsys):
    status = run_evaluate(_parse([str(setup["cae"]), str(tmp_path / "missing"), "--no-progress"]))
    captured = capsys.readouterr()
    assert status == 2
    assert "error: data folder" in captured.err and "does not exist" in captured.err

    out = tmp_path / "cli"
    argv = [str(setup["dense"]), str(setup["data"]), "--out", str(out), "--channel", "0", "--no-progress"]
    assert run_evaluate(_parse(argv)) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^mean\s+slider-dense\s+\d\.\d{4}", printed, flags=re.MULTILINE)
    assert json.loads((out / "report.json").read_text())["model"] == "slider-dense"


def test_training_curves_figure(tmp_path):
    history = {"loss": [1.0, 0.5, 0.3, 0.25], "val_loss": [1.1, 0.6, 0.4, 0.45], "lr": [1e-3] * 4}
    path = plots.plot_training_curves(history, tmp_path / "fit" / "training_curves.png")
    _assert_png(path)
    with pytest.raises(ValueError, match="no 'loss'"):
        plots.plot_training_curves({"val_loss": [1.0]}, tmp_path / "x.png")


def test_bin_errors_locate_the_anomalous_tone(setup, tmp_path):
    """bins.csv and bin_errors.npz, for both graph layouts: each clip's row
    averages to its score, and a tone's error sits in the mel bins at its frequency."""
    out = tmp_path / "bins"
    evaluate_model(setup["cae"], setup["data"], out=out, compare=setup["dense"], progress=False)
    for folder in (out, out / "compare"):
        arrays = np.load(folder / "bin_errors.npz")
        errors, centres = arrays["bin_errors"], arrays["centre_hz"]
        assert errors.shape == (2 * (N_NORMAL + N_ANOMALY), 128)
        assert np.all(np.diff(centres) > 0) and 0 < centres[0] < 100 and 7000 < centres[-1] < 8000
        scores = {}
        for machine_id in ("00", "02"):
            rows = _read_csv(folder / f"anomaly_score_slider_id_{machine_id}.csv")
            scores |= {name: float(value) for name, value in rows}
        for name, machine_id, label, row in zip(
            arrays["files"], arrays["ids"], arrays["labels"], errors, strict=True
        ):
            assert machine_id in name and label == name.startswith("anomaly")
            assert row.mean() == pytest.approx(scores[name], rel=1e-5)
            index = int(name[-12:-4])
            if label and index > 0:  # the loud tones: 1000 + 40 * seed Hz (tiny_detector.write_test_set)
                seed = 100 * ("00", "02").index(machine_id) + 50 + index
                assert abs(centres[np.argmax(row)] - (1000 + 40 * seed)) < 150
        table = _read_csv(folder / "bins.csv")
        assert table[0] == ["bin", "centre_hz", "normal_error", "normal_sd", "anomaly_error", "separation"]
        assert [int(r[0]) for r in table[1:]] == list(range(128))
        normal = errors[arrays["labels"] == 0]
        assert [float(r[2]) for r in table[1:]] == pytest.approx(normal.mean(axis=0), rel=1e-5)
        separation = np.array([float(r[5]) for r in table[1:]])
        assert separation.max() > 3  # the tones stand far out of the normal clips' spread


def _with_kinds(setup, tmp_path, text: str) -> Path:
    """A copy of the test set with `text` as its anomaly_kinds.csv."""
    data = tmp_path / "kinds-data"
    shutil.copytree(setup["data"], data)
    (data / "slider" / "test" / "anomaly_kinds.csv").write_text(text, encoding="utf-8")
    return data


def test_auc_per_fault_kind_from_anomaly_kinds_csv(setup, tmp_path, capsys):
    # Clip 0 of each ID is the barely audible tone, clips 1 and 2 the loud ones
    # (tiny_detector.write_test_set); clip 2 of ID 02 is left out of the file.
    rows = ["file,machine_id,kind,severity"]
    for machine_id in ("00", "02"):
        rows.append(f"anomaly_id_{machine_id}_00000000.wav,{machine_id},faint,0.1")
        rows.append(f"anomaly_id_{machine_id}_00000001.wav,{machine_id},loud,0.9")
    rows.append("anomaly_id_00_00000002.wav,00,loud,0.9")
    data = _with_kinds(setup, tmp_path, "\n".join(rows) + "\n")
    out = tmp_path / "kinds"
    report = evaluate_model(setup["cae"], data, out=out, compare=setup["dense"], progress=False)
    for section, folder in ((report, out), (report["compare"], out / "compare")):
        kinds = section["kinds"]
        assert set(kinds["ids"]["00"]) == {"faint", "loud"}
        assert set(kinds["ids"]["02"]) == {"faint", "loud", "unlisted"}
        assert kinds["ids"]["00"]["loud"]["n_anomaly"] == 2 and kinds["ids"]["02"]["loud"]["n_anomaly"] == 1
        for machine_id, per_kind in kinds["ids"].items():
            scored = dict(_read_csv(folder / f"anomaly_score_slider_id_{machine_id}.csv"))
            normal = [float(v) for name, v in scored.items() if name.startswith("normal")]
            faint = float(scored[f"anomaly_id_{machine_id}_00000000.wav"])
            # Each kind's AUC ranks only its own clips against the ID's normal clips.
            assert per_kind["faint"]["auc"] == pytest.approx(np.mean([faint > n for n in normal]))
            listed = (1, 2) if machine_id == "00" else (1,)
            loud = [float(scored[f"anomaly_id_{machine_id}_0000000{i}.wav"]) for i in listed]
            assert per_kind["loud"]["auc"] == pytest.approx(np.mean([a > n for a in loud for n in normal]))
        assert kinds["mean"]["loud"] == pytest.approx(
            (kinds["ids"]["00"]["loud"]["auc"] + kinds["ids"]["02"]["loud"]["auc"]) / 2
        )
        assert kinds["mean"]["unlisted"] == pytest.approx(kinds["ids"]["02"]["unlisted"]["auc"])
        table = _read_csv(folder / "kinds.csv")
        assert table[0] == ["machine_id", "kind", "n_anomaly", "auc"]
        assert ["mean", "loud", "3", f"{kinds['mean']['loud']:.6f}"] in table
        assert len(table) == 1 + 5 + 3
    assert json.loads((out / "report.json").read_text()) == report
    printed = format_table(report)
    assert "AUC per fault kind" in printed
    assert re.search(r"^mean\s+slider-cae\s+\d\.\d{3}\s+\d\.\d{3}\s+\d\.\d{3}$", printed, flags=re.MULTILINE)


def test_a_broken_anomaly_kinds_csv_is_a_clear_error(setup, tmp_path, capsys):
    data = _with_kinds(setup, tmp_path, "name;fault\nanomaly_id_00_00000000.wav;dent\n")
    message = "anomaly_kinds.csv: needs a header with the columns file and kind"
    with pytest.raises(EvaluationError, match=message):
        evaluate_model(setup["cae"], data, progress=False)
    argv = [str(setup["cae"]), str(data), "--out", str(tmp_path / "o"), "--no-progress"]
    assert run_evaluate(_parse(argv)) == 2
    assert "fix or remove it" in capsys.readouterr().err
