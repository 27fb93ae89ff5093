"""Synthetic slide-rail sounds: determinism, DCASE layout, per-ID character, anomalies, bad arguments."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from training import synth

SR = synth.SAMPLE_RATE
IDS = ("00", "02", "04", "06")
_MEL = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=128)


def _log_mel(x: np.ndarray) -> np.ndarray:
    """10*log10 mel power, shape (128, frames): n_fft 1024, hop 512, centred frames."""
    padded = np.pad(x.astype(np.float64), 512, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 1024)[::512]
    window = np.hanning(1026)[1:-1]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return 10 * np.log10(power @ _MEL.T + 1e-10).T


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_clip_shape_type_and_level() -> None:
    x = synth.render_clip("slider", "00", anomaly=None, seed=1, duration=2.5)
    assert x.shape == (round(2.5 * SR),)
    assert x.dtype == np.float32
    assert np.all(np.isfinite(x))
    # Normalised with headroom: audible, nowhere near clipping.
    assert -40.0 < _rms_db(x) < -18.0
    assert np.max(np.abs(x)) < 0.9


def test_clip_length_follows_duration_and_rate() -> None:
    x = synth.render_clip("slider", "02", anomaly="dent", seed=3, duration=1.23, sample_rate=22050)
    assert x.shape == (round(1.23 * 22050),)


def test_same_seed_same_clip_other_seed_other_clip() -> None:
    a = synth.render_clip("slider", "04", anomaly=None, seed=7, duration=2.0)
    b = synth.render_clip("slider", "04", anomaly=None, seed=7, duration=2.0)
    c = synth.render_clip("slider", "04", anomaly=None, seed=8, duration=2.0)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_a_seed_sequence_object_can_be_reused() -> None:
    seq = np.random.SeedSequence([5, 4, 0, 1])
    a = synth.render_clip("slider", "06", anomaly="squeal", seed=seq, duration=2.0)
    b = synth.render_clip("slider", "06", anomaly="squeal", seed=seq, duration=2.0)
    assert np.array_equal(a, b)


def test_ids_have_their_own_character() -> None:
    # The time-averaged log-mel spectrum of one ID varies little from clip to
    # clip but differs clearly between IDs.
    profiles = {
        (mid, seed): _log_mel(synth.render_clip("slider", mid, anomaly=None, seed=seed, snr_db=6.0)).mean(
            axis=1
        )
        for mid in IDS
        for seed in (0, 1)
    }

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - b) ** 2)))

    within = max(distance(profiles[(m, 0)], profiles[(m, 1)]) for m in IDS)
    between = min(distance(profiles[(m, 0)], profiles[(n, 0)]) for m in IDS for n in IDS if m < n)
    assert between > 2.0 * within, (between, within)


def test_clips_of_one_id_vary() -> None:
    a = _log_mel(synth.render_clip("slider", "00", anomaly=None, seed=1, duration=3.0))
    b = _log_mel(synth.render_clip("slider", "00", anomaly=None, seed=2, duration=3.0))
    # Different stroke phase at the clip start: the frames differ a lot...
    assert np.mean(np.abs(a - b)) > 3.0
    # ...but the machine is the same: its average spectrum stays close.
    assert np.sqrt(np.mean((a.mean(axis=1) - b.mean(axis=1)) ** 2)) < 4.0


@pytest.mark.parametrize("kind", synth.ANOMALY_KINDS)
def test_each_anomaly_changes_the_spectrum_measurably_but_not_grossly(kind: str) -> None:
    for mid, seed in (("00", 11), ("04", 12)):
        normal = synth.render_clip("slider", mid, anomaly=None, seed=seed, duration=3.0, snr_db=6.0)
        faulty = synth.render_clip("slider", mid, anomaly=kind, seed=seed, duration=3.0, snr_db=6.0)
        ln, la = _log_mel(normal), _log_mel(faulty)
        # Somewhere in the spectrum the fault shows: in the most affected mel
        # band, its five most affected frames differ by more than 2 dB.
        peak_change = np.sort(np.abs(la - ln), axis=1)[:, -5:].mean(axis=1).max()
        assert peak_change > 2.0, kind
        # Bounded: no band's average moves by more than 12 dB, the clip's
        # level by more than 3 dB, and nothing clips.
        assert np.abs(la.mean(axis=1) - ln.mean(axis=1)).max() < 12.0, kind
        assert abs(_rms_db(faulty) - _rms_db(normal)) < 3.0, kind
        assert np.max(np.abs(faulty)) < 0.95, kind


def test_additive_faults_leave_the_rest_of_the_clip_alone() -> None:
    # A dent only clicks where the carriage passes it: most samples are the
    # normal clip's, so a fault is "the normal sound plus the fault".
    normal = synth.render_clip("slider", "02", anomaly=None, seed=4, duration=3.0)
    dented = synth.render_clip("slider", "02", anomaly="dent", seed=4, duration=3.0)
    same = np.isclose(normal, dented, atol=1e-4)
    assert 0.5 < same.mean() < 1.0


def test_generate_dataset_layout_format_and_csv(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    n_kinds = len(synth.ANOMALY_KINDS)
    summary = synth.generate_dataset(
        tmp_path,
        ids=("00", "06"),
        n_train=2,
        n_test_normal=1,
        n_test_anomaly=n_kinds,
        seed=3,
        duration=1.0,
        progress=lambda done, total: calls.append((done, total)),
    )
    root = tmp_path / "slider"
    assert summary.root == root
    train = sorted(p.name for p in (root / "train").iterdir())
    test = sorted(p.name for p in (root / "test").iterdir())
    assert train == [f"normal_id_{m}_{i:08d}.wav" for m in ("00", "06") for i in range(2)]
    assert test == sorted(
        ["anomaly_kinds.csv"]
        + [f"normal_id_{m}_00000000.wav" for m in ("00", "06")]
        + [f"anomaly_id_{m}_{i:08d}.wav" for m in ("00", "06") for i in range(n_kinds)]
    )
    total = 2 * (2 + 1 + n_kinds)
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert (summary.n_train, summary.n_test_normal, summary.n_test_anomaly) == (4, 2, 2 * n_kinds)
    assert summary.n_files == total
    assert summary.seconds == pytest.approx(total * 1.0)
    assert summary.kind_counts == dict.fromkeys(synth.ANOMALY_KINDS, 2)

    info = sf.info(str(root / "test" / "anomaly_id_06_00000000.wav"))
    assert (info.samplerate, info.channels, info.frames, info.subtype, info.format) == (
        SR,
        1,
        SR,
        "PCM_16",
        "WAV",
    )

    with open(root / "test" / "anomaly_kinds.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "machine_id", "kind", "severity"]
    assert sorted(r["file"] for r in rows) == sorted(n for n in test if n.startswith("anomaly_id_"))
    for mid in ("00", "06"):
        kinds = [r["kind"] for r in rows if r["machine_id"] == mid]
        assert sorted(kinds) == sorted(synth.ANOMALY_KINDS)
    assert all(r["file"][11:13] == r["machine_id"] for r in rows)
    assert all(0.0 <= float(r["severity"]) <= 1.0 for r in rows)


def test_default_files_are_ten_second_16k_mono_pcm16(tmp_path: Path) -> None:
    synth.generate_dataset(tmp_path, ids=("04",), n_train=1, n_test_normal=0, n_test_anomaly=0)
    info = sf.info(str(tmp_path / "slider" / "train" / "normal_id_04_00000000.wav"))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 160000, "PCM_16")
    with open(tmp_path / "slider" / "test" / "anomaly_kinds.csv") as fh:
        assert fh.read() == "file,machine_id,kind,severity\n"


def test_anomaly_kinds_cycle_evenly_over_a_subset(tmp_path: Path) -> None:
    summary = synth.generate_dataset(
        tmp_path,
        ids=("02",),
        n_train=0,
        n_test_normal=0,
        n_test_anomaly=5,
        duration=0.5,
        anomaly_kinds=("squeal", "stall"),
    )
    assert summary.kind_counts == {"squeal": 3, "stall": 2}
    with open(tmp_path / "slider" / "test" / "anomaly_kinds.csv", newline="") as fh:
        assert [r["kind"] for r in csv.DictReader(fh)] == ["squeal", "stall", "squeal", "stall", "squeal"]


def test_dataset_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    kwargs = {"ids": ("00", "02"), "n_train": 2, "n_test_normal": 1, "n_test_anomaly": 2, "duration": 0.75}
    synth.generate_dataset(tmp_path / "a", seed=5, **kwargs)
    synth.generate_dataset(tmp_path / "b", seed=5, **kwargs)
    synth.generate_dataset(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (_digest(tmp_path / d) for d in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".wav"))


def test_train_clips_do_not_depend_on_test_counts_or_other_ids(tmp_path: Path) -> None:
    synth.generate_dataset(
        tmp_path / "a", ids=("06",), n_train=2, n_test_normal=0, n_test_anomaly=0, duration=0.5
    )
    synth.generate_dataset(
        tmp_path / "b", ids=("00", "06"), n_train=3, n_test_normal=2, n_test_anomaly=3, duration=0.5
    )
    for i in range(2):
        name = f"slider/train/normal_id_06_{i:08d}.wav"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# sha256 of the bytes the synthesiser wrote when the shipped models were fitted: the README data
# set's first training clip of ID 00, and two 10-s clips as float32. Any change to the slider's
# arithmetic or its random streams changes them, and then the shipped models describe other data.
_README_TRAIN_00 = "ecd3cd8add9826f8f4cf0ba6af7af011dc31cec998824014ff591a7e07e10bbd"
_RENDER_DIGESTS = {
    ("00", None, 0): "775c49aff559798a993d2cd16fb876dd6a40d639bf08aeedb30496fa9bc7fd1d",
    ("00", "dent", 5): "9d7e71bb9d6222a3d082d8ff6246d92e13edef867b2c2fc7037d05e6f26a1f80",
}


def test_the_slider_makes_the_same_bytes_as_when_the_models_were_fitted(tmp_path: Path) -> None:
    synth.generate_dataset(tmp_path, ids=("00",), n_train=1, n_test_normal=0, n_test_anomaly=0, seed=0)
    written = (tmp_path / "slider" / "train" / "normal_id_00_00000000.wav").read_bytes()
    assert hashlib.sha256(written).hexdigest() == _README_TRAIN_00
    for (mid, kind, seed), digest in _RENDER_DIGESTS.items():
        clip = synth.render_clip("slider", mid, anomaly=kind, seed=seed)
        assert hashlib.sha256(clip.tobytes()).hexdigest() == digest, (mid, kind, seed)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"machine_type": "drill"}, "fan, pump, slider, valve"),
        ({"anomaly": "crack"}, "loose_belt"),
        ({"machine_id": "0"}, "two digits"),
        ({"machine_id": "007"}, "two digits"),
        ({"machine_id": "ab"}, "two digits"),
        ({"machine_id": 0}, "two digits"),
        ({"seed": -1}, "seed"),
        ({"duration": 0.0}, "duration"),
        ({"duration": float("nan")}, "duration"),
        ({"sample_rate": 4000}, "sample_rate"),
        ({"snr_db": float("inf")}, "snr_db"),
    ],
)
def test_render_clip_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"machine_type": "slider", "machine_id": "00", "anomaly": None, "seed": 0, "duration": 1.0}
    args.update(kwargs)
    machine_type, machine_id = args.pop("machine_type"), args.pop("machine_id")
    with pytest.raises(ValueError, match=message):
        synth.render_clip(machine_type, machine_id, **args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"machine_type": "drill"}, "supported: fan, pump, slider, valve"),
        ({"snr_db": (6.0, -6.0)}, "low <= high"),
        ({"ids": ("00", "2")}, "two digits"),
        ({"ids": "00"}, "not the string"),
        ({"ids": ()}, "at least one"),
        ({"ids": ("00", "00")}, "each once"),
        ({"anomaly_kinds": ("dent", "rust")}, "rust"),
        ({"anomaly_kinds": ()}, "at least one"),
        ({"n_train": -1}, "n_train"),
        ({"n_test_anomaly": 1.5}, "n_test_anomaly"),
        ({"seed": -3}, "seed"),
    ],
)
def test_generate_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"n_train": 1, "n_test_normal": 0, "n_test_anomaly": 0, "duration": 0.5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        synth.generate_dataset(tmp_path, **args)
    assert not any(tmp_path.rglob("*.wav"))
