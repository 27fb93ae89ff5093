"""Thread counts follow the CPUs a container may really use: its affinity and its cgroup CPU quota."""

from __future__ import annotations

from pathlib import Path

from service import config
from service.config import Settings, available_cores, cgroup_cpu_quota


def test_cgroup_v2_quota(tmp_path: Path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path):
    folder = tmp_path / "cpu,cpuacct"
    folder.mkdir()
    (folder / "cpu.cfs_quota_us").write_text("200000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.0
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path) is None
    assert cgroup_cpu_quota(tmp_path / "nothing here") is None


def test_quota_caps_the_cores_and_so_the_threads(monkeypatch):
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    monkeypatch.setattr(config, "cgroup_cpu_quota", lambda: 1.5)
    assert available_cores() == 2  # 1.5 CPUs of quota: 2 threads, not 16
    assert Settings(workers=1).intra_op_threads == 2
    assert Settings(workers=2).intra_op_threads == 1
    monkeypatch.setattr(config, "cgroup_cpu_quota", lambda: None)
    assert available_cores() == 16


def test_worker_split_names_an_idle_worker():
    """The HTTP table shows each worker's part of the server CPU, and the note blames an
    uneven spread of connections, not other jobs, when one worker did most of the work."""
    from types import SimpleNamespace

    from bench.report import _share_cause, _split

    even = SimpleNamespace(worker_cpu_shares=[0.46, 0.54])
    lopsided = SimpleNamespace(worker_cpu_shares=[1.0, 0.0])
    single = SimpleNamespace(worker_cpu_shares=[1.0])
    assert _split(even) == "46 / 54 %" and _split(lopsided) == "100 / 0 %" and _split(single) == ""
    assert "other processes" in _share_cause(even)
    assert "one worker did 100 %" in _share_cause(lopsided)
