"""Posting one file to the service, and what its answer means for the file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# Answers that say "later", not "never": the file stays and is sent again.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Scored:
    answer: dict[str, Any]


@dataclass(frozen=True)
class Refused:
    """The service will never score this file as it is (bad audio, unknown machine ID, ...)."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class Retry:
    reason: str
    after_s: float | None = None  # the service's Retry-After, when it gave one


@dataclass(frozen=True)
class Vanished:
    reason: str


Outcome = Scored | Refused | Retry | Vanished


class ServiceClient:
    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        connections: int = 4,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.path = f"/v1/models/{model}/score" if model else "/v1/score"
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    def close(self) -> None:
        self.http.close()

    def score(self, path: Path, *, machine_id: str | None) -> Outcome:
        params = {"machine_id": machine_id} if machine_id else {}
        try:
            with open(path, "rb") as f:
                response = self.http.post(
                    self.path, params=params, files={"file": (path.name, f, "audio/wav")}
                )
        except FileNotFoundError:
            return Vanished("the file disappeared before it was sent")
        except httpx.TransportError as error:
            return Retry(f"service unreachable: {type(error).__name__}: {error}")
        except OSError as error:
            return Retry(f"could not read the file: {error}")
        return _outcome(response)


def _outcome(response: httpx.Response) -> Outcome:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, dict) and "decision" in body:
        return Scored(body)
    error = body.get("error") if isinstance(body, dict) else None
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    message = str(error.get("message", "")) if isinstance(error, dict) else response.text[:200]
    if response.status_code in _RETRY_STATUSES or response.status_code == 200:
        return Retry(f"HTTP {response.status_code} {code}: {message}".strip(), _retry_after(response))
    if response.status_code in (401, 403):
        # A wrong key fails every file alike: wait for the operator, do not fail them all.
        return Retry(f"HTTP {response.status_code} {code}: {message} (check --api-key-env)")
    return Refused(response.status_code, code or f"http_{response.status_code}", message)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class Backoff:
    """Exponential, capped: the whole watcher waits while the service is away."""

    def __init__(self, *, first_s: float = 0.5, most_s: float = 30.0) -> None:
        self.first_s, self.most_s = first_s, most_s
        self.delay_s = 0.0
        self.until = 0.0

    def failed(self, now: float, hint_s: float | None = None) -> float:
        self.delay_s = min(self.most_s, self.delay_s * 2 if self.delay_s else self.first_s)
        wait = max(self.delay_s, hint_s or 0.0)
        self.until = max(self.until, now + wait)
        return wait

    def succeeded(self) -> None:
        self.delay_s = 0.0
        self.until = 0.0

    def waiting(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.until
