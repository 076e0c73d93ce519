"""A small client of the HTTP API, used by ``broadcaster announce``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from broadcaster.clock import Clock, SystemClock
from broadcaster.edge import client_tls_context
from broadcaster.model import AnnouncementState

#: Every final state (refused, dropped, partial, unconfirmed, missed, expired too).
_FINAL = {s.value for s in AnnouncementState if s.is_final}

#: Called with the record as first answered, then with every later poll's record.
Listener = Callable[[dict[str, Any]], None]


class ApiError(Exception):
    """The API refused a request or could not be reached; the message says why."""


class WaitTimeout(ApiError):
    """Accepted, but not final within the timeout; ``last`` is its latest record."""

    def __init__(self, message: str, created: dict[str, Any], last: dict[str, Any]) -> None:
        super().__init__(message)
        self.created = created
        self.last = last


def _describe(status: int, body: Any) -> str:
    if isinstance(body, dict):
        parts = [f"{status} {body.get('error', '')}: {body.get('message', '')}".strip()]
        for f in body.get("fields") or []:
            parts.append(f"  {f.get('field')}: {f.get('message')}")
        return "\n".join(parts)
    return f"{status}: {body}"


async def _json(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return await resp.text()


def request_headers(token: str | None, idempotency_key: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer`` (when a token is given) and ``Idempotency-Key``."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return headers


async def announce_and_wait(
    base_url: str,
    body: dict[str, Any],
    *,
    wait: bool,
    timeout_s: float = 600.0,
    poll_interval_s: float = 0.25,
    clock: Clock | None = None,
    token: str | None = None,
    ca_file: str | None = None,
    idempotency_key: str | None = None,
    on_created: Listener | None = None,
    on_update: Listener | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """POST the announcement; with ``wait`` poll until it reaches a final state.

    The POST carries an ``Idempotency-Key`` (a fresh uuid4 unless one is given), so a
    retry of this very call can never make a second announcement. ``ca_file`` (PEM) is
    trusted besides the system CAs for an https:// API.
    """
    clock = clock or SystemClock()
    base = base_url.rstrip("/")
    key = idempotency_key or str(uuid.uuid4())
    try:
        tls = client_tls_context(ca_file)
    except ValueError as exc:
        raise ApiError(f"--ca-file {exc}") from None
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30),
            headers=request_headers(token),
            connector=aiohttp.TCPConnector(ssl=tls),
        ) as http:
            async with http.post(
                f"{base}/v1/announcements", json=body, headers={"Idempotency-Key": key}
            ) as resp:
                created = await _json(resp)
                if resp.status not in (200, 201, 202):
                    raise ApiError(_describe(resp.status, created))
            if on_created is not None:
                on_created(created)
            if not wait:
                return created, None
            deadline = clock.monotonic_us() + int(timeout_s * 1e6)
            state = created
            while True:
                if clock.monotonic_us() >= deadline:
                    raise WaitTimeout(
                        f"still {state['state']} after {timeout_s:g} s", created, state
                    )
                async with http.get(f"{base}/v1/announcements/{created['id']}") as resp:
                    state = await _json(resp)
                    if resp.status != 200:
                        raise ApiError(_describe(resp.status, state))
                if on_update is not None:
                    on_update(state)
                # finished_at: a final state this client does not know by name yet.
                if state["state"] in _FINAL or state.get("finished_at"):
                    return created, state
                await clock.sleep_us(int(poll_interval_s * 1e6))
    except aiohttp.ClientError as exc:
        raise ApiError(f"cannot reach the API at {base}: {exc}") from None
