"""What does access control cost per HTTP request?

In-process, in one run, against a no-auth baseline:

1. The access middleware called directly on a resolved request (Host and Origin
   checks, failed-attempt limit, bearer parsing, SHA-256 lookup among N tokens,
   role check) versus calling the handler alone, for a GET (not audited) and a
   POST (audited: the audit entry is formatted for the log at INFO into a null
   handler and queued; the store write happens later on the writer task).
2. Whole requests over loopback (aiohttp server and client in this process):
   the same trivial route with no middleware, a pass-through one and the access
   middleware, interleaved. Much noisier (a request costs ~150-200 µs, mostly
   the client and the HTTP machinery; on a shared machine the spread between
   runs is larger than the middleware); it puts figure 1 in proportion.

    python bench/auth.py [--tokens 100] [--n 20000] [--http 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from unittest import mock

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

# Run as a plain script from a checkout: the package need not be installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broadcaster.api.access import ACCESS, Access, Handler, access_middleware, requires
from broadcaster.auth import Role
from broadcaster.clock import SystemClock
from broadcaster.config import hash_token, parse_config

TOKEN = "bench-token-0"


def config(tokens: int):  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "zones": [{"id": "hall"}],
            "api_tokens": [
                {"id": f"t{i}", "role": "admin", "token_hash": hash_token(f"bench-token-{i}")}
                for i in range(tokens)
            ],
        },
        "bench",
    )


@requires(Role.VIEWER)
async def read(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@requires(Role.OPERATOR)
async def write(request: web.Request) -> web.Response:
    return web.Response(text="ok", status=202)


@web.middleware
async def passthrough(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await handler(request)


def build(tokens: int, *, middleware: str = "access") -> web.Application:
    chosen = {"none": [], "passthrough": [passthrough], "access": [access_middleware]}
    app = web.Application(middlewares=chosen[middleware])
    app[ACCESS] = Access.from_config(config(tokens), clock=SystemClock(), store=None)
    app.router.add_get("/v1/zones", read)
    app.router.add_post("/v1/announcements/{id}/cancel", write)
    return app


async def resolved(app: web.Application, method: str, path: str) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("127.0.0.1", 50000) if name == "peername" else default
    )
    req = make_mocked_request(
        method,
        path,
        headers={"Host": "127.0.0.1:8080", "Authorization": f"Bearer {TOKEN}"},
        app=app,
        transport=transport,
    )
    assert req.remote == "127.0.0.1"
    match = await app.router.resolve(req)
    match.add_app(app)
    req._match_info = match
    return req


async def per_call_us(fn: Callable[[], Awaitable[object]], n: int, repeat: int = 5) -> float:
    best: list[float] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            await fn()
        best.append((time.perf_counter() - t0) / n * 1e6)
    return min(best)


async def direct(tokens: int, n: int) -> None:
    app = build(tokens)
    get = await resolved(app, "GET", "/v1/zones")
    post = await resolved(app, "POST", "/v1/announcements/a1/cancel")
    base_get = await per_call_us(lambda: read(get), n)
    auth_get = await per_call_us(lambda: access_middleware(get, read), n)
    base_post = await per_call_us(lambda: write(post), n)
    auth_post = await per_call_us(lambda: access_middleware(post, write), n)
    print(f"direct, {tokens} tokens configured, best of 5 x {n} calls:")
    print(
        f"  GET  handler alone {base_get:6.2f} µs   with access middleware {auth_get:6.2f} µs"
        f"   auth cost {auth_get - base_get:6.2f} µs/request"
    )
    print(
        f"  POST handler alone {base_post:6.2f} µs   with access middleware {auth_post:6.2f} µs"
        f"   auth + audit cost {auth_post - base_post:6.2f} µs/request"
    )


async def over_http(tokens: int, n: int, rounds: int = 3) -> None:
    kinds = ("none", "passthrough", "access")
    results: dict[str, float] = {}
    for _ in range(rounds):  # interleaved, best of each: the machine is shared
        for kind in kinds:
            app = build(tokens, middleware=kind)
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                headers = {"Authorization": f"Bearer {TOKEN}"}
                for _ in range(200):  # warm up
                    async with client.get("/v1/zones", headers=headers) as r:
                        await r.read()
                t0 = time.perf_counter()
                for _ in range(n):
                    async with client.get("/v1/zones", headers=headers) as r:
                        assert r.status == 200
                        await r.read()
                per = (time.perf_counter() - t0) / n * 1e6
                results[kind] = min(results.get(kind, float("inf")), per)
    print(
        f"whole GET over loopback (aiohttp client + server in this process, keep-alive), "
        f"best of {rounds} x {n}:"
    )
    print(
        f"  no middleware {results['none']:7.1f} µs   a pass-through middleware "
        f"{results['passthrough']:7.1f} µs   access middleware {results['access']:7.1f} µs"
    )
    print(
        f"  access - pass-through {results['access'] - results['passthrough']:6.1f} µs/request"
        f"   access - none {results['access'] - results['none']:6.1f} µs/request"
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=100, help="API tokens configured")
    p.add_argument("--n", type=int, default=20000, help="direct calls per measurement")
    p.add_argument("--http", type=int, default=2000, help="HTTP requests per measurement")
    args = p.parse_args()
    audit = logging.getLogger("broadcaster.audit")
    audit.setLevel(logging.INFO)  # formatted as in production, written nowhere
    audit.addHandler(logging.NullHandler())
    audit.propagate = False
    await direct(args.tokens, args.n)
    await over_http(args.tokens, args.http)


if __name__ == "__main__":
    asyncio.run(main())
