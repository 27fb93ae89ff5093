"""Security: the API key on every route that is not deliberately open, constant-time comparison,
capped and time-bounded uploads, no secret in any log line, TLS as docs/security.md says,
the container's user and root filesystem, and the dependency audit's verdicts."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from service.api import deps
from service.config import Settings
from service.main import create_app
from service.uploads import BodySizeLimitMiddleware
from tests.reliability import audit
from tests.reliability.conftest import LIVE_KEY
from tests.reliability.server import HOST, Server, free_port
from tests.service.conftest import DEFAULT_MODEL, REPO, assert_error, make_settings, serve
from tests.service.sounds import encode, noise

KEY = "s3cr3t-api-key-never-logged-7f3a"
CLIP = encode(noise(2.0))

# Every route that answers without the key, on purpose. A new route is protected
# unless it is added here, and this test fails until someone decides which.
OPEN_ROUTES = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/"),
    # Static files: Swagger UI and ReDoc, and the operator page's HTML, CSS and JS.
    ("GET", "/static-offline-docs/{path}"),
    ("GET", "/static/{path}"),
}
# A file each static mount serves, to show it answers without the key.
STATIC_EXAMPLES = {"/static-offline-docs/{path}": "favicon.png", "/static/{path}": "page.css"}


def all_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route, included routers flattened (FastAPI keeps them nested)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        contexts = app.routes
    else:
        contexts = list(iter_route_contexts(app.routes))
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    found = []
    for route in contexts:
        mounted = getattr(route, "route", route)
        if isinstance(mounted, Mount) and isinstance(mounted.app, StaticFiles):
            found.append(("GET", f"{mounted.path}/{{path}}"))
            continue
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is None or methods is None:
            raise AssertionError(f"a route this test cannot see into: {route!r}")
        found += [(method, path) for method in sorted(methods) if method != "HEAD"]
    return found


def fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", DEFAULT_MODEL, path)


@pytest.fixture(scope="module")
def keyed(models_dir):
    with serve(make_settings(models_dir, api_key=KEY)) as client:
        yield client


# --- the API key ------------------------------------------------------------------------------


def test_every_route_outside_the_open_list_refuses_a_missing_or_wrong_key(keyed):
    routes = all_routes(keyed.app)
    open_now = {r for r in routes if r in OPEN_ROUTES}
    protected = [r for r in routes if r not in OPEN_ROUTES]
    assert protected, routes
    assert {("POST", "/v1/score"), ("GET", "/v1/models")} <= set(protected)
    for method, path in protected:
        url = fill(path)
        for headers in (
            {},
            {"X-API-Key": KEY + "x"},
            {"X-API-Key": KEY[:-1]},
            {"X-API-Key": ""},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": KEY},
        ):
            response = keyed.request(method, url, headers=headers)
            assert_error(response, 401, "unauthorized")
        # With the key the route is reached (whatever it then answers).
        for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
            assert keyed.request(method, url, headers=headers).status_code != 401, (method, path)
    for method, path in open_now:
        url = path.replace("{path}", STATIC_EXAMPLES.get(path, ""))
        assert keyed.request(method, url, follow_redirects=False).status_code in (200, 307), path


def test_a_new_route_without_auth_would_fail_the_test(models_dir):
    """The enumeration above catches an unprotected route: add one and look."""
    from fastapi.testclient import TestClient

    app = create_app(Settings(models_dir=models_dir, api_key=KEY))

    @app.get("/v1/debug")
    def debug() -> dict:
        return {}

    assert ("GET", "/v1/debug") in [r for r in all_routes(app) if r not in OPEN_ROUTES]
    with TestClient(app) as client:
        # Answered without the key: exactly what the enumeration test refuses.
        assert client.get("/v1/debug").status_code == 200


def test_the_key_is_compared_with_hmac_compare_digest(keyed, monkeypatch):
    calls = []

    def spy(a, b):
        calls.append((a, b))
        return True  # if the decision came from anywhere else, a wrong key would still be refused

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    response = keyed.get("/v1/models", headers={"X-API-Key": "not-the-key"})
    assert response.status_code == 200
    assert calls == [(b"not-the-key", KEY.encode())]


# --- uploads are capped, in size and in time ------------------------------------------------


def _raw_exchange(port: int, head: bytes, body: bytes = b"", wait: float = 30) -> bytes:
    with socket.create_connection((HOST, port), timeout=wait) as sock:
        sock.sendall(head + body)
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < 10:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            sock.settimeout(1)
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        return data


def test_uploads_are_capped_on_the_real_server(live_server):
    limit = 1024 * 1024
    auth = {"X-API-Key": LIVE_KEY}
    # Declared 10 GB, nothing sent: refused on the header, at once, without reading.
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {LIVE_KEY}\r\n"
        f"Content-Type: audio/wav\r\nContent-Length: {10 * 1024**3}\r\n\r\n"
    ).encode()
    answer = _raw_exchange(live_server.port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"payload_too_large"' in answer and str(limit).encode() in answer
    # Chunked (no length): cut off once past the limit.
    big = encode(noise(40.0))

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = httpx.post(
        f"{live_server.base}/v1/score",
        content=chunks(),
        headers={**auth, "content-type": "audio/wav"},
        timeout=60,
    )
    assert_error(streamed, 413, "payload_too_large")
    # Multipart, and a batch whose files add up past the limit.
    assert_error(
        httpx.post(f"{live_server.base}/v1/score", files={"file": ("a.wav", big)}, headers=auth, timeout=60),
        413,
    )
    files = [("files", (f"{i}.wav", CLIP)) for i in range(20)]
    assert_error(
        httpx.post(
            f"{live_server.base}/v1/models/{DEFAULT_MODEL}/score/batch", files=files, headers=auth, timeout=60
        ),
        413,
    )
    # Too many files in one batch: refused while parsing the form.
    many = [("files", (f"{i}.wav", b"x")) for i in range(25)]
    assert_error(
        httpx.post(
            f"{live_server.base}/v1/models/{DEFAULT_MODEL}/score/batch", files=many, headers=auth, timeout=60
        ),
        400,
        "too_many_files",
    )
    # And the server is fine afterwards.
    assert (
        httpx.post(
            f"{live_server.base}/v1/score", files={"file": ("a.wav", CLIP)}, headers=auth, timeout=60
        ).status_code
        == 200
    )


@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_a_stalled_body_is_answered_408_and_the_connection_closed(serve_with, monkeypatch, how):
    """uvicorn waits for a body forever; the body limit middleware does not (60 s; 2 s here)."""
    monkeypatch.setattr(BodySizeLimitMiddleware, "body_idle_timeout_s", 2.0)
    if how == "raw":
        headers = [(b"content-type", b"audio/wav"), (b"content-length", str(len(CLIP)).encode())]
        first = CLIP[:1000]
    else:
        boundary = "stall"
        part = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
        )
        headers = [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]
        first = part + CLIP[:1000]
    sent: list[dict] = []

    async def receive():
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": first, "more_body": True}
        await anyio.sleep_forever()  # the client stops sending
        return None

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/score",
        "raw_path": b"/v1/score",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    with serve_with() as client:
        started = time.monotonic()

        async def call():
            scope["state"] = {}
            with anyio.fail_after(30):  # the test's own bound: a hang fails, it does not wait forever
                await client.app(scope, receive, send)

        client.portal.call(call)
        elapsed = time.monotonic() - started
    start = next(m for m in sent if m.get("type") == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m.get("type") == "http.response.body")
    assert start["status"] == 408, body
    assert (b"connection", b"close") in [(k.lower(), v) for k, v in start["headers"]]
    assert b'"request_timeout"' in body
    assert elapsed >= 2.0


def test_a_slow_but_moving_body_is_not_cut(serve_with, monkeypatch):
    monkeypatch.setattr(BodySizeLimitMiddleware, "body_idle_timeout_s", 2.0)
    with serve_with() as client:
        # Ten pieces a tenth of a second apart: 1 s in all, never 2 s without a byte.
        pieces = [CLIP[i : i + len(CLIP) // 10 + 1] for i in range(0, len(CLIP), len(CLIP) // 10 + 1)]
        sent: list[dict] = []
        queue = list(pieces)

        async def receive():
            await anyio.sleep(0.1)
            piece = queue.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(queue)}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/score",
            "raw_path": b"/v1/score",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"audio/wav"), (b"content-length", str(len(CLIP)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        client.portal.call(client.app, scope, receive, send)
    start = next(m for m in sent if m.get("type") == "http.response.start")
    assert start["status"] == 200


# --- no secret in any log line --------------------------------------------------------------


def test_the_key_never_appears_in_the_server_output(live_server):
    """Everything the live server wrote (DEBUG, stdout and stderr, every worker), after requests
    with the right key, wrong keys close to it, and the key where it does not belong."""
    base = live_server.base
    near = [LIVE_KEY + "x", LIVE_KEY[:-1], LIVE_KEY.upper(), f"{LIVE_KEY} {LIVE_KEY}"]
    with httpx.Client(base_url=base, timeout=60) as client:
        assert (
            client.post(
                "/v1/score", files={"file": ("a.wav", CLIP)}, headers={"X-API-Key": LIVE_KEY}
            ).status_code
            == 200
        )
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {LIVE_KEY}"}).status_code == 200
        for wrong in near:
            assert client.get("/v1/models", headers={"X-API-Key": wrong}).status_code == 401
            assert (
                client.post(
                    "/v1/score", content=b"junk", headers={"Authorization": f"Bearer {wrong}"}
                ).status_code
                == 401
            )
        # The key in places that do get logged: the path, the query, a request id, a file name.
        client.get(f"/v1/models/{LIVE_KEY}", headers={"X-API-Key": LIVE_KEY})
        client.get(f"/nowhere/{LIVE_KEY}?api_key={LIVE_KEY}")
        client.get("/health", headers={"X-Request-ID": LIVE_KEY})
        client.post(
            "/v1/score", files={"file": (f"{LIVE_KEY}.wav", b"junk")}, headers={"X-API-Key": LIVE_KEY}
        )
    time.sleep(0.5)
    text = live_server.log_text()
    assert text.count('"message": "request"') >= 14  # the log really was captured
    for secret in {LIVE_KEY, *near}:
        assert secret not in text, f"{secret!r} found in the server output"
    assert '"api_key": true' in text  # it says that a key is set, and only that
    assert '"path": "/v1/models/[redacted]"' in text and '"request_id": "[redacted]"' in text


# --- TLS, as docs/security.md describes -----------------------------------------------------


def _docs_log_config() -> str:
    """The python -c program docs/security.md gives for uvicorn's --log-config (taken from the doc)."""
    text = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    program = re.search(r"python -c '(.*?)' > log\.json", text, re.DOTALL)
    assert program, "docs/security.md lost its log.json recipe"
    return program.group(1).replace("\\\n", "")


