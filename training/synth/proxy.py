"""A cheap check that the faults are subtle: two trivial detectors' AUC per machine ID and fault kind.

    python -m training.synth.proxy fan [--ids 00,02,04,06] [--train 100] [--test 60] [--seed 0]

Per ID, the first detector fits a Gaussian (Ledoit-Wolf shrunk covariance)
to the clip-mean log-mel vectors (`service.features.log_mel`) of normal
training clips and scores a test clip by its Mahalanobis distance; the
second scores by the clip's RMS level, either way (the AUC is folded: a
fault that makes a clip quieter is as easy to catch). A kind that either
detector separates almost perfectly is too easy to train an autoencoder on.
No TensorFlow; the clips are rendered in memory, as `generate_dataset`
would write them (the same seeds).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.errors import SynthError

from .dataset import SAMPLE_RATE, clip_seed
from .registry import machine_model


@dataclass(frozen=True)
class ProxyAuc:
    """AUCs of one machine ID and fault kind: Mahalanobis on the mean log-mel, folded RMS level."""

    machine_id: str
    kind: str
    mahalanobis: float
    level: float


def _auc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """P(anomalous score > normal score), ties counting half."""
    diff = anomalous[:, None] - normal[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def proxy_aucs(
    machine_type: str,
    *,
    ids: Sequence[str] = ("00", "02", "04", "06"),
    n_train: int = 100,
    n_test: int = 60,
    seed: int = 0,
    duration: float = 10.0,
) -> list[ProxyAuc]:
    """The two detectors' AUCs, per ID and kind, on `n_test` normal and `n_test` clips of each kind."""
    from sklearn.covariance import LedoitWolf

    from service.features import log_mel

    model = machine_model(machine_type)
    if n_train < 2 or n_test < 1:
        raise SynthError(f"need at least 2 training and 1 test clip per ID, got {n_train} and {n_test}")

    def features(mid: str, split: str, index: int, kind: str | None) -> tuple[np.ndarray, float]:
        clip = model.render(
            mid,
            anomaly=kind,
            seq=clip_seed(model, seed, mid, split, index),
            duration=duration,
            sample_rate=SAMPLE_RATE,
            snr_db=model.default_snr,
        ).audio
        # As written to PCM_16 and read back.
        clip = np.round(clip * 32767.0).astype(np.float32) / 32768.0
        return log_mel(clip).mean(axis=1), 20 * np.log10(np.sqrt(np.mean(np.square(clip, dtype=np.float64))))

    out = []
    n_kinds = len(model.anomaly_kinds)
    for mid in ids:
        train = np.array([features(mid, "train_normal", i, None)[0] for i in range(n_train)])
        fit = LedoitWolf().fit(train)
        normal = [features(mid, "test_normal", i, None) for i in range(n_test)]
        normal_d = fit.mahalanobis(np.array([f for f, _ in normal]))
        normal_level = np.array([level for _, level in normal])
        for k, kind in enumerate(model.anomaly_kinds):
            # The data set's own clips of this kind: index i * kinds + k.
            faulty = [features(mid, "test_anomaly", i * n_kinds + k, kind) for i in range(n_test)]
            level = np.array([lv for _, lv in faulty])
            a = _auc(normal_level, level)
            out.append(
                ProxyAuc(
                    machine_id=mid,
                    kind=kind,
                    mahalanobis=_auc(normal_d, fit.mahalanobis(np.array([f for f, _ in faulty]))),
                    level=max(a, 1.0 - a),
                )
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.synth.proxy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("machine_type")
    parser.add_argument("--ids", default="00,02,04,06")
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        rows = proxy_aucs(
            args.machine_type,
            ids=tuple(args.ids.split(",")),
            n_train=args.train,
            n_test=args.test,
            seed=args.seed,
        )
    except SynthError as error:
        print(f"proxy: error: {error}", file=sys.stderr)
        return 2
    kinds = list(dict.fromkeys(r.kind for r in rows))
    print(f"{'kind':<14} {'mahalanobis':>11} {'level':>6}   per ID (mahalanobis/level)")
    for kind in kinds:
        sel = [r for r in rows if r.kind == kind]
        per_id = "  ".join(f"{r.machine_id}:{r.mahalanobis:.2f}/{r.level:.2f}" for r in sel)
        maha = np.mean([r.mahalanobis for r in sel])
        level = np.mean([r.level for r in sel])
        print(f"{kind:<14} {maha:>11.2f} {level:>6.2f}   {per_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
