"""GET /v1/me and the console's server-sent event stream, against the real service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import bearer

pytestmark = pytest.mark.integration


async def test_me_names_the_token_its_role_zones_and_priority_ceiling(harness):
    expected = {
        "viewer": ("viewer", None, None),
        "operator": ("operator", None, 223),
        "dispatcher": ("dispatcher", None, 255),
        "gate-operator": ("operator", ["gate"], 223),
    }
    for who, (role, zones, ceiling) in expected.items():
        status, body = await harness.get("/v1/me", as_=who)
        assert status == 200
        assert body == {
            "id": who,
            "role": role,
            "zones": zones,
            "max_priority": ceiling,
            "emergency_priority": 224,
        }
    status, _ = await harness.get("/v1/me", as_=None)
    assert status == 401


class Events:
    """A reader of one /v1/stream (events are upserts: a match already seen counts)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def _events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        name, data = "message", ""
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
            elif line == "" and data:
                yield name, json.loads(data)
                name, data = "message", ""

    async def next(self, kind: str, where: Any = None, timeout_s: float = 10) -> dict[str, Any]:
        """The first event of ``kind`` (matching ``where``) the stream has sent or sends."""
        for name, body in self.seen:
            if name == kind and (where is None or where(body)):
                return body

        async def find() -> dict[str, Any]:
            async for name, body in self._events():
                self.seen.append((name, body))
                if name == kind and (where is None or where(body)):
                    return body
            raise AssertionError("stream ended")

        return await asyncio.wait_for(find(), timeout_s)


async def _open(http: aiohttp.ClientSession, api: str, who: str) -> Events:
    r = await http.get(f"{api}/v1/stream", headers=bearer(who))
    assert r.status == 200 and r.content_type == "text/event-stream"
    return Events(r)


async def test_stream_sends_a_snapshot_then_endpoints_joining_and_announcements_changing(harness):
    async with aiohttp.ClientSession() as http:
        events = await _open(http, harness.api, "operator")
        snap = await events.next("snapshot")
        assert [z["id"] for z in snap["zones"]] == ["hall", "gate", "empty"]
        assert {e["endpoint_id"]: e["connected"] for e in snap["endpoints"]}["ep-b"] is False
        await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/8000"])
        ep = await events.next("endpoint", lambda e: e["endpoint_id"] == "ep-b" and e["connected"])
        assert ep["format"] == "pcm_s16le/8000" and ep["supervision"]["status"] == "ok"
        assert "sync_error_ms" in ep and "last_heard_s" in ep
        await events.next("zone", lambda z: z["id"] == "hall" and z["endpoints"] == ["ep-b"])
        status, ann = await harness.post(
            {"text": "The stream shows this.", "zones": ["hall"]}, as_="operator"
        )
        assert status == 202
        playing = await events.next("zone", lambda z: z["id"] == "hall" and z["playing"])
        assert playing["playing"] == ann["id"]
        kinds = {"snapshot", "zone", "endpoint", "announcement"}  # as documented
        assert {name for name, _ in events.seen} <= kinds
        final = await events.next(
            "announcement",
            lambda a: a["id"] == ann["id"] and a["state"] == "finished",
            timeout_s=30,
        )
        assert final["endpoints"]["ep-b"]["receipt"] is not None
        assert final["coverage"]["hall"]
        events.response.close()


async def test_stream_of_a_zone_limited_token_shows_only_its_zones(harness):
    async with aiohttp.ClientSession() as http:
        events = await _open(http, harness.api, "gate-operator")
        snap = await events.next("snapshot")
        assert [z["id"] for z in snap["zones"]] == ["gate"]
        assert sorted(e["endpoint_id"] for e in snap["endpoints"]) == ["ep-a", "ep-d"]
        status, hall = await harness.post({"text": "Hall only.", "zones": ["hall"]})
        assert status == 202
        status, gate = await harness.post({"text": "Gate only.", "zones": ["gate"]})
        assert status == 202
        await events.next("announcement", lambda a: a["id"] == gate["id"])
        await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/8000"])  # not a gate endpoint
        await harness.endpoint("ep-d", ["gate"], ["pcm_s16le/8000"])
        await events.next("endpoint", lambda e: e["endpoint_id"] == "ep-d" and e["connected"])
        await harness.wait_final(hall["id"])
        await asyncio.sleep(0.6)  # two more ticks: anything of the hall would be sent by now
        events.response.close()
        shown = {(n, b.get("id") or b.get("endpoint_id")) for n, b in events.seen}
        assert ("announcement", hall["id"]) not in shown
        assert ("endpoint", "ep-b") not in shown
        assert all(b["id"] == "gate" for n, b in events.seen if n == "zone")


async def test_streams_are_bounded_in_number_and_end_on_shutdown(harness):
    from broadcaster.api.console import FEED

    feed = harness.service._runner.app[FEED]
    feed.max_clients = 1
    feed.heartbeat_us = 100_000  # 15 s in service
    async with aiohttp.ClientSession() as http:
        events = await _open(http, harness.api, "viewer")
        await events.next("snapshot")
        assert len(feed.subscribers) == 1
        with pytest.raises(TimeoutError):  # a quiet stream sends only heartbeats
            await events.next("zone", timeout_s=0.5)
        assert events.comments.count(": heartbeat") >= 2
        async with http.get(f"{harness.api}/v1/stream", headers=bearer("viewer")) as r:
            assert r.status == 503 and (await r.json())["error"] == "too_many_streams"
        status, _ = await harness.get("/v1/stream", as_=None)
        assert status == 401
        loop = asyncio.get_running_loop()
        started = loop.time()
        stop = asyncio.create_task(harness.service.stop())
        # The stream ends at once: the stop does not wait out a shutdown timeout for it.
        with pytest.raises(AssertionError, match="stream ended"):
            await events.next("never", timeout_s=5)
        await asyncio.wait_for(stop, 10)
        assert feed.subscribers == set()
        assert loop.time() - started < harness.service.config.server.shutdown_timeout_s


async def test_a_client_that_stops_reading_is_closed_when_a_write_is_stuck(harness, caplog):
    from broadcaster.api.console import FEED

    feed = harness.service._runner.app[FEED]
    feed.write_timeout_us = 300_000  # 10 s in service
    feed.queue_limit = 1000
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{harness.api}/v1/stream", headers=bearer("viewer"))
        assert response.status == 200
        [sub] = feed.subscribers
        big = {"id": "hall", "filler": "x" * 1_000_000}
        for _ in range(64):  # far more than the socket buffers hold; nobody reads
            sub.offer("zone", big)

        async def closed() -> None:
            while feed.subscribers:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(closed(), 10)
        response.close()
    assert "console stream of viewer closed: a write took over 0.3 s" in caplog.text


async def test_a_client_whose_queue_overflows_gets_a_fresh_snapshot(harness):
    from broadcaster.api.console import FEED

    feed = harness.service._runner.app[FEED]
    async with aiohttp.ClientSession() as http:
        events = await _open(http, harness.api, "operator")
        await events.next("snapshot")
        [sub] = feed.subscribers
        sub.limit = 2
        for n in range(3):  # at once: the writer cannot have taken any yet
            sub.offer("zone", {"id": "hall", "n": n})
        assert sub.resync and sub.overflows == 1
        again = await events.next("snapshot", lambda s: s.get("resync") is True)
        assert [z["id"] for z in again["zones"]] == ["hall", "gate", "empty"]
        assert not [b for n, b in events.seen if n == "zone" and "n" in b]  # lost, replaced
        events.response.close()
