"""What a worker imports before it can serve: `python -X importtime` of building the app."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

SCRIPT = "from service.main import create_app; create_app()"
HEAVY = ("librosa", "numba", "scipy", "tensorflow", "keras", "training")


@dataclass
class ImportProfile:
    total_ms: float  # sum of the top-level imports' cumulative times
    top: list[tuple[str, float]] = field(default_factory=list)  # top-level packages, cumulative ms
    heavy: list[str] = field(default_factory=list)  # any of HEAVY imported
    command: str = f'python -X importtime -c "{SCRIPT}"'


def import_profile(python: str = sys.executable, top: int = 8) -> ImportProfile:
    result = subprocess.run(
        [python, "-X", "importtime", "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the app failed:\n{result.stderr[-2000:]}")
    packages: dict[str, float] = {}
    names = set()
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|", 2)
        names.add(name.strip().split(".")[0])
        if name.startswith(" ") and not name.startswith("  "):  # depth 0: one space after the bar
            root = name.strip().split(".")[0]
            packages[root] = packages.get(root, 0.0) + int(cumulative) / 1000
    ranked = sorted(packages.items(), key=lambda kv: -kv[1])
    return ImportProfile(
        total_ms=round(sum(packages.values()), 1),
        top=[(k, round(v, 1)) for k, v in ranked[:top]],
        heavy=sorted(n for n in names if n in HEAVY),
    )
