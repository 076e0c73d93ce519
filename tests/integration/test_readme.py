"""The README's quick start, run as written (parsed from README.md) on free ports."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal

import pytest

from tests.integration.test_cli import CLI, ROOT, Server, start_server, stop_server

pytestmark = pytest.mark.integration

README = ROOT / "README.md"


def quick_start_commands() -> list[list[str]]:
    """Every command in the ```sh blocks of the Quick start section, split like a shell."""
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line))
    return commands


def _find(commands: list[list[str]], *head: str) -> list[list[str]]:
    return [c for c in commands if c[: len(head)] == list(head)]


def test_the_quick_start_has_the_commands_this_test_runs():
    commands = quick_start_commands()
    assert ["scripts/demo"] in commands and ["scripts/test"] in commands
    assert len(_find(commands, ".venv/bin/broadcaster", "listen")) == 1
    assert len(_find(commands, ".venv/bin/broadcaster", "announce")) == 1
    assert len(_find(commands, "curl")) == 2
    # scripts/demo is `broadcaster serve --config configs/demo.toml` plus its arguments
    assert (
        'broadcaster serve --config configs/demo.toml "$@"'
        in (ROOT / "scripts" / "demo").read_text()
    )


def _local(args: list[str], server: Server) -> list[str]:
    """The README's localhost:8080 becomes the server's real address."""
    host = server.http.removeprefix("http://")
    return [a.replace("localhost:8080", host) for a in args]


async def _exec(args: list[str], timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_readme_quick_start_works_as_written(tmp_path):
    commands = quick_start_commands()
    listen = _find(commands, ".venv/bin/broadcaster", "listen")[0]
    announce = _find(commands, ".venv/bin/broadcaster", "announce")[0]
    post, get = _find(commands, "curl")
    server = await start_server(tmp_path / "store.sqlite3")  # scripts/demo, on free ports
    listener = None
    try:
        # The listener as written, told where the server is and where to write.
        args = [*CLI, *listen[1:], "--url", server.ws]
        args[args.index("--out") + 1] = str(tmp_path / "received")
        listener = await asyncio.create_subprocess_exec(
            *args, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        zone = listen[listen.index("--zone") + 1]
        await server.read_until(rf"endpoint \S+ joined zones {zone}")

        rc, out, err = await _exec([*CLI, *announce[1:], "--api", server.http])
        assert rc == 0, out + err
        spoken_id = out.splitlines()[0]
        assert "state: finished" in out and "sent" in out and "endpoint says complete" in out

        rc, out, err = await _exec(_local(post, server))
        assert rc == 0, err
        created = json.loads(out)
        assert created["zones"] == [zone], created
        get = [a.replace("<id>", created["id"]) for a in _local(get, server)]
        for _ in range(300):
            rc, out, err = await _exec(get)
            record = json.loads(out)
            if record["state"] not in ("queued", "playing"):
                break
            await asyncio.sleep(0.1)
        assert record["id"] == created["id"] and record["state"] == "finished", record
        assert record["endpoints"], "the README's listener did not hear the curl announcement"
        for ann_id in (spoken_id, created["id"]):
            assert (tmp_path / "received" / f"{ann_id}.wav").stat().st_size > 1000
    finally:
        if listener is not None and listener.returncode is None:
            listener.send_signal(signal.SIGTERM)
            await asyncio.wait_for(listener.wait(), 20)
        await stop_server(server)
