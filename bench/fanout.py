"""How many PA endpoints can ONE broadcaster process serve in real time? And Icecast 2?

For each format (20 ms Opus chunks, 100 ms pcm_s16le/16000 chunks) and each
step N, this starts ``python -m broadcaster.cli serve`` pinned to one core with
N endpoints configured (one zone, one shared token), connects N lean WebSocket
endpoints from load-generator processes pinned to the other core(s)
(bench/fanout_client.py), posts a long espeak announcement and measures a
steady window:

* the server's CPU time (utime + stime of all its threads, /proc/PID/stat) as
  % of one core and per endpoint, and its RSS (/proc/PID/status VmRSS) in
  total and per endpoint above the idle server's;
* at every endpoint, every audio frame: arrival after its ``play_at_us`` is
  *late* (client and server read the same CLOCK_MONOTONIC); a ``seq`` jump is a
  *gap* (frames the server dropped); a closed connection is a *disconnect*.
  Underruns = late + gaps + disconnects; a step is real time when that is 0;
* the load generator's own CPU, so it is visible when it, not the server, is
  the bottleneck.

The same N is then served by Icecast 2 (the Debian ``icecast2`` package, run as
a plain process on the same core with a config written to a temp dir) from a
source pushed in real time at the same bitrate and cadence: Ogg/Opus 32 kbit/s
CBR, one 20 ms packet per page, made with PyAV, for the Opus rows; raw 16 kHz
s16le (the broadcaster's PCM byte rate, 256 kbit/s, 3200 bytes every 100 ms)
for the PCM rows. Icecast runs as the unprivileged ``icecast2`` user (it refuses
root) and gets ``<clients>`` N + 64. Listeners are plain HTTP GETs; an arrival
that leaves a listener more than the playout delay (300 ms) behind the source
counts as late.

Each system steps N up until the first N that is not real time or that takes
>= 95 % of the server core (--keep-going: every step). Figures only; this is
not a test.

    python bench/fanout.py                      # default steps, about 10 minutes
    python bench/fanout.py --formats pcm --pcm-steps 1000,3000,5000 --window 20
    python bench/fanout.py --profile /tmp/fanout-prof   # py-spy each broadcaster window
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import multiprocessing as mp
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

# Run as a plain script from a checkout: the package need not be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # fanout_client

import fanout_client
from _api import HEADERS, api_tokens_toml

from broadcaster.config import hash_token

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
TOKEN = "fanout-bench-token"
ZONE = "bench"
PLAYOUT_MS = 300  # the server default; also the listeners' jitter-buffer budget
CPU_SATURATED = 95.0


@dataclass(frozen=True)
class Fmt:
    name: str  # short label
    wire: dict[str, Any]  # hello format spec
    chunk_ms: int
    pcm_frame_ms: int  # server [streaming] pcm_frame_ms
    byte_rate: int  # Icecast source bytes per second
    ice_label: str


FORMATS = {
    "opus": Fmt(
        name="opus/48k 20ms",
        wire={"codec": "opus", "sample_rate_hz": 48000},
        chunk_ms=20,
        pcm_frame_ms=20,
        byte_rate=5400,  # 108-byte Ogg pages every 20 ms (80-byte CBR packets)
        ice_label="ogg/opus 32k 20ms",
    ),
    "pcm": Fmt(
        name="pcm16k 100ms",
        wire={"codec": "pcm_s16le", "sample_rate_hz": 16000},
        chunk_ms=100,
        pcm_frame_ms=100,
        byte_rate=32000,
        ice_label="raw L16 16k 100ms",
    ),
}


@dataclass
class Row:
    system: str
    fmt: str
    n: int
    joined: int = 0
    cpu_pct: float = 0.0
    rss_mb: float = 0.0
    rss_idle_mb: float = 0.0
    late: int = 0
    gaps: int = 0
    disconnects: int = 0
    min_frames: int = 0
    expected_frames: int = 0
    worst_delay_ms: float = 0.0
    p999_delay_ms: float = 0.0
    gen_pct: float = 0.0
    connect_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def us_per_ep(self) -> float:
        return self.cpu_pct / 100 * 1e6 / self.n if self.n else 0.0

    @property
    def kb_per_ep(self) -> float:
        return (self.rss_mb - self.rss_idle_mb) * 1024 / self.n if self.n else 0.0

    @property
    def underruns(self) -> int:
        short = max(0, self.expected_frames - 2 - self.min_frames) if self.expected_frames else 0
        return self.late + self.gaps + self.disconnects + (self.n - self.joined) + short

    @property
    def verdict(self) -> str:
        if self.underruns:
            return "UNDERRUNS"
        if self.cpu_pct >= CPU_SATURATED:
            return "SATURATED"
        return "ok"


# --- processes and cleanup ------------------------------------------------------------------

_CHILDREN: list[subprocess.Popen[bytes]] = []


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def _cleanup() -> None:
    for proc in list(_CHILDREN):
        with contextlib.suppress(Exception):
            _stop_process(proc, 5.0)
    for child in mp.active_children():
        child.terminate()
        child.join(5)


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _proc_sample(pid: int) -> tuple[float, float]:
    """(CPU seconds of all threads, RSS in MB) of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return cpu, rss_kb / 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening after {timeout} s")


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# --- load generator -------------------------------------------------------------------------


