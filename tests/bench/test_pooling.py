"""bench.pooling recomputes a fused score the way `fit --pooling P` would make it."""

from __future__ import annotations

import numpy as np
import pytest

from bench.pooling import Clip, _clip_scores
from service.scorers import FUSION_OFFSET, pool

RNG = np.random.default_rng(0)


def _clips(n: int, *, envelope: bool, label: int = 0) -> list[Clip]:
    return [
        Clip("00", label, RNG.gamma(2.0, 0.1, size=39), float(RNG.normal()) if envelope else None)
        for _ in range(n)
    ]


@pytest.mark.parametrize(("pooling", "param"), [("mean", None), ("max", None), ("topk", 0.1), ("gwrp", 0.9)])
def test_plain_scores_are_the_pooled_errors(pooling: str, param: float | None) -> None:
    clips = _clips(5, envelope=False)
    scores = _clip_scores(clips, [], pooling, param)
    assert np.allclose(scores, [pool(c.patch_errors, pooling=pooling, param=param) for c in clips])


@pytest.mark.parametrize(("pooling", "param"), [("mean", None), ("max", None), ("gwrp", 0.9)])
def test_fused_scores_standardise_on_the_validation_clips_pooled_the_same_way(
    pooling: str, param: float | None
) -> None:
    validation = _clips(30, envelope=True)
    tests = _clips(8, envelope=True, label=1)
    reference = np.array([pool(c.patch_errors, pooling=pooling, param=param) for c in validation])
    mean, std = reference.mean(), reference.std(ddof=1)
    expected = [
        FUSION_OFFSET
        + np.mean(
            [
                max((pool(c.patch_errors, pooling=pooling, param=param) - mean) / std, -FUSION_OFFSET),
                max(c.envelope_z, -FUSION_OFFSET),  # type: ignore[type-var]
            ]
        )
        for c in tests
    ]
    assert np.allclose(_clip_scores(tests, validation, pooling, param), expected)
