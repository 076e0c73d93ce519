"""The pure rules of the network edge: gate, header deadlines, refusal log, fd check."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import ssl
from pathlib import Path

import pytest
import trustme

from broadcaster.clock import FakeClock
from broadcaster.config import ConfigError, LimitsConfig, hash_token, parse_config
from broadcaster.edge import (
    PER_ADDRESS,
    REFUSAL_LOG_INTERVAL_US,
    TOTAL,
    ConnectionGate,
    EdgeGuard,
    FileLimitError,
    HeaderDeadlines,
    client_tls_context,
    ensure_file_limit,
    refusal_response,
)


def test_gate_limits_per_address_and_in_all():
    gate = ConnectionGate("t", max_total=5, max_per_address=2)
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") == PER_ADDRESS
    assert gate.admit("10.0.0.2") is None  # another address is not affected
    assert gate.admit("10.0.0.2") is None
    assert gate.admit("10.0.0.3") is None
    assert gate.admit("10.0.0.4") == TOTAL
    gate.release("10.0.0.1")
    assert gate.open_from("10.0.0.1") == 1
    assert gate.admit("10.0.0.4") is None
    c = gate.counters
    assert (c.open, c.admitted, c.refused_per_address_limit, c.refused_total_limit) == (5, 6, 1, 1)
    assert c.refused == 2


def test_gate_forgets_an_address_with_no_connection():
    gate = ConnectionGate("t", max_total=10, max_per_address=3)
    for _ in range(3):
        gate.admit("a")
    for _ in range(3):
        gate.release("a")
    assert gate.open_from("a") == 0 and gate.counters.open == 0
    assert not gate._by_address  # no entry kept per address seen


def test_refusals_are_logged_once_then_summed_up_per_interval():
    gate = ConnectionGate("HTTP API", max_total=10, max_per_address=1, log_interval_us=10_000_000)
    gate.admit("a")
    assert gate.refusal_summary(0) is None  # nothing refused yet
    assert gate.admit("a") == PER_ADDRESS
    assert gate.next_log_due_us() == 0
    first = gate.refusal_summary(1_000)
    assert first is not None and "refused 1 connection(s)" in first and "a (1)" in first
    for _ in range(500):  # a flood: counted, not logged one by one
        gate.admit("a")
    assert gate.unlogged == 500
    assert gate.refusal_summary(5_000_000) is None
    assert gate.next_log_due_us() == 10_001_000
    line = gate.refusal_summary(10_001_000)
    assert line is not None
    assert "refused 500 connection(s) (500 over 1 per address) from a (500)" in line
    assert "501 refused since start" in line
    assert gate.refusal_summary(30_000_000) is None and gate.next_log_due_us() is None


def test_header_deadlines_expire_in_order():
    d = HeaderDeadlines(timeout_us=1_000)
    d.start("x", 0)
    d.start("y", 500)
    d.start("z", 600)
    d.done("y")
    assert d.next_deadline_us() == 1_000
    assert d.expired(999) == []
    assert d.expired(1_600) == ["x", "z"]
    assert len(d) == 0 and d.next_deadline_us() is None


def test_refusal_response_is_a_complete_503_with_a_json_reason():
    gate = ConnectionGate("t", max_total=4, max_per_address=2)
    raw = refusal_response(PER_ADDRESS, gate)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert f"Content-Length: {len(body)}".encode() in head and b"Connection: close" in head
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"] == "too_many_connections"
    assert b"limit 4" in refusal_response(TOTAL, gate)


def _limits(**kw: int) -> LimitsConfig:
    return LimitsConfig(**kw)  # type: ignore[arg-type]


def test_file_limit_is_left_alone_when_enough():
    calls: list[tuple[int, int]] = []
    msg = ensure_file_limit(
        _limits(), getrlimit=lambda _: (100_000, 100_000), setrlimit=lambda _, v: calls.append(v)
    )
    assert "soft limit 100000" in msg and str(512 + 2000 + 64) in msg and not calls


def test_file_limit_is_raised_up_to_what_the_limits_need():
    calls: list[tuple[int, int]] = []
    msg = ensure_file_limit(
        _limits(), getrlimit=lambda _: (1024, 4096), setrlimit=lambda _, v: calls.append(v)
    )
    assert calls == [(2576, 4096)]
    assert "raised from 1024 to 2576" in msg


def test_file_limit_below_the_hard_limit_refuses_with_the_keys_named():
    with pytest.raises(FileLimitError) as e:
        ensure_file_limit(
            _limits(max_ws_connections=10_000),
            getrlimit=lambda _: (1024, 4096),
            setrlimit=lambda _, v: None,
        )
    text = str(e.value)
    assert "max_ws_connections (10000)" in text and "hard limit (ulimit -Hn) is 4096" in text
    assert isinstance(e.value, OSError)  # `serve` reports it as "cannot start: ..."


def test_file_limit_that_cannot_be_raised_is_a_clear_error():
    def refuse(_: int, __: tuple[int, int]) -> None:
        raise ValueError("not allowed to raise maximum limit")

    with pytest.raises(FileLimitError, match="cannot raise the file-descriptor limit from 1024"):
        ensure_file_limit(
            _limits(), getrlimit=lambda _: (1024, resource.RLIM_INFINITY), setrlimit=refuse
        )


def test_file_limit_unlimited_soft_is_enough():
    msg = ensure_file_limit(
        _limits(),
        getrlimit=lambda _: (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
        setrlimit=lambda _, v: None,
    )
    assert "file descriptors" in msg


def test_client_tls_context_names_the_file_and_problem(tmp_path: Path):
    with pytest.raises(ValueError, match=r"nope\.pem: no such file"):
        client_tls_context(str(tmp_path / "nope.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"junk\.pem: not a PEM CA certificate"):
        client_tls_context(str(junk))
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    assert client_tls_context(str(tmp_path / "ca.pem")).cert_store_stats()["x509_ca"] >= 1


# --- config ------------------------------------------------------------------------------


def _err(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, "site.toml")
    return str(e.value)


def test_tls_files_must_exist_and_be_a_pair(tmp_path: Path):
    msg = _err({"server": {"tls": {"cert_file": str(tmp_path / "c.pem"), "key_file": "k"}}})
    assert f"site.toml: server.tls.cert_file: {tmp_path / 'c.pem'}: no such file" in msg
    assert "site.toml: server.tls.key_file: k: no such file" in msg

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    other = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "wrong.key"))
    msg = _err(
        {
            "server": {
                "tls": {
                    "cert_file": str(tmp_path / "c.pem"),
                    "key_file": str(tmp_path / "wrong.key"),
                }
            }
        }
    )
    assert "site.toml: server.tls: cert_file" in msg
    assert "are not a usable PEM certificate and its private key" in msg

    cert.private_key_pem.write_to_path(str(tmp_path / "right.key"))
    cfg = parse_config(
        {
            "server": {
                "tls": {
                    "cert_file": str(tmp_path / "c.pem"),
                    "key_file": str(tmp_path / "right.key"),
                }
            }
        }
    )
    assert cfg.server.http_scheme == "https" and cfg.server.ws_scheme == "wss"
    assert cfg.server.tls is not None
    assert cfg.server.tls.server_context().minimum_version == ssl.TLSVersion.TLSv1_2
    assert parse_config({}).server.ws_scheme == "ws"


def test_limits_per_address_must_be_below_the_total():
    msg = _err({"limits": {"max_http_connections": 10, "max_http_per_address": 10}})
    assert "site.toml: limits: max_http_per_address must be less than max_http_connections" in msg
    msg = _err({"limits": {"max_ws_connections": 10, "max_ws_per_address": 20}})
    assert "max_ws_per_address must be less than max_ws_connections" in msg
    msg = _err({"limits": {"max_body_bytes": 10}})
    assert "site.toml: limits.max_body_bytes:" in msg


def test_ws_total_leaves_room_for_every_configured_endpoint():
    data = {
        "limits": {"max_ws_connections": 5, "max_ws_per_address": 3},
        "zones": [{"id": "z"}],
        "endpoints": [
            {"id": f"e{i}", "token_hash": hash_token(str(i)), "zones": ["z"]} for i in range(3)
        ],
    }
    msg = _err(data)
    assert "limits.max_ws_connections (5) must be at least limits.max_ws_per_address (3)" in msg
    assert "plus the 3 configured endpoint(s)" in msg
    data["limits"]["max_ws_connections"] = 6
    assert parse_config(data).limits.max_ws_connections == 6


# --- the guard's task, on a fake clock ----------------------------------------------------


class _Peer(asyncio.BaseTransport):
    def __init__(self, host: str) -> None:
        super().__init__()
        self._host = host

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self._host, 40000) if name == "peername" else default


async def test_guard_closes_connections_past_their_header_deadline():
    clock = FakeClock()
    guard = EdgeGuard("t", clock=clock, max_total=10, max_per_address=5, header_timeout_s=2.0)
    guard.start()
    closed: list[str] = []
    try:
        guard.expect_headers("slow", lambda: closed.append("slow"))
        await clock.advance_us(1_000_000)
        guard.expect_headers("quick", lambda: closed.append("quick"))
        guard.headers_done("quick")  # its headers came in time
        guard.expect_headers("late", lambda: closed.append("late"))
        await clock.advance_us(999_999)
        assert closed == []
        await clock.advance_us(1)
        assert closed == ["slow"]
        await clock.advance_us(1_000_000)
        assert closed == ["slow", "late"] and guard.header_timeouts == 2
    finally:
        await guard.stop()


async def test_guard_logs_a_flood_in_summaries(caplog):
    caplog.set_level(logging.WARNING, logger="broadcaster.edge")
    clock = FakeClock()
    guard = EdgeGuard("API", clock=clock, max_total=100, max_per_address=1, header_timeout_s=None)
    guard.start()
    try:
        assert guard.admit(_Peer("::ffff:10.1.1.1")) == ("10.1.1.1", None)
        for _ in range(1000):
            assert guard.admit(_Peer("10.1.1.1"))[1] == PER_ADDRESS
            await asyncio.sleep(0)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "refused 1 connection(s)" in lines[0]
        await clock.advance_us(REFUSAL_LOG_INTERVAL_US)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2 and "refused 999 connection(s)" in lines[1]
        await clock.advance_us(10 * REFUSAL_LOG_INTERVAL_US)
        assert len(caplog.records) == 2  # nothing new, nothing logged
    finally:
        await guard.stop()
