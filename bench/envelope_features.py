"""`python -m bench.envelope_features DATA_SET...`: which clip statistics would the envelope scorer do best with?

The envelope scorer (`service.scorers`) models each clip by its time-averaged log-mel level in
32 coarse bands. This asks, without training a CAE, whether other statistics of the same
coarse-band spectrogram separate a data set's faults better when scored the same way (a
Ledoit-Wolf Gaussian per machine ID fitted on the training clips, Mahalanobis distance, AUC of
the test clips per ID, averaged): the per-band temporal standard deviation (modulation,
intermittency), the mean absolute frame-to-frame change, per-band quantiles, or a Gaussian of
single frames. DATA_SET is a folder in the DCASE layout with one machine type
(`asd-train synth` output, or a quality benchmark data set under `WORK/data/`). The log-mel is
the service's (`service.features.log_mel`); each data set's coarse spectrograms are cached in
`envelope-features.npz` beside it.

    python -m bench.envelope_features reports/quality/data/*/*_snrdefault
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from service.audio import read_audio
from service.features import FeatureParams, log_mel
from service.scorers import band_edges, coarse_bands, fit_gaussian

CACHE = "envelope-features.npz"


def _spectrograms(root: Path) -> dict[str, np.ndarray]:
    """split, machine ID, label (1 anomalous) and coarse-band log-mel (n, bands, frames) of every clip."""
    cache = root / CACHE
    if cache.is_file():
        with np.load(cache) as stored:
            return {key: stored[key] for key in stored.files}
    families = [p for p in root.iterdir() if p.is_dir()]
    if len(families) != 1:
        raise ValueError(f"{root} should hold one machine-type folder, found {len(families)}")
    params = FeatureParams()
    edges = band_edges(n_mels=params.n_mels)
    split, ids, labels, specs = [], [], [], []
    for part in ("train", "test"):
        for path in sorted((families[0] / part).glob("*.wav")):
            kind, _, machine_id, *_ = path.stem.split("_")
            samples = read_audio(path, sample_rate=params.sample_rate).samples
            specs.append(coarse_bands(log_mel(samples, params).T, edges).T.astype(np.float32))
            split.append(part)
            ids.append(machine_id)
            labels.append(0 if kind == "normal" else 1)
    if not specs or "test" not in split or "train" not in split:
        raise ValueError(f"{root} has no train and test clips")
    frames = min(s.shape[1] for s in specs)
    data = {
        "split": np.asarray(split),
        "id": np.asarray(ids),
        "label": np.asarray(labels),
        "spec": np.stack([s[:, :frames] for s in specs]),
    }
    np.savez(cache, split=data["split"], id=data["id"], label=data["label"], spec=data["spec"])
    return data


def _concat(*parts: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda spec: np.concatenate([part(spec) for part in parts], axis=1)


def _mean(s: np.ndarray) -> np.ndarray:
    return np.asarray(s.mean(axis=2))


def _std(s: np.ndarray) -> np.ndarray:
    return np.asarray(s.std(axis=2))


def _change(s: np.ndarray) -> np.ndarray:
    return np.asarray(np.abs(np.diff(s, axis=2)).mean(axis=2))


def _quantiles(s: np.ndarray) -> np.ndarray:
    return np.concatenate(list(np.percentile(s, [10, 50, 90], axis=2)), axis=1)


# Name -> clip (n, bands, frames) to vectors (n, k). "mean" is today's envelope scorer.
FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": _mean,
    "std": _std,
    "mean+std": _concat(_mean, _std),
    "mean+change": _concat(_mean, _change),
    "mean+std+change": _concat(_mean, _std, _change),
    "quantiles 10/50/90": _quantiles,
}
FRAMES = "frames"  # a Gaussian of single frames (every 4th training frame), a clip's mean distance


def feature_aucs(data: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean over machine IDs of each feature's test AUC."""
    result: dict[str, list[float]] = {name: [] for name in [*FEATURES, FRAMES]}
    for machine_id in sorted(set(data["id"].tolist())):
        train = (data["split"] == "train") & (data["id"] == machine_id)
        test = (data["split"] == "test") & (data["id"] == machine_id)
        labels = data["label"][test]
        if labels.min() == labels.max():
            continue
        for name, feature in FEATURES.items():
            gaussian = fit_gaussian(feature(data["spec"][train]))
            scores = np.asarray(gaussian.distance(feature(data["spec"][test]))).reshape(-1)
            result[name].append(float(roc_auc_score(labels, scores)))
        frames = data["spec"][train].transpose(0, 2, 1).reshape(-1, data["spec"].shape[1])
        gaussian = fit_gaussian(frames[::4])
        scores = np.asarray([np.mean(gaussian.distance(clip.T)) for clip in data["spec"][test]])
        result[FRAMES].append(float(roc_auc_score(labels, scores)))
    return {name: float(np.mean(v)) for name, v in result.items() if v}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.envelope_features", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("data_sets", nargs="+", type=Path, help="data set folders (DCASE layout)")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    table: dict[str, dict[str, float]] = {}
    failed = 0
    for root in args.data_sets:
        try:
            table[root.name] = feature_aucs(_spectrograms(root))
        except (OSError, ValueError) as error:
            print(f"envelope_features: {root}: {error}", file=sys.stderr)
            failed += 1
            continue
        print(root.name, "  ".join(f"{k} {v:.3f}" for k, v in table[root.name].items()), flush=True)
    if not table:
        return 2
    names = list(next(iter(table.values())))
    print(
        f"mean of {len(table)}",
        "  ".join(f"{n} {np.mean([t[n] for t in table.values()]):.3f}" for n in names),
    )
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
