"""Nothing stale, nothing twice, no lost emergency: real servers, kill -9, disk full."""

from __future__ import annotations

import asyncio
import resource
import signal
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint
from broadcaster.speech.espeak import EspeakEngine

from .conftest import API_TOKENS, TOKENS, Harness, api_tokens_config, bearer
from .served import start_server, stop

pytestmark = pytest.mark.integration


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def write_config(path: Path, store: Path, extra: str = "", playout_delay_ms: int = 200) -> None:
    path.write_text(
        f"""
[server]
http_port = 0
ws_port = 0
shutdown_timeout_s = 2
[store]
path = "{store}"
write_retry_max_s = 0.5
[streaming]
playout_delay_ms = {playout_delay_ms}
[scheduling]
prerender_s = 60
[[zones]]
id = "hall"
[[endpoints]]
id = "ep"
token_hash = "{hash_token("t")}"
zones = ["hall"]
[[api_tokens]]
id = "admin"
role = "admin"
token_hash = "{hash_token(API_TOKENS["admin"])}"
[[templates]]
name = "notice"
text = "Platform notice number {{{{ n }}}}."
zones = ["hall"]
speed = 2.0
variables = {{ n = "int" }}
{extra}
"""
    )


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    async with http.request(method, url, json=body, **kw) as r:
        return r.status, await r.json()


async def wait_state(
    http: aiohttp.ClientSession, api: str, ann_id: str, timeout_s: float = 60
) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while True:
            _, body = await call(http, "GET", f"{api}/v1/announcements/{ann_id}")
            if body.get("state") not in ("queued", "playing", None):
                return dict(body)
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout_s)


def started_ids(endpoint: ReferenceEndpoint) -> list[str]:
    return [
        str(e["announcement_id"]) for e in endpoint.events if e["type"] == "announcement_started"
    ]


# --- 1. a prepared firing interrupted by a crash follows its grace on restart -------------


async def test_prepared_firing_killed_and_restarted_past_its_grace_is_missed_not_played(
    tmp_path: Path,
) -> None:
    config = tmp_path / "site.toml"
    write_config(config, tmp_path / "store.sqlite3")
    proc, api, ws_url, drain, _ = await start_server(config)
    http_port = int(api.rsplit(":", 1)[1])
    ws_port = int(ws_url.split(":")[2].split("/")[0])
    endpoint = ReferenceEndpoint(
        url=ws_url,
        endpoint_id="ep",
        token="t",
        zones=["hall"],
        formats=["pcm_s16le/8000"],
        out_dir=tmp_path / "wav",
        reconnect=True,
    )
    ep_task = asyncio.create_task(endpoint.run())
    try:
        await asyncio.wait_for(endpoint.joined.wait(), 10)
        due = datetime.now(UTC) + timedelta(seconds=5)
        async with aiohttp.ClientSession(headers=bearer()) as http:
            status, created = await call(
                http,
                "POST",
                f"{api}/v1/schedules",
                {
                    "id": "soon",
                    "template": "notice",
                    "at": iso(due),
                    "misfire_grace_s": 1,
                    "variables": {"n": 7},
                },
            )
            assert status == 201, created
            for _ in range(200):  # prepared ahead: accepted with its due time
                _, hist = await call(http, "GET", f"{api}/v1/announcements?limit=5")
                if hist["announcements"]:
                    break
                await asyncio.sleep(0.02)
            [ann] = hist["announcements"]
            assert ann["state"] == "queued" and ann["due_at"] == iso(due)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            drain.cancel()
            # down past its due time and its grace (1 s)
            await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 2.5)
            proc, api, _, drain, _ = await start_server(config, http_port, ws_port)
            await asyncio.wait_for(endpoint.joined.wait(), 20)
            final = await wait_state(http, api, ann["id"], 10)
            assert final["state"] == "missed", final
            assert "grace 1 s" in final["reason"] and "restart" in final["reason"], final
            await asyncio.sleep(1.0)
        assert ann["id"] not in started_ids(endpoint)  # never played
        assert ann["id"] not in endpoint.announcements
    finally:
        endpoint.stop()
        ep_task.cancel()
        await stop(proc, drain)


# --- 4. schedule edits reach prepared firings ----------------------------------------------


