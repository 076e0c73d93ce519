"""TLS and the limits at the network edge, with the real servers on 127.0.0.0/8.

Floods come from other loopback addresses (127.0.0.2, 127.0.0.3: Linux routes all
of 127.0.0.0/8 to lo) by binding the client socket's source address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from websockets.exceptions import InvalidMessage

from broadcaster.api.client import ApiError, announce_and_wait
from broadcaster.app import Service
from broadcaster.config import Config, hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint
from broadcaster.speech.espeak import EspeakEngine

from .conftest import API_TOKENS, api_tokens_config, bearer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "broadcaster.cli"]
TOKENS = {"ep-a": "token-a", "ep-b": "token-b"}


def config(tmp: Path, *, tls: dict[str, str] | None = None, **limits: Any) -> Config:
    server: dict[str, Any] = {"http_port": 0, "ws_port": 0, "shutdown_timeout_s": 2}
    if tls is not None:
        server["tls"] = tls
    return parse_config(
        {
            "server": server,
            "store": {"path": str(tmp / "store.sqlite3")},
            "announcements": {"wait_for_endpoints_s": 0.5},
            "streaming": {"playout_delay_ms": 200},
            "limits": limits,
            "zones": [{"id": "hall"}],
            "endpoints": [
                {"id": eid, "token_hash": hash_token(tok), "zones": ["hall"]}
                for eid, tok in TOKENS.items()
            ],
            "api_tokens": api_tokens_config(limited_zone=None),
        },
        "edge-test",
    )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "cert_file": str(tmp_path / "server.pem"),
        "key_file": str(tmp_path / "server.key"),
        "ca_file": str(tmp_path / "ca.pem"),
    }
    cert.cert_chain_pems[0].write_to_path(files["cert_file"])
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(files["cert_file"], append=True)
    cert.private_key_pem.write_to_path(files["key_file"])
    ca.cert_pem.write_to_path(files["ca_file"])
    return files


@pytest.fixture
async def service(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Service]:
    cfg = config(tmp_path, **getattr(request, "param", {}))
    async with Service(cfg, engine=EspeakEngine()) as svc:
        yield svc


async def open_raw(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, Any]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def read_refusal(reader: asyncio.StreamReader) -> tuple[str, dict[str, Any]]:
    """The whole answer of a refused connection (it is closed right after)."""
    raw = await asyncio.wait_for(reader.read(), 5)
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), json.loads(body)


async def closed_after(reader: asyncio.StreamReader, limit_s: float) -> float:
    """Seconds until the server closes a connection we never write to again."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        while await asyncio.wait_for(reader.read(65536), limit_s):
            pass
    except ConnectionResetError:
        pass
    return loop.time() - t0


def endpoint(url: str, eid: str, out: Path, ca_file: str | None = None) -> ReferenceEndpoint:
    return ReferenceEndpoint(
        url=url,
        endpoint_id=eid,
        token=TOKENS[eid],
        zones=["hall"],
        formats=["pcm_s16le/16000"],
        out_dir=out,
        reconnect=False,
        ca_file=ca_file,
    )


# --- TLS --------------------------------------------------------------------------------


