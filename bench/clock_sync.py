"""How well the reference endpoint estimates the server clock (docs/protocol.md §3).

Runs the real server (``python -m broadcaster.cli serve``, espeak-ng, in-memory
store) and two reference endpoints in separate processes whose clock is
``SystemClock`` shifted by a known amount (default +123456789 µs), so the true
offset (server − local = −shift) is known exactly:

* ``ref``: the reference endpoint as shipped (``ClockEstimate``, pings at the
  server's heartbeat interval). Its ``clock_estimate.offset_us`` is sampled
  every second; every audio chunk's computed local play time
  (``play_at − offset``) is compared with the true local time of that play_at,
  and its arrival margin is noted.
* ``probe``: the same class pinging every 100 ms, only to record a dense set of
  ping/pong samples on which estimator variants are compared offline.

Scenarios: ``loopback`` (127.0.0.1), then ``jitter``: the server bound to one
end of a veth pair in the root namespace and the endpoints in a network
namespace made for the run, with ``tc netem delay 20ms 5ms`` on both ends.
When this kernel has no netem (or namespaces are not allowed) it says so and
uses a user-space jitter relay instead (each chunk of the TCP byte stream held
20 ± 5 ms, uniform, in order), inside the namespace when there is one. The
namespace and veth are removed on exit, also after a failure or a signal
(and stale ones of a killed run are removed on the next start).

Estimator variants (min-RTT over a window, median of the k best, both one-way
minima, a drift fit ...) are replayed offline on the ``ref`` samples (at its
1 s sampling times) and on random subsets of the ``probe`` samples as large as
the reference has after its burst, ~30 s, ~1 min and ~3 min of heartbeats.
``--asymmetric`` adds a scenario with jitter on the uplink only (a bias no
estimator can see); ``--drift-ppm 50`` makes the endpoint clock run fast.

    python bench/clock_sync.py [--duration 30] [--asymmetric] [--drift-ppm 0] [--json out.json]
    python bench/clock_sync.py --from-json out.json      # analyse a saved run again

Only the loopback scenario: ``--scenarios loopback``. Default run ≈ 65 s (as root).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gzip
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _api import HEADERS, api_tokens_toml

from broadcaster.clock import SystemClock
from broadcaster.endpoint import ClockEstimate, EndpointRefused, ReferenceEndpoint
from broadcaster.streaming import wire

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "clock-sync-bench"
ZONE = "hall"
FORMAT = "opus/48000"
DEFAULT_SHIFT_US = 123_456_789
TEXT = (
    "Attention please. The twelve forty service to Greenhaven is delayed by approximately "
    "eighteen minutes. Please stand clear of the platform edge."
)
NS_PREFIX = "bcsync-"

# --- endpoint child ---------------------------------------------------------------------------


class ShiftedClock(SystemClock):
    """The system monotonic clock m shifted by ``shift_us`` and optionally running fast/slow.

    local = m + shift + drift_ppm·1e-6·(m − m0), so server − local = −shift at m0 and
    changes by −drift_ppm µs per second after that (a crystal that gains drift_ppm).
    """

    def __init__(self, shift_us: int, drift_ppm: float = 0.0) -> None:
        self.shift_us = shift_us
        self.drift = drift_ppm * 1e-6
        self.m0_us = time.monotonic_ns() // 1000

    def monotonic_us(self) -> int:
        m = time.monotonic_ns() // 1000
        return m + self.shift_us + round(self.drift * (m - self.m0_us))


class RecordingEstimate(ClockEstimate):
    """The reference estimator, also noting every sample it is given."""

    sink: BenchEndpoint

    def update(self, sent_us: int, server_us: int, received_us: int) -> None:
        ep = self.sink
        # _last_received_us: when the pong came out of the WebSocket, before it was parsed.
        ep.ping_samples.append([sent_us, server_us, received_us, ep._last_received_us, ep.sessions])
        super().update(sent_us, server_us, received_us)


class BenchEndpoint(ReferenceEndpoint):
    def __init__(self, *, ping_interval_us: int | None = None, **kw: Any) -> None:
        self.ping_samples: list[list[int]] = []
        self.chunk_log: list[list[int | None]] = []
        self.sessions = -1  # the base __init__ makes one estimate before any session
        self._est: RecordingEstimate | None = None
        self._ping_interval_override = ping_interval_us
        super().__init__(**kw)

    @property  # type: ignore[override]
    def clock_estimate(self) -> ClockEstimate:
        assert self._est is not None
        return self._est

    @clock_estimate.setter
    def clock_estimate(self, _fresh: ClockEstimate) -> None:
        # The reference assigns a fresh ClockEstimate per connection; record that one instead.
        est = RecordingEstimate()
        est.sink = self
        self.sessions += 1
        self._est = est

    async def _ping_loop(self, ws: Any, interval_us: int) -> None:
        await super()._ping_loop(ws, self._ping_interval_override or interval_us)

    def _on_audio(self, frame: bytes) -> None:
        now = self._now()
        with contextlib.suppress(wire.FrameError):
            header, _ = wire.unpack_audio_frame(frame)
            self.chunk_log.append(
                [now, header.play_at_us, header.duration_us, self.clock_estimate.offset_us]
            )
        super()._on_audio(frame)


async def _endpoint_session(args: argparse.Namespace) -> dict[str, Any]:
    clock = ShiftedClock(args.shift_us, args.drift_ppm)
    ep = BenchEndpoint(
        url=args.url,
        endpoint_id=args.endpoint_id,
        token=TOKEN,
        zones=[ZONE],
        formats=[FORMAT],
        out_dir=None,
        clock=clock,
        reconnect=True,
        ping_interval_us=args.ping_interval_ms * 1000 if args.ping_interval_ms else None,
    )
    task = asyncio.create_task(ep.run())
    live: list[list[int | None]] = []
    start = clock.monotonic_us()
    for i in range(1, int(args.duration) + 1):
        await clock.sleep_until_us(start + i * 1_000_000)
        if task.done():
            break
        est = ep.clock_estimate
        live.append([clock.monotonic_us(), est.offset_us, est.rtt_us, est.samples, ep.sessions])
    ep.stop()
    error = None
    try:
        await asyncio.wait_for(task, 5)
    except EndpointRefused as exc:
        error = str(exc)
    except (TimeoutError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    anns = [
        {"chunks": a.chunks, "late": a.late_chunks, "gaps": a.gaps, "status": a.status}
        for a in ep.announcements.values()
    ]
    return {
        "endpoint_id": args.endpoint_id,
        "shift_us": args.shift_us,
        "drift_ppm": args.drift_ppm,
        "m0_us": clock.m0_us,
        "joined": ep.welcome is not None or ep.sessions > 0,
        "sessions": ep.sessions,
        "error": error,
        "samples": ep.ping_samples,
        "live": live,
        "chunks": ep.chunk_log,
        "announcements": anns,
    }


def endpoint_main(args: argparse.Namespace) -> int:
    result = asyncio.run(_endpoint_session(args))
    Path(args.out).write_text(json.dumps(result))
    return 0


# --- user-space jitter relay (stand-in for netem) -----------------------------------------------


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay_s: float,
    jitter_s: float,
    rng: random.Random,
) -> None:
    """Copy one direction, holding each chunk delay ± jitter (uniform), keeping byte order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def out() -> None:
        while True:
            release, data = await queue.get()
            wait = release - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    sender = asyncio.create_task(out())
    last = 0.0
    try:
        while data := await reader.read(65536):
            last = max(last, loop.time() + delay_s + rng.uniform(-jitter_s, jitter_s))
            queue.put_nowait((last, data))
    except OSError:
        pass
    queue.put_nowait((last, b""))
    with contextlib.suppress(OSError):
        await sender


