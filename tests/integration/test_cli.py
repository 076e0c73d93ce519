"""The README's user journey with the real console commands, as separate processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys
import wave
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "broadcaster.cli"]


#: The demo config's operator token, unless the test (or its environment) sets one.
DEMO_TOKEN = "demo-operator-token"


def cli_env() -> dict[str, str]:
    env = {**os.environ}
    env.setdefault("BROADCASTER_TOKEN", DEMO_TOKEN)
    return env


async def run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env() if env is None else env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


class Server:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        self.http = ""
        self.ws = ""

    async def read_until(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        async def scan() -> re.Match[str]:
            assert self.proc.stderr is not None
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError("server exited:\n" + "".join(self.log))
                self.log.append(line)
                if m := re.search(pattern, line):
                    return m

        return await asyncio.wait_for(scan(), timeout)


async def start_server(store: Path, config: str = "configs/demo.toml") -> Server:
    """`broadcaster serve` on free ports with its store under the test's tmp_path."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--config",
        config,
        "--http-port",
        "0",
        "--ws-port",
        "0",
        "--store",
        str(store),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    s = Server(proc)
    s.ws = (await s.read_until(r"PA endpoints: (ws://\S+)"))[1]
    s.http = (await s.read_until(r"HTTP API: (http://[^/\s]+)"))[1]
    return s


async def stop_server(s: Server) -> None:
    if s.proc.returncode is None:
        s.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(s.proc.wait(), 20)


@pytest.fixture
async def server(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--config",
        "configs/demo.toml",
        "--http-port",
        "0",
        "--ws-port",
        "0",
        "--store",
        str(tmp_path / "store.sqlite3"),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    s = Server(proc)
    try:
        s.ws = (await s.read_until(r"PA endpoints: (ws://\S+)"))[1]
        s.http = (await s.read_until(r"HTTP API: (http://[^/\s]+)"))[1]
        yield s
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)


async def test_serve_logs_engine_and_addresses_then_stops_cleanly_on_sigterm(server):
    log = "".join(server.log)
    assert "speech engine: espeak-ng" in log
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(server.proc.wait(), 20) == 0
    rest = (await server.proc.stderr.read()).decode()
    assert "Traceback" not in log + rest


