"""Real servers on 127.0.0.1:0, the real espeak engine, real clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broadcaster.app import Service
from broadcaster.config import Config, hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint
from broadcaster.model import AnnouncementState
from broadcaster.speech.espeak import EspeakEngine

TOKENS = {"ep-a": "token-a", "ep-b": "token-b", "ep-c": "token-c", "ep-d": "token-d"}

#: API tokens of the test configs: one per role, and an operator limited to "gate".
API_TOKENS = {
    "admin": "test-admin-token",
    "dispatcher": "test-dispatcher-token",
    "operator": "test-operator-token",
    "operator2": "test-operator2-token",
    "viewer": "test-viewer-token",
    "gate-operator": "test-gate-operator-token",
    "gate-dispatcher": "test-gate-dispatcher-token",
}


def api_tokens_config(limited_zone: str | None = "gate") -> list[dict[str, Any]]:
    """The ``api_tokens`` entries for API_TOKENS (add them to a test's own config).

    The zone-limited ones are limited to ``limited_zone`` (None: left out)."""
    roles = {
        "admin": "admin",
        "dispatcher": "dispatcher",
        "operator": "operator",
        "operator2": "operator",
        "viewer": "viewer",
        "gate-operator": "operator",
        "gate-dispatcher": "dispatcher",
    }
    out: list[dict[str, Any]] = []
    for tid, token in API_TOKENS.items():
        entry: dict[str, Any] = {"id": tid, "role": roles[tid], "token_hash": hash_token(token)}
        if tid.startswith("gate-"):
            if limited_zone is None:
                continue
            entry["zones"] = [limited_zone]
        out.append(entry)
    return out


def bearer(who: str = "admin") -> dict[str, str]:
    """The Authorization header of the test token ``who`` (a key of API_TOKENS)."""
    return {"Authorization": f"Bearer {API_TOKENS[who]}"}


def make_config(
    store: str = ":memory:",
    *,
    auth: dict[str, Any] | None = None,
    templates: list[dict[str, Any]] | None = None,
    **streaming: Any,
) -> Config:
    return parse_config(
        {
            "auth": auth or {},
            "templates": templates or [],
            "api_tokens": api_tokens_config(),
            "server": {"http_port": 0, "ws_port": 0, "shutdown_timeout_s": 2},
            "store": {"path": store},
            "announcements": {"wait_for_endpoints_s": 0.3},
            "streaming": {"playout_delay_ms": 200, **streaming},
            "zones": [{"id": "hall"}, {"id": "gate"}, {"id": "empty"}],
            "endpoints": [
                {"id": "ep-a", "token_hash": hash_token("token-a"), "zones": ["hall", "gate"]},
                {"id": "ep-b", "token_hash": hash_token("token-b"), "zones": ["hall"]},
                {"id": "ep-c", "token_hash": hash_token("token-c"), "zones": ["hall"]},
                {"id": "ep-d", "token_hash": hash_token("token-d"), "zones": ["gate"]},
            ],
        },
        "test-config",
    )


class Harness:
    """Clients of a running service. ``post``/``get`` send the admin token unless told
    ``as_=`` another key of API_TOKENS, or ``as_=None`` for no token."""

    def __init__(self, service: Service, tmp: Path) -> None:
        self.service = service
        self.tmp = tmp
        self.api = f"http://127.0.0.1:{service.http_port}"
        self.ws_url = f"ws://127.0.0.1:{service.ws_port}/v1/endpoint"
        self._tasks: list[asyncio.Task[None]] = []
        self.endpoints: list[ReferenceEndpoint] = []

    async def endpoint(self, eid: str, zones: list[str], formats: list[str]) -> ReferenceEndpoint:
        ep = ReferenceEndpoint(
            url=self.ws_url,
            endpoint_id=eid,
            token=TOKENS[eid],
            zones=zones,
            formats=formats,
            out_dir=self.tmp / eid,
            reconnect=False,
        )
        self.endpoints.append(ep)
        self._tasks.append(asyncio.create_task(ep.run()))
        await asyncio.wait_for(ep.joined.wait(), 10)
        return ep

    async def post(
        self, body: Any, *, path: str = "/v1/announcements", as_: str | None = "admin"
    ) -> tuple[int, Any]:
        headers = bearer(as_) if as_ is not None else {}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.api}{path}", json=body, headers=headers) as r,
        ):
            return r.status, await r.json()

    async def get(self, path: str, *, as_: str | None = "admin") -> tuple[int, Any]:
        headers = bearer(as_) if as_ is not None else {}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.api}{path}", headers=headers) as r,
        ):
            return r.status, await r.json()

    async def wait_final(self, ann_id: str, timeout_s: float = 60) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                _, body = await self.get(f"/v1/announcements/{ann_id}")
                if AnnouncementState(body["state"]).is_final:
                    return body
                await asyncio.sleep(0.05)

        return await asyncio.wait_for(poll(), timeout_s)

    async def wait_receipts(
        self, ann_id: str, endpoint_ids: list[str], timeout_s: float = 10
    ) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                _, body = await self.get(f"/v1/announcements/{ann_id}")
                eps = body["endpoints"]
                if all(eps.get(e, {}).get("receipt") for e in endpoint_ids):
                    return body
                await asyncio.sleep(0.05)

        return await asyncio.wait_for(poll(), timeout_s)

    async def close(self) -> None:
        for ep in self.endpoints:
            ep.stop()
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(BaseException):
                await t


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    # A short engine limit so "long text is split" needs only a few seconds of audio.
    async with Service(make_config(), engine=EspeakEngine(max_text_chars=200)) as service:
        h = Harness(service, tmp_path)
        try:
            yield h
        finally:
            await h.close()