DOCS_LOG_CONFIG = _docs_log_config()


def test_uvicorn_serves_the_app_over_tls(models_dir, tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={HOST}",
            "-addext",
            f"subjectAltName=IP:{HOST}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # The hand-run form from docs/security.md (asd-serve has no TLS settings), log config included.
    config = tmp_path / "log.json"
    with config.open("w") as out:
        subprocess.run([sys.executable, "-c", DOCS_LOG_CONFIG], stdout=out, check=True, cwd=REPO, timeout=60)
    port = free_port()
    server = Server(models_dir, tmp_path / "tls.log", workers=1)
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "service.main:create_app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--ssl-keyfile",
        str(key),
        "--ssl-certfile",
        str(cert),
        "--log-config",
        str(config),
        "--no-access-log",
        "--no-server-header",
        "--timeout-worker-healthcheck",
        "30",
    ]
    with open(tmp_path / "tls.log", "wb") as log:
        process = subprocess.Popen(command, env=server.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"https://{HOST}:{port}/health", verify=context, timeout=10)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and process.poll() is None, (
                    tmp_path / "tls.log"
                ).read_text()
                time.sleep(0.3)
        assert health.status_code == 200 and health.url.scheme == "https"
        assert "server" not in health.headers
        with pytest.raises(httpx.RemoteProtocolError):  # plain HTTP is not answered on the TLS port
            httpx.get(f"http://{HOST}:{port}/health", timeout=10)
    finally:
        process.terminate()
        process.wait(30)
    lines = [
        json.loads(line) for line in (tmp_path / "tls.log").read_text().splitlines() if line.startswith("{")
    ]
    assert any(line.get("message") == "request" and line.get("path") == "/health" for line in lines)