class Generator:
    """Worker processes of bench/fanout_client.py, pinned to the generator cores."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        for spec in specs:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=fanout_client.worker_main, args=(child, spec), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        self.collect(60)  # ready

    def ask(self, cmd: str, timeout: float = 30) -> list[dict[str, Any]]:
        for c in self.conns:
            c.send(cmd)
        return self.collect(timeout)

    def collect(self, timeout: float) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        for c in self.conns:
            if not c.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError("load generator did not answer")
            out.append(c.recv())
        return out

    def stop(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send("stop")
        for p in self.procs:
            p.join(20)
            if p.is_alive():
                p.terminate()
                p.join(5)


def _worker_specs(base: dict[str, Any], ids: list[str], args: argparse.Namespace) -> list[dict]:
    workers = max(1, min(args.workers, len(ids)))
    per = -(-len(ids) // workers)
    specs = []
    for w in range(workers):
        part = ids[w * per : (w + 1) * per]
        if part:
            specs.append(
                {
                    **base,
                    "ids": part,
                    "cpus": args.gen_cpus,
                    "concurrency": max(4, args.concurrency // workers),
                    "connect_timeout_s": 60.0,
                    "playout_us": PLAYOUT_MS * 1000,
                }
            )
    return specs


def _merge(stats: list[dict[str, Any]], row: Row) -> None:
    hist = [sum(col) for col in zip(*(s["hist"] for s in stats), strict=True)]
    total = sum(hist)
    row.late = sum(s["late"] for s in stats)
    row.gaps = sum(s["gaps"] for s in stats)
    row.disconnects = sum(s["joined"] - s["open_at_end"] for s in stats)
    row.min_frames = min(s["min_frames"] for s in stats)
    row.worst_delay_ms = max(s["worst_delay_us"] for s in stats) / 1000
    if total:
        acc, cut = 0, total * 0.999
        for ms, count in enumerate(hist):
            acc += count
            if acc >= cut:
                row.p999_delay_ms = ms
                break
    codes = sorted({c for s in stats for c in s["close_codes"]})
    if codes:
        row.notes.append(f"close codes {codes}")


def _measure_window(
    gen: Generator, pid: int, n_gen_cores: int, window: float, row: Row
) -> list[dict[str, Any]]:
    cpu0, _ = _proc_sample(pid)
    t0 = time.monotonic()
    gen.ask("window_start")
    time.sleep(window)
    stats = gen.ask("window_end")
    cpu1, rss = _proc_sample(pid)
    wall = time.monotonic() - t0
    row.cpu_pct = 100 * (cpu1 - cpu0) / wall
    row.rss_mb = rss
    row.gen_pct = 100 * sum(s["cpu_s"] for s in stats) / wall / n_gen_cores
    _merge(stats, row)
    return stats


def _connect(gen: Generator, row: Row, timeout: float) -> None:
    t0 = time.monotonic()
    res = gen.ask("connect", timeout)
    row.connect_s = time.monotonic() - t0
    row.joined = sum(r["joined"] for r in res)
    errors: dict[str, int] = {}
    for r in res:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    if errors:
        row.notes.append("connect errors: " + "; ".join(f"{v}x {k}" for k, v in errors.items()))


def _wait_receiving(gen: Generator, want: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    receiving = 0
    while time.monotonic() < deadline:
        receiving = sum(r["receiving"] for r in gen.ask("status"))
        if receiving >= want:
            break
        time.sleep(0.2)
    return receiving


# --- broadcaster ----------------------------------------------------------------------------


def _announcement_text(seconds: float) -> str:
    """English PA prose that espeak speaks for at least ``seconds`` at speed 1."""
    places = ["Greenhaven", "Westbridge", "Hill Square", "Harrow Point", "Cambridge", "Northgate"]
    parts: list[str] = []
    i = 0
    # espeak at 175 words a minute says about 14 characters a second; aim 30 % long.
    while sum(len(p) + 1 for p in parts) < seconds * 14 * 1.3:
        dest = places[i % len(places)]
        parts.append(
            f"The {10 + i % 12}:{(i * 7) % 60:02d} service to {dest} will depart from "
            f"platform {1 + i % 9}. Passengers for {places[(i + 2) % len(places)]} should "
            f"change at {places[(i + 4) % len(places)]}. Please keep your belongings with you."
        )
        i += 1
    return " ".join(parts)


def _write_server_config(path: Path, n: int, fmt: Fmt, http_port: int, ws_port: int) -> None:
    token_hash = hash_token(TOKEN)
    lines = [
        "[server]",
        f'http_host = "{HOST}"',
        f"http_port = {http_port}",
        f'ws_host = "{HOST}"',
        f"ws_port = {ws_port}",
        "[speech]",
        'engine = "espeak"',
        "[streaming]",
        f"pcm_frame_ms = {fmt.pcm_frame_ms}",
        f"playout_delay_ms = {PLAYOUT_MS}",
        "[announcements]",
        "wait_for_endpoints_s = 1",
        "[store]",
        'path = ":memory:"',
        "[logging]",
        'level = "WARNING"',
        # Every generated endpoint connects from 127.0.0.1: room for all of them from one
        # address (and, as the config requires, for each configured endpoint besides).
        "[limits]",
        f"max_ws_per_address = {n + 100}",
        f"max_ws_connections = {2 * n + 200}",
        "[[zones]]",
        f'id = "{ZONE}"',
    ]
    for i in range(n):
        lines += ["[[endpoints]]", f'id = "ep{i:05d}"', f'token_hash = "{token_hash}"']
        lines.append(f'zones = ["{ZONE}"]')
    path.write_text("\n".join(lines) + "\n" + api_tokens_toml())


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for name, value in HEADERS.items():
        req.add_header(name, value)
    with urllib.request.urlopen(req, timeout=30) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _pin(cpus: set[int]) -> Any:
    def preexec() -> None:
        os.sched_setaffinity(0, cpus)

    return preexec


def run_broadcaster(fmt: Fmt, n: int, args: argparse.Namespace, tmp: Path) -> Row:
    row = Row("broadcaster", fmt.name, n)
    row.expected_frames = int(args.window * 1000 / fmt.chunk_ms)
    http_port, ws_port = _free_port(), _free_port()
    cfg = tmp / f"server-{fmt.pcm_frame_ms}-{n}.toml"
    _write_server_config(cfg, n, fmt, http_port, ws_port)
    log = tmp / f"server-{fmt.pcm_frame_ms}-{n}.log"
    api = f"http://{HOST}:{http_port}"
    # The config says [store] path = ":memory:" as well, for revisions whose CLI
    # ignored --store.
    cmd = [sys.executable, "-m", "broadcaster.cli", "serve", "--config", str(cfg)]
    cmd += ["--store", ":memory:"]
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin({args.server_core}),
            start_new_session=True,
        )
    _CHILDREN.append(server)
    gen: Generator | None = None
    try:
        try:
            _wait_port(http_port, 60, server)
        except RuntimeError as exc:
            raise RuntimeError(f"server did not start ({exc}):\n{_tail(log)}") from None
        time.sleep(0.5)
        _, row.rss_idle_mb = _proc_sample(server.pid)
        ids = [f"ep{i:05d}" for i in range(n)]
        base = {
            "kind": "ws",
            "host": HOST,
            "port": ws_port,
            "path": "/v1/endpoint",
            "token": TOKEN,
            "zone": ZONE,
            "format": fmt.wire,
        }
        gen = Generator(_worker_specs(base, ids, args))
        _connect(gen, row, 120 + n / 50)
        connected = _http("GET", f"{api}/healthz")["endpoints_connected"]
        if connected != n:
            row.notes.append(f"server sees {connected} endpoints")
        needed = 10 + args.warmup + args.window + 15
        ann = _http(
            "POST",
            f"{api}/v1/announcements",
            {"text": _announcement_text(needed), "zones": [ZONE], "speed": 1.0},
        )
        receiving = _wait_receiving(gen, row.joined, 30)
        if receiving < row.joined:
            row.notes.append(f"only {receiving}/{row.joined} endpoints got audio")
        time.sleep(args.warmup)
        prof = _start_profile(server.pid, args, fmt, n, tmp)
        _measure_window(gen, server.pid, len(args.gen_cpus), args.window, row)
        state = _http("GET", f"{api}/v1/announcements/{ann['id']}")
        if state["state"] != "playing":
            row.notes.append(f"announcement {state['state']} before the window ended")
        if prof is not None:
            _finish_profile(prof, args)
    finally:
        if gen is not None:
            gen.stop()
        _stop_process(server)
    return row


# --- profiling (py-spy) ---------------------------------------------------------------------


def _start_profile(
    pid: int, args: argparse.Namespace, fmt: Fmt, n: int, tmp: Path
) -> tuple[subprocess.Popen[bytes], Path] | None:
    if args.profile is None:
        return None
    candidates = [Path(sys.executable).with_name("py-spy"), Path(sys.prefix, "bin", "py-spy")]
    spy = shutil.which("py-spy") or next((str(c) for c in candidates if c.exists()), None)
    if spy is None:
        print("  (py-spy not found: pip install py-spy; not profiling)")
        return None
    out = Path(args.profile) / f"broadcaster-{fmt.chunk_ms}ms-{n}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "-p", str(pid), "--duration", str(int(args.window))]
    cmd += ["--rate", "200", "--nonblocking", "--format", "raw", "-o", str(out)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_pin(set(args.gen_cpus)),
        start_new_session=True,
    )
    _CHILDREN.append(proc)
    return proc, out


def _finish_profile(prof: tuple[subprocess.Popen[bytes], Path], args: argparse.Namespace) -> None:
    proc, out = prof
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(args.window + 20)
    _stop_process(proc, 5)
    if out.exists():
        print(f"  profile: {out}")
        print(summarize_profile(out, top=args.profile_top))


def _frame_name(frame: str) -> str:
    # "send (websockets/asyncio/connection.py:123)" -> "send (websockets/asyncio/connection.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive shares of py-spy raw (collapsed) stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            incl[name] = incl.get(name, 0) + count
    if not total:
        return "  (empty profile)"
    out = [f"  {total} samples (active threads only)", "  self time:"]
    for name, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"    {100 * c / total:5.1f}%  {name}")
    out.append("  inclusive time:")
    for name, c in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"    {100 * c / total:5.1f}%  {name}")
    return "\n".join(out)


# --- Icecast --------------------------------------------------------------------------------


def find_icecast(install: bool) -> str | None:
    exe = shutil.which("icecast2") or shutil.which("icecast")
    if exe is not None or not install:
        return exe
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print("icecast2 not installed (and not root with apt-get): skipping Icecast")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("icecast2 not installed: running `apt-get install -y icecast2`")
    if subprocess.run(["apt-get", "install", "-y", "icecast2"], env=env).returncode != 0:
        print("install failed: running `apt-get update` and `apt-get install -y icecast2`")
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "icecast2"], env=env, check=False)
    return shutil.which("icecast2") or shutil.which("icecast")


def _speech_like(seconds: float, rate_hz: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    pitch = 200 + 100 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate_hz
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * 2 * t), 0, None) ** 2
    signal_ = envelope * (0.6 * voiced + 0.1 * rng.standard_normal(t.size))
    return np.asarray(np.clip(signal_ * 0.4 * 32767, -32768, 32767), dtype=np.int16)


def ogg_opus_pages(seconds: float) -> list[tuple[float, bytes]]:
    """(send offset s, page) of a 32 kbit/s CBR Ogg/Opus stream, one 20 ms packet per page."""
    import av

    rate = 48000
    pcm = _speech_like(seconds, rate)
    buf = io.BytesIO()
    out = av.open(buf, "w", format="ogg", options={"page_duration": "20000"})
    st = out.add_stream("libopus", rate=rate, layout="mono")
    st.bit_rate = 32000
    st.codec_context.options = {"vbr": "off", "frame_duration": "20", "application": "audio"}
    for i in range(0, len(pcm) - 960 + 1, 960):
        frame = av.AudioFrame.from_ndarray(pcm[i : i + 960].reshape(1, -1), layout="mono")
        frame.sample_rate = rate
        frame.pts = i
        for packet in st.encode(frame):
            out.mux(packet)
    for packet in st.encode(None):
        out.mux(packet)
    out.close()
    data = buf.getvalue()
    pages: list[tuple[float, bytes]] = []
    pos = 0
    while pos + 27 <= len(data):
        if data[pos : pos + 4] != b"OggS":
            raise ValueError("not an Ogg page")
        nseg = data[pos + 26]
        size = 27 + nseg + sum(data[pos + 27 : pos + 27 + nseg])
        granule = int.from_bytes(data[pos + 6 : pos + 14], "little", signed=True)
        at = max(0.0, granule / rate - 0.02) if granule > 0 else 0.0
        pages.append((at, data[pos : pos + size]))
        pos += size
    return pages


def pcm_chunks(seconds: float) -> list[tuple[float, bytes]]:
    """(send offset s, 100 ms of 16 kHz s16le) — the broadcaster's PCM byte rate and cadence."""
    pcm = _speech_like(seconds, 16000).astype("<i2").tobytes()
    return [(i / 32000, pcm[i : i + 3200]) for i in range(0, len(pcm), 3200)]


