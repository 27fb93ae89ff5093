"""Does a detector fitted on a real machine see a 4-5 dB change of its level or envelope?

Issue 14's target: a loudness or envelope change of 4-5 dB on a real machine
is detected (AUC >= 0.9). The real clips in `../shared/data/real-recordings/`
are too few for a fault AUC, but each MIMII clip has 8 microphones x 10 s,
which make a small site: every channel is cut into four 2.5-s pieces, the
first three quarters of the normal clip (24 pieces) fit a detector with
`asd-train fit` (the README's command, cross-fitted), and the last quarter
(8 pieces) is the normal test set. Each condition changes those same 8
pieces (a gain of +-GAIN dB, a high shelf of +GAIN dB above 1 kHz) and is
scored against them; `real fault` is all 32 pieces of the machine's
abnormal clip. `level` scores a piece by how far its RMS level lies from the
training pieces' mean level in dB (how far loudness alone goes; a gain
separates by construction).

    python -m bench.real_level --out reports/real-level.md

Slow: one cross-fit per machine, configuration and seed (a minute or two each).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from sklearn.metrics import roc_auc_score

from bench.machine import describe
from service.audio import read_audio
from service.detector import Detector

RATE = 16000
PIECES = 4  # per channel: 2.5-s pieces of a 10-s clip
MACHINES = ("fan", "pump", "slider", "valve")
CONFIGS: dict[str, tuple[str, ...]] = {
    "cae": (),
    "dense": ("--arch", "dense"),
    "cae-env": ("--scorer", "cae+envelope"),
    "cae-env-max": ("--scorer", "cae+envelope", "--fusion", "max"),
    "cae-env-spec-max": ("--scorer", "cae+envelope+spectrum", "--fusion", "max"),
}
TARGET_AUC = 0.9


def high_shelf(samples: np.ndarray, *, gain_db: float, corner_hz: float = 1000.0) -> np.ndarray:
    """`gain_db` above `corner_hz`, a smooth (logistic in log-frequency) step from 0 dB below it."""
    spectrum = np.fft.rfft(samples)
    hz = np.fft.rfftfreq(samples.size, d=1.0 / RATE)
    octaves = np.log2(np.maximum(hz, 1.0) / corner_hz)
    gain = gain_db / (1.0 + np.exp(-4.0 * octaves))
    return np.fft.irfft(spectrum * 10.0 ** (gain / 20.0), n=samples.size)


def conditions(gain_db: float) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    return {
        f"gain +{gain_db:g} dB": lambda y: y * 10.0 ** (gain_db / 20.0),
        f"gain -{gain_db:g} dB": lambda y: y * 10.0 ** (-gain_db / 20.0),
        f"shelf +{gain_db:g} dB > 1 kHz": lambda y: high_shelf(y, gain_db=gain_db),
    }


def pieces(path: Path) -> list[list[np.ndarray]]:
    """[channel][quarter] pieces of one 8-channel MIMII clip."""
    info = sf.info(str(path))
    out = []
    for channel in range(info.channels):
        samples = read_audio(path, sample_rate=RATE, channel=channel).samples.astype(np.float64)
        size = samples.size // PIECES
        out.append([samples[k * size : (k + 1) * size] for k in range(PIECES)])
    return out


def write(folder: Path, clips: Sequence[np.ndarray], *, label: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, y in enumerate(clips):
        path = folder / f"{label}_id_00_{i:08d}.wav"
        if not path.is_file():
            sf.write(path, y.astype(np.float32), RATE, subtype="FLOAT")  # float: a gain must not clip
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Cell:
    machine: str
    config: str
    seed: int
    auc: dict[str, float]  # condition -> AUC against the normal test pieces
    fit_seconds: float


def fit(train: Path, model: Path, *, seed: int, args: Sequence[str]) -> float:
    if (model / "threshold.json").is_file():
        return float("nan")  # re-used
    command = [sys.executable, "-m", "training.cli", "fit", str(train), "--out", str(model)]
    command += ["--seed", str(seed), "--quiet", *args]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - began


def auc(normal: np.ndarray, other: np.ndarray) -> float:
    labels = np.r_[np.zeros(normal.size), np.ones(other.size)]
    return float(roc_auc_score(labels, np.r_[normal, other]))


def level_db(paths: Sequence[Path]) -> np.ndarray:
    return np.array([10 * np.log10(np.mean(np.square(sf.read(p)[0])) + 1e-20) for p in paths])


def run_machine(
    machine: str, source: Path, work: Path, *, configs: Sequence[str], seeds: Sequence[int], gain_db: float
) -> list[Cell]:
    normal = pieces(source / f"{machine}_normal.wav")
    abnormal = pieces(source / f"{machine}_abnormal.wav")
    base = work / machine
    train = base / "train"
    write(train, [q for channel in normal for q in channel[: PIECES - 1]], label="normal")
    test_clips = [channel[PIECES - 1] for channel in normal]
    test = {"normal": write(base / "test-normal", test_clips, label="normal")}
    for name, change in conditions(gain_db).items():
        slug = name.replace(" ", "_").replace(">", "above").replace("+", "p").replace("-", "m")
        test[name] = write(base / f"test-{slug}", [change(y) for y in test_clips], label="anomaly")
    test["real fault"] = write(
        base / "test-real-fault", [q for channel in abnormal for q in channel], label="anomaly"
    )
    train_level = float(np.mean(level_db(sorted(train.glob("*.wav")))))
    levels = {name: np.abs(level_db(paths) - train_level) for name, paths in test.items()}
    cells = [
        Cell(
            machine,
            "level",
            0,
            {n: auc(levels["normal"], v) for n, v in levels.items() if n != "normal"},
            0.0,
        )
    ]
    for config in configs:
        for seed in seeds:
            model = base / f"model-{config}-seed{seed}"
            seconds = fit(train, model, seed=seed, args=CONFIGS[config])
            detector = Detector(model)
            scores = {
                name: np.array([detector.score_file(p, machine_id="00").score for p in paths])
                for name, paths in test.items()
            }
            cells.append(
                Cell(
                    machine,
                    config,
                    seed,
                    {n: auc(scores["normal"], v) for n, v in scores.items() if n != "normal"},
                    seconds,
                )
            )
            print(f"{machine} {config} seed {seed}: {cells[-1].auc}", file=sys.stderr)
    return cells


def table(cells: Sequence[Cell], *, seeds: Sequence[int]) -> list[str]:
    names = list(cells[0].auc)
    lines = [
        f"AUC of each condition against the 8 normal test pieces; detectors: mean (min-max) over seeds "
        f"{', '.join(map(str, seeds))}; target {TARGET_AUC}.",
        "",
        "| machine | detector | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for machine in dict.fromkeys(c.machine for c in cells):
        for config in dict.fromkeys(c.config for c in cells if c.machine == machine):
            group = [c for c in cells if c.machine == machine and c.config == config]
            row = []
            for name in names:
                values = np.array([c.auc[name] for c in group])
                text = f"{values.mean():.3f}"
                if values.size > 1:
                    text += f" ({values.min():.2f}-{values.max():.2f})"
                row.append(text)
            lines.append(f"| {machine} | {config} | " + " | ".join(row) + " |")
    lines += ["", "Mean over machines (and seeds):", "", "| detector | " + " | ".join(names) + " |"]
    lines.append("| --- | " + " | ".join("---" for _ in names) + " |")
    for config in dict.fromkeys(c.config for c in cells):
        group = [c for c in cells if c.config == config]
        lines.append(
            f"| {config} | " + " | ".join(f"{np.mean([c.auc[n] for c in group]):.3f}" for n in names) + " |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real_level", description=__doc__.split("\n")[0])
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-recordings"
    default_source = Path(os.environ.get("ASD_REAL_RECORDINGS", shared)) / "mimii-8ch"
    parser.add_argument(
        "--source",
        type=Path,
        default=default_source,
        help="folder of MIMII 8-channel clips (default: $ASD_REAL_RECORDINGS or ../shared's, mimii-8ch/)",
    )
    parser.add_argument("--work", type=Path, default=Path("reports/real-level"))
    parser.add_argument("--machines", default=",".join(MACHINES))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--gain-db", type=float, default=4.5)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write the table to")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    machines = [m for m in args.machines.split(",") if m]
    missing = [m for m in machines if not (args.source / f"{m}_normal.wav").is_file()]
    if missing:
        parser.error(f"no {', '.join(missing)} clips in {args.source}")
    began = time.perf_counter()
    cells: list[Cell] = []
    for machine in machines:
        try:
            cells += run_machine(
                machine, args.source, args.work, configs=configs, seeds=args.seeds, gain_db=args.gain_db
            )
        except (RuntimeError, OSError, ValueError) as error:
            print(f"{machine}: FAILED: {error}", file=sys.stderr)
            return 1
    machine = describe()
    lines = [
        "# Level and envelope changes on real machines",
        "",
        f"`python -m bench.real_level {shlex.join(sys.argv[1:] if argv is None else list(argv))}` on "
        f"{machine.cpu}, {machine.usable_cores} cores, load {machine.load_average[0]:g} at the end; "
        f"{time.perf_counter() - began:.0f} s (fits re-used from --work take none).",
        "",
        *table(cells, seeds=args.seeds),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
