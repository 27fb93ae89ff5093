"""BENCHMARKS.md keeps the sections other commands measured when `make bench` rewrites it."""

from __future__ import annotations

from pathlib import Path

from bench.report import KEPT_MARKER, with_kept_sections
from bench.run import write_report

OLD = f"# Benchmarks\n\nold table\n\n{KEPT_MARKER}\n\n## Operator page\n\nmeasured elsewhere\n"


def test_a_new_report_keeps_what_follows_the_marker(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(OLD, encoding="utf-8")
    write_report(out, "# Benchmarks\n\nnew table\n")
    text = out.read_text(encoding="utf-8")
    assert "new table" in text and "old table" not in text
    assert text.endswith(f"new table\n\n{KEPT_MARKER}\n\n## Operator page\n\nmeasured elsewhere\n")
    # A second run keeps the kept part once, not twice.
    write_report(out, "# Benchmarks\n\nnewer table\n")
    again = out.read_text(encoding="utf-8")
    assert again.count(KEPT_MARKER) == 1 and again.count("measured elsewhere") == 1
    assert "newer table" in again and "new table\n" not in again


def test_without_a_marker_or_a_file_only_the_report_is_written(tmp_path: Path) -> None:
    assert with_kept_sections("report\n", None) == "report\n"
    assert with_kept_sections("report\n", "# old, no marker\n") == "report\n"
    out = tmp_path / "BENCHMARKS.md"
    write_report(out, "report\n")
    assert out.read_text(encoding="utf-8") == "report\n"