class IcecastSource(threading.Thread):
    """Pushes pre-made chunks to an Icecast mount in real time (HTTP PUT)."""

    def __init__(
        self, port: int, mount: str, password: str, content_type: str, chunks: list, counter: Any
    ) -> None:
        super().__init__(daemon=True, name="icecast-source")
        self.chunks = chunks
        self.counter = counter
        self.stop_event = threading.Event()
        self.error: str | None = None
        self.ran_out = False
        self.sock = socket.create_connection((HOST, port), 10)
        auth = base64.b64encode(f"source:{password}".encode()).decode()
        self.sock.sendall(
            (
                f"PUT {mount} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Basic {auth}\r\n"
                f"Content-Type: {content_type}\r\nIce-Public: 0\r\nIce-Name: fanout bench\r\n"
                "Expect: 100-continue\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            got = self.sock.recv(4096)
            if not got:
                break
            answer += got
        status = answer.split(b"\r\n", 1)[0].decode("latin-1")
        if " 100" not in status and " 200" not in status:
            raise RuntimeError(f"Icecast refused the source: {status!r}")

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            for at, chunk in self.chunks:
                delay = t0 + at - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    return
                self.counter.value += len(chunk)
                self.sock.sendall(chunk)
            self.ran_out = True
        except OSError as exc:
            self.error = str(exc)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.sock.close()


def _write_icecast_config(path: Path, port: int, clients: int, logdir: Path, burst: int) -> None:
    path.write_text(
        f"""<icecast>
  <location>bench</location>
  <admin>bench@localhost</admin>
  <limits>
    <clients>{clients}</clients>
    <sources>2</sources>
    <queue-size>524288</queue-size>
    <client-timeout>30</client-timeout>
    <header-timeout>15</header-timeout>
    <source-timeout>10</source-timeout>
    <burst-on-connect>1</burst-on-connect>
    <burst-size>{burst}</burst-size>
  </limits>
  <authentication>
    <source-password>bench-source</source-password>
    <relay-password>bench-relay</relay-password>
    <admin-user>admin</admin-user>
    <admin-password>bench-admin</admin-password>
  </authentication>
  <hostname>{HOST}</hostname>
  <listen-socket>
    <port>{port}</port>
    <bind-address>{HOST}</bind-address>
  </listen-socket>
  <fileserve>0</fileserve>
  <paths>
    <basedir>/usr/share/icecast2</basedir>
    <logdir>{logdir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot>
  </paths>
  <logging>
    <accesslog>access.log</accesslog>
    <errorlog>error.log</errorlog>
    <loglevel>2</loglevel>
    <logsize>100000</logsize>
  </logging>
  <security>
    <chroot>0</chroot>
  </security>
</icecast>
"""
    )


def _icecast_preexec(cpus: set[int], uid: int | None, gid: int | None) -> Any:
    def preexec() -> None:
        os.sched_setaffinity(0, cpus)
        if uid is not None and gid is not None:  # Icecast refuses to run as root
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

    return preexec


def run_icecast(exe: str, fmt: Fmt, n: int, args: argparse.Namespace, tmp: Path) -> Row:
    row = Row("icecast", fmt.ice_label, n)
    row.expected_frames = 0  # Icecast coalesces writes; counted by bytes instead
    port = _free_port()
    work = tmp / f"icecast-{fmt.chunk_ms}-{n}"
    logdir = work / "log"
    logdir.mkdir(parents=True)
    for path in (tmp, work):  # the unprivileged Icecast user must reach its config
        path.chmod(0o755)
    uid = gid = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("icecast2")
        except KeyError:
            pw = pwd.getpwnam("nobody")
        uid, gid = pw.pw_uid, pw.pw_gid
        os.chown(logdir, uid, gid)
    conf = work / "icecast.xml"
    burst = fmt.byte_rate * PLAYOUT_MS // 1000  # a playout delay's worth, like the broadcaster
    _write_icecast_config(conf, port, n + 64, logdir, burst)
    proc = subprocess.Popen(
        [exe, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=(work / "stderr.log").open("wb"),
        preexec_fn=_icecast_preexec({args.server_core}, uid, gid),
        start_new_session=True,
    )
    _CHILDREN.append(proc)
    gen: Generator | None = None
    source: IcecastSource | None = None
    try:
        try:
            _wait_port(port, 20, proc)
        except RuntimeError as exc:
            raise RuntimeError(
                f"icecast did not start ({exc}):\n{_tail(work / 'stderr.log')}\n"
                f"{_tail(logdir / 'error.log')}"
            ) from None
        seconds = 60 + n / 200 + args.warmup + args.window + 30
        if fmt.chunk_ms == 20:
            chunks, ctype, mount = ogg_opus_pages(seconds), "audio/ogg", "/bench.opus"
        else:
            chunks, ctype, mount = pcm_chunks(seconds), "audio/L16", "/bench.pcm"
        counter = mp.get_context("spawn").RawValue("q", 0)
        source = IcecastSource(port, mount, "bench-source", ctype, chunks, counter)
        source.start()
        time.sleep(1.0)
        _, row.rss_idle_mb = _proc_sample(proc.pid)
        base = {
            "kind": "icecast",
            "host": HOST,
            "port": port,
            "path": mount,
            "byte_rate": fmt.byte_rate,
            "source_bytes": counter,
            "rcvlowat": fmt.byte_rate // 10,
        }
        gen = Generator(_worker_specs(base, [str(i) for i in range(n)], args))
        _connect(gen, row, 120 + n / 50)
        _wait_receiving(gen, row.joined, 10)
        time.sleep(args.warmup)
        _measure_window(gen, proc.pid, len(args.gen_cpus), args.window, row)
        if source.error or source.ran_out or not source.is_alive():
            row.notes.append(f"source stopped early: {source.error or 'ran out of audio'}")
    finally:
        if gen is not None:
            gen.stop()
        if source is not None:
            source.stop()
        _stop_process(proc)
    return row


# --- report ---------------------------------------------------------------------------------

HEADER = (
    f"{'system':<11} {'format':<18} {'N':>6} {'joined':>6} {'CPU%':>6} {'µs/ep/s':>8} "
    f"{'RSS MB':>7} {'KB/ep':>6} {'late':>6} {'gaps':>6} {'disc':>5} {'p99.9 ms':>8} "
    f"{'worst ms':>8} {'gen%':>5} {'conn s':>6}  verdict"
)


def fmt_row(r: Row) -> str:
    gaps = "-" if r.system == "icecast" else str(r.gaps)
    return (
        f"{r.system:<11} {r.fmt:<18} {r.n:>6} {r.joined:>6} {r.cpu_pct:>6.1f} "
        f"{r.us_per_ep:>8.1f} {r.rss_mb:>7.1f} {r.kb_per_ep:>6.1f} {r.late:>6} {gaps:>6} "
        f"{r.disconnects:>5} {r.p999_delay_ms:>8.0f} {r.worst_delay_ms:>8.1f} {r.gen_pct:>5.0f} "
        f"{r.connect_s:>6.1f}  {r.verdict}" + (f"  ({'; '.join(r.notes)})" if r.notes else "")
    )


def _steps(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--formats", default="pcm,opus", help="pcm, opus or both (default pcm,opus)")
    p.add_argument("--pcm-steps", default="1000,2000,3000,5000", help="N for 100 ms PCM")
    p.add_argument("--opus-steps", default="250,500,1000,2000", help="N for 20 ms Opus")
    p.add_argument("--window", type=float, default=15.0, help="measured seconds per step")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of audio before measuring")
    p.add_argument(
        "--systems", default="broadcaster,icecast", help="broadcaster, icecast or both (default)"
    )
    p.add_argument("--no-icecast", action="store_true", help="same as --systems broadcaster")
    p.add_argument("--no-install", action="store_true", help="never apt-get install icecast2")
    p.add_argument("--keep-going", action="store_true", help="do every step even after a failure")
    p.add_argument("--server-core", type=int, default=0, help="core for the server (default 0)")
    p.add_argument("--workers", type=int, default=0, help="generator processes (default: cores)")
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight in total")
    p.add_argument("--max-minutes", type=float, default=10.0, help="start no step after this")
    p.add_argument("--profile", metavar="DIR", help="py-spy record each broadcaster window")
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    if args.server_core not in cores:
        p.error(f"--server-core {args.server_core} is not one of this process's cores {cores}")
    args.gen_cpus = [c for c in cores if c != args.server_core] or cores
    if len(cores) < 2:
        print("warning: one core only: server and load generator share it")
    args.workers = args.workers or len(args.gen_cpus)
    os.sched_setaffinity(0, set(args.gen_cpus))

    wanted = [f.strip() for f in args.formats.split(",") if f.strip()]
    plan = [(FORMATS[f], _steps(args.pcm_steps if f == "pcm" else args.opus_steps)) for f in wanted]
    biggest = max((max(s) for _, s in plan if s), default=0)
    need_fds = 2 * biggest + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need_fds:
        new_hard = hard if hard >= need_fds else need_fds
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_hard, new_hard))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    systems = {x.strip() for x in args.systems.split(",") if x.strip()}
    if args.no_icecast:
        systems.discard("icecast")
    icecast = find_icecast(not args.no_install) if "icecast" in systems else None
    print(
        f"server core {args.server_core}; load generator cores {args.gen_cpus} "
        f"({args.workers} process(es)); RLIMIT_NOFILE {nofile}; window {args.window:g} s "
        f"after {args.warmup:g} s warm-up; playout delay {PLAYOUT_MS} ms"
    )
    print(f"icecast: {icecast or 'not used'}")
    print()
    print(HEADER)
    rows: list[Row] = []
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="fanout-"))
    try:
        for fmt, steps in plan:
            active = [x for x in ("broadcaster", "icecast") if x in systems]
            if icecast is None and "icecast" in active:
                active.remove("icecast")
            for n in steps:
                if not active:
                    break
                if time.monotonic() - started > args.max_minutes * 60:
                    print(f"(time budget of {args.max_minutes:g} min used: skipping the rest)")
                    break
                for system in list(active):
                    label = fmt.name if system == "broadcaster" else fmt.ice_label
                    try:
                        if system == "broadcaster":
                            row = run_broadcaster(fmt, n, args, tmp)
                        else:
                            assert icecast is not None
                            row = run_icecast(icecast, fmt, n, args, tmp)
                    except RuntimeError as exc:
                        print(f"{system} {label} N={n}: {exc}")
                        active.remove(system)
                        continue
                    rows.append(row)
                    print(fmt_row(row), flush=True)
                    if row.verdict != "ok" and not args.keep_going:
                        active.remove(system)  # each system steps up until it fails
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        _cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("summary: largest N served in real time (zero underruns, server core < 95 %)")
    for fmt, _ in plan:
        for system, label in (("broadcaster", fmt.name), ("icecast", fmt.ice_label)):
            ok = [r.n for r in rows if r.system == system and r.fmt == label and r.verdict == "ok"]
            tried = [r.n for r in rows if r.system == system and r.fmt == label]
            if tried:
                print(f"  {system:<11} {label:<18} {max(ok) if ok else 'none':>6} (tried {tried})")
    print(
        "columns: CPU% of one core and µs of CPU per endpoint per second over the window; RSS "
        "at the window's end, KB/ep above the idle process; late = frames that arrived after "
        "their play_at (Icecast: arrivals leaving a listener > playout delay behind the "
        "source); gaps = frames missing (seq); disc = connections lost; p99.9/worst = arrival "
        "delay beyond nominal; gen% = load generator CPU of its core(s)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps([{**r.__dict__, "verdict": r.verdict} for r in rows], indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