async def test_tls_end_to_end_with_the_reference_endpoint(tls_files, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    ca_file = tls_files.pop("ca_file")
    async with Service(config(tmp_path, tls=tls_files), engine=EspeakEngine()) as svc:
        wss = f"wss://127.0.0.1:{svc.ws_port}/v1/endpoint"
        https = f"https://127.0.0.1:{svc.http_port}"
        assert f"HTTP API: https://127.0.0.1:{svc.http_port}" in caplog.text
        assert f"PA endpoints: wss://127.0.0.1:{svc.ws_port}" in caplog.text

        ep = endpoint(wss, "ep-a", tmp_path / "a", ca_file=ca_file)
        task = asyncio.create_task(ep.run())
        try:
            await asyncio.wait_for(ep.joined.wait(), 10)
            created, final = await announce_and_wait(
                https,
                {"text": "Over TLS.", "zones": ["hall"]},
                wait=True,
                ca_file=ca_file,
                token=API_TOKENS["operator"],
            )
            assert final is not None and final["state"] == "finished"
            for _ in range(100):
                heard = ep.announcements.get(created["id"])
                if heard is not None and heard.status != "receiving":
                    break
                await asyncio.sleep(0.05)
            heard = ep.announcements[created["id"]]
            assert heard.status == "complete" and heard.chunks > 0 and heard.gaps == 0

            # Without the CA, both clients refuse the server's certificate.
            with pytest.raises(ApiError, match="certificate verify failed"):
                await announce_and_wait(
                    https,
                    {"text": "x", "zones": ["hall"]},
                    wait=False,
                    token=API_TOKENS["operator"],
                )
            with pytest.raises(ssl.SSLCertVerificationError):
                await endpoint(wss, "ep-b", tmp_path / "b").run()
            # A plain ws:// client gets nothing from the TLS port.
            with pytest.raises(InvalidMessage):  # its request is not a TLS hello
                await asyncio.wait_for(
                    endpoint(wss.replace("wss://", "ws://"), "ep-b", tmp_path / "b").run(), 10
                )
            assert "ep-b" not in {link.endpoint_id for link in svc.hub.links()}
        finally:
            ep.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_tls_through_the_console_commands(tls_files, tmp_path):
    ca_file = tls_files.pop("ca_file")
    cfg = tmp_path / "tls.toml"
    cfg.write_text(
        f"""
[server]
http_port = 0
ws_port = 0
[server.tls]
cert_file = "{tls_files["cert_file"]}"
key_file = "{tls_files["key_file"]}"
[store]
path = "{tmp_path / "cli.sqlite3"}"
[[zones]]
id = "hall"
[[endpoints]]
id = "ep-a"
token_hash = "{hash_token("token-a")}"
zones = ["hall"]
[[api_tokens]]
id = "op"
role = "operator"
token_hash = "{hash_token(API_TOKENS["operator"])}"
"""
    )
    server = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--config", str(cfg), cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    log: list[str] = []

    async def read_until(needle: str) -> str:
        assert server.stderr is not None
        while True:
            line = (await asyncio.wait_for(server.stderr.readline(), 30)).decode()
            assert line, "server exited:\n" + "".join(log)
            log.append(line)
            if needle in line:
                return line

    try:
        wss = (await read_until("PA endpoints: wss://")).split("PA endpoints: ")[1].strip()
        https = (await read_until("HTTP API: https://")).split("HTTP API: ")[1].strip()
        https = https.removesuffix("/v1/announcements")
        listener = await asyncio.create_subprocess_exec(
            *CLI,
            "listen",
            "--url",
            wss,
            "--ca-file",
            ca_file,
            "--endpoint",
            "ep-a",
            "--token",
            "token-a",
            "--zone",
            "hall",
            "--out",
            str(tmp_path / "wav"),
            "--count",
            "1",
            cwd=ROOT,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await read_until("endpoint ep-a joined zones hall")

        async def announce(*extra: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                *CLI,
                "announce",
                "Secure hello.",
                "--zone",
                "hall",
                "--api",
                https,
                *extra,
                cwd=ROOT,
                env={**os.environ, "BROADCASTER_TOKEN": API_TOKENS["operator"]},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode or 0, out.decode(), err.decode()

        rc, out, err = await announce("--wait", "--ca-file", ca_file)
        assert rc == 0, err
        assert "state: finished" in out and "endpoint says complete" in out
        assert await asyncio.wait_for(listener.wait(), 30) == 0
        ann_id = out.splitlines()[0]
        assert (tmp_path / "wav" / f"{ann_id}.wav").stat().st_size > 1000

        rc, _, err = await announce()
        assert rc == 1 and "certificate verify failed" in err and "Traceback" not in err
        rc, _, err = await announce("--ca-file", str(tmp_path / "nope.pem"))
        assert rc == 1 and "nope.pem: no such file" in err
    finally:
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.wait(), 20) == 0


async def test_tls_handshake_must_finish_within_the_header_timeout(tls_files, tmp_path):
    tls_files.pop("ca_file")
    cfg = config(tmp_path, tls=tls_files, header_timeout_s=0.6)
    async with Service(cfg, engine=EspeakEngine()) as svc:
        for port in (svc.http_port, svc.ws_port):
            reader, writer = await open_raw(port)  # TCP only: no ClientHello
            took = await closed_after(reader, 10)
            assert 0.5 <= took < 3, (port, took)
            writer.close()


async def test_serve_refuses_limits_beyond_the_hard_file_limit(tmp_path):
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 900_000:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} fits any allowed limit")
    cfg = tmp_path / "big.toml"
    cfg.write_text(
        f'[limits]\nmax_ws_connections = 1000000\n[store]\npath = "{tmp_path / "s.sqlite3"}"\n'
        '[[zones]]\nid = "hall"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--config", str(cfg), cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    text = err.decode()
    assert proc.returncode == 2, text
    assert "cannot start: limits: max_http_connections (512) + max_ws_connections (1000000)" in text
    assert f"the hard limit (ulimit -Hn) is {hard}" in text and "Traceback" not in text


# --- limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "service",
    [{"max_ws_per_address": 3, "max_ws_connections": 6, "header_timeout_s": 20}],
    indirect=True,
)
async def test_websocket_flood_from_one_address_never_keeps_an_endpoint_out(
    service, tmp_path, caplog
):
    port = service.ws_port
    held = [await open_raw(port, "127.0.0.2") for _ in range(3)]
    # The 4th and later connections from that address: 503 at once, nothing parsed.
    refusals = []
    for _ in range(30):
        reader, writer = await open_raw(port, "127.0.0.2")
        refusals.append(await read_refusal(reader))
        writer.close()
    assert all(status == "HTTP/1.1 503 Service Unavailable" for status, _ in refusals)
    assert refusals[0][1]["error"] == "too_many_connections"
    assert "limit 3" in refusals[0][1]["message"]
    # The held ones are still open (they wait in their handshake).
    assert not any(r.at_eof() for r, _ in held)

    # A configured endpoint from another address joins and plays.
    ep = endpoint(f"ws://127.0.0.1:{port}/v1/endpoint", "ep-a", tmp_path / "a")
    task = asyncio.create_task(ep.run())
    try:
        await asyncio.wait_for(ep.joined.wait(), 10)
    finally:
        ep.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    counters = service.endpoint_server.guard.gate.counters
    assert counters.refused_per_address_limit == 30
    # Counted, and logged as a summary: not a line per refused connection.
    await asyncio.sleep(0.2)
    lines = [
        r for r in caplog.records if "refused" in r.getMessage() and "PA endpoint" in r.getMessage()
    ]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    assert "127.0.0.2" in lines[0].getMessage()
    for _, w in held:
        w.close()


@pytest.mark.parametrize(
    "service",
    [{"max_ws_per_address": 2, "max_ws_connections": 4, "header_timeout_s": 20}],
    indirect=True,
)
async def test_websocket_total_limit_refuses_with_503(service, tmp_path):
    port = service.ws_port
    held = [await open_raw(port, src) for src in ("127.0.0.2", "127.0.0.2", "127.0.0.3")]
    held.append(await open_raw(port, "127.0.0.4"))
    reader, writer = await open_raw(port, "127.0.0.5")
    status, body = await read_refusal(reader)
    writer.close()
    assert status.endswith("503 Service Unavailable")
    assert body["message"] == "too many connections (limit 4)"
    assert service.endpoint_server.guard.gate.counters.refused_total_limit == 1
    # A slot freed is a slot usable again.
    held.pop()[1].close()
    for _ in range(100):
        if service.endpoint_server.guard.gate.counters.open == 3:
            break
        await asyncio.sleep(0.02)
    reader, writer = await open_raw(port, "127.0.0.5")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.3)  # admitted: waits for our handshake
    held.append((reader, writer))

    # The reference endpoint takes the 503 as "retry with backoff", and joins once a
    # slot is free.
    ep = ReferenceEndpoint(
        url=f"ws://127.0.0.1:{port}/v1/endpoint",
        endpoint_id="ep-a",
        token=TOKENS["ep-a"],
        zones=["hall"],
        formats=["pcm_s16le/16000"],
        out_dir=tmp_path / "a",
    )
    task = asyncio.create_task(ep.run())
    try:
        for _ in range(200):
            if service.endpoint_server.guard.gate.counters.refused_total_limit >= 2:
                break
            await asyncio.sleep(0.02)
        assert service.endpoint_server.guard.gate.counters.refused_total_limit >= 2
        assert not ep.joined.is_set()
        held.pop(0)[1].close()
        await asyncio.wait_for(ep.joined.wait(), 10)
    finally:
        ep.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for _, w in held:
        w.close()