def service_config(store: Path, schedules: list[dict[str, Any]] | None = None) -> Any:
    return parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0, "shutdown_timeout_s": 2},
            "store": {"path": str(store)},
            "streaming": {"playout_delay_ms": 200},
            "announcements": {"wait_for_endpoints_s": 0.3},
            "scheduling": {"prerender_s": 60},
            "zones": [{"id": "hall"}],
            "endpoints": [
                {"id": "ep-a", "token_hash": hash_token(TOKENS["ep-a"]), "zones": ["hall"]}
            ],
            "api_tokens": api_tokens_config(limited_zone=None),
            "templates": [
                {
                    "name": "notice",
                    "text": "Platform notice number {{ n }}.",
                    "zones": ["hall"],
                    "speed": 2.0,
                    "variables": {"n": "int"},
                }
            ],
            "schedules": schedules or [],
        },
        "station.toml",
    )


async def prepared_of(h: Harness, schedule_id: str, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        _, hist = await h.get("/v1/announcements?limit=20")
        mine = [a for a in hist["announcements"] if a["schedule_id"] == schedule_id]
        if len(mine) >= count:
            return mine
        await asyncio.sleep(0.02)
    raise AssertionError(f"no prepared firing of {schedule_id}: {hist}")


@pytest.mark.parametrize("edit", ["pause", "delete"])
async def test_pause_or_delete_stops_a_firing_already_prepared(tmp_path: Path, edit: str) -> None:
    async with Service(service_config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        ep = await h.endpoint("ep-a", ["hall"], ["pcm_s16le/8000"])
        try:
            async with aiohttp.ClientSession(headers=bearer()) as http:
                status, _ = await call(
                    http,
                    "POST",
                    f"{h.api}/v1/schedules",
                    {
                        "id": "rush",
                        "template": "notice",
                        "every_s": 20,
                        "start": iso(datetime.now(UTC) + timedelta(seconds=15)),
                        "variables": {"n": 1},
                    },
                )
                assert status == 201
                prepared = await prepared_of(h, "rush", 2)  # the next ones, made ahead
                assert all(a["state"] == "queued" for a in prepared)
                if edit == "pause":
                    status, _ = await call(http, "POST", f"{h.api}/v1/schedules/rush/pause")
                else:
                    status, _ = await call(http, "DELETE", f"{h.api}/v1/schedules/rush")
                assert status == 200
            for a in prepared:
                final = await h.wait_final(a["id"], 5)
                assert final["state"] == "cancelled"
                assert final["reason"] == f"schedule {'paused' if edit == 'pause' else 'deleted'}"
            await asyncio.sleep(0.5)
            assert ep.announcements == {}
        finally:
            await h.close()


async def test_config_schedule_cannot_be_deleted_but_its_pause_lasts_across_restarts(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s.db"
    schedules = [{"id": "hourly", "template": "notice", "cron": "0 * * * *", "variables": {"n": 3}}]
    async with Service(service_config(store, schedules), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        async with aiohttp.ClientSession(headers=bearer()) as http:
            status, err = await call(http, "DELETE", f"{h.api}/v1/schedules/hourly")
            assert status == 409, err
            assert "station.toml" in err["message"] and "pause" in err["message"]
            assert err["fields"][0]["field"] == "id"
            status, paused = await call(http, "POST", f"{h.api}/v1/schedules/hourly/pause")
            assert status == 200 and paused["paused"]
    async with Service(service_config(store, schedules), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        status, got = await h.get("/v1/schedules/hourly")
        assert status == 200 and got["paused"] and got["source"] == "config"
        assert got["next_firings"] == []


# --- 2. a full disk: emergencies still play, the fault is seen, nothing replays -------------

FSIZE_LIMIT = 64 * 1024  # above SQLite's 32 KiB WAL index, so the store still opens


def stored(db: Path, ann_id: str) -> tuple[str, str | None] | None:
    """(state, audio_sent_at) as the database file says, read by another connection."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        row = c.execute(
            "SELECT state, audio_sent_at FROM announcements WHERE id = ?", (ann_id,)
        ).fetchone()
    return None if row is None else (row[0], row[1])


async def test_disk_full_emergency_plays_fault_reported_and_nothing_replays_after(
    tmp_path: Path,
) -> None:
    config = tmp_path / "site.toml"
    db = tmp_path / "store.sqlite3"
    write_config(config, db)
    proc, api, ws_url, drain, _ = await start_server(config)  # creates the database
    await stop(proc, drain)
    proc, api, ws_url, drain, lines = await start_server(config, fsize_limit=FSIZE_LIMIT)
    http_port = int(api.rsplit(":", 1)[1])
    ws_port = int(ws_url.split(":")[2].split("/")[0])
    endpoint = ReferenceEndpoint(
        url=ws_url,
        endpoint_id="ep",
        token="t",
        zones=["hall"],
        formats=["pcm_s16le/8000"],
        out_dir=tmp_path / "wav",
        reconnect=True,
    )
    ep_task = asyncio.create_task(endpoint.run())
    try:
        await asyncio.wait_for(endpoint.joined.wait(), 10)
        async with aiohttp.ClientSession(headers=bearer()) as http:
            _, health = await call(http, "GET", f"{api}/healthz")
            assert health["status"] == "ok" and health["store"]["ok"] is True
            # A routine announcement accepted now, due once the disk is full.
            status, routine = await call(
                http,
                "POST",
                f"{api}/v1/announcements",
                {
                    "text": "Routine notice due later.",
                    "zones": ["hall"],
                    "due_at": iso(datetime.now(UTC) + timedelta(seconds=8)),
                },
            )
            assert status == 202, routine
            # Fill the disk with routine work due later, until the store refuses.
            later = iso(datetime.now(UTC) + timedelta(hours=1))
            refused = None
            for n in range(200):
                status, body = await call(
                    http,
                    "POST",
                    f"{api}/v1/announcements",
                    {"text": f"Routine {n}.", "zones": ["hall"], "due_at": later},
                )
                if status != 202:
                    refused = (status, body)
                    break
            assert refused is not None, "the file-size limit never bit"
            assert refused[0] == 503 and refused[1]["error"] == "store_unavailable", refused
            # Full to the byte: not even a one-page write fits any more (a failed
            # transaction leaves room where its uncommitted frames were, so the limit
            # goes below anything the server could write).
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
            # The fault is visible at once.
            _, health = await call(http, "GET", f"{api}/healthz")
            assert health["status"] == "store_failing" and health["store"]["ok"] is False
            assert health["store"]["reason"] and health["store"]["since"]
            # An emergency is still accepted and played.
            evacuate = {"text": "Evacuate platform one now.", "zones": ["hall"], "priority": 255}
            status, emergency, _ = await post(http, f"{api}/v1/announcements", evacuate, "evac-1")
            assert status == 202, emergency
            assert any("store could not write" in w for w in emergency["warnings"])
            # its key is kept in memory: a retry gets the same record, nothing doubled
            status, retried, _ = await post(http, f"{api}/v1/announcements", evacuate, "evac-1")
            assert status == 202 and retried["id"] == emergency["id"]
            final = await wait_state(http, api, emergency["id"], 30)
            assert final["state"] == "finished", final
            for _ in range(100):
                rec = endpoint.announcements.get(emergency["id"])
                if rec is not None and rec.status != "receiving":
                    break
                await asyncio.sleep(0.05)
            assert rec is not None and rec.status == "complete"
            # Routine requests still get a clear 503 while the store cannot write.
            status, body = await call(
                http, "POST", f"{api}/v1/announcements", {"text": "Routine.", "zones": ["hall"]}
            )
            assert status == 503 and body["error"] == "store_unavailable"
            status, body = await call(
                http,
                "POST",
                f"{api}/v1/schedules",
                {"id": "x", "template": "notice", "cron": "0 3 * * *", "variables": {"n": 1}},
            )
            assert status == 503 and body["error"] == "store_unavailable", body
            assert stored(db, emergency["id"]) is None  # only in memory so far
            _, health = await call(http, "GET", f"{api}/healthz")
            assert health["store"]["pending_writes"] >= 1  # the emergency's record, held
            # The routine one falls due: its start cannot be recorded, so it is not played.
            final_routine = await wait_state(http, api, routine["id"], 30)
            assert final_routine["state"] == "failed", final_routine
            assert final_routine["reason"].startswith("store unavailable"), final_routine
            heard = endpoint.announcements.get(routine["id"])
            assert heard is None or heard.seqs == []  # not a single chunk
            faults = [ln for ln in lines if "ERROR" in ln and "store fault" in ln]
            assert len(faults) == 1, "".join(ln for ln in lines if "store" in ln)

            # The disk has room again: the held records are written within seconds.
            resource.prlimit(
                proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            )
            for _ in range(100):
                _, health = await call(http, "GET", f"{api}/healthz")
                got = stored(db, emergency["id"])
                if health["store"]["ok"] and got is not None and got[0] == "finished":
                    break
                await asyncio.sleep(0.1)
            assert health["status"] == "ok", health
            assert got is not None and got[0] == "finished", got
            _, health = await call(http, "GET", f"{api}/healthz")
            assert health["store"]["pending_writes"] == 0
            assert any("store recovered" in ln for ln in lines)

            # A restart (kill -9) replays nothing that had played.
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            drain.cancel()
            proc, api, _, drain, _ = await start_server(config, http_port, ws_port)
            await asyncio.wait_for(endpoint.joined.wait(), 20)
            await asyncio.sleep(2.0)
            _, again = await call(http, "GET", f"{api}/v1/announcements/{emergency['id']}")
            assert again["state"] == "finished", again
            _, again = await call(http, "GET", f"{api}/v1/announcements/{routine['id']}")
            assert again["state"] == "failed", again
        assert started_ids(endpoint).count(emergency["id"]) == 1
        heard = endpoint.announcements.get(routine["id"])
        assert heard is None or heard.seqs == []
    finally:
        endpoint.stop()
        ep_task.cancel()
        await stop(proc, drain)


# --- 3. Idempotency-Key --------------------------------------------------------------------


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, key: str | None
) -> tuple[int, Any, Any]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    async with http.post(url, json=body, headers=headers) as r:
        return r.status, await r.json(), r.headers


async def test_a_retry_with_the_same_key_returns_the_same_record_even_after_a_restart(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s.db"
    body = {
        "text": "Mind the gap.",
        "zones": ["hall"],
        "due_at": iso(datetime.now(UTC) + timedelta(hours=1)),
    }
    async with Service(service_config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        async with aiohttp.ClientSession(headers=bearer()) as http:
            url = f"{h.api}/v1/announcements"
            status, first, _ = await post(http, url, body, "retry-1")
            assert status == 202
            status, again, headers = await post(http, url, body, "retry-1")
            assert status == 202 and again["id"] == first["id"]
            assert headers["Idempotent-Replayed"] == "true"
            assert headers["Location"] == f"/v1/announcements/{first['id']}"
            # the same key for another request is refused, naming the header
            status, err, _ = await post(http, url, {**body, "text": "Other."}, "retry-1")
            assert status == 422 and err["error"] == "idempotency_key_reused"
            assert err["fields"][0]["field"] == "Idempotency-Key"
            for bad in ("", "x" * 129, "has space", "naïve"):
                status, err, _ = await post(http, url, body, bad)
                assert status == 422 and err["fields"][0]["field"] == "Idempotency-Key", bad
            # the same key on another route is another request
            status, err, _ = await post(
                http, f"{h.api}/v1/triggers/notice", {"variables": {"n": 1}}, "retry-1"
            )
            assert status == 422 and err["error"] == "idempotency_key_reused"
    async with Service(service_config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        async with aiohttp.ClientSession(headers=bearer()) as http:
            status, after, _ = await post(http, f"{h.api}/v1/announcements", body, "retry-1")
            assert status == 202 and after["id"] == first["id"]
            _, listing = await call(http, "GET", f"{h.api}/v1/announcements?limit=50")
        assert [a["id"] for a in listing["announcements"]] == [first["id"]]  # never two


async def test_concurrent_requests_with_one_key_create_one_announcement(tmp_path: Path) -> None:
    async with Service(service_config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        body = {"variables": {"n": 4}, "due_at": iso(datetime.now(UTC) + timedelta(hours=1))}
        async with aiohttp.ClientSession(headers=bearer()) as http:
            answers = await asyncio.gather(
                *(post(http, f"{h.api}/v1/triggers/notice", body, "burst") for _ in range(8))
            )
            assert {status for status, _, _ in answers} == {202}
            assert len({a["id"] for _, a, _ in answers}) == 1
            _, listing = await call(http, "GET", f"{h.api}/v1/announcements?limit=50")
        assert len(listing["announcements"]) == 1


async def test_schedule_create_with_a_key_is_answered_once(tmp_path: Path) -> None:
    async with Service(service_config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        body = {"id": "nightly", "template": "notice", "cron": "30 2 * * *", "variables": {"n": 2}}
        async with aiohttp.ClientSession(headers=bearer()) as http:
            url = f"{h.api}/v1/schedules"
            status, first, _ = await post(http, url, body, "sched-1")
            assert status == 201
            status, again, headers = await post(http, url, body, "sched-1")
            assert status == 201 and again == first and headers["Idempotent-Replayed"] == "true"
            status, _, _ = await post(http, url, body, None)  # without a key: a conflict
            assert status == 409


# --- 2b. killed in the last playout delay: finished, not failed, never replayed -------------


async def test_killed_after_its_last_chunk_was_sent_it_is_finished_and_not_replayed(
    tmp_path: Path,
) -> None:
    config = tmp_path / "site.toml"
    # A long playout delay: the endpoint holds 3 s of audio after the last chunk is sent.
    write_config(config, tmp_path / "store.sqlite3", playout_delay_ms=3000)
    proc, api, ws_url, drain, _ = await start_server(config)
    http_port = int(api.rsplit(":", 1)[1])
    ws_port = int(ws_url.split(":")[2].split("/")[0])
    endpoint = ReferenceEndpoint(
        url=ws_url,
        endpoint_id="ep",
        token="t",
        zones=["hall"],
        formats=["pcm_s16le/8000"],
        out_dir=tmp_path / "wav",
        reconnect=True,
    )
    ep_task = asyncio.create_task(endpoint.run())
    try:
        await asyncio.wait_for(endpoint.joined.wait(), 10)
        async with aiohttp.ClientSession(headers=bearer()) as http:
            for priority in (100, 255):  # a routine one, and an emergency (never replayed)
                status, ann = await call(
                    http,
                    "POST",
                    f"{api}/v1/announcements",
                    {"text": "Short notice.", "zones": ["hall"], "priority": priority},
                )
                assert status == 202, ann

                async def ended(ann_id: str = ann["id"]) -> None:
                    while not any(
                        e["type"] == "announcement_ended" and e["announcement_id"] == ann_id
                        for e in endpoint.events
                    ):
                        await asyncio.sleep(0.01)

                await asyncio.wait_for(ended(), 30)  # every chunk was sent...
                await asyncio.sleep(0.3)
                _, live = await call(http, "GET", f"{api}/v1/announcements/{ann['id']}")
                assert live["state"] == "playing"  # ...and it still plays from the buffers
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                drain.cancel()
                proc, api, _, drain, _ = await start_server(config, http_port, ws_port)
                await asyncio.wait_for(endpoint.joined.wait(), 20)
                _, after = await call(http, "GET", f"{api}/v1/announcements/{ann['id']}")
                assert after["state"] == "finished" and after["reason"] is None, after
                assert any("last playout-delay" in w for w in after["warnings"]), after
                await asyncio.sleep(1.0)
                assert started_ids(endpoint).count(ann["id"]) == 1
    finally:
        endpoint.stop()
        ep_task.cancel()
        await stop(proc, drain)


async def test_a_full_disk_is_reported_within_seconds_even_when_nothing_writes(
    tmp_path: Path,
) -> None:
    config = tmp_path / "site.toml"
    db = tmp_path / "store.sqlite3"
    write_config(config, db)
    proc, api, _, drain, lines = await start_server(config)
    try:
        async with aiohttp.ClientSession(headers=bearer()) as http:
            _, health = await call(http, "GET", f"{api}/healthz")
            assert health["status"] == "ok"
            # The disk fills up (something else used it): no file of the server may grow.
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            while loop.time() - t0 < 15:
                _, health = await call(http, "GET", f"{api}/healthz")
                if health["status"] != "ok":
                    break
                await asyncio.sleep(0.2)
            took = loop.time() - t0
            assert health["status"] == "store_failing" and not health["store"]["ok"], health
            assert took < 8, took  # probed every 5 s
            assert any("ERROR" in ln and "store fault" in ln for ln in lines)
            resource.prlimit(
                proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            )
            t0 = loop.time()
            while loop.time() - t0 < 10:
                _, health = await call(http, "GET", f"{api}/healthz")
                if health["status"] == "ok":
                    break
                await asyncio.sleep(0.2)
            assert health["status"] == "ok" and health["store"]["ok"], health
            # probed every second while failing; recovered after 3 s of writes that worked
            assert loop.time() - t0 < 6
    finally:
        await stop(proc, drain)
