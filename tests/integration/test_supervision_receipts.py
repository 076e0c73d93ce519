"""Supervision and playback receipts with real servers and endpoints."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from broadcaster.app import Service
from broadcaster.speech.espeak import EspeakEngine

from .conftest import Harness, bearer, make_config

pytestmark = pytest.mark.integration


async def test_receipts_record_started_and_finished_per_endpoint(harness):
    await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
    await harness.endpoint("ep-c", ["hall"], ["opus/48000"])
    _, created = await harness.post({"text": "Platform two for Hill Square.", "zones": ["hall"]})
    await harness.wait_final(created["id"])
    for _ in range(100):
        _, body = await harness.get(f"/v1/announcements/{created['id']}")
        if all(e["state"] == "finished" for e in body["endpoints"].values()):
            break
        await asyncio.sleep(0.05)
    for eid in ("ep-b", "ep-c"):
        d = body["endpoints"][eid]
        assert d["state"] == "finished", d
        assert d["started_at_us"] < d["finished_at_us"]


async def test_a_vanished_endpoint_is_reported_faulty_and_recovers(tmp_path):
    cfg = make_config(heartbeat_interval_ms=200, heartbeat_timeout_ms=600)
    async with Service(cfg, engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            ep = await h.endpoint("ep-b", ["hall"], ["pcm_s16le/8000"])
            # the link dies without a goodbye (a pulled cable): abort the TCP connection
            ep._ws.transport.abort()
            ep.stop()

            async def events():
                async with (
                    aiohttp.ClientSession(headers=bearer()) as http,
                    http.get(f"{h.api}/v1/events") as r,
                ):
                    return (await r.json())["events"]

            for _ in range(100):
                kinds = [e["kind"] for e in await events()]
                if "endpoint_fault" in kinds:
                    break
                await asyncio.sleep(0.05)
            assert kinds == ["endpoint_joined", "endpoint_fault"]
            _, eps = await h.get("/v1/endpoints")
            b = next(e for e in eps["endpoints"] if e["endpoint_id"] == "ep-b")
            assert b["supervision"]["status"] == "faulty" and not b["connected"]
            await h.endpoint("ep-b", ["hall"], ["pcm_s16le/8000"])
            assert [e["kind"] for e in await events()][-1] == "endpoint_recovered"
        finally:
            await h.close()
