"""What a benchmark ran on: CPU, cores, memory, library versions and how busy the machine was."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any

PACKAGES = (
    "numpy",
    "onnxruntime",
    "soundfile",
    "soxr",
    "fastapi",
    "uvicorn",
    "httpx",
    "librosa",
    "tensorflow-cpu",
    "keras",
)


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int  # online CPUs
    usable_cores: int  # CPUs this process may run on (affinity / cgroup cpuset)
    cpu_quota: str  # cgroup v2 cpu.max, "max" when unlimited
    ram_gb: float
    os: str
    python: str
    versions: dict[str, str]
    load_average: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def describe() -> Machine:
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 1,
        usable_cores=len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else (os.cpu_count() or 1),
        cpu_quota=_cpu_quota(),
        ram_gb=round(_mem_total_kb() / 1024 / 1024, 1),
        os=f"{platform.system()} {platform.release()}",
        python=sys.version.split()[0],
        versions={name: _version(name) for name in PACKAGES},
        load_average=load_average(),
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_kb() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_quota() -> str:
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="utf-8") as handle:
            quota, period = handle.read().split()
    except (OSError, ValueError):
        return "unknown"
    return "max" if quota == "max" else f"{int(quota) / int(period):.2f} CPUs"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