@pytest.mark.parametrize(
    "service",
    [{"max_http_per_address": 2, "max_http_connections": 4, "header_timeout_s": 20}],
    indirect=True,
)
async def test_http_connections_per_address(service):
    port = service.http_port
    held = [await open_raw(port, "127.0.0.2") for _ in range(2)]
    reader, writer = await open_raw(port, "127.0.0.2")
    status, body = await read_refusal(reader)
    writer.close()
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert body == {
        "error": "too_many_connections",
        "message": "too many connections from your address (limit 2)",
    }
    # Another address is served as usual.
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
        assert r.status == 200
    assert service.http_guard.gate.counters.refused_per_address_limit == 1
    for _, w in held:
        w.close()


@pytest.mark.parametrize("service", [{"max_body_bytes": 2048}], indirect=True)
async def test_body_over_the_limit_gets_413(service):
    url = f"http://127.0.0.1:{service.http_port}/v1/announcements"
    async with aiohttp.ClientSession(headers=bearer()) as http:
        big = {"text": "x" * 4096, "zones": ["hall"]}
        async with http.post(url, json=big) as r:
            assert r.status == 413
            assert await r.json() == {
                "error": "request_entity_too_large",
                "message": "the request body is over the limit of 2048 bytes "
                "(limits.max_body_bytes)",
            }
        # Just under the limit: read and judged on its content (422: the text is not the
        # problem, the zone is).
        ok = {"text": "x" * 1500, "zones": ["moon"]}
        async with http.post(url, json=ok) as r:
            assert r.status == 422


