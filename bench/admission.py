"""Admission under load: the pure decision's cost, and an emergency while 1,000 routine wait.

1. ``Admission.admit`` / ``remove`` with ``--waiting`` routine announcements already
   waiting in one zone (and the band full, so each arrival runs the push-out search):
   microseconds per decision.
2. The real service in this process (espeak-ng, in-memory store, the reference endpoint
   in zones ``hall`` and ``gate``): the hall kept busy, ``--waiting`` routine requests
   POSTed (50 at a time), then an emergency for the idle gate and one for the busy hall.
   Prints the routine admission rate, each emergency's POST → 202 time and its
   first-audio time from the record (accepted → first chunk sent).

    python bench/admission.py [--waiting 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _api import HEADERS, api_tokens

from broadcaster.announcements import Admission
from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint
from broadcaster.speech.espeak import EspeakEngine

LONG = "This routine message keeps the hall busy while the others wait. " * 6


def bench_decision(waiting: int) -> None:
    a = Admission(band_limit=waiting, emergency_limit=waiting, emergency_priority=224)
    for i in range(waiting):
        a.admit(f"r{i}", ["hall"], 40 + i % 50)
    n = 2000
    t0 = time.perf_counter()
    for i in range(n):  # full band: each arrival searches and pushes out the lowest
        a.admit(f"x{i}", ["hall"], 120)
    push_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for i in range(n):
        a.admit(f"e{i}", ["hall"], 255)
        a.remove(f"e{i}")
    emergency_us = (time.perf_counter() - t0) / n * 1e6
    print(f"admission decision, {waiting} routine waiting in the zone:")
    print(f"  routine arrival into a full band (push-out search): {push_us:8.1f} us")
    print(f"  emergency admit + remove:                          {emergency_us:8.1f} us")


async def bench_service(waiting: int) -> None:
    cfg = parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0, "shutdown_timeout_s": 2},
            "api_tokens": api_tokens(),
            "store": {"path": ":memory:"},
            "announcements": {"queue_limit": waiting},
            "streaming": {"playout_delay_ms": 200},
            "zones": [{"id": "hall"}, {"id": "gate"}],
            "endpoints": [
                {"id": "ep", "token_hash": hash_token("bench-token"), "zones": ["hall", "gate"]}
            ],
        },
        "bench-admission",
    )
    with tempfile.TemporaryDirectory() as tmp:
        async with Service(cfg, engine=EspeakEngine()) as svc:
            ep = ReferenceEndpoint(
                url=f"ws://127.0.0.1:{svc.ws_port}/v1/endpoint",
                endpoint_id="ep",
                token="bench-token",
                zones=["hall", "gate"],
                formats=["pcm_s16le/16000"],
                out_dir=Path(tmp),
                reconnect=False,
            )
            task = asyncio.create_task(ep.run())
            await asyncio.wait_for(ep.joined.wait(), 10)
            api = f"http://127.0.0.1:{svc.http_port}"
            async with aiohttp.ClientSession(headers=HEADERS) as http:

                async def post(body: dict[str, Any]) -> tuple[int, Any, float]:
                    t0 = time.perf_counter()
                    async with http.post(f"{api}/v1/announcements", json=body) as r:
                        return r.status, await r.json(), time.perf_counter() - t0

                await post({"text": LONG, "zones": ["hall"]})
                t0 = time.perf_counter()
                took: list[float] = []
                for i in range(0, waiting, 50):
                    done = await asyncio.gather(
                        *(
                            post({"text": f"Routine {j}.", "zones": ["hall"]})
                            for j in range(i, min(i + 50, waiting))
                        )
                    )
                    assert all(s == 202 for s, _, _ in done), done[0]
                    took += [t for _, _, t in done]
                elapsed = time.perf_counter() - t0
                status, _, _ = await post({"text": "One too many.", "zones": ["hall"]})
                median_ms = statistics.median(took) * 1e3
                print(
                    f"service: {waiting} routine admitted in {elapsed:.2f} s "
                    f"({waiting / elapsed:.0f}/s, median POST {median_ms:.1f} ms);"
                    f" the next one: {status}"
                )
                for zone in ("gate", "hall"):
                    status, body, t = await post(
                        {"text": f"Emergency in the {zone}.", "zones": [zone], "priority": 255}
                    )
                    assert status == 202, body
                    while True:
                        async with http.get(f"{api}/v1/announcements/{body['id']}") as r:
                            rec = await r.json()
                        if rec["first_audio_ms"] is not None:
                            break
                        await asyncio.sleep(0.01)
                    busy = "busy" if zone == "hall" else "idle"
                    print(
                        f"  emergency for the {busy} {zone}: POST -> 202 {t * 1e3:.1f} ms, "
                        f"first chunk sent {rec['first_audio_ms']} ms after acceptance"
                    )
            ep.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=1000)
    args = parser.parse_args()
    bench_decision(args.waiting)
    asyncio.run(bench_service(args.waiting))


if __name__ == "__main__":
    main()
