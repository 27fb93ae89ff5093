"""Fan, pump and valve: determinism, per-ID character, each fault's signature, SNR, files, errors.

Fault signatures are checked on a family's own sound (`SourceFamily.sound`,
no room or background) with fixed generators and severities, where each
fault has an exact property; the rest goes through `render_clip` and
`generate_dataset` as callers use them.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from training import synth
from training.cli import main
from training.synth import dataset, fan, pump, registry, valve

SR = synth.SAMPLE_RATE
FAMILIES = ("fan", "pump", "valve")
SOURCES = {"fan": fan.FAN, "pump": pump.PUMP, "valve": valve.VALVE}
FAMILY_KINDS = [(f, k) for f in FAMILIES for k in synth.anomaly_kinds(f)]
STRENGTHS = {"fan": fan.STRENGTH, "pump": pump.STRENGTH, "valve": valve.STRENGTH}


def _mean_log_mel(x: np.ndarray) -> np.ndarray:
    from service.features import log_mel

    return log_mel(x).mean(axis=1)


def _own(
    family: str,
    machine_id: str,
    anomaly: str | None,
    *,
    severity: float = 1.0,
    seconds: float = 4.0,
    seed: int = 3,
) -> np.ndarray:
    """The family's own sound at unit scale: normal draws from `seed`, the fault's from seed + 1000."""
    source = SOURCES[family]
    return source.sound(
        source.character(machine_id),
        rng=np.random.default_rng(seed),
        n=round(seconds * SR),
        sr=SR,
        anomaly=anomaly,
        severity=severity,
        arng=np.random.default_rng(seed + 1000),
        scale=1.0,
    ).astype(np.float64)


def _power(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and power spectrum of the whole signal (Hann window)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    return np.fft.rfftfreq(x.size, 1.0 / SR), spec


def _band(x: np.ndarray, lo: float, hi: float) -> float:
    f, p = _power(x)
    return float(p[(f >= lo) & (f < hi)].sum())


def _highpass(x: np.ndarray, cutoff: float) -> np.ndarray:
    sos = signal.butter(4, cutoff, "highpass", fs=SR, output="sos")
    return signal.sosfilt(sos, x)


def _kurtosis(x: np.ndarray) -> float:
    x = x - x.mean()
    return float(np.mean(x**4) / np.mean(x**2) ** 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_arguments_same_clip_other_seed_other_clip(family: str) -> None:
    a = synth.render_clip(family, "02", anomaly=None, seed=7, duration=1.5)
    b = synth.render_clip(family, "02", anomaly=None, seed=7, duration=1.5)
    c = synth.render_clip(family, "02", anomaly=None, seed=8, duration=1.5)
    assert a.dtype == np.float32 and a.shape == (round(1.5 * SR),)
    assert np.array_equal(a, b)
    assert np.mean(np.abs(a - c)) > 0.1 * np.mean(np.abs(a))


@pytest.mark.parametrize("family", FAMILIES)
def test_clips_do_not_depend_on_the_counts_or_other_ids(family: str, tmp_path: Path) -> None:
    small = {"ids": ("04",), "n_train": 1, "n_test_normal": 1, "n_test_anomaly": 1}
    large = {"ids": ("00", "04"), "n_train": 2, "n_test_normal": 2, "n_test_anomaly": 3}
    for name, counts in (("a", small), ("b", large)):
        synth.generate_dataset(tmp_path / name, machine_type=family, duration=0.5, seed=2, **counts)
    for rel in ("train/normal_id_04_00000000.wav", "test/normal_id_04_00000000.wav",
                "test/anomaly_id_04_00000000.wav"):  # fmt: skip
        assert (tmp_path / "a" / family / rel).read_bytes() == (tmp_path / "b" / family / rel).read_bytes()


def test_families_do_not_share_streams() -> None:
    # The same (seed, ID, split, index) gives each family its own noises.
    models = [registry.machine_model(f) for f in ("slider", *FAMILIES)]
    seeds = {m.stream_key: dataset.clip_seed(m, 0, "00", "train_normal", 0).generate_state(2).tobytes()
             for m in models}  # fmt: skip
    assert len(seeds) == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_have_their_own_character(family: str) -> None:
    ids = ("00", "01", "02", "03")
    profiles = {
        (mid, seed): _mean_log_mel(
            synth.render_clip(family, mid, anomaly=None, seed=seed, duration=4.0, snr_db=6.0)
        )
        for mid in ids
        for seed in (0, 1)
    }

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - b) ** 2)))

    within = max(distance(profiles[(m, 0)], profiles[(m, 1)]) for m in ids)
    between = min(distance(profiles[(m, 0)], profiles[(n, 0)]) for m in ids for n in ids if m < n)
    assert between > 1.5 * within, (between, within)


@pytest.mark.parametrize(("family", "kind"), FAMILY_KINDS)
def test_every_fault_changes_the_clip_but_not_its_level_grossly(family: str, kind: str) -> None:
    normal = synth.render_clip(family, "01", anomaly=None, seed=5, duration=3.0, snr_db=3.0)
    faulty = synth.render_clip(family, "01", anomaly=kind, seed=5, duration=3.0, snr_db=3.0)
    assert not np.array_equal(normal, faulty)
    level = 20 * np.log10(
        np.sqrt(np.mean(faulty.astype(np.float64) ** 2) / np.mean(normal.astype(np.float64) ** 2))
    )
    assert abs(level) < 3.0
    assert np.all(np.isfinite(faulty)) and np.max(np.abs(faulty)) < 1.0


@pytest.mark.parametrize("family", ["fan", "pump"])
def test_imbalance_modulates_at_the_shaft_rate(family: str) -> None:
    shaft = SOURCES[family].character("02").rotor.shaft_hz
    envelopes = {}
    for name, kind in (("normal", None), ("faulty", "imbalance")):
        # Above the added low tone: the modulation of the machine's own sound.
        x = _highpass(_own(family, "02", kind), 4 * shaft + 100.0)
        envelopes[name] = np.abs(signal.hilbert(x))
    f, p_normal = _power(envelopes["normal"] - envelopes["normal"].mean())
    _, p_faulty = _power(envelopes["faulty"] - envelopes["faulty"].mean())
    near = np.abs(f - shaft) < 0.03 * shaft
    assert p_faulty[near].sum() > 5 * p_normal[near].sum()
    low = _band(_own(family, "02", "imbalance"), 0.9 * shaft, 1.1 * shaft)
    assert low > 5 * _band(_own(family, "02", None), 0.9 * shaft, 1.1 * shaft)


def _shaft_rate(x: np.ndarray, rotor: object) -> float:
    """The clip's shaft rate, from its blade-pass peak (the rate spreads a little from clip to clip)."""
    f, p = _power(x)
    bpf = rotor.blades * rotor.shaft_hz
    near = np.abs(f - bpf) < 0.03 * bpf
    return float(f[near][np.argmax(p[near])]) / rotor.blades