@pytest.mark.parametrize("service", [{"header_timeout_s": 0.6}], indirect=True)
async def test_connections_that_never_complete_their_headers_are_closed(service):
    # Nothing at all, on both listeners.
    for port in (service.http_port, service.ws_port):
        reader, writer = await open_raw(port)
        took = await closed_after(reader, 10)
        assert 0.5 <= took < 3, (port, took)
        writer.close()
    # Part of a request, then nothing (slowloris).
    reader, writer = await open_raw(service.http_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    took = await closed_after(reader, 10)
    assert 0.5 <= took < 3, took
    writer.close()
    assert service.http_guard.header_timeouts == 2
    # A whole request in time is answered as usual.
    reader, writer = await open_raw(service.http_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    writer.close()


@pytest.mark.parametrize("service", [{"body_timeout_s": 0.6}], indirect=True)
async def test_a_body_trickled_in_is_answered_408_and_closed(service):
    body = b'{"text": "Hello there.", "zones": ["hall"]}'
    reader, writer = await open_raw(service.http_port)
    writer.write(
        b"POST /v1/announcements HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {API_TOKENS['admin']}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:5]  # ... and the rest never comes
    )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    answer = await asyncio.wait_for(reader.read(), 10)  # answered, then closed
    took = loop.time() - t0
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(payload)["error"] == "request_timeout"
    assert 0.5 <= took < 5, took  # 0.6 s to the answer, then at most 2 s of lingering
    writer.close()
    # A body that arrives whole is read as usual.
    async with aiohttp.ClientSession(headers=bearer()) as http:
        url = f"http://127.0.0.1:{service.http_port}/v1/announcements"
        async with http.post(url, json={"text": "x", "zones": ["moon"]}) as r:
            assert r.status == 422


@pytest.mark.parametrize(
    "service", [{"keepalive_timeout_s": 1.0, "header_timeout_s": 0.3}], indirect=True
)
async def test_idle_keepalive_connection_is_closed(service):
    reader, writer = await open_raw(service.http_port)
    for _ in range(2):  # the connection is reused, then left idle
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        await reader.readexactly(length)
        await asyncio.sleep(0.5)  # longer than the header timeout: that applies only once
    took = await closed_after(reader, 10)
    # Idle since the last answer (0.5 s ago): closed when 1 s of idleness is over.
    assert 0.3 <= took < 2.5, took
    writer.close()

    # The next request's headers, begun and never finished, get the same bound.
    reader, writer = await open_raw(service.http_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    took = await closed_after(reader, 10)
    assert 0.8 <= took < 2.5, took
    writer.close()


async def test_listen_names_an_unusable_ca_file(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "listen",
        "--url",
        "wss://127.0.0.1:9/v1/endpoint",
        "--ca-file",
        str(tmp_path / "nope.pem"),
        "--endpoint",
        "ep-a",
        "--token",
        "t",
        "--zone",
        "hall",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert f"--ca-file {tmp_path / 'nope.pem'}: no such file" in err.decode()
