"""What a connection flood from one address costs, and whether endpoints still join.

Starts the real service (espeak-ng, one configured endpoint) on 127.0.0.1 with
small WebSocket limits, then:

1. measures how long a configured endpoint takes to join (TCP + WebSocket
   handshake + hello → welcome) with nothing else going on;
2. starts a flood from 127.0.0.2 in a separate process (``--workers`` of
   ``--concurrency`` connections each, every one reconnecting as soon as it is
   refused or closed): the first ``max_ws_per_address`` connections are held
   open, every further one gets the 503;
3. measures the endpoint's join again, from 127.0.0.1, during the flood.

With ``--target http`` the same against the HTTP API, measuring GET /healthz.

Prints refusals answered per second, the join times before and during the flood,
and how many log lines the refusals produced. Everything stays on 127.0.0.0/8.

    .venv/bin/python bench/edge_flood.py [--seconds 10] [--joins 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint
from broadcaster.speech.espeak import EspeakEngine

FLOOD = r"""
import asyncio, json, sys, time
port, seconds, concurrency = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
counts = {"refused_503": 0, "other": 0, "errors": 0}
async def worker(stop):
    while time.perf_counter() < stop:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        except OSError:
            counts["errors"] += 1
            await asyncio.sleep(0.01)
            continue
        try:
            data = await asyncio.wait_for(r.read(), max(0.01, stop - time.perf_counter()))
            counts["refused_503" if data.startswith(b"HTTP/1.1 503") else "other"] += 1
        except (TimeoutError, OSError):
            pass  # held open (admitted) until the end, or reset
        w.close()
async def main():
    stop = time.perf_counter() + seconds
    await asyncio.gather(*(worker(stop) for _ in range(concurrency)))
    print(json.dumps(counts))
asyncio.run(main())
"""


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.refusal_lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "refused" in record.getMessage():
            self.refusal_lines += 1


async def join_once(port: int, out: Path) -> float:
    ep = ReferenceEndpoint(
        url=f"ws://127.0.0.1:{port}/v1/endpoint",
        endpoint_id="speaker",
        token="t",
        zones=["hall"],
        formats=["pcm_s16le/16000"],
        out_dir=out,
        reconnect=False,
    )
    t0 = time.perf_counter()
    task = asyncio.create_task(ep.run())
    try:
        await asyncio.wait_for(ep.joined.wait(), 30)
        return (time.perf_counter() - t0) * 1000
    finally:
        ep.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def health_once(port: int) -> float:
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
        assert r.status == 200, r.status
        await r.read()
    return (time.perf_counter() - t0) * 1000


async def joins(target: str, port: int, n: int, out: Path) -> list[float]:
    times = []
    for _ in range(n):
        times.append(await (join_once(port, out) if target == "ws" else health_once(port)))
        await asyncio.sleep(0.05)
    return times


def summary(ms: list[float]) -> str:
    return f"median {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms (n={len(ms)})"


async def main(args: argparse.Namespace) -> None:
    lines = Lines()
    logging.getLogger("broadcaster").addHandler(lines)
    logging.getLogger("broadcaster").setLevel(logging.WARNING)
    cfg = parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0},
            "store": {"path": ":memory:"},
            "limits": {
                "max_ws_per_address": args.per_address,
                "max_ws_connections": 2 * args.per_address,
            },
            "zones": [{"id": "hall"}],
            "endpoints": [{"id": "speaker", "token_hash": hash_token("t"), "zones": ["hall"]}],
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        async with Service(cfg, engine=EspeakEngine()) as svc:
            port = svc.ws_port if args.target == "ws" else svc.http_port
            quiet = await joins(args.target, port, args.joins, Path(tmp))
            flood = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                FLOOD,
                str(port),
                str(args.seconds),
                str(args.concurrency),
                stdout=subprocess.PIPE,
            )
            await asyncio.sleep(1.0)  # let the flood fill its address's slots
            during = await joins(args.target, port, args.joins, Path(tmp))
            out, _ = await flood.communicate()
            counts = json.loads(out)
            assert svc.endpoint_server is not None and svc.http_guard is not None
            guard = svc.endpoint_server.guard if args.target == "ws" else svc.http_guard
            gate = guard.gate.counters
    n = args.per_address
    kind = "WebSocket" if args.target == "ws" else "HTTP"
    what = "endpoint join" if args.target == "ws" else "GET /healthz"
    print(f"limits: {n} {kind} connections per address, {2 * n} in all")
    print(f"flood: {args.concurrency} connections at a time from 127.0.0.2 for {args.seconds:g} s")
    print(
        f"  refused with 503: {counts['refused_503']} "
        f"({counts['refused_503'] / args.seconds:.0f}/s); closed with no answer {counts['other']} "
        "(the held ones, at the header timeout), "
        f"connect errors {counts['errors']}"
    )
    print(
        f"  server counters: refused per address {gate.refused_per_address_limit}, "
        f"in all {gate.refused_total_limit}"
    )
    print(f"  refusal log lines: {lines.refusal_lines}")
    print(f"{what} from 127.0.0.1, quiet:       {summary(quiet)}")
    print(f"{what} from 127.0.0.1, under flood: {summary(during)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--joins", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--per-address", type=int, default=50)
    p.add_argument("--target", choices=["ws", "http"], default="ws", help="which listener")
    asyncio.run(main(p.parse_args()))