@pytest.mark.parametrize(("family", "kind"), [("fan", "blade_damage"), ("pump", "clogging")])
def test_an_odd_blade_adds_shaft_harmonics_between_the_blade_pass_ones(
    family: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pump's clogging also changes speed, flow and pulsation: only the blocked passage stays.
    for part in ("clogging_speed", "clogging_flow", "clogging_pulsation"):
        monkeypatch.setitem(pump.STRENGTH, part, (0.0, 0.0))
    rotor = SOURCES[family].character("03").rotor
    normal = _own(family, "03", None, seconds=8.0)
    added = _own(family, "03", kind, seconds=8.0) - normal
    rate = _shaft_rate(normal, rotor)
    f, p = _power(added)

    def near(ks: range | list[int]) -> np.ndarray:
        return np.any([np.abs(f - k * rate) < 0.003 * k * rate + 0.3 for k in ks], axis=0)

    # Tones on the shaft harmonics, most of them between the blade-pass ones.
    assert p[near(range(1, 40 * rotor.blades))].sum() > 0.95 * p.sum()
    assert p[near([k for k in range(1, 4 * rotor.blades) if k % rotor.blades])].sum() > 0.5 * p.sum()


@pytest.mark.parametrize("family", ["fan", "pump"])
def test_clogging_raises_the_blade_pass_tone(family: str) -> None:
    rotor = SOURCES[family].character("01").rotor
    bpf = rotor.blades * rotor.shaft_hz
    peaks = []
    for kind in (None, "clogging"):
        f, p = _power(_own(family, "01", kind, seconds=10.0))
        near = np.abs(f - bpf) < 0.03 * bpf
        peaks.append(f[near][np.argmax(p[near])])
    rise = STRENGTHS[family]["clogging_speed"][1]
    assert peaks[1] / peaks[0] - 1.0 == pytest.approx(rise, abs=0.003)


@pytest.mark.parametrize("family", ["fan", "pump"])
def test_bearing_wear_adds_high_frequency_impulses(family: str) -> None:
    added = _own(family, "00", "bearing") - _own(family, "00", None)
    assert _band(added, 2500.0, SR / 2) > 0.9 * _band(added, 0.0, SR / 2)
    assert _kurtosis(added) > 10.0


def test_cavitation_crackles_in_bursts() -> None:
    ch = pump.pump_character("02")
    added = _own("pump", "02", "cavitation") - _own("pump", "02", None)
    assert _band(added, 0.7 * ch.cavitation_hz, SR / 2) > 0.9 * _band(added, 0.0, SR / 2)
    assert _kurtosis(added) > 10.0


def test_leakage_is_a_steady_hiss_around_the_leak_band() -> None:
    ch = pump.pump_character("02")
    added = _own("pump", "02", "leakage") - _own("pump", "02", None)
    f, p = _power(added)
    centre = f[np.argmax(signal.savgol_filter(p, 2001, 1))]
    assert centre == pytest.approx(ch.leak_hz, rel=0.25)
    # Steady: Gaussian-like, unlike cavitation's crackle.
    assert _kurtosis(added) < 4.0


def _valve_times(machine_id: str, seconds: float, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The normal schedule `_own` renders: `_schedule` takes the first draws of the clip's generator."""
    return valve._schedule(valve.valve_character(machine_id), np.random.default_rng(seed), seconds)


def _open_mask(opens: np.ndarray, closes: np.ndarray, n: int, margin_s: float) -> np.ndarray:
    t = np.arange(n) / SR
    inside = np.zeros(n, dtype=bool)
    for o, c in zip(opens, closes, strict=True):
        inside |= (t > o - margin_s) & (t < c + margin_s)
    return inside


def test_valve_leak_adds_hiss_in_the_rests() -> None:
    seconds = 6.0
    added = _own("valve", "01", "leak", seconds=seconds) - _own("valve", "01", None, seconds=seconds)
    opens, closes = _valve_times("01", seconds)
    # Apart from the edges, where the hiss rises and falls.
    rest = ~_open_mask(opens, closes, added.size, 0.03)
    open_ = _open_mask(opens, closes, added.size, -0.03)
    assert rest.mean() > 0.2 and open_.mean() > 0.05
    assert np.mean(added[rest] ** 2) > 100 * np.mean(added[open_] ** 2)


def test_valve_sticking_only_moves_or_drops_actuations() -> None:
    seconds = 8.0
    normal, faulty = (
        _own("valve", "03", None, seconds=seconds),
        _own("valve", "03", "sticking", seconds=seconds),
    )
    opens, closes = _valve_times("03", seconds)
    change = (faulty - normal) ** 2
    assert change.sum() > 0.01 * (normal**2).sum()
    # Everything that changed starts at an actuation: a late or double click, or a missed opening
    # (whose hiss and closing go with it).
    t = np.arange(normal.size) / SR
    near = np.zeros(normal.size, dtype=bool)
    for o, c in zip(opens, closes, strict=True):
        near |= (t > o - 0.07) & (t < c + valve._KERNEL_S + 0.07)
    assert change[near].sum() > 0.999 * change.sum()


def test_valve_contamination_lowers_the_click_and_rattles_while_open() -> None:
    seconds = 6.0
    normal, faulty = (
        _own("valve", "00", None, seconds=seconds),
        _own("valve", "00", "contamination", seconds=seconds),
    )
    opens, closes = _valve_times("00", seconds)
    inside = [o for o in opens if o > 0 and o + 0.03 < seconds]
    assert inside

    def centroid(x: np.ndarray) -> float:
        bursts = np.concatenate([x[round(o * SR) : round((o + 0.02) * SR)] for o in inside])
        f, p = _power(bursts)
        return float((f * p).sum() / p.sum())

    assert centroid(faulty) < centroid(normal)
    # The rattle: between the clicks of an opening, high-frequency energy appears only while open.
    added = _highpass(faulty - normal, 4500.0)
    t = np.arange(normal.size) / SR
    quiet_open = np.zeros(normal.size, dtype=bool)
    for o, c in zip(opens, closes, strict=True):
        quiet_open |= (t > o + valve._KERNEL_S) & (t < c)
    closed = ~_open_mask(opens, closes, normal.size, valve._KERNEL_S)
    if quiet_open.any():
        assert np.mean(added[quiet_open] ** 2) > 10 * np.mean(added[closed] ** 2)


@pytest.mark.parametrize(("family", "kind"), FAMILY_KINDS)
def test_severity_one_changes_more_than_severity_zero(family: str, kind: str) -> None:
    normal = _own(family, "02", None, seconds=4.0)
    weak = _own(family, "02", kind, severity=0.0, seconds=4.0)
    strong = _own(family, "02", kind, severity=1.0, seconds=4.0)
    if kind == "clogging":
        # Its speed rise drifts every tone's phase: compare the rise, not the waveforms.
        rotor = SOURCES[family].character("02").rotor
        rates = [_shaft_rate(x, rotor) for x in (normal, weak, strong)]
        assert rates[0] < rates[1] < rates[2]
    else:
        assert np.sum((strong - normal) ** 2) > 1.2 * np.sum((weak - normal) ** 2) > 0


@pytest.mark.parametrize("family", ["slider", *FAMILIES])
def test_an_snr_range_is_drawn_per_clip_within_it(family: str) -> None:
    drawn = []
    for seed in range(6):
        clip = dataset.render(family, "00", anomaly=None, seed=seed, duration=0.5, snr_db=(-3.0, 2.0))
        assert -3.0 <= clip.snr_db <= 2.0
        fixed = dataset.render(family, "00", anomaly=None, seed=seed, duration=0.5, snr_db=clip.snr_db)
        assert np.array_equal(clip.audio, fixed.audio)
        drawn.append(clip.snr_db)
    assert len(set(drawn)) == 6
    if family != "slider":
        default = [dataset.render(family, "00", anomaly=None, seed=s, duration=0.5).snr_db for s in range(20)]
        assert min(default) >= -6.0 and max(default) <= 6.0 and max(default) - min(default) > 4.0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lower_snr_means_more_background(family: str) -> None:
    # The same clip with the background 20 dB up: the machine's share of it falls.
    quiet = synth.render_clip(family, "03", anomaly=None, seed=1, duration=2.0, snr_db=30.0).astype(
        np.float64
    )
    loud = synth.render_clip(family, "03", anomaly=None, seed=1, duration=2.0, snr_db=10.0).astype(np.float64)
    noisy = synth.render_clip(family, "03", anomaly=None, seed=1, duration=2.0, snr_db=-10.0).astype(
        np.float64
    )

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1])

    assert corr(quiet, loud) > 0.9 > corr(quiet, noisy)