# --- the container: non-root, read-only root filesystem (files owned by the docker helper) ---


def test_the_image_runs_as_a_non_root_user():
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    final_stage = re.split(r"(?im)^FROM\s", text)[-1]
    users = re.findall(r"(?im)^USER\s+(\S+)", final_stage)
    assert users, "no USER in the final stage: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]}"


def test_compose_runs_read_only_and_not_as_root():
    import yaml

    services = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    for name, service in services.items():
        assert service.get("read_only") is True, f"{name}: root filesystem is writable"
        assert str(service.get("user", "")).split(":")[0] not in ("root", "0"), name
        assert service.get("privileged") is not True, name


# --- the dependency audit's verdicts (tests/reliability/audit.py; the run itself is a CI step) --


def test_audit_verdicts():
    unreachable = {
        "dependencies": [
            {
                "name": "fastapi",
                "skip_reason": "Dependency not found on PyPI and could not be audited: fastapi (1)",
            }
        ]
    }
    assert audit.classify(unreachable, None, "pypi").code == audit.NOT_AUDITED
    assert audit.classify(None, "ConnectionError: api.osv.dev", "osv").code == audit.NOT_AUDITED
    assert audit.classify({"dependencies": []}, None, "pypi").code == audit.NOT_AUDITED
    clean = {"dependencies": [{"name": "numpy", "version": "2.0", "vulns": []}]}
    assert audit.classify(clean, None, "pypi").code == audit.CLEAN
    unfixed = {"dependencies": [{"name": "a", "version": "1", "vulns": [{"id": "X-1", "fix_versions": []}]}]}
    verdict = audit.classify(unfixed, None, "pypi")
    assert verdict.code == audit.CLEAN and "no fixed version" in " ".join(verdict.lines)
    fixable = {
        "dependencies": [{"name": "a", "version": "1", "vulns": [{"id": "X-2", "fix_versions": ["1.1"]}]}]
    }
    verdict = audit.classify(fixable, None, "pypi")
    assert (
        verdict.code == audit.FIXABLE
        and "X-2" in " ".join(verdict.lines)
        and "1.1" in " ".join(verdict.lines)
    )


def test_audit_never_passes_silently_when_nothing_was_audited(monkeypatch, capsys):
    monkeypatch.setattr(
        audit, "run_pip_audit", lambda requirements, service: (None, f"{service}: unreachable")
    )
    assert audit.main(["--requirements", str(Path(audit.REPO) / "constraints.txt")]) == audit.NOT_AUDITED
    assert "NOT AUDITED" in capsys.readouterr().out
    assert audit.main(["--allow-unreachable"]) == audit.CLEAN
    assert "NOT AUDITED" in capsys.readouterr().out