async def _relay(args: argparse.Namespace, sock: socket.socket) -> None:
    host, port = args.target.rsplit(":", 1)
    rng = random.Random(args.seed)
    up = (args.up_delay_ms / 1000, args.up_jitter_ms / 1000)
    down = (args.down_delay_ms / 1000, args.down_jitter_ms / 1000)

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            c_writer.close()
            return
        for w in (c_writer, s_writer):
            s = w.get_extra_info("socket")
            if s is not None:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            _pump(c_reader, s_writer, *up, rng), _pump(s_reader, c_writer, *down, rng)
        )

    server = await asyncio.start_server(handle, sock=sock)
    async with server:
        await server.serve_forever()


def relay_main(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.listen, 0))
    sock.listen(64)
    Path(args.port_file).write_text(str(sock.getsockname()[1]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_relay(args, sock))
    return 0


# --- estimators (offline, on recorded samples) -------------------------------------------------

# A sample: (sent_us, server_us, received_us, received_before_parse_us), all on the endpoint's
# clock except server_us.
Sample = tuple[int, int, int, int]
Estimator = Callable[[Sequence[Sample]], float]


def _mid(s: Sample) -> float:
    return s[1] - (s[0] + s[2]) / 2


def est_reference(samples: Sequence[Sample]) -> float:
    """Exactly ClockEstimate: the lowest RTT so far, ties to the newer sample."""
    best: Sample | None = None
    for s in samples:
        if best is None or s[2] - s[0] <= best[2] - best[0]:
            best = s
    assert best is not None
    return best[1] - (best[0] + best[2]) // 2


def est_latest(samples: Sequence[Sample]) -> float:
    return _mid(samples[-1])


def est_min_rtt_last(n: int) -> Estimator:
    return lambda samples: est_reference(samples[-n:])


def est_median_k_best(k: int) -> Estimator:
    def f(samples: Sequence[Sample]) -> float:
        best = sorted(samples, key=lambda s: s[2] - s[0])[:k]
        return statistics.median(_mid(s) for s in best)

    return f


def est_median_all(samples: Sequence[Sample]) -> float:
    return statistics.median(_mid(s) for s in samples)


def est_oneway_min(samples: Sequence[Sample]) -> float:
    """Each direction's minimum on its own: offset + min up-delay and offset − min down-delay.

    T − sent = offset + d_up and T − received = offset − d_down, so the bounds
    min(T − sent) and max(T − received) tighten as soon as *each* direction has
    had one quick trip, not only when both were quick in the same exchange.
    """
    hi = min(s[1] - s[0] for s in samples)
    lo = max(s[1] - s[2] for s in samples)
    return (hi + lo) / 2


def est_oneway_min_last(n: int) -> Estimator:
    return lambda samples: est_oneway_min(samples[-n:])


def est_oneway_drift_fit(samples: Sequence[Sample], groups: int = 4) -> float:
    """One-way minima per quarter of the samples, a straight line through them, read at now.

    Follows a clock that runs fast or slow (a 50 ppm crystal moves the offset 3 ms a
    minute), which any minimum over all samples cannot. Needs 2 samples per group.
    """
    n = len(samples)
    if n < 2 * groups:
        return est_oneway_min(samples)
    pts = []
    for g in range(groups):
        part = samples[g * n // groups : (g + 1) * n // groups]
        t = statistics.median((s[0] + s[2]) / 2 for s in part)
        pts.append((t, est_oneway_min(part)))
    tm = statistics.fmean(t for t, _ in pts)
    om = statistics.fmean(o for _, o in pts)
    sxx = sum((t - tm) ** 2 for t, _ in pts)
    slope = sum((t - tm) * (o - om) for t, o in pts) / sxx if sxx else 0.0
    return om + slope * (samples[-1][2] - tm)


def est_reference_preparse(samples: Sequence[Sample]) -> float:
    """Min RTT, but the pong's receive time stamped before it is parsed."""
    return est_reference([(s[0], s[1], s[3], s[3]) for s in samples])


def est_oneway_min_preparse(samples: Sequence[Sample]) -> float:
    return est_oneway_min([(s[0], s[1], s[3], s[3]) for s in samples])


ESTIMATORS: list[tuple[str, Estimator]] = [
    ("min-RTT all (reference)", est_reference),
    ("latest sample", est_latest),
    ("min-RTT last 8", est_min_rtt_last(8)),
    ("median of 3 best RTT", est_median_k_best(3)),
    ("median of 5 best RTT", est_median_k_best(5)),
    ("median of all", est_median_all),
    ("one-way minima all", est_oneway_min),
    ("one-way minima last 16", est_oneway_min_last(16)),
    ("one-way minima, drift fit", est_oneway_drift_fit),
    ("min-RTT, rx before parse", est_reference_preparse),
    ("one-way min, rx before parse", est_oneway_min_preparse),
]


# --- statistics helpers ------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    xs = sorted(values)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)]


@dataclass
class Stat:
    n: int
    med: float  # signed median
    mabs: float  # median of |x|
    p95: float  # of |x|
    max: float  # of |x|

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        if not values:
            return None
        a = [abs(v) for v in values]
        return cls(len(values), statistics.median(values), statistics.median(a), pct(a, 95), max(a))


def fmt_us(v: float | None, width: int = 7) -> str:
    if v is None:
        return "-".rjust(width)
    return f"{v:+.0f}".rjust(width) if v < 0 else f"{v:.0f}".rjust(width)


def fmt_stat(s: Stat | None) -> str:
    if s is None:
        return "      (no data)      "
    return f"{s.med:+7.0f} {s.p95:7.0f} {s.max:7.0f}"


# --- network setup -----------------------------------------------------------------------------


def _run(cmd: list[str], ns: str | None = None) -> subprocess.CompletedProcess[str]:
    full = (["ip", "netns", "exec", ns] if ns else []) + cmd
    return subprocess.run(full, capture_output=True, text=True, timeout=20, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kernel_option(name: str) -> str | None:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith(f"{name}=") or line.startswith(f"# {name} is not set"):
                    return line.strip()
    except OSError:
        return None
    return None


@dataclass
class Netns:
    """A namespace with one end of a veth pair; the other end stays in the root namespace."""

    ns: str = field(default_factory=lambda: f"{NS_PREFIX}{os.getpid()}")
    host_if: str = field(default_factory=lambda: f"bcs{os.getpid()}a")
    ns_if: str = field(default_factory=lambda: f"bcs{os.getpid()}b")
    host_addr: str = ""
    ns_addr: str = ""
    created: bool = False

    @staticmethod
    def remove_stale() -> list[str]:
        """Namespaces (and veths) left by a run of this benchmark that was killed."""
        if shutil.which("ip") is None:
            return []
        out = _run(["ip", "netns", "list"]).stdout
        removed = []
        for m in re.finditer(rf"^{NS_PREFIX}(\d+)", out, re.M):
            if not _pid_alive(int(m.group(1))):
                _run(["ip", "link", "del", f"bcs{m.group(1)}a"])
                _run(["ip", "netns", "del", m.group(0)])
                removed.append(m.group(0))
        return removed

    def _free_subnet(self) -> int:
        used = _run(["ip", "-4", "-o", "addr"]).stdout
        for x in range(100 + os.getpid() % 100, 100 + os.getpid() % 100 + 100):
            if f"169.254.{x % 256}." not in used:
                return x % 256
        raise RuntimeError("no free 169.254.x.0/30 subnet")

    def create(self) -> str | None:
        """Set it up; returns why it cannot be done, or None."""
        if shutil.which("ip") is None:
            return "`ip` not found (apt-get install iproute2)"
        r = _run(["ip", "netns", "add", self.ns])
        if r.returncode != 0:
            return f"`ip netns add` failed (no CAP_NET_ADMIN / cannot mount?): {r.stderr.strip()}"
        self.created = True
        x = self._free_subnet()
        self.host_addr, self.ns_addr = f"169.254.{x}.1", f"169.254.{x}.2"
        steps: list[tuple[list[str], str | None]] = [
            (["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if], None),
            (["ip", "link", "set", self.ns_if, "netns", self.ns], None),
            (["ip", "addr", "add", f"{self.host_addr}/30", "dev", self.host_if], None),
            (["ip", "link", "set", self.host_if, "up"], None),
            (["ip", "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if], self.ns),
            (["ip", "link", "set", self.ns_if, "up"], self.ns),
            (["ip", "link", "set", "lo", "up"], self.ns),
        ]
        for cmd, ns in steps:
            r = _run(cmd, ns)
            if r.returncode != 0:
                return f"`{' '.join(cmd)}` failed: {r.stderr.strip()}"
        ping = (
            _run(["ping", "-c", "1", "-W", "2", self.host_addr], self.ns)
            if shutil.which("ping")
            else None
        )
        if ping is not None and ping.returncode != 0:
            return f"veth link does not pass traffic: {ping.stdout.strip()} {ping.stderr.strip()}"
        return None

    def set_netem(self, up: str | None, down: str | None) -> str | None:
        """netem on the namespace end (endpoint → server) and the host end (server → endpoint)."""
        for dev, ns, spec in ((self.ns_if, self.ns, up), (self.host_if, None, down)):
            _run(["tc", "qdisc", "del", "dev", dev, "root"], ns)
            if spec:
                r = _run(
                    ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", *spec.split()], ns
                )
                if r.returncode != 0:
                    return r.stderr.strip() or f"tc exited {r.returncode}"
        return None

    def destroy(self) -> None:
        if not self.created:
            return
        _run(["ip", "link", "del", self.host_if])  # also removes the peer in the namespace
        _run(["ip", "netns", "del", self.ns])
        self.created = False


def netem_unavailable_reason(netns: Netns, spec: str) -> str | None:
    if shutil.which("tc") is None:
        return "`tc` not found (apt-get install iproute2)"
    err = netns.set_netem(spec, spec)
    netns.set_netem(None, None)
    if err is None:
        return None
    why = f"tc netem refused: {err}"
    cfg = _kernel_option("CONFIG_NET_SCH_NETEM")
    if cfg:
        why += f" (kernel config: {cfg})"
    return why


# --- processes ---------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: children get SIGTERM if this benchmark is killed outright.
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)


@dataclass
class Children:
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, cmd: list[str], log: Path, ns: str | None = None) -> subprocess.Popen[bytes]:
        full = (["ip", "netns", "exec", ns] if ns else []) + cmd
        with log.open("wb") as f:
            p = subprocess.Popen(
                full, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=_die_with_parent
            )
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 10) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p, 5)


def _wait_for(pred: Callable[[], Any], timeout: float, what: str, proc: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _post(http_port: int, text: str) -> None:
    body = json.dumps({"text": text, "zones": [ZONE]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1/announcements",
        data=body,
        headers={"Content-Type": "application/json", **HEADERS},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def _config(ws_host: str, heartbeat_ms: int) -> str:
    from broadcaster.config import hash_token

    h = hash_token(TOKEN)
    eps = "".join(
        f'[[endpoints]]\nid = "{e}"\ntoken_hash = "{h}"\nzones = ["{ZONE}"]\n\n'
        for e in ("ref", "probe")
    )
    return (
        f'[server]\nhttp_host = "127.0.0.1"\nhttp_port = 0\nws_host = "{ws_host}"\nws_port = 0\n\n'
        '[speech]\nengine = "espeak"\n\n'
        f'[streaming]\nformats = ["{FORMAT}"]\nheartbeat_interval_ms = {heartbeat_ms}\n'
        f"heartbeat_timeout_ms = {max(10000, heartbeat_ms * 3)}\n\n"
        '[store]\npath = ":memory:"\n\n'  # `serve --store` is parsed but not applied (cli.py)
        '[logging]\nlevel = "INFO"\n\n'
        f'[[zones]]\nid = "{ZONE}"\n\n{eps}' + api_tokens_toml()
    )


@dataclass
class Scenario:
    name: str
    label: str
    netns: Netns | None = None
    relay: tuple[float, float, float, float] | None = None  # up delay, jitter, down delay, jitter
    netem: tuple[str | None, str | None] | None = None  # up, down


def run_scenario(
    sc: Scenario, args: argparse.Namespace, work: Path, kids: Children
) -> dict[str, Any]:
    d = work / sc.name
    d.mkdir()
    ns = sc.netns.ns if sc.netns else None
    ws_host = sc.netns.host_addr if sc.netns else "127.0.0.1"
    if sc.netns is not None:
        err = sc.netns.set_netem(*(sc.netem or (None, None)))
        if err:
            raise RuntimeError(f"netem: {err}")
    (d / "server.toml").write_text(_config(ws_host, args.heartbeat_ms))
    py = sys.executable
    server_log = d / "server.log"
    server = kids.start(
        [
            py,
            "-m",
            "broadcaster.cli",
            "serve",
            "--config",
            str(d / "server.toml"),
            "--store",
            ":memory:",
        ],
        server_log,
    )
    pat_ws = re.compile(r"PA endpoints: ws://(\S+?):(\d+)/")
    pat_http = re.compile(r"HTTP API: http://(\S+?):(\d+)/")
    try:
        m = _wait_for(
            lambda: pat_http.search(server_log.read_text(errors="replace")),
            30,
            "the server to listen",
            server,
        )
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{_tail(server_log)}") from None
    log_text = server_log.read_text(errors="replace")
    ws_match = pat_ws.search(log_text)
    assert ws_match is not None
    ws_port, http_port = int(ws_match.group(2)), int(m.group(2))
    url = f"ws://{ws_host}:{ws_port}/v1/endpoint"
    relay = None
    if sc.relay is not None:
        pf = d / "relay.port"
        ud, uj, dd, dj = sc.relay
        relay = kids.start(
            [
                py,
                __file__,
                "--role",
                "relay",
                "--listen",
                "127.0.0.1",
                "--target",
                f"{ws_host}:{ws_port}",
                "--port-file",
                str(pf),
                "--up-delay-ms",
                str(ud),
                "--up-jitter-ms",
                str(uj),
                "--down-delay-ms",
                str(dd),
                "--down-jitter-ms",
                str(dj),
                "--seed",
                str(args.seed),
            ],
            d / "relay.log",
            ns,
        )
        port = _wait_for(lambda: pf.exists() and pf.read_text().strip(), 10, "the relay", relay)
        url = f"ws://127.0.0.1:{port}/v1/endpoint"
    eps = {}
    for eid, interval in (("ref", 0), ("probe", args.probe_ms)):
        eps[eid] = kids.start(
            [
                py,
                __file__,
                "--role",
                "endpoint",
                "--url",
                url,
                "--endpoint-id",
                eid,
                "--shift-us",
                str(args.shift_us),
                "--drift-ppm",
                str(args.drift_ppm),
                "--duration",
                str(args.duration),
                "--ping-interval-ms",
                str(interval),
                "--out",
                str(d / f"{eid}.json"),
            ],
            d / f"{eid}.log",
            ns,
        )
    t0 = time.monotonic()
    posted, post_errors = 0, []
    next_post = t0 + 1.0
    while any(p.poll() is None for p in eps.values()):
        now = time.monotonic()
        if now >= next_post and now < t0 + args.duration - 2:
            try:
                _post(http_port, TEXT)
                posted += 1
            except OSError as exc:
                post_errors.append(str(exc))
            next_post += args.announce_every
        if now > t0 + args.duration + 20:
            raise RuntimeError("endpoints did not finish")
        time.sleep(0.1)
    results: dict[str, Any] = {"posted": posted, "post_errors": post_errors[:3]}
    for eid, p in eps.items():
        out = d / f"{eid}.json"
        if p.returncode != 0 or not out.exists():
            tail = _tail(d / f"{eid}.log")
            raise RuntimeError(f"endpoint {eid} failed ({p.returncode}):\n{tail}")
        results[eid] = json.loads(out.read_text())
    if relay is not None:
        kids.stop(relay)
    kids.stop(server)
    return results


# --- analysis ----------------------------------------------------------------------------------


def _samples(data: dict[str, Any]) -> list[Sample]:
    """Samples of the endpoint's last connection (an estimate starts afresh on each)."""
    rows = data["samples"]
    if not rows:
        return []
    last = rows[-1][4]
    return [(r[0], r[1], r[2], r[3]) for r in rows if r[4] == last]


@dataclass(frozen=True)
class Truth:
    """The endpoint's clock: local = m + shift + drift_ppm·1e-6·(m − m0), m = server clock."""

    shift_us: int
    drift_ppm: float = 0.0
    m0_us: int = 0

    @classmethod
    def of(cls, data: dict[str, Any]) -> Truth:
        return cls(data["shift_us"], data.get("drift_ppm", 0.0), data.get("m0_us", 0))

    def offset_at(self, local_us: float) -> float:
        """True server − local at local time ``local_us``."""
        k = self.drift_ppm * 1e-6
        m = (local_us - self.shift_us + k * self.m0_us) / (1 + k)
        return m - local_us

    def local_of(self, server_us: float) -> float:
        """Local time at the instant the server clock reads ``server_us``."""
        return server_us + self.shift_us + self.drift_ppm * 1e-6 * (server_us - self.m0_us)


def analyse(
    res: dict[str, Any], target: int, subset_sizes: Sequence[int], seed: int
) -> dict[str, Any]:
    ref, probe = res["ref"], res["probe"]
    rt, pt = Truth.of(ref), Truth.of(probe)
    out: dict[str, Any] = {"posted": res["posted"]}
    live = [r for r in ref["live"] if r[1] is not None]
    out["live"] = Stat.of([r[1] - rt.offset_at(r[0]) for r in live])
    # Seconds (1 s grid, from the endpoint's start) after which |err| stays within the target.
    bad = [
        i
        for i, r in enumerate(ref["live"])
        if r[1] is None or abs(r[1] - rt.offset_at(r[0])) > target
    ]
    last = len(ref["live"]) - 1
    out["settled_s"] = None if bad and bad[-1] == last else (bad[-1] + 2 if bad else 1)
    out["live_missing"] = len(ref["live"]) - len(live)
    out["ref_pings"] = len(ref["samples"])
    out["probe_pings"] = len(probe["samples"])
    out["sessions"] = (ref["sessions"], probe["sessions"])
    out["errors"] = [e for e in (ref["error"], probe["error"]) if e]
    ps = _samples(probe)
    rtts = [s[2] - s[0] for s in ps] or [0]
    out["rtt"] = (min(rtts), statistics.median(rtts))
    # One-way delays, known because the true offset is: d_up = T − server time at sending.
    up = [s[1] - (s[0] + pt.offset_at(s[0])) for s in ps]
    down = [(s[2] + pt.offset_at(s[2])) - s[1] for s in ps]
    out["oneway"] = (
        (min(up), statistics.median(up), min(down), statistics.median(down)) if ps else None
    )
    # Playout: computed local play time (play_at − est) vs the true local time of play_at.
    chunks = [c for c in ref["chunks"] if c[3] is not None]
    out["play"] = Stat.of([(c[1] - c[3]) - rt.local_of(c[1]) for c in chunks])
    true_margin = [(rt.local_of(c[1]) - c[0]) / 1000 for c in chunks]
    est_margin = [((c[1] - c[3]) - c[0]) / 1000 for c in chunks]
    out["chunks"] = len(ref["chunks"])
    out["chunks_no_est"] = len(ref["chunks"]) - len(chunks)
    out["margin"] = (
        (min(true_margin), statistics.median(true_margin), min(est_margin)) if chunks else None
    )
    out["late_true"] = sum(1 for m in true_margin if m < 0)
    out["late_reported"] = sum(a["late"] for a in ref["announcements"])
    # Variants replayed on the reference endpoint's own samples, at its 1 Hz sampling times.
    rs = _samples(ref)
    session = ref["live"][-1][4] if ref["live"] else 0
    grid = [r[0] for r in ref["live"] if r[4] == session]
    replay: dict[str, Stat | None] = {}
    for name, fn in ESTIMATORS:
        errs = []
        for t in grid:
            have = [s for s in rs if s[2] <= t]
            if have:
                errs.append(fn(have) - rt.offset_at(t))
        replay[name] = Stat.of(errs)
    out["replay"] = replay
    out["replay_mismatch"] = sum(
        1
        for r in live
        if r[4] == session
        and (have := [s for s in rs if s[2] <= r[0]])
        and est_reference(have) != r[1]
    )
    # Variants on the dense probe samples: random subsets of n samples (kept in time order),
    # as many as the reference endpoint has after the burst, ~30 s, ~1 min, ~3 min; the
    # error is taken when the last sample of the subset arrives.
    rng = random.Random(seed)
    subsets: dict[int, dict[str, Stat | None]] = {}
    over: dict[int, dict[str, float]] = {}
    for n in subset_sizes:
        if len(ps) < 2 * n:
            continue
        draws = [[ps[i] for i in sorted(rng.sample(range(len(ps)), n))] for _ in range(DRAWS)]
        subsets[n], over[n] = {}, {}
        for name, fn in ESTIMATORS:
            errs = [fn(w) - pt.offset_at(w[-1][2]) for w in draws]
            subsets[n][name] = Stat.of(errs)
            over[n][name] = sum(1 for e in errs if abs(e) > target) / len(errs)
    out["subsets"] = subsets
    out["over"] = over
    return out


DRAWS = 300


def subset_sizes(args: argparse.Namespace) -> list[int]:
    """Pings the reference endpoint has after its burst and after ~30 s, ~1 min, ~3 min."""
    return [4, *(4 + round(t * 1000 / args.heartbeat_ms) for t in (30, 60, 180))]


def target_us(scenario: str) -> int:
    """The brief's targets: 1 ms on loopback, 2 ms with jitter."""
    return 1000 if scenario == "loopback" else 2000


def report(results: dict[str, dict[str, Any]], notes: list[str], args: argparse.Namespace) -> None:
    print()
    print(
        f"clock_sync: endpoint clock = server clock + {args.shift_us} µs "
        f"(true offset {-args.shift_us} µs)"
        + (f", drifting {args.drift_ppm:+g} ppm" if args.drift_ppm else "")
        + f"; {args.duration:g} s per scenario; "
        f"ref pings every {args.heartbeat_ms} ms (heartbeat), probe every {args.probe_ms} ms"
    )
    for n in notes:
        print(f"  * {n}")
    print("\nOffset error = estimate − true, reference endpoint sampled every 1 s (µs)")
    print(
        f"{'scenario':<16}{'pings':>6}{'rtt min/med ms':>16}   {'median':>7} {'p95|e|':>7} "
        f"{'max|e|':>7}  target  within target from  verdict"
    )
    for name, a in results.items():
        s: Stat | None = a["live"]
        target = target_us(name)
        verdict = "n/a" if s is None else ("PASS" if s.max <= target else "FAIL")
        settled = "never" if a["settled_s"] is None else f"t={a['settled_s']} s"
        if name.startswith("jitter-asym"):
            verdict += " (asymmetric path: bias expected)"
        print(
            f"{name:<16}{a['ref_pings']:>6}{a['rtt'][0] / 1000:>9.2f}/{a['rtt'][1] / 1000:<6.2f}   "
            f"{fmt_stat(s)}  ≤{target / 1000:g} ms  {settled:<19}{verdict}"
        )
    print("\nPlayout, every audio chunk at the reference endpoint")
    print(
        f"{'scenario':<16}{'chunks':>7}{'ann':>5}  play err (computed − true local) µs  "
        f"{'true margin min/med ms':>23}{'est margin min':>16}{'late':>6}"
    )
    for name, a in results.items():
        mg = a["margin"]
        mtxt = f"{mg[0]:>11.1f}/{mg[1]:<11.1f}{mg[2]:>16.1f}" if mg else f"{'-':>23}{'-':>16}"
        print(
            f"{name:<16}{a['chunks']:>7}{a['posted']:>5}  {fmt_stat(a['play'])}           "
            f"{mtxt}{a['late_true']:>6}"
        )
    print("\nOne-way delays from the known offset (probe samples), ms: up min/med, down min/med")
    for name, a in results.items():
        ow = a["oneway"]
        if ow:
            print(
                f"  {name:<16}up {ow[0] / 1000:.3f}/{ow[1] / 1000:.3f}   "
                f"down {ow[2] / 1000:.3f}/{ow[3] / 1000:.3f}"
            )
    names = list(results)
    print(
        "\nEstimators replayed on the reference endpoint's own pings (1 s grid): "
        "median p95 max |err| µs"
    )
    print(f"{'estimator':<30}" + "".join(f"{n:>25}" for n in names))
    for est, _ in ESTIMATORS:
        print(f"{est:<30}" + "".join(f"  {fmt_stat(results[n]['replay'][est])}" for n in names))
    sizes = subset_sizes(args)
    heads = [f"n={n} (~{(n - 4) * args.heartbeat_ms / 1000:.0f} s)" for n in sizes]
    heads[0] = f"n={sizes[0]} (burst)"
    for name in names:
        a = results[name]
        if not a["subsets"]:
            continue
        print(
            f"\nEstimators on random n-subsets of the probe's {a['probe_pings']} pings, {name} "
            f"({DRAWS} draws; n = pings the reference has at that age): median / p95 |err| µs "
            f"/ share over {target_us(name) / 1000:g} ms"
        )
        print(f"{'estimator':<30}" + "".join(f"{h:>22}" for h in heads))
        for est, _ in ESTIMATORS:
            cells = []
            for n in sizes:
                st = a["subsets"].get(n, {}).get(est)
                share = a["over"].get(n, {}).get(est, 0.0)
                cells.append(f"{st.mabs:>6.0f} /{st.p95:>6.0f} /{share:>4.0%}" if st else "-")
            print(f"{est:<30}" + "".join(f"{c:>22}" for c in cells))
    if args.drift_ppm and any(a["subsets"] for a in results.values()):
        print(
            f"(the subsets span the probe's {args.duration:g} s run, so they carry "
            f"{args.duration:g} s of drift whatever n is)"
        )
    for name, a in results.items():
        if a["replay_mismatch"]:
            n_bad = a["replay_mismatch"]
            print(f"warning: {name}: replayed reference differs from live in {n_bad} samples")
        if a["errors"] or a["sessions"] != (1, 1):
            print(f"note: {name}: endpoint sessions {a['sessions']}, errors {a['errors']}")


# --- main --------------------------------------------------------------------------------------


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def orchestrate(args: argparse.Namespace) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    notes: list[str] = []
    removed = Netns.remove_stale()
    if removed:
        notes.append(f"removed stale namespaces of killed runs: {', '.join(removed)}")
    jitter = f"{args.delay_ms:g}ms {args.jitter_ms:g}ms"
    results: dict[str, dict[str, Any]] = {}
    raw: dict[str, Any] = {}
    kids = Children()
    netns: Netns | None = None
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clock_sync-") as tmp:
        work = Path(tmp)
        try:
            scenarios: list[Scenario] = []
            if "loopback" in args.scenarios:
                scenarios.append(Scenario("loopback", "127.0.0.1, same namespace"))
            if "jitter" in args.scenarios:
                netns = Netns()
                why_ns = None if os.geteuid() == 0 else "not root"
                why_ns = why_ns or netns.create()
                if why_ns:
                    notes.append(f"NETWORK NAMESPACE UNAVAILABLE: {why_ns}")
                    netns.destroy()
                    netns = None
                why_netem = netem_unavailable_reason(netns, jitter) if netns else "no namespace"
                if netns is not None and why_netem is None and args.jitter_mode != "relay":
                    where = f"veth {netns.host_if} ({netns.host_addr}) ↔ {netns.ns}:{netns.ns_if}"
                    notes.append(f"jitter: tc netem delay {jitter} on both veth ends; {where}")
                    scenarios.append(Scenario("jitter", "netem", netns, netem=(jitter, jitter)))
                    if args.asymmetric:
                        scenarios.append(
                            Scenario("jitter-asym", "netem up only", netns, netem=(jitter, None))
                        )
                elif args.jitter_mode == "netem":
                    notes.append(f"NETEM UNAVAILABLE: {why_netem}; jitter scenario skipped")
                else:
                    if netns is not None and why_netem:
                        notes.append(f"NETEM UNAVAILABLE: {why_netem}")
                    where = (
                        f"relay inside namespace {netns.ns} → server on veth {netns.host_addr}"
                        if netns
                        else "relay on 127.0.0.1 (no namespace)"
                    )
                    notes.append(
                        f"jitter: user-space relay, {jitter} uniform per direction on each TCP "
                        f"read (in order, no loss/reordering; not netem); {where}"
                    )
                    d, j = args.delay_ms, args.jitter_ms
                    scenarios.append(Scenario("jitter", "relay", netns, relay=(d, j, d, j)))
                    if args.asymmetric:
                        scenarios.append(
                            Scenario("jitter-asym", "relay up only", netns, relay=(d, j, 0, 0))
                        )
            for sc in scenarios:
                print(
                    f"[{time.monotonic() - t_start:5.1f} s] running {sc.name} ({sc.label}) ...",
                    file=sys.stderr,
                    flush=True,
                )
                res = run_scenario(sc, args, work, kids)
                raw[sc.name] = res
                results[sc.name] = analyse(res, target_us(sc.name), subset_sizes(args), args.seed)
        except (KeyboardInterrupt, SystemExit):
            print("interrupted: stopping children, removing the namespace", file=sys.stderr)
            raise
        finally:
            kids.stop_all()
            if netns is not None:
                netns.destroy()
            if args.keep_logs and any(work.iterdir()):
                keep = Path(args.keep_logs)
                shutil.copytree(work, keep, dirs_exist_ok=True)
    if not results:
        for n in notes:
            print(f"  * {n}")
        print("no scenario ran", file=sys.stderr)
        return 1
    report(results, notes, args)
    print(f"\n(ran {time.monotonic() - t_start:.0f} s)")
    if args.json:
        keys = ("shift_us", "drift_ppm", "heartbeat_ms", "probe_ms", "duration")
        saved = {k: getattr(args, k) for k in keys}
        Path(args.json).write_text(json.dumps({"notes": notes, "args": saved, "raw": raw}))
    return 0


def reanalyse(args: argparse.Namespace) -> int:
    data = json.loads(Path(args.from_json).read_text())
    for k, v in data["args"].items():
        setattr(args, k, v)
    results = {
        name: analyse(res, target_us(name), subset_sizes(args), args.seed)
        for name, res in data["raw"].items()
    }
    report(results, data["notes"], args)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--role", choices=["orchestrate", "endpoint", "relay"], default="orchestrate")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per scenario")
    p.add_argument("--scenarios", default="loopback,jitter", help="loopback,jitter")
    p.add_argument("--asymmetric", action="store_true", help="also jitter on the uplink only")
    p.add_argument("--jitter-mode", choices=["auto", "netem", "relay"], default="auto")
    p.add_argument("--delay-ms", type=float, default=20.0)
    p.add_argument("--jitter-ms", type=float, default=5.0)
    p.add_argument("--shift-us", type=int, default=DEFAULT_SHIFT_US)
    p.add_argument("--drift-ppm", type=float, default=0.0, help="endpoint clock runs fast by")
    p.add_argument("--heartbeat-ms", type=int, default=3000, help="server heartbeat interval")
    p.add_argument("--probe-ms", type=int, default=100, help="ping interval of the probe")
    p.add_argument("--announce-every", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the raw samples here")
    p.add_argument("--from-json", help="analyse a file written by --json instead of running")
    p.add_argument("--keep-logs", help="copy the server/endpoint logs to this folder")
    # child roles
    p.add_argument("--url")
    p.add_argument("--endpoint-id")
    p.add_argument("--ping-interval-ms", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--listen")
    p.add_argument("--target")
    p.add_argument("--port-file")
    p.add_argument("--up-delay-ms", type=float, default=0)
    p.add_argument("--up-jitter-ms", type=float, default=0)
    p.add_argument("--down-delay-ms", type=float, default=0)
    p.add_argument("--down-jitter-ms", type=float, default=0)
    args = p.parse_args(argv)
    if args.role == "endpoint":
        return endpoint_main(args)
    if args.role == "relay":
        return relay_main(args)
    if args.from_json:
        return reanalyse(args)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
