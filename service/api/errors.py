"""One error body for every failure: `{"error": {"code", "message", "request_id"}}`.

`ApiError` is what the service raises; the handlers installed by
`install_error_handlers` also reshape FastAPI's own validation errors (422)
and Starlette's HTTP errors (404 for unknown routes, 405, multipart parse
errors) into the same body.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import AudioError, AudioLengthError, InvalidChannelError
from service.logs import request_id_var
from service.schemas import ErrorResponse

REQUEST_ID_HEADER = "X-Request-ID"

# Codes for the statuses Starlette raises on its own.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "not_ready",
}


class ApiError(Exception):
    """An error with its HTTP status, stable code and a message for the client."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class PayloadTooLarge(StarletteHTTPException):
    """Raised from the body-counting `receive` once the body passes the limit.

    It subclasses Starlette's HTTPException because FastAPI re-raises those
    while parsing a body (instead of turning them into a generic 400).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the {limit} byte limit")
        self.limit = limit


class BodyTimeout(StarletteHTTPException):
    """Raised from the body-reading `receive` when the client sent no body byte for too long.

    uvicorn has no timeout on a request body: without this, a client that
    stops sending mid-upload would hold its request (and what it sent) forever.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body stalled: nothing arrived for {seconds:g} s",
            headers={"Connection": "close"},
        )
        self.seconds = seconds


def audio_error(error: AudioError) -> ApiError:
    """Map a decoding or length problem to its HTTP status."""
    # Undecodable, empty or invalid (NaN, odd layout) audio is the client's bad
    # data: 400. A clip that decodes but does not fit (length, including too
    # short for the model, or channel) is 422.
    fits = isinstance(error, (AudioLengthError, InvalidChannelError))
    return ApiError(422 if fits else 400, error.code, str(error))


def error_payload(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id_var.get()}
    if details is not None:
        body["details"] = details
    return {"error": body}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    all_headers = dict(headers or {})
    request_id = request_id_var.get()
    if request_id:
        all_headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(error_payload(code, message, details), status_code=status, headers=all_headers)


def _clean_validation_errors(errors: Any) -> list[dict[str, Any]]:
    # Keep loc/msg/type only: `input` may be an uploaded file or a secret.
    return [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    request.state.error_code = exc.code  # for the access log line
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _clean_validation_errors(exc.errors())
    where = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5])
    request.state.error_code = "validation_error"
    return error_response(422, "validation_error", f"invalid request: {where}", details=details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = str(exc.detail)
    if exc.status_code == 400 and message.startswith("Too many files"):
        code = "too_many_files"  # Starlette's multipart limit, set from ASD_MAX_BATCH_FILES
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    request.state.error_code = code
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the given error statuses, all with the error schema.

    An operation that takes a body (declares 413) can also answer 408: both come
    from the body limit middleware (service.uploads), whatever the route does.
    """
    if 413 in statuses and 408 not in statuses:
        statuses = (*statuses, 408)
    descriptions = {
        400: "Undecodable, empty or invalid audio (NaN samples, too many channels).",
        401: "Missing or wrong API key (only when the service has one).",
        404: "No such model.",
        408: "The request body stalled (no byte for a minute); the connection is closed.",
        413: "The request body is larger than the upload limit.",
        409: "Another reload of the models is running.",
        415: "A Content-Type the endpoint cannot take.",
        422: "Invalid parameters, a clip too short for one patch or longer than the limit, no such channel.",
        503: "Models are still loading, or the model is broken.",
    }
    return {s: {"model": ErrorResponse, "description": descriptions[s]} for s in statuses}
