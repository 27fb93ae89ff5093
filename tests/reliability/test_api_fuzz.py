"""API fuzzing: schemathesis generates requests from the service's own OpenAPI document.

Every operation gets positive (schema-valid) and negative (schema-breaking)
requests, with and without the API key. Each answer must not be a 5xx, must
have a status the document declares for that operation, the declared content
type and headers, and a body that matches the declared schema. Examples are
bounded (ASD_API_FUZZ_EXAMPLES per operation and mode, default 20) so that the
whole run stays well under a minute; derandomized, so a failure repeats.

(schemathesis' own `from_fixture` loader does not run under pytest 9, so the
cases are drawn from its strategies with hypothesis directly.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.config import Settings
from service.main import create_app
from tests.service.conftest import DEFAULT_MODEL

KEY = "fuzz-key-0123456789"
EXAMPLES = int(os.environ.get("ASD_API_FUZZ_EXAMPLES", "20"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _operations() -> dict[str, bool]:
    """'METHOD /path' of every operation in the document -> whether it takes any input.

    Building an app loads no model (that happens in its lifespan).
    """
    document = create_app(Settings(models_dir=Path("/nonexistent"))).openapi()
    return {
        f"{method.upper()} {path}": bool(operation.get("parameters") or operation.get("requestBody"))
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


OPERATIONS = _operations()
STATUSES: dict[str, set[int]] = {}
CASES: list[int] = [0]


@pytest.fixture(scope="module")
def api_schema(models_dir: Path) -> Iterator[object]:
    # A small upload limit so that generated bodies can also reach the 413 path.
    app = create_app(Settings(models_dir=models_dir, api_key=KEY, max_upload_size=200_000))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
    assert app.state.registry.wait(120), "models did not load"
    yield schema
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()


def test_the_document_has_the_operations_we_fuzz():
    assert {"POST /v1/score", "POST /v1/models/{name}/score", "GET /v1/models", "GET /ready"} <= set(
        OPERATIONS
    )


# Negative (schema-breaking) cases only where there is an input to break.
CASES_TO_RUN = [
    pytest.param(label, mode, id=f"{label}-{mode.value}")
    for label, takes_input in OPERATIONS.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if takes_input or mode is GenerationMode.POSITIVE
]


@pytest.mark.parametrize(("label", "mode"), CASES_TO_RUN)
def test_operation_answers_what_it_declares(api_schema, label, mode):
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    strategy = operation.as_strategy(generation_mode=mode)
    if "{name}" in label:
        # Random names almost never hit a model; half the cases name the real one.
        strategy = st.one_of(
            strategy, operation.as_strategy(generation_mode=mode, path_parameters={"name": DEFAULT_MODEL})
        )

    @given(case=strategy, with_key=st.booleans())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case, with_key):
        headers = {"X-API-Key": KEY} if with_key else {"X-API-Key": "wrong"} if case.body is None else {}
        response = case.call(headers=headers)
        STATUSES.setdefault(label, set()).add(response.status_code)
        CASES[0] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    fuzz()


def test_schemathesis_run_against_the_live_server(live_server, tmp_path):
    """The schemathesis CLI over real HTTP: examples, coverage (boundaries, missing and wrong-typed
    parameters, wrong methods) and fuzzing phases, with auth checks on top of the conformance ones."""
    from tests.reliability.conftest import LIVE_KEY

    checks = [c.__name__ for c in CHECKS] + [
        "unsupported_method",  # undeclared methods answer 405
        "ignored_auth",  # the declared API key is really enforced
        "missing_required_header",
        "negative_data_rejection",  # schema-breaking input is refused with a 4xx
    ]
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{live_server.base}/openapi.json",
        "--header",
        f"X-API-Key: {LIVE_KEY}",
        "--checks",
        ",".join(checks),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "1",
        # One worker: with threads, CPython 3.11.7's ast.parse (hypothesis describing a strategy)
        # can fail with "SystemError: AST constructor recursion depth mismatch".
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    output = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    assert re.search(r"\d+ generated, \d+ passed", output), output
    assert "failed" not in output.split("SUMMARY")[-1].lower(), output
    print("\nschemathesis:", re.search(r"Test cases:\s*\n\s*(.*)", output).group(1))


def test_zz_the_fuzzing_reached_the_interesting_answers(capsys):
    """The fuzz above is not degenerate: it got past auth, into the routes, and to their errors."""
    if len(STATUSES) < len(OPERATIONS):
        pytest.skip("the fuzz tests above did not all run")
    with capsys.disabled():
        print(
            f"\n{CASES[0]} cases; statuses per operation:",
            {k: sorted(v) for k, v in sorted(STATUSES.items())},
        )
    # Which 4xx each operation meets varies a little with the draw; these always come up.
    assert {400, 401} <= STATUSES["POST /v1/score"] and STATUSES["POST /v1/score"] & {415, 422}
    assert {400, 401, 404} <= STATUSES["POST /v1/models/{name}/score"]
    assert {200, 401, 404} <= STATUSES["POST /v1/models/{name}/score/batch"]
    assert {200, 401, 404} <= STATUSES["GET /v1/models/{name}"]