@pytest.mark.parametrize("family", FAMILIES)
def test_dcase_layout_csv_and_pcm16_without_clipping(family: str, tmp_path: Path) -> None:
    kinds = synth.anomaly_kinds(family)
    summary = synth.generate_dataset(
        tmp_path,
        machine_type=family,
        ids=("00", "05"),
        n_train=2,
        n_test_normal=1,
        n_test_anomaly=len(kinds),
        duration=1.0,
        snr_db=6.0,  # the loudest the defaults make: the machine's peaks weigh most
    )
    root = tmp_path / family
    assert summary.root == root and summary.kind_counts == dict.fromkeys(kinds, 2)
    train = sorted(p.name for p in (root / "train").iterdir())
    test = sorted(p.name for p in (root / "test").iterdir())
    assert train == [f"normal_id_{m}_{i:08d}.wav" for m in ("00", "05") for i in range(2)]
    assert test == sorted(
        [synth.ANOMALY_KINDS_FILE]
        + [f"normal_id_{m}_00000000.wav" for m in ("00", "05")]
        + [f"anomaly_id_{m}_{i:08d}.wav" for m in ("00", "05") for i in range(len(kinds))]
    )
    with open(root / "test" / synth.ANOMALY_KINDS_FILE, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "machine_id", "kind", "severity"]
    assert [r["kind"] for r in rows if r["machine_id"] == "05"] == list(kinds)
    assert all(0.0 <= float(r["severity"]) <= 1.0 for r in rows)
    for path in sorted(root.rglob("*.wav")):
        pcm, rate = sf.read(path, dtype="int16")
        info = sf.info(str(path))
        assert (rate, info.channels, info.subtype, pcm.shape) == (SR, 1, "PCM_16", (SR,))
        assert np.max(np.abs(pcm.astype(np.int32))) < 32767, path.name
        level = 20 * math.log10(np.sqrt(np.mean((pcm / 32768.0) ** 2)))
        assert -60.0 < level < -15.0, (path.name, level)