async def test_listen_and_announce_wait(server, tmp_path):
    out_dir = tmp_path / "wav"
    listener = await asyncio.create_subprocess_exec(
        *CLI,
        "listen",
        "--url",
        server.ws,
        "--endpoint",
        "kiosk",
        "--token",
        "demo-kiosk-token",
        "--zone",
        "concourse",
        "--format",
        "pcm_s16le/16000",
        "--out",
        str(out_dir),
        "--count",
        "1",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    # wait until the server has the endpoint in its zone
    await server.read_until(r"endpoint kiosk joined zones concourse")
    rc, out, err = await run(
        "announce",
        "Welcome to the main concourse.",
        "--zone",
        "concourse",
        "--voice",
        "serena",
        "--speed",
        "1.2",
        "--wait",
        "--api",
        server.http,
    )
    assert rc == 0, err
    lines = out.splitlines()
    ann_id = lines[0]
    assert re.fullmatch(r"[0-9a-f-]{36}", ann_id)
    assert "state: finished" in out
    assert re.search(r"kiosk: pcm_s16le/16000 sent (\d+)/\1 chunks, dropped 0", out), out
    assert await asyncio.wait_for(listener.wait(), 30) == 0
    listen_log = (await listener.stderr.read()).decode()
    assert "announcement_started" in listen_log and "announcement_ended" in listen_log
    wav = out_dir / f"{ann_id}.wav"
    with wave.open(str(wav), "rb") as w:
        assert w.getframerate() == 16000 and w.getnframes() > 16000


async def test_announce_reports_field_errors(server):
    rc, _out, err = await run("announce", "Hello", "--zone", "moon", "--api", server.http)
    assert rc == 1
    assert "422" in err and "zones: unknown zone(s): moon" in err
    assert "Traceback" not in err


async def test_listen_with_wrong_token_exits_with_the_reason(server):
    rc, _, err = await run(
        "listen",
        "--url",
        server.ws,
        "--endpoint",
        "kiosk",
        "--token",
        "wrong",
        "--zone",
        "concourse",
        timeout=30,
    )
    assert rc == 3
    assert "4001" in err and "unknown endpoint id or wrong token" in err
    assert "Traceback" not in err


async def test_bad_config_names_file_key_and_problem(tmp_path):
    bad = tmp_path / "site.toml"
    bad.write_text('[streaming]\nplayout_delay_ms = "soon"\n[server]\nhttp_prot = 80\n')
    rc, _, err = await run("serve", "--config", str(bad))
    assert rc == 2
    assert f"{bad}: streaming.playout_delay_ms: Input should be a valid integer" in err
    assert f"{bad}: server.http_prot: unknown key" in err
    assert "Traceback" not in err


async def test_token_command_makes_a_matching_hash():
    rc, out, _ = await run("token", "--token", "demo-kiosk-token")
    assert rc == 0
    assert (
        'token_hash = "sha256:91d7fe32b9851483d3b8bc08ee568325d72ff8d3712fd2721a05f15d2897f3d2"'
        in out
    )


async def test_port_in_use_is_a_clear_error(server, tmp_path):
    port = server.http.rsplit(":", 1)[1]
    rc, _, err = await run(
        "serve",
        "--config",
        "configs/demo.toml",
        "--http-port",
        port,
        "--ws-port",
        "0",
        "--store",
        str(tmp_path / "other.sqlite3"),
    )
    assert rc == 2 and "cannot start" in err and "Traceback" not in err


async def test_announce_without_a_token_is_refused_with_401(server):
    env = {k: v for k, v in os.environ.items() if k != "BROADCASTER_TOKEN"}
    rc, _out, err = await run(
        "announce", "Hello", "--zone", "concourse", "--api", server.http, env=env
    )
    assert rc == 1
    assert "401 unauthorized: missing bearer token" in err and "Traceback" not in err


async def test_announce_token_option_wins_and_role_is_checked(server):
    # A viewer token may read but not announce: 403 naming the role.
    rc, _out, err = await run(
        "announce",
        "Hello",
        "--zone",
        "concourse",
        "--api",
        server.http,
        "--token",
        "demo-viewer-token",
    )
    assert rc == 1
    assert "403 forbidden: role viewer may not POST /v1/announcements (needs operator" in err


async def test_token_command_prints_the_api_token_lines_to_paste(tmp_path):
    rc, out, _ = await run("token", "--role", "operator", "--id", "desk-1", "--zones", "a,b")
    assert rc == 0
    token = re.search(r"^token: (\S+)$", out, re.M)
    assert token is not None and len(token[1]) >= 43  # 256 bits, url-safe base64
    from broadcaster.config import hash_token

    assert "[[api_tokens]]" in out and 'id = "desk-1"' in out and 'role = "operator"' in out
    assert f'token_hash = "{hash_token(token[1])}"' in out and 'zones = ["a", "b"]' in out
    rc, _, err = await run("token", "--role", "operator")
    assert rc == 2 and "--id" in err


# --- the store, check-config, announce (issue 8) --------------------------------------------


async def test_serve_keeps_its_store_where_it_is_told(server, tmp_path):
    rc, _out, err = await run("announce", "Hello.", "--zone", "concourse", "--api", server.http)
    assert rc == 0, err
    assert (tmp_path / "store.sqlite3").stat().st_size > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "zones: the file is empty"),
        ("# nothing but a comment\n", "zones: the file is empty"),
        ("[server]\nhttp_port = 9000\n", "zones: no [[zones]] defined"),
        (
            '[server]\nhttp_port = 9000\nws_port = 9000\n[[zones]]\nid = "hall"\n',
            "server: ws_port: 9000 is also the http_port",
        ),
    ],
)
async def test_check_config_refuses_empty_and_port_clash(tmp_path, text, message):
    path = tmp_path / "site.toml"
    path.write_text(text)
    rc, _, err = await run("check-config", str(path))
    assert rc == 2 and f"{path}: {message}" in err, err
    assert "Traceback" not in err


async def test_check_config_takes_port_zero_twice(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[server]\nhttp_port = 0\nws_port = 0\n[[zones]]\nid = "hall"\n')
    rc, out, err = await run("check-config", str(path))
    assert rc == 0 and '"ok": true' in out, err


async def _listener(server: Server, out_dir: Path, count: int = 1) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "listen",
        "--url",
        server.ws,
        "--endpoint",
        "kiosk",
        "--token",
        "demo-kiosk-token",
        "--zone",
        "concourse",
        "--format",
        "pcm_s16le/16000",
        "--out",
        str(out_dir),
        "--count",
        str(count),
        cwd=ROOT,
        stderr=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
    )
    await server.read_until(r"endpoint kiosk joined zones concourse")
    return proc


