"""`asd-train benchmark`: options, tables, failures, caching, and one tiny real run through the CLI."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import benchmark_data, benchmark_run
from training.benchmark import CellResult, Outcome, build_config
from training.benchmark_fit import FitRun
from training.benchmark_report import build_tables, family_table, kind_table, summary_table, write_outputs
from training.cli import main
from training.errors import BenchmarkConfigError

from .conftest import TINY_FIT_ARGS

# --- options ----------------------------------------------------------------------------------------------


def test_full_and_quick_defaults() -> None:
    full = build_config()
    assert full.families == ("slider", "fan", "pump", "valve") and full.seeds == (0, 1)
    assert [(s.text, s.value) for s in full.snrs] == [("default", None), ("-6:0", (-6.0, 0.0))]
    assert full.detectors == {"cae": (), "dense": ("--arch", "dense")}
    assert full.ids == ("00", "02", "04", "06")
    assert (full.n_train, full.n_test_normal, full.n_test_anomaly, full.duration) == (300, 100, 100, 10.0)
    assert full.fit_seeds is None
    assert [full.fit_seeds_for(d) for d in full.datasets()[:3]] == [(0,), (0,), (1,)]
    assert len(full.datasets()) == 16

    quick = build_config(quick=True)
    assert quick.seeds == (0,) and quick.ids == ("00", "02")
    assert quick.fit_args == ("--epochs", "2", "--calibration", "holdout", "--val-fraction", "0.25")
    assert (quick.n_train, quick.n_test_normal, quick.n_test_anomaly) == (20, 10, 10)
    # Explicit options win over --quick's.
    assert build_config(quick=True, families="slider", n_train="12").families == ("slider",)
    assert build_config(quick=True, n_train="12").n_train == 12


def test_detectors_are_data_picked_and_added() -> None:
    config = build_config(definitions=["cae+env=--scorer cae+envelope --pooling 'max 2'"])
    assert list(config.detectors) == ["cae", "dense", "cae+env"]
    assert config.detectors["cae+env"] == ("--scorer", "cae+envelope", "--pooling", "max 2")
    picked = build_config(detectors="dense,cae+env", definitions=["cae+env=--scorer cae+envelope"])
    assert list(picked.detectors) == ["dense", "cae+env"]
    redefined = build_config(definitions=["dense=--arch dense --epochs 1"])
    assert redefined.detectors["dense"] == ("--arch", "dense", "--epochs", "1")
    assert build_config(fit_seeds="3,4").fit_seeds == (3, 4)
    # The built-in plain CAE is picked by name and runs fit with the reconstruction error alone.
    assert build_config(detectors="cae,cae-plain").detectors == {"cae": (), "cae-plain": ("--scorer", "cae")}
    assert [s.text for s in build_config(snr="DEFAULT,3,-6:0.0").snrs] == ["default", "3", "-6:0"]


@pytest.mark.parametrize("options", [
    {"snr": "3:1"}, {"snr": "loud"}, {"snr": "1:2:3"}, {"snr": "default,DEFAULT"}, {"snr": "-6:0,-6.0:0"},
    {"seeds": "a"}, {"seeds": "0,0"}, {"seeds": ""}, {"seeds": "0,,1"}, {"families": "Fan!"},
    {"detectors": "cae,foo"}, {"definitions": ["noequals"]}, {"definitions": ["x=--out y"]},
    {"definitions": ["x=--seed 3"]}, {"definitions": ["x=--mach pump"]}, {"definitions": ["x=--ids=00"]},
    {"definitions": ["x=--arch 'dense"]}, {"fit_args": "--out z"}, {"n_train": "-1"}, {"n_test_anomaly": "x"},
    {"duration": "0"}, {"duration": "ten"}, {"ids": "0a"}, {"fit_seeds": "-1"},
])  # fmt: skip
def test_malformed_options_are_refused(options: dict) -> None:
    with pytest.raises(BenchmarkConfigError):
        build_config(**options)


@pytest.mark.parametrize(("argv", "message"), [
    (["--detectors", "cae,nope"], "unknown detector(s) nope; known: cae, dense"),
    (["--snr=9:3"], "SNR variant '9:3'"),
    (["--detector", "broken"], "NAME=ARGS"),
    (["--train", "many"], "--train takes a number"),
])  # fmt: skip
def test_cli_refuses_bad_options_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["benchmark", "--out", str(tmp_path / "Q.md"), "--work", str(tmp_path / "w"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("asd-train benchmark: error: ") and message in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "Q.md").exists()


# --- tables from synthetic records ------------------------------------------------------------------------


def _cell(
    family: str,
    seed: int,
    detector: str,
    aucs: list[float],
    paucs: list[float],
    *,
    snr: str = "default",
    kinds: dict | None = None,
) -> CellResult:
    ids = {mid: {"auc": a, "pauc": p} for mid, a, p in zip(("00", "02"), aucs, paucs, strict=True)}
    return CellResult(family, seed, snr, detector, seed, ids=ids, kinds=kinds or {})


def _records() -> list[CellResult]:
    return [
        _cell(
            "slider",
            0,
            "cae",
            [0.9, 0.8],
            [0.7, 0.6],
            kinds={"00": {"dent": 0.9, "squeal": 0.8}, "02": {"dent": 0.7}},
        ),
        _cell("slider", 0, "dense", [0.8, 0.8], [0.6, 0.5], kinds={"00": {"dent": 0.6}, "02": {"dent": 0.8}}),
        _cell("slider", 1, "cae", [0.7, 0.9], [0.5, 0.7], kinds={"00": {"dent": 0.5}, "02": {"dent": 0.7}}),
        _cell("slider", 1, "dense", [0.75, 0.85], [0.55, 0.6]),
        _cell("pump", 0, "cae", [0.6, 0.6], [0.5, 0.5]),
        CellResult("pump", 0, "default", "dense", 0).fail(
            "fit", "exit status 2: asd-train fit: error: only 4 clips"
        ),
    ]


def test_summary_differences_and_every_id_flag() -> None:
    summary = summary_table(_records(), ["cae", "dense"])
    rows = {(r["family"], r["seed"]): r["detectors"] for r in summary["rows"]}
    assert list(rows) == [("slider", 0), ("slider", 1), ("pump", 0)]
    s0 = rows[("slider", 0)]
    assert s0["cae"]["auc"] == pytest.approx(0.85) and s0["cae"]["pauc"] == pytest.approx(0.65)
    assert s0["cae"]["auc_vs_dense"] == pytest.approx(0.05)
    assert s0["cae"]["pauc_vs_dense"] == pytest.approx(0.1)
    assert s0["cae"]["every_id_at_least_dense"] is True  # 0.9 >= 0.8 and 0.8 >= 0.8
    s1 = rows[("slider", 1)]
    assert s1["cae"]["auc_vs_dense"] == pytest.approx(0.0) and s1["cae"]["every_id_at_least_dense"] is False
    assert rows[("pump", 0)]["dense"] == {"status": "failed", "stage": "fit"}
    assert "auc_vs_dense" not in rows[("pump", 0)]["cae"]  # nothing to compare with
    overall = summary["overall"]
    assert overall["cae"]["auc"] == pytest.approx(np.mean([0.85, 0.8, 0.6])) and overall["cae"]["runs"] == 3
    assert overall["dense"]["auc"] == pytest.approx(np.mean([0.8, 0.8])) and overall["dense"]["runs"] == 2
    assert overall["cae"]["auc_vs_dense"] == pytest.approx(0.025) and overall["cae"]["compared"] == 2
    assert overall["cae"]["every_id_at_least_dense"] == 1
    assert "auc_vs_dense" not in overall["dense"]


def test_family_spread_over_seeds_and_kinds() -> None:
    rows = {(r["family"], r["detector"]): r for r in family_table(_records(), ["cae", "dense"])}
    cae = rows[("slider", "cae")]
    assert cae["runs"] == 2 and cae["failed"] == 0
    assert cae["auc"]["mean"] == pytest.approx(0.825)
    assert (cae["auc"]["min"], cae["auc"]["max"]) == pytest.approx((0.8, 0.85))
    assert cae["auc"]["std"] == pytest.approx(np.std([0.85, 0.8], ddof=1))
    assert rows[("pump", "dense")]["runs"] == 0 and rows[("pump", "dense")]["failed"] == 1
    assert rows[("pump", "dense")]["auc"]["mean"] is None and rows[("pump", "cae")]["auc"]["std"] is None

    kinds = {(r["family"], r["kind"]): r["detectors"] for r in kind_table(_records(), ["cae", "dense"])}
    # cae dent: seed 0 mean(0.9, 0.7) = 0.8, seed 1 mean(0.5, 0.7) = 0.6 -> 0.7; squeal only in seed 0.
    assert kinds[("slider", "dent")]["cae"] == {"auc": pytest.approx(0.7), "runs": 2}
    assert kinds[("slider", "dent")]["dense"] == {"auc": pytest.approx(0.7), "runs": 1}
    assert kinds[("slider", "squeal")] == {
        "cae": {"auc": pytest.approx(0.8), "runs": 1},
        "dense": {"auc": None, "runs": 0},
    }


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def test_markdown_and_json_agree_with_the_per_id_numbers(tmp_path: Path) -> None:
    config = build_config(families="slider,pump", seeds="0,1", snr="default", ids="00,02")
    outcome = Outcome(_records(), 125.0, "2026-01-01T00:00:00+00:00")
    machine = {"cpu": "Test CPU", "cores": 2, "usable_cores": 2, "load_average_at_start": [1.5, 1.0, 1.0]}
    write_outputs(
        outcome,
        config,
        machine=machine,
        command="asd-train benchmark --out Q.md",
        out=tmp_path / "Q.md",
        json_out=tmp_path / "Q.json",
    )
    text = (tmp_path / "Q.md").read_text()
    data = json.loads((tmp_path / "Q.json").read_text())
    assert "Test CPU, 2 cores" in text and "`asd-train benchmark --out Q.md`" in text
    assert "wall time 2 min 05 s in all" in text and "Cells: 6, of which 1 FAILED" in text

    # The JSON's tables are recomputed from its own per-ID numbers.
    cells = [CellResult.from_dict(c) for c in data["cells"]]
    assert build_tables(cells, ["cae", "dense"]) == {k: data[k] for k in ("summary", "families", "kinds")}
    for cell in data["cells"]:
        if cell["status"] == "ok":
            row = next(
                r
                for r in data["summary"]["rows"]
                if (r["family"], r["seed"]) == (cell["family"], cell["seed"])
            )
            aucs = [v["auc"] for v in cell["ids"].values()]
            assert row["detectors"][cell["detector"]]["auc"] == pytest.approx(np.mean(aucs))

    summary = _table_rows(text, "Summary")
    assert summary[0] == [
        "slider",
        "0",
        "default",
        "0",
        "0.850",
        "0.650",
        "+0.050",
        "+0.100",
        "yes",
        "0.800",
        "0.550",
    ]
    assert summary[1][8] == "no"
    assert summary[2][9:] == ["FAILED (fit)", "FAILED (fit)"]
    pauc_vs_dense = f"{np.mean([0.65 - 0.55, 0.6 - 0.575]):+.3f}"
    assert summary[3] == [
        "mean over data sets",
        "",
        "",
        "",
        "0.750",
        "0.583",
        "+0.025",
        pauc_vs_dense,
        "1 of 2",
        "0.800 (2 of 3)",
        f"{np.mean([0.55, 0.575]):.3f} (2 of 3)",
    ]
    families = {(r[0], r[2]): r for r in _table_rows(text, "Per family and detector")}
    std_auc, std_pauc = np.std([0.85, 0.8], ddof=1), np.std([0.65, 0.6], ddof=1)
    assert families[("slider", "cae")][3:] == [
        "2",
        "0.825",
        "0.800-0.850",
        f"{std_auc:.3f}",
        "0.625",
        "0.600-0.650",
        f"{std_pauc:.3f}",
    ]
    assert families[("pump", "dense")][3:5] == ["0 (1 FAILED)", "-"]
    per_id = _table_rows(text, "Per data set and machine ID")
    assert ["slider", "1", "default", "1", "02", "0.900", "0.700", "0.850", "0.600"] in per_id
    assert ["pump", "0", "default", "0", "00", "0.600", "0.500", "FAILED (fit)", "FAILED (fit)"] in per_id
    kinds = {(r[0], r[2]): r[3:] for r in _table_rows(text, "Per fault kind")}
    assert kinds[("slider", "dent")] == ["0.700", "0.700"] and kinds[("slider", "squeal")] == ["0.800", "-"]
    failures = _table_rows(text, "Failures")
    assert failures == [
        [
            "pump",
            "0",
            "default",
            "0",
            "dense",
            "FAILED",
            "fit",
            "exit status 2: asd-train fit: error: only 4 clips",
        ]
    ]


# --- running: failures and the cache, with a stand-in for the fit and the evaluation ------------------------


class FakeFits:
    """Writes a detector folder recording the command, as `asd-train fit` does; counts the fits."""

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.fail = fail
        self.commands: list[str] = []
        self.evaluated: list[Path] = []

    def fit(self, arguments: list[str], *, cwd: Path) -> FitRun:
        command = shlex.join(["asd-train", *arguments])
        self.commands.append(command)
        out = cwd / arguments[arguments.index("--out") + 1]
        if any(name in out.name for name in self.fail):
            return FitRun(2, 0.5, "reading clips\nasd-train fit: error: only 3 readable clip(s)\n")
        out.mkdir(parents=True)
        (out / "model.onnx").write_bytes(b"onnx")
        bundle = {"training": {"command": command, "skipped_names": []}}
        (out / "threshold.json").write_text(json.dumps(bundle))
        return FitRun(0, 1.5, "fit summary\n")

    def evaluate(self, model_dir: Path, data_root: Path, ids: list[str]) -> dict:
        self.evaluated.append(model_dir)
        assert (data_root / "slider" / "test").is_dir()
        base = 0.9 if model_dir.name.startswith("cae") else 0.8
        return {
            "ids": {mid: {"auc": base - 0.01 * i, "pauc": base - 0.1} for i, mid in enumerate(ids)},
            "kinds": {
                "ids": {mid: {"dent": {"auc": base, "n_anomaly": 2}} for mid in ids},
                "mean": {"dent": base},
            },
        }


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeFits:
    fits = FakeFits()
    monkeypatch.setattr(benchmark_run, "run_fit_command", fits.fit)
    monkeypatch.setattr(benchmark_run, "evaluate_cell", fits.evaluate)
    return fits


SMALL = [
    "--seeds",
    "0",
    "--snr",
    "default",
    "--ids",
    "00,02",
    "--train",
    "3",
    "--test-normal",
    "2",
    "--test-anomaly",
    "2",
    "--duration",
    "1",
]


def test_a_failing_cell_is_reported_and_the_rest_go_on(
    tmp_path: Path, fake: FakeFits, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.fail = {"broken"}
    argv = [
        "benchmark",
        "--out",
        str(tmp_path / "Q.md"),
        "--work",
        str(tmp_path / "w"),
        *SMALL,
        "--families",
        "nosuchfamily,slider",
        "--detector",
        "broken=--arch dense --epochs 1",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "FAILED nosuchfamily seed 0 SNR default, cae fit seed 0 (data): family missing" in err
    assert (
        "FAILED slider seed 0 SNR default, broken fit seed 0 (fit): exit status 2: "
        "asd-train fit: error: only 3"
    ) in err
    data = json.loads((tmp_path / "Q.json").read_text())
    status = {(c["family"], c["detector"]): (c["status"], c["stage"]) for c in data["cells"]}
    assert status == {
        ("nosuchfamily", "cae"): ("failed", "data"),
        ("nosuchfamily", "dense"): ("failed", "data"),
        ("nosuchfamily", "broken"): ("failed", "data"),
        ("slider", "cae"): ("ok", None),
        ("slider", "dense"): ("ok", None),
        ("slider", "broken"): ("failed", "fit"),
    }
    assert len(fake.commands) == 3  # the slider fits ran after the missing family
    text = (tmp_path / "Q.md").read_text()
    failures = _table_rows(text, "Failures")
    assert len(failures) == 4 and all(row[5] == "FAILED" for row in failures)
    assert any("unknown machine_type 'nosuchfamily'" in row[7] for row in failures)
    assert any(row[4] == "broken" and "broken_fit0.log" in row[7] for row in failures)
    assert "| nosuchfamily | 0 | default | 0 | all | FAILED (data) |" in text


def _run(tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "benchmark",
            "--out",
            str(tmp_path / "Q.md"),
            "--work",
            str(tmp_path / "w"),
            *SMALL,
            "--families",
            "slider",
            *extra,
        ]
    )


def test_a_second_run_reuses_data_and_fits_and_a_changed_command_refits(
    tmp_path: Path, fake: FakeFits, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = []
    real = benchmark_data.synthesise
    monkeypatch.setattr(benchmark_data, "synthesise", lambda *a: (made.append(a[2]), real(*a)))
    assert _run(tmp_path) == 0
    assert len(made) == 1 and len(fake.commands) == 2 and len(fake.evaluated) == 2
    first = json.loads((tmp_path / "Q.json").read_text())["cells"]

    assert _run(tmp_path) == 0  # everything re-used: no synthesis, no fit, no scoring
    assert len(made) == 1 and len(fake.commands) == 2 and len(fake.evaluated) == 2
    second = json.loads((tmp_path / "Q.json").read_text())["cells"]
    assert [c["fit_reused"] for c in second] == [True, True] and all(c["data_reused"] for c in second)
    assert [c["ids"] for c in second] == [c["ids"] for c in first]
    assert [c["fit_seconds"] for c in second] == [1.5, 1.5]  # measured when fitted, kept beside the folder

    # Another command for the same folders: both detectors refit (a stale folder is removed first).
    assert _run(tmp_path, "--fit-args=--epochs 1") == 0
    assert len(fake.commands) == 4 and all(
        c.endswith("--epochs 1") or "--arch dense" in c for c in fake.commands[2:]
    )
    # An interrupted fit (a folder without threshold.json) is fitted again; the other is re-used.
    cae = Path(json.loads((tmp_path / "Q.json").read_text())["cells"][0]["model_dir"])
    (cae / "threshold.json").unlink()
    assert _run(tmp_path, "--fit-args=--epochs 1") == 0
    assert len(fake.commands) == 5 and "cae_fit0" in fake.commands[-1]

    # An incomplete data set (a clip lost) is made again; the same synthesiser makes the same clips, so
    # the fits stand, but the rewritten test clips are scored again.
    next((tmp_path / "w" / "data").rglob("normal_id_02_00000001.wav")).unlink()
    evaluated = len(fake.evaluated)
    assert _run(tmp_path, "--fit-args=--epochs 1") == 0
    assert len(made) == 2 and len(fake.commands) == 5 and len(fake.evaluated) == evaluated + 2
    # Another version of the synthesiser: its data set is made again and everything on it refitted.
    monkeypatch.setattr(benchmark_data, "sample_digest", lambda config, spec: "another version")
    assert _run(tmp_path, "--fit-args=--epochs 1") == 0
    assert len(made) == 3 and len(fake.commands) == 7 and len(fake.evaluated) == evaluated + 4


def test_a_real_fit_with_too_few_clips_fails_its_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fit refuses before TensorFlow loads, so this runs the real subprocess in seconds.
    monkeypatch.setattr(benchmark_run, "evaluate_cell", FakeFits().evaluate)
    assert _run(tmp_path, "--detectors", "dense") == 1
    err = capsys.readouterr().err
    assert "FAILED slider seed 0 SNR default, dense fit seed 0 (fit): exit status 2:" in err
    assert "fit needs at least 10 normal clips" in err
    cell = json.loads((tmp_path / "Q.json").read_text())["cells"][0]
    assert cell["status"] == "failed" and cell["ids"] == {}
    assert Path(cell["model_dir"]).with_name("dense_fit0.log").read_text().startswith("$ asd-train fit ")


# --- one tiny real run ------------------------------------------------------------------------------------


def test_tiny_end_to_end_run_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = TINY_FIT_ARGS.index("--seed")
    tiny = [a for i, a in enumerate(TINY_FIT_ARGS) if i not in (seed, seed + 1) and a != "--quiet"]
    argv = [
        "benchmark",
        "--out",
        str(tmp_path / "QUALITY.md"),
        "--work",
        str(tmp_path / "w"),
        "--families",
        "slider",
        "--seeds",
        "1",
        "--snr",
        "default",
        "--ids",
        "00,02",
        "--train",
        "8",
        "--test-normal",
        "3",
        "--test-anomaly",
        "3",
        "--duration",
        "3",
        "--fit-args",
        " ".join(tiny),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "estimated run time: about" in out and "an estimate" in out
    assert re.search(r"benchmark finished in .* \(measured\): 2 cell\(s\), 0 FAILED", out)
    data = json.loads((tmp_path / "QUALITY.json").read_text())
    cells = {c["detector"]: c for c in data["cells"]}
    assert set(cells) == {"cae", "dense"} and all(c["status"] == "ok" for c in cells.values())
    for name, cell in cells.items():
        assert set(cell["ids"]) == {"00", "02"} and cell["kinds"] and cell["fit_seconds"] > 0
        bundle = json.loads((Path(cell["model_dir"]) / "threshold.json").read_text())
        assert bundle["training"]["command"] == cell["command"] and "--seed 1" in cell["command"]
        assert bundle["training"]["arch_options"] is not None
        assert ("--arch dense" in cell["command"]) == (name == "dense")
    text = (tmp_path / "QUALITY.md").read_text()
    assert "| slider | default | cae | 1 |" in text and "## Per fault kind" in text
    assert "Failures\n\nNone" in text

    # Resume: nothing refitted. A test clip turned unreadable fails both evaluations, by name.
    clip = next((tmp_path / "w" / "data").rglob("test/anomaly_id_02_00000000.wav"))
    clip.write_bytes(b"RIFF but not a wav file" * 20)
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "fitting" not in captured.out and captured.out.count("re-used") >= 2
    assert captured.err.count("(evaluate): ") == 2 and "anomaly_id_02_00000000.wav" in captured.err
    data = json.loads((tmp_path / "QUALITY.json").read_text())
    assert [(c["fit_reused"], c["stage"]) for c in data["cells"]] == [(True, "evaluate"), (True, "evaluate")]


def test_the_library_does_not_import_the_cli() -> None:
    modules = ", ".join(f"training.benchmark{part}" for part in ("", "_data", "_fit", "_run", "_report"))
    code = f"import sys, {modules}; print('training.cli' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_sample_digest_follows_what_the_synthesiser_makes() -> None:
    config = build_config(
        families="slider", seeds="0,1", snr="default,3", ids="00,02", n_test_anomaly="2", duration="1"
    )
    slider0, slider0_snr3, slider1, _ = config.datasets()
    digest = benchmark_data.sample_digest(config, slider0)
    assert digest == benchmark_data.sample_digest(config, slider0)
    assert (
        len(
            {
                digest,
                benchmark_data.sample_digest(config, slider1),
                benchmark_data.sample_digest(config, slider0_snr3),
            }
        )
        == 3
    )
