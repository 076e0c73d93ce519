"""Who may do what through the real server: tokens, roles, zones, limits, browser checks, audit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from broadcaster.app import Service
from broadcaster.speech.espeak import EspeakEngine
from broadcaster.store import StoreError

from .conftest import API_TOKENS, TOKENS, Harness, bearer, make_config

pytestmark = pytest.mark.integration

TEMPLATES = [
    {"name": "alarm", "text": "Please leave the building.", "priority": 250, "zones": ["gate"]},
    {"name": "notice", "text": "Mind the gap.", "zones": ["hall"]},
]


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **auth: Any) -> AsyncIterator[Harness]:
    config = make_config(auth=auth, templates=TEMPLATES)
    async with Service(config, engine=EspeakEngine(max_text_chars=200)) as service:
        h = Harness(service, tmp_path)
        try:
            yield h
        finally:
            await h.close()


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path, failed_attempts_burst=4, failed_attempts_refill_s=60) as h:
        yield h


def later(seconds: float = 120) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def call(
    h: Harness,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    local_addr: str | None = None,
    **kw: Any,
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    connector = aiohttp.TCPConnector(local_addr=(local_addr, 0)) if local_addr else None
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.request(method, f"{h.api}{path}", headers=headers or {}, **kw) as r,
    ):
        text = await r.text()
        if r.content_type == "application/json" and text:
            return r.status, json.loads(text), r.headers
        return r.status, text or None, r.headers


async def audit(h: Harness, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = await h.get(f"/v1/audit?{qs}", as_="admin")
    assert status == 200, body
    entries: list[dict[str, Any]] = body["audit"]
    return entries


# --- authentication -----------------------------------------------------------------------


async def test_no_or_wrong_token_is_401_and_healthz_stays_open(h):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}):
        status, body, hdrs = await call(h, "GET", "/v1/announcements", headers=headers)
        assert status == 401 and body["error"] == "unauthorized", body
        assert hdrs["WWW-Authenticate"].startswith('Bearer realm="broadcaster"')
        assert ('error="invalid_token"' in hdrs["WWW-Authenticate"]) is bool(headers)
    status, body = await h.post({"text": "hi", "zones": ["hall"]}, as_=None)
    assert status == 401 and "missing bearer token" in body["message"]
    # an unknown route does not reveal itself without a token
    status, _, _ = await call(h, "GET", "/v1/nothing-here")
    assert status == 401
    status, body, _ = await call(h, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    # readiness is for monitors too: open, and it answers (503 here: zones have no endpoint)
    status, body, _ = await call(h, "GET", "/readyz")
    assert status == 503 and body["ready"] is False
    # metrics and the API document need a token, a viewer's is enough
    for path in ("/metrics", "/v1/openapi.json"):
        status, _, _ = await call(h, "GET", path)
        assert status == 401, path
        status, _, _ = await call(h, "GET", path, headers=bearer("viewer"))
        assert status == 200, path


async def test_each_role_reads_and_the_viewer_is_refused_writes_naming_its_role(h):
    for who in ("viewer", "operator", "dispatcher", "admin"):
        for path in (
            "/v1/announcements",
            "/v1/zones",
            "/v1/endpoints",
            "/v1/events",
            "/v1/schedules",
        ):
            status, _ = await h.get(path, as_=who)
            assert status == 200, (who, path)
    status, body = await h.post({"text": "hi", "zones": ["hall"]}, as_="viewer")
    assert status == 403
    assert body == {
        "error": "forbidden",
        "message": "role viewer may not POST /v1/announcements (needs operator or above)",
    }


async def test_operator_cannot_announce_in_the_emergency_band_but_a_dispatcher_can(h):
    body = {"text": "Evacuate.", "zones": ["hall"], "priority": 240, "due_at": later()}
    status, resp = await h.post(body, as_="operator")
    assert status == 403, resp
    assert resp["message"] == (
        "role operator may not announce at priority 240 (emergency band 224-255 needs dispatcher)"
    )
    assert resp["fields"][0]["field"] == "priority"
    status, resp = await h.post({**body, "priority": "emergency"}, as_="operator")
    assert status == 403  # a band name is the same number
    status, resp = await h.post(body, as_="dispatcher")
    assert status == 202 and resp["priority"] == 240 and resp["created_by"] == "dispatcher"
    status, resp = await h.post({**body, "priority": 223}, as_="operator")
    assert status == 202 and resp["created_by"] == "operator"


async def test_the_effective_priority_counts_a_templates_default_band(h):
    # "alarm" has priority 250 in the config: an operator's trigger is refused
    status, resp = await h.post({"due_at": later()}, path="/v1/triggers/alarm", as_="operator")
    assert status == 403 and "priority 250" in resp["message"], resp
    status, resp = await h.post({"template": "alarm", "due_at": later()}, as_="operator")
    assert status == 403
    status, resp = await h.post({"due_at": later()}, path="/v1/triggers/alarm", as_="dispatcher")
    assert status == 202 and resp["priority"] == 250


async def test_zone_limited_token_is_refused_for_another_zone(h):
    status, resp = await h.post(
        {"text": "Gate 4.", "zones": ["hall"], "due_at": later()}, as_="gate-operator"
    )
    assert status == 403
    assert resp["message"] == (
        "token gate-operator may not announce in zone(s) hall (limited to gate)"
    )
    assert resp["fields"][0]["field"] == "zones"
    # the template's zones count when the request names none
    status, resp = await h.post(
        {"due_at": later()}, path="/v1/triggers/notice", as_="gate-operator"
    )
    assert status == 403 and "zone(s) hall" in resp["message"]
    status, resp = await h.post(
        {"text": "Gate 4.", "zones": ["gate"], "due_at": later()}, as_="gate-operator"
    )
    assert status == 202


async def test_operator_cancels_only_its_own_announcements(h):
    _, mine = await h.post({"text": "Mine.", "zones": ["hall"], "due_at": later()}, as_="operator")
    _, theirs = await h.post(
        {"text": "Theirs.", "zones": ["hall"], "due_at": later()}, as_="operator2"
    )
    status, resp = await h.post(
        None, path=f"/v1/announcements/{theirs['id']}/cancel", as_="operator"
    )
    assert status == 403
    assert resp["message"] == (
        f"role operator may cancel only its own announcements; {theirs['id']} was created by "
        "operator2 (cancelling others' needs dispatcher)"
    )
    _, still = await h.get(f"/v1/announcements/{theirs['id']}", as_="viewer")
    assert still["state"] == "queued" and still["created_by"] == "operator2"
    status, resp = await h.post(None, path=f"/v1/announcements/{mine['id']}/cancel", as_="operator")
    assert status == 202 and resp["state"] == "cancelled"
    status, resp = await h.post(
        None, path=f"/v1/announcements/{theirs['id']}/cancel", as_="dispatcher"
    )
    assert status == 202 and resp["state"] == "cancelled"
    # the creator is in the stored record too (the history listing reads the store,
    # which the journal writes a moment after the cancel answered: poll for it)
    want = {mine["id"]: "operator", theirs["id"]: "operator2"}
    got: dict[str, str] = {}
    for _ in range(100):
        _, listing = await h.get("/v1/announcements?state=cancelled", as_="viewer")
        got = {a["id"]: a["created_by"] for a in listing["announcements"]}
        if got == want:
            break
        await asyncio.sleep(0.05)
    assert got == want


async def test_schedule_rights_follow_role_band_and_zones(h):
    sched = {"id": "s-notice", "template": "notice", "every_s": 3600, "start": later(3600)}
    status, resp = await h.post(sched, path="/v1/schedules", as_="viewer")
    assert status == 403
    status, resp = await h.post(sched, path="/v1/schedules", as_="gate-operator")
    assert status == 403 and "zone(s) hall" in resp["message"], resp
    status, resp = await h.post(
        {**sched, "id": "s-loud", "priority": 240}, path="/v1/schedules", as_="operator"
    )
    assert status == 403 and "may not schedule at priority 240" in resp["message"]
    status, resp = await h.post(sched, path="/v1/schedules", as_="operator")
    assert status == 201, resp
    status, resp = await h.post(None, path="/v1/schedules/s-notice/pause", as_="gate-operator")
    assert status == 403 and "change schedule s-notice" in resp["message"]
    status, resp = await h.post(None, path="/v1/schedules/s-notice/pause", as_="operator")
    assert status == 200 and resp["paused"] is True
    status, resp = await h.post(None, path="/v1/schedules/s-notice/resume", as_="operator2")
    assert status == 200 and resp["paused"] is False
    status, _, _ = await call(h, "DELETE", "/v1/schedules/s-notice", headers=bearer("viewer"))
    assert status == 403
    status, _, _ = await call(h, "DELETE", "/v1/schedules/s-notice", headers=bearer("operator"))
    assert status == 200


async def test_silence_cancels_what_plays_and_what_waits_in_the_zone(h):
    ep = await h.endpoint("ep-d", ["gate"], ["pcm_s16le/16000"])
    long_text = "This is a long announcement for the gate that keeps playing for a while. " * 3
    _, playing = await h.post({"text": long_text, "zones": ["gate"]}, as_="operator")
    _, waiting = await h.post({"text": "Next one.", "zones": ["gate"]}, as_="operator")
    _, later_one = await h.post(
        {"text": "Later.", "zones": ["gate"], "due_at": later()}, as_="operator"
    )
    _, elsewhere = await h.post(
        {"text": "Hall.", "zones": ["hall"], "due_at": later()}, as_="operator"
    )
    for _ in range(300):
        _, body = await h.get(f"/v1/announcements/{playing['id']}")
        if body["state"] == "playing" and body["chunks"] > 5:
            break
        await asyncio.sleep(0.02)
    status, resp = await h.post(None, path="/v1/zones/gate/silence", as_="operator")
    assert status == 403
    assert resp["message"] == (
        "role operator may not POST /v1/zones/gate/silence (needs dispatcher or above)"
    )
    status, silenced = await h.post(None, path="/v1/zones/gate/silence", as_="gate-dispatcher")
    assert status == 202, silenced
    assert silenced["zone"] == "gate"
    assert silenced["reason"] == "zone gate silenced by gate-dispatcher (dispatcher)"
    assert set(silenced["cancelled"]) == {playing["id"], waiting["id"], later_one["id"]}
    for ann in (playing, waiting, later_one):
        final = await h.wait_final(ann["id"], 20)
        assert final["state"] == "cancelled" and final["reason"] == silenced["reason"]
    _, other = await h.get(f"/v1/announcements/{elsewhere['id']}")
    assert other["state"] == "queued"
    status, resp = await h.post(None, path="/v1/zones/hall/silence", as_="gate-dispatcher")
    assert status == 403 and "zone(s) hall" in resp["message"]
    status, resp = await h.post(
        {"reason": "police request"}, path="/v1/zones/hall/silence", as_="dispatcher"
    )
    assert status == 202 and resp["cancelled"] == [elsewhere["id"]]
    assert resp["reason"] == "zone hall silenced by dispatcher (dispatcher): police request"
    status, _ = await h.post(None, path="/v1/zones/moon/silence", as_="dispatcher")
    assert status == 404
    # the endpoint was told to stop what it played
    await h.wait_receipts(playing["id"], ["ep-d"])
    assert ep.announcements[playing["id"]].status == "cancelled"


# --- failed attempts ----------------------------------------------------------------------


async def test_api_token_guessing_is_limited_per_address(h):
    wrong = {"Authorization": "Bearer guess"}
    for _ in range(4):
        status, _, _ = await call(h, "GET", "/v1/zones", headers=wrong)
        assert status == 401
    status, body, hdrs = await call(h, "GET", "/v1/zones", headers=wrong)
    assert status == 429 and body["error"] == "too_many_failed_attempts"
    assert 55 <= int(hdrs["Retry-After"]) <= 60
    # the right token from the limited address waits too
    status, _, _ = await call(h, "GET", "/v1/zones", headers=bearer("viewer"))
    assert status == 429
    # the right token from another address still works
    status, _, _ = await call(
        h, "GET", "/v1/zones", headers=bearer("viewer"), local_addr="127.0.0.2"
    )
    assert status == 200
    # and the health check is never limited
    status, _, _ = await call(h, "GET", "/healthz")
    assert status == 200
    # the refusals are audited, 401s and 429s alike
    status, body, _ = await call(
        h, "GET", "/v1/audit", headers=bearer("admin"), local_addr="127.0.0.2"
    )
    assert status == 200
    statuses = [e["status"] for e in body["audit"] if e["path"] == "/v1/zones"]
    assert statuses == [401, 401, 401, 401, 429, 429]


async def hello(ws_url: str, token: str, *, local_addr: str | None = None) -> tuple[int, str]:
    """Connect as ep-a with ``token``; returns the close code and reason (or 0, welcome)."""
    kw: dict[str, Any] = {"local_addr": (local_addr, 0)} if local_addr else {}
    async with connect(ws_url, **kw) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "protocol": 1,
                    "endpoint_id": "ep-a",
                    "token": token,
                    "zones": ["hall"],
                    "formats": [{"codec": "pcm_s16le", "sample_rate_hz": 16000}],
                }
            )
        )
        try:
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg["type"] == "welcome":
                    return 0, "welcome"
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason


async def test_endpoint_token_guessing_is_limited_per_address(h):
    # a connection opened before the limit is reached is refused at its hello (4029)
    early = await connect(h.ws_url)
    for _ in range(4):
        code, reason = await hello(h.ws_url, "guess")
        assert code == 4001, reason
    await early.send(
        json.dumps(
            {
                "type": "hello",
                "protocol": 1,
                "endpoint_id": "ep-a",
                "token": TOKENS["ep-a"],
                "zones": ["hall"],
                "formats": [{"codec": "pcm_s16le", "sample_rate_hz": 16000}],
            }
        )
    )
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(early.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4029
    assert "too many failed authentications from your address" in closed.value.rcvd.reason
    # new handshakes from that address are refused with 429 before the upgrade
    with pytest.raises(InvalidStatus) as refused:
        await hello(h.ws_url, TOKENS["ep-a"])
    assert refused.value.response.status_code == 429
    assert refused.value.response.headers["Retry-After"]
    # the budget is shared with the API: the same address is limited there too
    status, _, _ = await call(h, "GET", "/v1/zones", headers=bearer("admin"))
    assert status == 429
    # the right token from another address joins
    assert await hello(h.ws_url, TOKENS["ep-a"], local_addr="127.0.0.2") == (0, "welcome")


# --- browser safety -----------------------------------------------------------------------


async def test_unknown_host_is_refused_for_http_and_the_websocket(h):
    status, body, _ = await call(
        h, "GET", "/v1/zones", headers={**bearer(), "Host": "rebound.attacker.example"}
    )
    assert status == 421 and body["error"] == "misdirected_request"
    assert "rebound.attacker.example" in body["message"]
    status, _, _ = await call(h, "GET", "/healthz", headers={"Host": "rebound.attacker.example"})
    assert status == 421
    for host in ("localhost", "127.0.0.1"):
        port = h.api.rsplit(":", 1)[1]
        status, _, _ = await call(
            h, "GET", "/v1/zones", headers={**bearer(), "Host": f"{host}:{port}"}
        )
        assert status == 200, host
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect(h.ws_url, headers={"Host": "rebound.attacker.example"})
        assert exc.value.status == 421


async def test_origins_are_checked_against_the_allow_list(tmp_path):
    async with running(tmp_path, allowed_origins=["https://console.example"]) as h:
        evil = {**bearer(), "Origin": "https://evil.example"}
        status, body, _ = await call(h, "GET", "/v1/zones", headers=evil)
        assert status == 403 and body["error"] == "origin_not_allowed"
        status, _, _ = await call(
            h, "GET", "/v1/zones", headers={**bearer(), "Origin": "https://console.example"}
        )
        assert status == 200
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(h.ws_url, headers={"Origin": "https://evil.example"})
            assert exc.value.status == 403
            ws = await http.ws_connect(h.ws_url, headers={"Origin": "https://console.example"})
            await ws.close()
            ws = await http.ws_connect(h.ws_url)  # no Origin: not a browser
            await ws.close()


async def test_default_allows_no_browser_origin_but_the_service_own_pages(h):
    port = h.api.rsplit(":", 1)[1]
    status, body, _ = await call(
        h, "GET", "/v1/zones", headers={**bearer(), "Origin": "http://127.0.0.1:1"}
    )
    assert status == 403 and body["error"] == "origin_not_allowed"
    # The console and kiosk pages are served from the API's own origin.
    status, _, _ = await call(
        h, "GET", "/v1/zones", headers={**bearer(), "Origin": f"http://127.0.0.1:{port}"}
    )
    assert status == 200


async def test_cors_is_closed(h):
    status, body, hdrs = await call(
        h,
        "OPTIONS",
        "/v1/announcements",
        headers={
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert status == 405 and body["error"] == "cors_closed"
    assert not [k for k in hdrs if k.lower().startswith("access-control-")]
    _, _, hdrs = await call(h, "GET", "/v1/zones", headers=bearer())
    assert not [k for k in hdrs if k.lower().startswith("access-control-")]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_non_json_bodies_are_415(h, content_type):
    status, body, _ = await call(
        h,
        "POST",
        "/v1/announcements",
        headers={**bearer(), "Content-Type": content_type},
        data=b'{"text": "hi", "zones": ["hall"]}',
    )
    assert status == 415 and body["error"] == "unsupported_media_type"
    assert content_type in body["message"]


# --- audit --------------------------------------------------------------------------------


async def test_every_state_changing_and_refused_call_is_audited(h, caplog):
    caplog.set_level(logging.INFO, logger="broadcaster.audit")
    start = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    _, created = await h.post({"text": "Hi.", "zones": ["hall"], "due_at": later()}, as_="operator")
    await h.post({"text": "Hi.", "zones": ["hall"], "priority": 250}, as_="operator")
    await h.post(None, path=f"/v1/announcements/{created['id']}/cancel", as_="operator")
    await h.post(
        {"id": "s1", "template": "notice", "every_s": 600, "start": later(600)},
        path="/v1/schedules",
    )
    await h.post(None, path="/v1/zones/gate/silence", as_="dispatcher")
    await h.get("/v1/zones", as_=None)  # a refused read is audited
    await h.get("/v1/zones", as_="viewer")  # a read is not
    for who in ("viewer", "operator"):
        status, body = await h.get("/v1/audit", as_=who)
        assert status == 403 and "GET /v1/audit" in body["message"]
    status, _ = await h.get("/v1/audit", as_="dispatcher")
    assert status == 200
    entries = await audit(h, since=start)
    got = [(e["method"], e["path"], e["status"], e["principal_id"], e["role"]) for e in entries]
    cancel = f"/v1/announcements/{created['id']}/cancel"
    assert got == [
        ("POST", "/v1/announcements", 202, "operator", "operator"),
        ("POST", "/v1/announcements", 403, "operator", "operator"),
        ("POST", cancel, 202, "operator", "operator"),
        ("POST", "/v1/schedules", 201, "admin", "admin"),
        ("POST", "/v1/zones/gate/silence", 202, "dispatcher", "dispatcher"),
        ("GET", "/v1/zones", 401, None, None),
        ("GET", "/v1/audit", 403, "viewer", "viewer"),
        ("GET", "/v1/audit", 403, "operator", "operator"),
    ]
    assert entries[0]["created_id"] == created["id"] and entries[0]["source"] == "127.0.0.1"
    assert "priority 250" in entries[1]["detail"]
    assert entries[2]["target_id"] == created["id"]
    assert entries[3]["created_id"] == "s1"
    assert entries[4]["target_id"] == "gate"
    assert all(e["at"] >= start.replace("Z", "+00:00") for e in entries)
    # and in the log, at INFO, with caller-given strings quoted
    lines = [r.getMessage() for r in caplog.records if r.name == "broadcaster.audit"]
    assert any(
        line.startswith("audit: POST '/v1/announcements' 202 done by 'operator' (operator)")
        for line in lines
    ), lines
    status, body = await h.get("/v1/audit?limit=x", as_="admin")
    assert status == 422 and body["fields"][0]["field"] == "limit"


async def test_a_failing_or_stuck_store_never_holds_up_the_calls_it_audits(h, caplog):
    store = h.service.store
    assert store is not None
    caplog.set_level(logging.ERROR, logger="broadcaster.api.access")

    async def failing(rows):
        raise StoreError("database x: insert audit entries: disk I/O error")

    store.insert_audit = failing  # type: ignore[method-assign]
    _, created = await h.post({"text": "Hi.", "zones": ["hall"], "due_at": later()}, as_="operator")
    status, _ = await h.post(None, path=f"/v1/announcements/{created['id']}/cancel", as_="operator")
    assert status == 202
    for _ in range(100):
        if any("could not be stored" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    assert any(
        r.levelno == logging.ERROR and "could not be stored" in r.getMessage()
        for r in caplog.records
    )
    # a store that never answers: calls are answered all the same
    stuck = asyncio.Event()

    async def hanging(rows):
        await stuck.wait()

    store.insert_audit = hanging  # type: ignore[method-assign]
    async with asyncio.timeout(10):
        for _ in range(20):
            status, _ = await h.post({"text": "x", "zones": ["moon"]}, as_="operator")
            assert status == 422
    stuck.set()


def test_demo_config_tokens_are_the_documented_ones():
    from broadcaster.auth import TokenTable
    from broadcaster.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.toml")
    table = TokenTable(cfg.api_tokens)
    for role in ("viewer", "operator", "dispatcher", "admin"):
        principal = table.authenticate(f"demo-{role}-token")
        assert principal is not None and principal.role == role and principal.zones is None
    assert not {f"demo-{r}-token" for r in ("viewer", "admin")} & set(API_TOKENS.values())