async def test_announce_with_a_band_prints_progress_as_it_plays(server, tmp_path):
    listener = await _listener(server, tmp_path / "wav")
    rc, out, err = await run(
        "announce",
        "Attention please. This is a test of the emergency band.",
        "--zone",
        "concourse",
        "--priority",
        "emergency",
        "--token",
        "demo-dispatcher-token",  # the emergency band is a dispatcher's
        "--wait",
        "--api",
        server.http,
    )
    assert rc == 0, err
    lines = out.splitlines()
    assert re.fullmatch(r"[0-9a-f-]{36}", lines[0])
    assert "state: playing" in lines and "state: finished" in lines
    assert lines.index("state: playing") < lines.index("state: finished")
    assert "  kiosk: started" in lines, out
    assert lines.index("state: playing") < lines.index("  kiosk: started")
    await asyncio.wait_for(listener.wait(), 30)
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {DEMO_TOKEN}"}) as http,
        http.get(f"{server.http}/v1/announcements/{lines[0]}") as r,
    ):
        assert (await r.json())["priority"] == 240  # the emergency band's default


async def test_announce_refuses_an_unknown_band_before_sending():
    rc, _, err = await run("announce", "Hello", "--zone", "concourse", "--priority", "loud")
    assert rc == 2 and "give 0-255 or a band" in err and "Traceback" not in err


async def test_announce_wait_timeout_prints_the_id_and_how_to_look_it_up(server):
    # platform-1 has no endpoint: it waits for one (5 s in the demo) longer than we do
    rc, out, err = await run(
        "announce",
        "Hello.",
        "--zone",
        "platform-1",
        "--wait",
        "--timeout",
        "0.5",
        "--api",
        server.http,
    )
    assert rc == 1
    ann_id = out.splitlines()[0]
    assert re.fullmatch(r"[0-9a-f-]{36}", ann_id)
    assert f"announcement {ann_id} still " in err
    assert f"{server.http}/v1/announcements/{ann_id}" in err
    assert "Traceback" not in err


async def test_announce_piped_to_head_ends_quietly(server, tmp_path):
    listener = await _listener(server, tmp_path / "wav")
    err_file = tmp_path / "stderr.txt"
    command = " ".join(
        [
            *(shlex.quote(c) for c in CLI),
            "announce",
            shlex.quote("Mind the gap between the train and the platform."),
            "--zone concourse --wait --api",
            server.http,
            f"2>{shlex.quote(str(err_file))}",
            "| head -n 1",
        ]
    )
    proc = await asyncio.create_subprocess_shell(
        command, cwd=ROOT, env=cli_env(), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert re.fullmatch(r"[0-9a-f-]{36}\n", out.decode())
    err = err_file.read_text()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    await asyncio.wait_for(listener.wait(), 30)


async def _recording_api() -> tuple[web.AppRunner, str, list[dict[str, str]]]:
    """A real HTTP server that records what the CLI sends and accepts it."""
    seen: list[dict[str, str]] = []

    async def accept(request: web.Request) -> web.Response:
        seen.append({**request.headers, "body": await request.text()})
        return web.json_response(
            {"id": "00000000-0000-4000-8000-000000000000", "state": "queued"}, status=202
        )

    app = web.Application()
    app.router.add_post("/v1/announcements", accept)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", seen


async def test_announce_sends_the_token_and_a_fresh_idempotency_key(monkeypatch):
    runner, url, seen = await _recording_api()
    try:
        monkeypatch.setenv("BROADCASTER_TOKEN", "from-the-environment")
        for extra in ([], [], ["--token", "from-the-option"]):
            rc, _out, err = await run(
                "announce", "Hi.", "--zone", "hall", "--priority", "emergency", "--api", url, *extra
            )
            assert rc == 0, err
    finally:
        await runner.cleanup()
    assert [h["Authorization"] for h in seen] == [
        "Bearer from-the-environment",
        "Bearer from-the-environment",
        "Bearer from-the-option",
    ]
    keys = [h["Idempotency-Key"] for h in seen]
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", k)
        for k in keys
    )
    assert len(set(keys)) == 3  # one per invocation
    assert json.loads(seen[0]["body"])["priority"] == "emergency"


async def test_serve_logs_json_lines_when_configured(tmp_path):
    config = tmp_path / "site.toml"
    config.write_text(
        (ROOT / "configs" / "demo.toml").read_text() + '\n[logging]\nformat = "json"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--config",
        str(config),
        "--http-port",
        "0",
        "--ws-port",
        "0",
        "--store",
        str(tmp_path / "store.sqlite3"),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    s = Server(proc)
    try:
        await s.read_until(r"HTTP API: http://")
    finally:
        await stop_server(s)
        s.log.append((await proc.stderr.read()).decode())
    lines = "".join(s.log).splitlines()
    assert len(lines) >= 3
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert any(json.loads(line)["message"].startswith("speech engine: espeak-ng") for line in lines)
