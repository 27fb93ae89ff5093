"""Service configuration: one pydantic-settings class, read from `ASD_*` environment variables.

`HOST` and `PORT` are also honoured without the prefix, because that is what
`make serve` and most process managers set; the `ASD_` form wins when both
are present.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, ByteSize, Field, PositiveInt, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The repository's models/ folder, found from this file rather than the
# working directory, so `asd-serve` works from anywhere in an editable install.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def available_cores() -> int:
    """CPU cores this process may use: its CPU affinity (taskset, cpuset) and its cgroup CPU quota.

    A container limited with `docker run --cpus=2` (or compose `cpus: "2"`)
    on a 16-core host still sees 16 cores in its affinity; threads sized
    for 16 would spend their time throttled. The quota, rounded up, caps
    the count.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = max(1, os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return cores


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup may use per period (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


_MACHINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Settings(BaseSettings):
    """Everything the service can be told; see the field descriptions or README for the variables."""

    model_config = SettingsConfigDict(
        env_prefix="ASD_",
        env_ignore_empty=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
    )

    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="Folder whose sub-folders are detectors.")
    default_model: str = Field("slider", description="Model that POST /v1/score uses.")
    max_upload_size: ByteSize = Field(
        ByteSize(50 * 1024 * 1024),
        description="Largest request body accepted, e.g. 52428800 or '50MiB'; larger answers 413.",
    )
    min_duration_s: float = Field(
        0.0, ge=0, description="Shortest clip accepted; each model also needs at least one patch."
    )
    max_duration_s: float = Field(300.0, gt=0, description="Longest clip accepted (checked on the header).")
    max_batch_files: PositiveInt = Field(20, description="Most files in one batch request.")
    segment_s: float = Field(
        1.0, gt=0, description="Length of the segments that patch scores are grouped in."
    )
    level_offset_db: float = Field(
        6.0,
        gt=0,
        allow_inf_nan=False,
        description="dB between a clip's level and the training audio's at which the input check warns.",
    )
    ort_threads: PositiveInt | None = Field(
        None, description="onnxruntime intra-op threads per session; default cores // workers."
    )
    max_concurrent_scoring: PositiveInt | None = Field(
        None, description="Clips scored at once per worker (threadpool limiter); default cores // workers."
    )
    api_key: SecretStr | None = Field(
        None, description="When set, /v1/* needs it in X-API-Key or Authorization: Bearer."
    )
    log_level: LogLevel = "INFO"
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("ASD_HOST", "HOST"))
    port: int = Field(8000, ge=0, le=65535, validation_alias=AliasChoices("ASD_PORT", "PORT"))
    workers: PositiveInt = Field(1, description="uvicorn worker processes.")
    reuse_port: bool = Field(
        True,
        description=(
            "With several workers on Linux, each listens on its own SO_REUSEPORT socket and the kernel "
            "spreads new connections over them; false: one socket shared by all workers, as uvicorn does."
        ),
    )
    machines: str = Field(
        "",
        description=(
            "Comma-separated machine names the score endpoints' `machine` option may carry (a metrics "
            "label for models without machine IDs); empty: the option is refused."
        ),
    )
    reload_interval_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Rescan the models folder this often and swap in what changed (as POST /v1/models/reload "
            "does); unset: only on request."
        ),
    )
    worker_healthcheck_timeout_s: PositiveInt = Field(
        30,
        description=(
            "With several workers, uvicorn restarts one that does not answer its ping within this "
            "time; model loading can hold the GIL for seconds, so this is longer than uvicorn's 5 s."
        ),
    )

    @field_validator("machines", mode="after")
    @classmethod
    def _machine_names(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        bad = [n for n in names if not _MACHINE_NAME.fullmatch(n)]
        if bad:
            raise ValueError(f"machine names are 1-64 letters, digits, '.', '_' or '-': not {', '.join(bad)}")
        return ",".join(names)

    @property
    def machine_names(self) -> frozenset[str]:
        return frozenset(n for n in self.machines.split(",") if n)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_key", mode="after")
    @classmethod
    def _blank_key_is_no_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty ASD_API_KEY= must not mean "the key is the empty string".
        return value if value is not None and value.get_secret_value() else None

    @property
    def cores_per_worker(self) -> int:
        return max(1, available_cores() // self.workers)

    @property
    def intra_op_threads(self) -> int:
        """onnxruntime threads per session, so that workers x threads is the core count by default."""
        return self.ort_threads or self.cores_per_worker

    @property
    def scoring_concurrency(self) -> int:
        return self.max_concurrent_scoring or self.cores_per_worker
