"""`broadcaster serve` as a real subprocess, for the tests that kill -9 it and restart it."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def start_server(
    config: Path, http_port: int = 0, ws_port: int = 0, fsize_limit: int | None = None
) -> tuple[asyncio.subprocess.Process, str, str, asyncio.Task[bytes], list[str]]:
    """`broadcaster serve` as a subprocess; with ``fsize_limit`` no file may grow past it
    (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG, as on a full disk)."""

    def limit() -> None:  # runs in the child between fork and exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        assert fsize_limit is not None
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcaster.cli",
        "serve",
        "--config",
        str(config),
        "--http-port",
        str(http_port),
        "--ws-port",
        str(ws_port),
        cwd=ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        preexec_fn=limit if fsize_limit is not None else None,
    )
    found: dict[str, str] = {}
    lines: list[str] = []

    async def scan() -> None:
        assert proc.stderr is not None
        while "http" not in found:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError("server exited:\n" + "".join(lines))
            lines.append(line)
            if m := re.search(r"PA endpoints: (ws://\S+)", line):
                found["ws"] = m[1]
            if m := re.search(r"HTTP API: (http://[^/\s]+)", line):
                found["http"] = m[1]

    await asyncio.wait_for(scan(), 30)

    async def keep_reading() -> bytes:  # the pipe never fills; the lines stay readable
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            lines.append(line.decode())
        return b""

    drain = asyncio.create_task(keep_reading())
    return proc, found["http"], found["ws"], drain, lines


async def stop(proc: asyncio.subprocess.Process, drain: asyncio.Task[bytes]) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
    drain.cancel()
