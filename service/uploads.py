"""Bounded request bodies: a size limit no upload path can get around.

`BodySizeLimitMiddleware` is a pure ASGI middleware, so it sees every body
byte before anything parses it, raw bodies and multipart forms alike: a
declared `Content-Length` over the limit is refused before a byte is read,
and a body without one (chunked) is counted while it streams and cut off at
the limit. Multipart files are spooled to disk by Starlette past 1 MB, and a
raw body read here is refused as soon as it passes the limit, so memory per
request stays bounded.

It also bounds time: uvicorn waits for a request body forever, so a body
during which no byte arrives for `body_idle_timeout_s` (60 s, nginx's
`client_body_timeout`) is answered 408 and the connection closed. A slow but
moving upload is never cut.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import BodyTimeout, PayloadTooLarge, error_response

# What a raw (non-multipart) body may be labelled; libsndfile sniffs the
# actual format from the bytes, so the label only has to say "audio".
RAW_AUDIO_TYPES = frozenset(
    {
        "audio/wav",
        "audio/x-wav",
        "audio/wave",
        "audio/vnd.wave",
        "audio/flac",
        "audio/x-flac",
        "audio/ogg",
        "application/octet-stream",
    }
)
MULTIPART = "multipart/form-data"


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower case ('' when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole raw body, refusing it as soon as it passes `limit` bytes.

    bytes, joined once at the end: `io.BytesIO`, which decoding wraps the body in, shares a
    bytes object but copies a bytearray, so a bytearray here held the body twice while
    it was decoded.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class BodySizeLimitMiddleware:
    """Answer 413 for any request whose body is, or turns out to be, over `limit` bytes."""

    body_idle_timeout_s: float = 60.0

    def __init__(self, app: ASGIApp, limit: int, body_idle_timeout_s: float | None = None) -> None:
        self.app = app
        self.limit = limit
        if body_idle_timeout_s is not None:
            self.body_idle_timeout_s = body_idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            # Refuse on the header alone; the unread body is left to the server
            # (uvicorn closes the connection rather than read it).
            await error_response(
                413,
                "payload_too_large",
                f"the request body is {declared} bytes; the limit is {self.limit} bytes",
            )(scope, receive, send)
            return

        received = 0
        response_started = False
        body_complete = False
        idle = self.body_idle_timeout_s

        async def counting_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:
                return await receive()  # after the body: only a disconnect can come; no deadline
            try:
                # asyncio's own timeout (uvicorn runs asyncio): under half the cost of anyio's
                # cancel scope, which was paid for every body message of every upload.
                async with asyncio.timeout(idle):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(idle) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLarge(self.limit)
                body_complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception as error:
            # Normally FastAPI turns these into a 413/408 through the error
            # handlers; this catches them when raised outside them (or in a group).
            if response_started:
                raise
            if _is_a(error, PayloadTooLarge):
                await error_response(
                    413, "payload_too_large", f"the request body is larger than the {self.limit} byte limit"
                )(scope, receive, send)
            elif _is_a(error, BodyTimeout):
                await error_response(
                    408,
                    "request_timeout",
                    f"the request body stalled: nothing arrived for {idle:g} s",
                    headers={"Connection": "close"},
                )(scope, receive, send)
            else:
                raise


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _is_a(error: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(error, kind):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(_is_a(inner, kind) for inner in error.exceptions)
    return False
