from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.features import FeatureParams, log_mel
from service.patches import PatchLayout
from training.dataset import (
    DEFAULT_ID,
    ClipFile,
    FeatureClip,
    fit_normalizer,
    list_clips,
    load_features,
    normalize_id,
    parse_ids,
    parse_name,
    patch_array,
    resolve_folder,
    split_validation,
)
from training.errors import DatasetError

from .conftest import SR, write_tone

PARAMS = FeatureParams()


@pytest.mark.parametrize(
    ("name", "machine_id", "label"),
    [
        ("normal_id_00_00000000.wav", "00", "normal"),
        ("anomaly_id_06_00000123.wav", "06", "anomaly"),
        ("normal_id_2_7.wav", "02", "normal"),  # unpadded ID
        ("NORMAL_ID_04_00000001.WAV", "04", "normal"),
        ("section_id_12_rec.wav", "12", None),
        ("pump-recording.wav", DEFAULT_ID, None),  # plain name: default ID
        ("video_idea_03.wav", DEFAULT_ID, None),  # "idea" is not an ID marker
        ("normal_id_xx_00000000.wav", DEFAULT_ID, "normal"),  # no digits after id_
        ("anomalous_noise.wav", DEFAULT_ID, None),  # only the whole first word labels
        ("anomaly-3.wav", DEFAULT_ID, "anomaly"),
    ],
)
def test_parse_name(name: str, machine_id: str, label: str | None) -> None:
    parsed = parse_name(name)
    assert (parsed.machine_id, parsed.label) == (machine_id, label)


def test_parse_ids_normalises_and_rejects_words() -> None:
    assert parse_ids("0, 02,6,06") == ("00", "02", "06")
    assert parse_ids("") is None
    assert normalize_id("4") == "04"
    with pytest.raises(DatasetError, match="numbers"):
        parse_ids("00,fan")


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tone(path, seconds=1.0)
    return path


@pytest.mark.parametrize("pointing_at", ["root", "machine_type", "train"])
def test_resolve_folder_accepts_three_levels_of_the_dcase_layout(tmp_path: Path, pointing_at: str) -> None:
    train = tmp_path / "slider" / "train"
    _wav(train / "normal_id_00_00000000.wav")
    root = {"root": tmp_path, "machine_type": tmp_path / "slider", "train": train}[pointing_at]
    assert resolve_folder(root, machine_type="slider", split="train") == train
    assert [f.path.name for f in list_clips(root, machine_type="slider", split="train")] == [
        "normal_id_00_00000000.wav"
    ]


def test_plain_folder_gives_default_id(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "b.WAV")
    (tmp_path / "notes.txt").write_text("not audio")
    files = list_clips(tmp_path, machine_type="slider", split="train")
    assert [(f.path.name, f.machine_id) for f in files] == [("a.wav", "00"), ("b.WAV", "00")]


def test_missing_empty_and_unknown_id_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        list_clips(tmp_path / "nope", machine_type="slider", split="train")
    with pytest.raises(DatasetError, match="no WAV files"):
        list_clips(tmp_path, machine_type="slider", split="train")
    _wav(tmp_path / "normal_id_00_00000000.wav")
    with pytest.raises(DatasetError, match=r"machine ID.*04.*found ID.*00"):
        list_clips(tmp_path, machine_type="slider", split="train", ids=("00", "04"))
    assert len(list_clips(tmp_path, machine_type="slider", split="train", ids=("00",))) == 1


def _files(folder: Path) -> list[ClipFile]:
    return list_clips(folder, machine_type="slider", split="train")


def test_bad_and_short_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    _wav(tmp_path / "normal_id_00_00000000.wav")
    (tmp_path / "normal_id_00_00000001.wav").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "normal_id_00_00000002.wav").write_bytes(b"")
    sf.write(tmp_path / "normal_id_00_00000003.wav", np.zeros(800, dtype=np.float32), SR)  # 0.05 s
    result = load_features(_files(tmp_path), params=PARAMS, min_seconds=0.5)
    assert [c.file.path.name for c in result.clips] == ["normal_id_00_00000000.wav"]
    skipped = {s.path.name: s.reason for s in result.skipped}
    assert set(skipped) == {
        "normal_id_00_00000001.wav",
        "normal_id_00_00000002.wav",
        "normal_id_00_00000003.wav",
    }
    assert "at least 0.5 s" in skipped["normal_id_00_00000003.wav"]


