"""The README's user journey with the real console commands, as separate processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import wave
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "broadcaster.cli"]


#: What `broadcaster announce` authenticates with (the demo config's operator token).
ENV = {**os.environ, "BROADCASTER_TOKEN": "demo-operator-token"}


async def run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV if env is None else env,
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


@pytest.fixture
async def server():
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--config",
        "configs/demo.toml",
        "--http-port",
        "0",
        "--ws-port",
        "0",
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


async def test_port_in_use_is_a_clear_error(server):
    port = server.http.rsplit(":", 1)[1]
    rc, _, err = await run(
        "serve", "--config", "configs/demo.toml", "--http-port", port, "--ws-port", "0"
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
