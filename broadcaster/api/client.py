"""A small client of the HTTP API, used by ``broadcaster announce``."""

from __future__ import annotations

from typing import Any

import aiohttp

from broadcaster.clock import Clock, SystemClock
from broadcaster.edge import client_tls_context
from broadcaster.model import AnnouncementState

#: Every final state (refused, dropped, partial, unconfirmed, missed, expired too).
_FINAL = {s.value for s in AnnouncementState if s.is_final}


class ApiError(Exception):
    """The API refused a request or could not be reached; the message says why."""


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
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """POST the announcement; with ``wait`` poll until it reaches a final state.

    ``ca_file`` (PEM) is trusted besides the system CAs for an https:// API.
    """
    clock = clock or SystemClock()
    base = base_url.rstrip("/")
    try:
        tls = client_tls_context(ca_file)
    except ValueError as exc:
        raise ApiError(f"--ca-file {exc}") from None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30),
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=tls),
        ) as http:
            async with http.post(f"{base}/v1/announcements", json=body) as resp:
                created = await _json(resp)
                if resp.status != 202:
                    raise ApiError(_describe(resp.status, created))
            if not wait:
                return created, None
            deadline = clock.monotonic_us() + int(timeout_s * 1e6)
            while True:
                async with http.get(f"{base}/v1/announcements/{created['id']}") as resp:
                    state = await _json(resp)
                    if resp.status != 200:
                        raise ApiError(_describe(resp.status, state))
                if state["state"] in _FINAL:
                    return created, state
                if clock.monotonic_us() >= deadline:
                    raise ApiError(f"gave up waiting after {timeout_s} s; state {state['state']}")
                await clock.sleep_us(int(poll_interval_s * 1e6))
    except aiohttp.ClientError as exc:
        raise ApiError(f"cannot reach the API at {base}: {exc}") from None