@pytest.mark.parametrize(
    ("text", "value"), [("6", 6.0), ("-6:6", (-6.0, 6.0)), ("0.5", 0.5), ("-3:-3", (-3.0, -3.0))]
)
def test_parse_snr(text: str, value: object) -> None:
    assert synth.parse_snr(text) == value


@pytest.mark.parametrize("text", ["", "loud", "6:-6", "1:2:3", ":", "nan", "-6:inf", "6 dB"])
def test_parse_snr_rejects_bad_text(text: str) -> None:
    with pytest.raises(synth.SynthError, match=r"SNR|snr_db"):
        synth.parse_snr(text)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: synth.render_clip("drill", "00", anomaly=None, seed=0),
            "supported: fan, pump, slider, valve",
        ),
        (lambda: synth.render_clip("fan", "00", anomaly="dent", seed=0), "blade_damage"),
        (lambda: synth.render_clip("valve", "00", anomaly=None, seed=0, snr_db=(6.0, -6.0)), "low <= high"),
        (lambda: synth.generate_dataset("/nonexistent", machine_type="pump", n_train=-1), "n_train"),
    ],
)
def test_bad_arguments_raise_the_domain_error(call, message: str) -> None:
    with pytest.raises(synth.SynthError, match=message):
        call()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--machine-type", "drill"], "unknown machine_type 'drill'"),
        (["--machine-type", "fan", "--snr-db=-6:x"], "--snr-db"),
        (["--machine-type", "valve", "--train", "-2"], "n_train must be a non-negative integer"),
    ],
)
def test_cli_synth_rejects_bad_input_in_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", str(tmp_path), "--ids", "00", "--train", "1", "--test-normal", "0",
                 "--test-anomaly", "0", *args]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.endswith(errors[0])
    assert errors[0].startswith("asd-train synth: error: ") and message in errors[0]
    assert not any(tmp_path.rglob("*.wav"))


def test_cli_synth_writes_a_family_with_an_snr_range(tmp_path: Path) -> None:
    argv = ["synth", str(tmp_path), "--machine-type", "pump", "--ids", "02", "--train", "1",
            "--test-normal", "0", "--test-anomaly", "2", "--duration", "0.5", "--snr-db=-6:0"]  # fmt: skip
    assert main(argv) == 0
    seq = dataset.clip_seed(registry.machine_model("pump"), 0, "02", "train_normal", 0)
    expected = dataset.render("pump", "02", anomaly=None, seed=seq, duration=0.5, snr_db=(-6.0, 0.0)).audio
    written, _ = sf.read(tmp_path / "pump" / "train" / "normal_id_02_00000000.wav", dtype="float32")
    assert np.max(np.abs(written - expected)) <= 1 / 32768 + 1e-7
    with open(tmp_path / "pump" / "test" / synth.ANOMALY_KINDS_FILE) as table:
        kinds = [r["kind"] for r in csv.DictReader(table)]
    assert kinds == list(synth.anomaly_kinds("pump")[:2])


def test_proxy_auc_counts_ties_half_and_ranks() -> None:
    from training.synth.proxy import _auc

    assert _auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert _auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert _auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
