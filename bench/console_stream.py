"""How fast does the console stream show a change, and what does a tick cost?

Starts the service (espeak, in-memory store) with ``--endpoints`` configured
endpoints in ``--zones`` zones, opens ``--streams`` console streams
(``GET /v1/stream``, read as a browser would: fetch, SSE lines) and measures:

* POST /v1/announcements → its ``announcement`` event on every stream (ms);
* an endpoint connecting → its ``endpoint`` event on every stream (ms);
* the cost of one feed step (build the state, diff, fan out) on the event loop.

Figures only; this is not a test. About 15 s with the defaults.

    python bench/console_stream.py
    python bench/console_stream.py --streams 32 --endpoints 500 --zones 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from _api import HEADERS, api_tokens

from broadcaster.api.console import FEED
from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint


class Stream:
    """One console stream; notes when each (kind, id) was first seen."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self.ready = asyncio.Event()

    async def run(self, http: aiohttp.ClientSession, url: str) -> None:
        async with http.get(url) as r:
            name, data = "", ""
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    now = time.perf_counter()
                    body = json.loads(data)
                    if name == "snapshot":
                        self.ready.set()
                    else:
                        key = body.get("id") or body.get("endpoint_id")
                        if name == "endpoint" and not body.get("connected"):
                            key = None
                        if key is not None:
                            self.seen.setdefault((name, key), now)
                    data = ""


async def wait_all(streams: list[Stream], key: tuple[str, str], t0: float) -> list[float]:
    while not all(key in s.seen for s in streams):
        await asyncio.sleep(0.002)
    return [(s.seen[key] - t0) * 1000 for s in streams]


def row(label: str, xs: list[float]) -> str:
    return (
        f"{label:<34}{statistics.median(xs):>9.1f}{max(xs):>9.1f}"
        f"{sorted(xs)[int(0.95 * (len(xs) - 1))]:>9.1f}"
    )


async def main(streams_n: int, endpoints_n: int, zones_n: int, runs: int) -> None:
    zones = [f"z{i}" for i in range(zones_n)]
    eps = [f"ep{i}" for i in range(endpoints_n)]
    cfg = parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0},
            "api_tokens": api_tokens(),
            "store": {"path": ":memory:"},
            "announcements": {"wait_for_endpoints_s": 0},
            "zones": [{"id": z} for z in zones],
            "endpoints": [
                {"id": e, "token_hash": hash_token("t"), "zones": [zones[i % zones_n]]}
                for i, e in enumerate(eps)
            ],
        }
    )
    print(f"{streams_n} streams, {endpoints_n} endpoints in {zones_n} zones, {runs} runs")
    async with Service(cfg) as svc, aiohttp.ClientSession(headers=HEADERS) as http:
        base = f"http://127.0.0.1:{svc.http_port}"
        streams = [Stream() for _ in range(streams_n)]
        readers = [asyncio.create_task(s.run(http, f"{base}/v1/stream")) for s in streams]
        for s in streams:
            await s.ready.wait()
        posted: list[float] = []
        for n in range(runs):
            t0 = time.perf_counter()
            body = {"text": f"Announcement {n}.", "zones": [zones[n % zones_n]]}
            async with http.post(f"{base}/v1/announcements", json=body) as r:
                created = await r.json()
            posted += await wait_all(streams, ("announcement", created["id"]), t0)
            await asyncio.sleep(0.05)
        joined: list[float] = []
        tmp = Path(tempfile.mkdtemp())
        tasks = []
        for n in range(min(runs, endpoints_n)):
            eid = eps[n]
            ep = ReferenceEndpoint(
                url=f"ws://127.0.0.1:{svc.ws_port}/v1/endpoint",
                endpoint_id=eid,
                token="t",
                zones=[zones[n % zones_n]],
                formats=["pcm_s16le/8000"],
                out_dir=tmp / eid,
                reconnect=False,
            )
            t0 = time.perf_counter()
            tasks.append(asyncio.create_task(ep.run()))
            await ep.joined.wait()
            joined += await wait_all(streams, ("endpoint", eid), t0)
        feed = svc._runner.app[FEED] if svc._runner is not None else None
        assert feed is not None
        costs = []
        for _ in range(50):
            t0 = time.perf_counter()
            feed.step()
            costs.append((time.perf_counter() - t0) * 1000)
        for t in [*tasks, *readers]:
            t.cancel()
    print(f"{'':<34}{'median':>9}{'max':>9}{'p95':>9}   (ms)")
    print(row("POST -> announcement event", posted))
    print(row("endpoint joined -> endpoint event", joined))
    print(row("one feed step (event loop)", costs))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--endpoints", type=int, default=40)
    p.add_argument("--zones", type=int, default=8)
    p.add_argument("--runs", type=int, default=20)
    a = p.parse_args()
    logging.disable(logging.WARNING)  # the announcements fail (no endpoint): not news here
    asyncio.run(main(a.streams, a.endpoints, a.zones, a.runs))