def test_stereo_takes_channel_0_or_the_mean(tmp_path: Path) -> None:
    data = write_tone(tmp_path / "normal_id_00_00000000.wav", seconds=1.0, channels=2)
    files = _files(tmp_path)
    first = load_features(files, params=PARAMS, channel=0).clips[0].spec
    mean = load_features(files, params=PARAMS, channel="mean").clips[0].spec
    second = load_features(files, params=PARAMS, channel=1).clips[0].spec
    np.testing.assert_allclose(first, log_mel(data[:, 0], PARAMS), atol=1e-3)
    np.testing.assert_allclose(mean, log_mel(data.mean(axis=1), PARAMS), atol=1e-3)
    assert np.abs(first - second).max() > 10  # 440 Hz vs 880 Hz: different spectra
    missing = load_features(files, params=PARAMS, channel=2)
    assert not missing.clips and "channel 2 does not exist" in missing.skipped[0].reason


def test_44k_file_is_resampled_to_the_model_rate(tmp_path: Path) -> None:
    write_tone(tmp_path / "normal_id_00_00000000.wav", seconds=2.0, rate=44100, freq=1000.0)
    clip = load_features(_files(tmp_path), params=PARAMS).clips[0]
    assert clip.spec.shape == (128, PARAMS.n_frames(2 * SR))
    assert clip.seconds == pytest.approx(2.0, abs=1e-3)
    # The tone stays at 1 kHz: the loudest mel bin matches a native 16 kHz rendering.
    native = log_mel(write_tone(tmp_path / "ref.wav", seconds=2.0, freq=1000.0)[:, 0], PARAMS)
    assert int(clip.spec.mean(axis=1).argmax()) == int(native.mean(axis=1).argmax())


def _fake_clips(counts: dict[str, int]) -> list[FeatureClip]:
    return [
        FeatureClip(
            file=ClipFile(Path(f"normal_id_{i}_{n:08d}.wav"), i, "normal"), spec=np.zeros((2, 3)), seconds=1
        )
        for i, count in counts.items()
        for n in range(count)
    ]


def test_validation_split_holds_out_whole_clips_per_id() -> None:
    clips = _fake_clips({"00": 30, "02": 5, "04": 1})
    train, val = split_validation(clips, fraction=0.1, seed=0)
    held = {i: sum(c.file.machine_id == i for c in val) for i in ("00", "02", "04")}
    assert held == {"00": 3, "02": 1, "04": 0}  # 10 %, at least 1, never an ID's only clip
    assert len(train) + len(val) == len(clips)
    assert not {c.file.path for c in train} & {c.file.path for c in val}
    again, _ = split_validation(clips, fraction=0.1, seed=0)
    assert [c.file.path for c in again] == [c.file.path for c in train]
    other, _ = split_validation(clips, fraction=0.1, seed=1)
    assert [c.file.path for c in other] != [c.file.path for c in train]


def test_normalizer_statistics_per_mel_bin_with_a_floor() -> None:
    a = np.array([[1.0, 3.0], [5.0, 5.0]], dtype=np.float32)
    b = np.array([[5.0, 7.0], [5.0, 5.0]], dtype=np.float32)
    norm = fit_normalizer([a, b])
    np.testing.assert_allclose(norm.mean, [4.0, 5.0])
    np.testing.assert_allclose(norm.std, [np.sqrt(5.0), 1e-2], rtol=1e-6)  # bin 1 is constant
    standard = norm.apply(np.concatenate([a, b], axis=1))
    np.testing.assert_allclose(standard[0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(standard[0].std(), 1.0, atol=1e-6)


def test_patch_array_layouts() -> None:
    spec = np.arange(3 * 10, dtype=np.float32).reshape(3, 10)
    norm = fit_normalizer([np.zeros((3, 1)), np.ones((3, 1)) * 2])  # mean 1, std 1
    params = FeatureParams(n_mels=3)
    cae = patch_array(
        [spec, spec], normalizer=norm, layout=PatchLayout(frames=4, hop=3, arch="cae", params=params)
    )
    dense = patch_array(
        [spec], normalizer=norm, layout=PatchLayout(frames=4, hop=3, arch="dense", params=params)
    )
    assert cae.shape == (6, 3, 4, 1)  # starts 0, 3, 6 per clip
    np.testing.assert_array_equal(cae[1, :, :, 0], spec[:, 3:7] - 1)
    assert dense.shape == (3, 12)
    # frame-major: the first 3 values are frame 0's mel bins
    np.testing.assert_array_equal(dense[0, :3], spec[:, 0] - 1)
    np.testing.assert_array_equal(dense[0, 3:6], spec[:, 1] - 1)


def test_patch_array_leaves_out_clips_shorter_than_a_patch() -> None:
    norm = fit_normalizer([np.zeros((3, 1)), np.ones((3, 1)) * 2])
    layout = PatchLayout(frames=4, hop=3, arch="dense", params=FeatureParams(n_mels=3))
    short, long = np.zeros((3, 3), dtype=np.float32), np.zeros((3, 10), dtype=np.float32)
    assert patch_array([short, long, short], normalizer=norm, layout=layout).shape == (3, 12)
    with pytest.raises(DatasetError, match="no clip is long enough for one patch of 4 frames"):
        patch_array([short], normalizer=norm, layout=layout)
