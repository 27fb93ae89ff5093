"""The benchmark's data sets: made once by the synthesiser, re-used while they are what it would make now.

A data set lives in ``<work>/data/<size>/<family>_seed<S>_snr<V>/`` with a
marker, benchmark-data.json, written when it is complete. It is re-used when
its marker names the same request, every clip is there, and a small sample the
synthesiser makes now hashes as it did when the data set was made
(`sample_digest`); otherwise it is removed and made again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.benchmark import Config, DataSpec

DATA_MARKER = "benchmark-data.json"


def data_request(config: Config, spec: DataSpec) -> dict[str, Any]:
    """The arguments a data set is made from."""
    return {
        "family": spec.family,
        "seed": spec.seed,
        "snr": spec.snr.text,
        "ids": list(config.ids),
        "n_train": config.n_train,
        "n_test_normal": config.n_test_normal,
        "n_test_anomaly": config.n_test_anomaly,
        "duration": config.duration,
    }


def _synth_kwargs(config: Config, spec: DataSpec) -> dict[str, Any]:
    kwargs = {} if spec.snr.value is None else {"snr_db": spec.snr.value}
    return {"machine_type": spec.family, "seed": spec.seed, **kwargs}


def synthesise(root: Path, config: Config, spec: DataSpec) -> None:
    """Write one data set; the synthesiser's ValueError passes through (an argument it rejects)."""
    from training.synth import generate_dataset

    generate_dataset(
        root,
        ids=config.ids,
        n_train=config.n_train,
        n_test_normal=config.n_test_normal,
        n_test_anomaly=config.n_test_anomaly,
        duration=config.duration,
        **_synth_kwargs(config, spec),
    )


def sample_digest(config: Config, spec: DataSpec) -> str:
    """sha256 of a small sample the synthesiser makes now for this data set's arguments.

    Stored with the data set: when the synthesiser changes what it makes, the sample changes, and the
    data set (and every fit on it) is made again; an edit that changes no output costs nothing. The
    sample: short clips of the first ID, one of each split and up to 8 faults (every kind of a family
    with up to 8), and anomaly_kinds.csv.
    """
    import tempfile

    from training.synth import generate_dataset

    with tempfile.TemporaryDirectory(prefix="asd-benchmark-sample-") as folder:
        generate_dataset(
            folder,
            ids=config.ids[:1],
            n_train=1,
            n_test_normal=1,
            n_test_anomaly=min(config.n_test_anomaly, 8),
            duration=min(config.duration, 2.0),
            **_synth_kwargs(config, spec),
        )
        digest = hashlib.sha256()
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def read_marker(root: Path) -> dict[str, Any] | None:
    """A complete data set's marker: {"request": data_request(...), "sample_sha256": ...}."""
    return read_json(root / DATA_MARKER)


def _has_clips(root: Path, request: Mapping[str, Any]) -> bool:
    per_id = len(request["ids"])
    train = root / request["family"] / "train"
    test = root / request["family"] / "test"
    n_train: int = request["n_train"] * per_id
    n_test: int = (request["n_test_normal"] + request["n_test_anomaly"]) * per_id
    return len(list(train.glob("*.wav"))) == n_train and len(list(test.glob("*.wav"))) == n_test


def data_present(root: Path, config: Config, spec: DataSpec) -> bool:
    """Cheap check (no synthesis): the marker names this request and every clip is there."""
    marker = read_marker(root)
    request = data_request(config, spec)
    return marker is not None and marker.get("request") == request and _has_clips(root, request)


def _rejected(spec: DataSpec, error: Exception) -> str:
    if isinstance(error, ValueError):
        if "machine_type" in str(error) or "machine type" in str(error):
            return f"family missing: the synthesiser rejects {spec.family!r} ({error})"
        return f"the synthesiser rejects this data set: {error}"
    return f"synthesis failed: {type(error).__name__}: {error}"


def prepare_data(root: Path, config: Config, spec: DataSpec) -> tuple[bool, str | None]:
    """Make (or re-use) the data set at `root`. Returns (re-used, failure reason or None)."""
    try:
        digest = sample_digest(config, spec)
        if data_present(root, config, spec) and (read_marker(root) or {}).get("sample_sha256") == digest:
            return True, None
        if root.exists():
            shutil.rmtree(root)  # interrupted, different or made by another synthesiser: never mix clips
        synthesise(root, config, spec)
    except Exception as error:
        shutil.rmtree(root, ignore_errors=True)
        return False, _rejected(spec, error)
    request = data_request(config, spec)
    if not _has_clips(root, request):
        return False, "the synthesiser wrote fewer clips than asked for"
    marker = {"request": request, "sample_sha256": digest}
    (root / DATA_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return False, None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
