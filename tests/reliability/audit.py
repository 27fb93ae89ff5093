"""Dependency audit: pip-audit over the pinned lock (constraints.txt), failing on fixable vulnerabilities.

    python -m tests.reliability.audit                       # exit 0 clean, 1 fixable vulns, 2 not audited
    python -m tests.reliability.audit --allow-unreachable   # 2 becomes 0, still printed as NOT AUDITED

pip-audit needs a vulnerability database over the network: PyPI's JSON API
(`/pypi/<name>/<version>/json`, the default) or OSV (`api.osv.dev`). When it
cannot reach one, pip-audit marks every package "skipped" and still says "No
known vulnerabilities found" with exit 0 (PyPI service), or crashes with a
connection error (OSV). Neither is an audit, so this script looks at what was
actually checked: packages that were skipped make the run "NOT AUDITED"
(exit 2) with the reasons, never a pass. Vulnerabilities with a fixed version
fail (exit 1); ones without a fix are listed but do not fail.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLEAN, FIXABLE, NOT_AUDITED = 0, 1, 2


@dataclass
class Verdict:
    code: int
    lines: list[str] = field(default_factory=list)


def classify(report: dict | None, error: str | None, service: str) -> Verdict:
    """The verdict on one pip-audit JSON report (None when pip-audit produced none)."""
    if report is None:
        return Verdict(NOT_AUDITED, [f"pip-audit ({service}) produced no report: {error or 'unknown error'}"])
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    audited = [d for d in deps if not d.get("skip_reason")]
    if not deps or skipped:
        reasons = sorted({d["skip_reason"].split(":")[0] for d in skipped}) or ["no dependency in the report"]
        return Verdict(
            NOT_AUDITED,
            [
                (
                    f"pip-audit ({service}): {len(skipped)} of {len(deps)} dependencies could not be checked "
                    f"({'; '.join(reasons)}), e.g. {', '.join(d['name'] for d in skipped[:5])}"
                )
            ],
        )
    fixable, unfixed = [], []
    for dep in audited:
        for vuln in dep.get("vulns", []):
            aliases = " ".join(vuln.get("aliases", []))
            text = f"{dep['name']} {dep.get('version')}: {vuln.get('id')} {aliases}".strip()
            if vuln.get("fix_versions"):
                fixable.append(f"{text} (fixed in {', '.join(vuln['fix_versions'])})")
            else:
                unfixed.append(f"{text} (no fixed version yet)")
    lines = [f"pip-audit ({service}): {len(audited)} dependencies audited"]
    lines += [f"VULNERABLE, fix available: {line}" for line in fixable]
    lines += [f"vulnerable, no fix yet (not failing): {line}" for line in unfixed]
    return Verdict(FIXABLE if fixable else CLEAN, lines)


def run_pip_audit(requirements: Path, service: str) -> tuple[dict | None, str | None]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "audit.json"
        command = [
            sys.executable,
            "-m",
            "pip_audit",
            "--requirement",
            str(requirements),
            "--no-deps",  # the file is a complete lock: every package pinned
            "--disable-pip",
            "--vulnerability-service",
            service,
            "--progress-spinner",
            "off",
            "--format",
            "json",
            "--output",
            str(out),
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            return None, "pip-audit did not finish within 600 s"
        if not out.is_file():
            tail = [line for line in result.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
            return None, f"exit {result.returncode}: {tail[0][:400]}"
        try:
            return json.loads(out.read_text(encoding="utf-8")), None
        except ValueError as error:
            return None, f"unreadable report: {error}"


def audit(requirements: Path, services: list[str]) -> Verdict:
    """The first service that really audits decides; if none can, NOT AUDITED with every reason."""
    reasons = []
    for service in services:
        verdict = classify(*run_pip_audit(requirements, service), service)
        if verdict.code != NOT_AUDITED:
            return verdict
        reasons += verdict.lines
    return Verdict(NOT_AUDITED, reasons)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requirements", type=Path, default=REPO / "constraints.txt")
    parser.add_argument("--service", action="append", choices=["pypi", "osv"], help="default: pypi, then osv")
    parser.add_argument(
        "--allow-unreachable",
        action="store_true",
        help="exit 0 (printing NOT AUDITED) when no vulnerability database can be reached",
    )
    args = parser.parse_args(argv)
    verdict = audit(args.requirements, args.service or ["pypi", "osv"])
    for line in verdict.lines:
        print(line)
    if verdict.code == NOT_AUDITED:
        print(
            "pip-audit: NOT AUDITED - no vulnerability database could be reached from this machine"
            + (" (allowed by --allow-unreachable)" if args.allow_unreachable else "")
        )
        return CLEAN if args.allow_unreachable else NOT_AUDITED
    print("pip-audit: FAILED - fixable vulnerabilities" if verdict.code == FIXABLE else "pip-audit: clean")
    return verdict.code


if __name__ == "__main__":
    sys.exit(main())
