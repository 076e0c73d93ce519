"""Admission, coverage, events, readiness and metrics through the real service and endpoints."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broadcaster.app import Service
from broadcaster.config import Config, hash_token, parse_config
from broadcaster.speech.espeak import EspeakEngine

from .conftest import TOKENS, Harness, api_tokens_config, bearer, make_config

pytestmark = pytest.mark.integration

FINAL = ("finished", "unconfirmed", "partial", "cancelled", "failed", "refused", "dropped")
LONG = "This routine message is long enough to keep the hall busy for a while. " * 4


def config(store: str = ":memory:", **announcements: Any) -> Config:
    base = make_config(store)
    return base.model_copy(
        update={"announcements": base.announcements.model_copy(update=announcements)}
    )


async def wait_state(
    h: Harness, ann_id: str, states: tuple[str, ...] = FINAL, timeout_s: float = 60
) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while True:
            _, body = await h.get(f"/v1/announcements/{ann_id}")
            if body["state"] in states:
                return body
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout_s)


async def post_many(h: Harness, bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """POST in parallel batches over one session (the way a burst of callers would)."""
    out: list[tuple[int, Any]] = []
    async with aiohttp.ClientSession(headers=bearer()) as http:

        async def one(body: dict[str, Any]) -> tuple[int, Any]:
            async with http.post(f"{h.api}/v1/announcements", json=body) as r:
                return r.status, await r.json()

        for i in range(0, len(bodies), 50):
            out += await asyncio.gather(*(one(b) for b in bodies[i : i + 50]))
    return out


@pytest.mark.parametrize("waiting", [10, 1000])
async def test_an_emergency_is_admitted_and_played_while_routine_requests_wait(
    tmp_path: Path, waiting: int
):
    cfg = config(queue_limit=waiting)
    async with Service(cfg, engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            await h.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
            await h.endpoint("ep-d", ["gate"], ["pcm_s16le/16000"])
            status, playing = await h.post({"text": LONG, "zones": ["hall"]})
            assert status == 202
            await wait_state(h, playing["id"], ("playing",))
            answers = await post_many(
                h, [{"text": f"Routine {i}.", "zones": ["hall"]} for i in range(waiting + 3)]
            )
            assert [s for s, _ in answers].count(202) == waiting
            refused = [body for s, body in answers if s == 503]
            assert len(refused) == 3
            assert refused[0]["error"] == "queue_full" and "zone hall" in refused[0]["message"]
            # The refusal is a record, with its reason, in the history.
            _, record = await h.get(f"/v1/announcements/{refused[0]['id']}")
            assert record["state"] == "refused" and "limit" in record["reason"]
            _, hist = await h.get("/v1/announcements?state=refused&limit=10")
            assert {a["id"] for a in hist["announcements"]} == {b["id"] for b in refused}

            # Emergencies: one for an idle zone, one for the busy hall (it preempts).
            status, idle = await h.post(
                {"text": "Evacuate gate.", "zones": ["gate"], "priority": 255}
            )
            assert status == 202, idle
            status, busy = await h.post(
                {"text": "Evacuate hall.", "zones": ["hall"], "priority": "emergency"}
            )
            assert status == 202, busy
            for ann, zone in ((idle, "gate"), (busy, "hall")):
                final = await wait_state(h, ann["id"])
                assert final["state"] == "finished", final
                assert final["coverage"][zone]["heard"] is True
            _, long_one = await h.get(f"/v1/announcements/{playing['id']}")
            assert long_one["preemptions"] == 1
            assert svc.announcer is not None
            assert svc.announcer.admission.depths()[("hall", "routine")] >= waiting - 1
        finally:
            await h.close()


async def test_a_higher_routine_pushes_out_a_waiting_lower_one_with_a_reason(tmp_path: Path):
    async with Service(config(queue_limit=1), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            await h.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
            _, playing = await h.post({"text": LONG, "zones": ["hall"]})
            await wait_state(h, playing["id"], ("playing",))
            _, low = await h.post({"text": "Low.", "zones": ["hall"], "priority": 40})
            status, high = await h.post({"text": "Higher.", "zones": ["hall"], "priority": 120})
            assert status == 202
            dropped = await wait_state(h, low["id"])
            assert dropped["state"] == "dropped"
            assert high["id"] in dropped["reason"] and "pushed out" in dropped["reason"]
            _, events = await h.get("/v1/events")
            assert any(
                e["kind"] == "announcement_dropped" and e["subject"] == low["id"]
                for e in events["events"]
            )
        finally:
            await h.close()


def schedule_config(store: Path) -> Config:
    return parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0, "shutdown_timeout_s": 2},
            "store": {"path": str(store)},
            "streaming": {"playout_delay_ms": 200},
            "announcements": {"wait_for_endpoints_s": 0.3, "queue_limit": 1},
            "scheduling": {"prerender_s": 60},
            "zones": [{"id": "gate"}],
            "endpoints": [
                {"id": "ep-d", "token_hash": hash_token(TOKENS["ep-d"]), "zones": ["gate"]}
            ],
            "templates": [{"name": "notice", "text": "Mind the gap.", "zones": ["gate"]}],
            "api_tokens": api_tokens_config(),
        },
        "admission-test",
    )


async def test_a_scheduled_firing_that_cannot_be_admitted_is_recorded(tmp_path: Path):
    async with Service(schedule_config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            await h.endpoint("ep-d", ["gate"], ["pcm_s16le/16000"])
            _, playing = await h.post({"text": LONG, "zones": ["gate"]})
            await wait_state(h, playing["id"], ("playing",))
            status, _ = await h.post({"text": "Waiting.", "zones": ["gate"]})
            assert status == 202  # the routine band of gate is now full (limit 1)
            async with (
                aiohttp.ClientSession(headers=bearer()) as http,
                http.post(
                    f"{h.api}/v1/schedules",
                    json={
                        "id": "often",
                        "template": "notice",
                        "at": (datetime.now(UTC) + timedelta(seconds=5)).isoformat(),
                    },
                ) as r,
            ):
                assert r.status == 201, await r.text()

            async def refused() -> dict[str, Any]:
                while True:
                    _, hist = await h.get("/v1/announcements?state=refused")
                    found = [a for a in hist["announcements"] if a["schedule_id"] == "often"]
                    if found:
                        return found[0]
                    await asyncio.sleep(0.05)

            record = await asyncio.wait_for(refused(), 30)
            assert "zone gate" in record["reason"] and record["fire_at"] is not None
            assert svc.store is not None
            [firing] = await svc.store.list_firings("often")
            assert firing.decision == "refused" and firing.announcement_id == record["id"]
            assert firing.reason == record["reason"]
        finally:
            await h.close()


async def test_an_emergency_to_a_zone_without_a_speaker_is_partial_with_an_error_event(
    tmp_path: Path,
):
    async with Service(make_config(), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            await h.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
            await h.endpoint("ep-d", ["gate"], ["opus/48000"])
            status, ann = await h.post(
                {"text": "Evacuate now.", "zones": ["hall", "gate", "empty"], "priority": 255}
            )
            assert status == 202
            final = await wait_state(h, ann["id"])
            assert final["state"] == "partial", final
            assert final["reason"] == "not heard in zone(s) empty (no endpoint)"
            cov = final["coverage"]
            assert cov["hall"]["heard"] is True and cov["hall"]["endpoints"] == ["ep-b"]
            assert cov["gate"]["heard"] is True and cov["gate"]["started"] == 1
            assert cov["empty"] == {
                "endpoints": [],
                "started": 0,
                "finished": 0,
                "sent_unconfirmed": 0,
                "heard": False,
            }
            _, events = await h.get("/v1/events")
            [fault] = [e for e in events["events"] if e["kind"] == "coverage_fault"]
            assert fault["severity"] == "error" and fault["subject"] == ann["id"]
            assert "empty" in fault["detail"]
            assert datetime.fromisoformat(fault["at"]).utcoffset() is not None
        finally:
            await h.close()


async def test_events_survive_a_restart(tmp_path: Path):
    store = str(tmp_path / "events.db")
    async with Service(make_config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            await h.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
            _, ann = await h.post({"text": "Hello.", "zones": ["hall", "empty"], "priority": 230})
            assert (await wait_state(h, ann["id"]))["state"] == "partial"
        finally:
            await h.close()
        _, before = await h.get("/v1/events")
    async with Service(make_config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        _, after = await h.get("/v1/events?limit=1000")
        _, stored = await h.get(f"/v1/announcements/{ann['id']}")  # from the store now
        assert stored["state"] == "partial" and stored["coverage"]["empty"]["heard"] is False
        assert stored["coverage"]["hall"]["endpoints"] == ["ep-b"]
        kinds = [(e["kind"], e["subject"]) for e in after["events"]]
        assert ("endpoint_joined", "ep-b") in kinds
        assert ("coverage_fault", ann["id"]) in kinds
        assert [e["id"] for e in after["events"]][: len(before["events"])] == [
            e["id"] for e in before["events"]
        ]
        joined = next(e for e in after["events"] if e["kind"] == "endpoint_joined")
        assert joined["endpoint_id"] == "ep-b" and joined["at"].endswith("+00:00")
        since = joined["at"]
        async with (
            aiohttp.ClientSession(headers=bearer()) as http,
            http.get(f"{h.api}/v1/events", params={"since": since}) as r,
        ):
            listed = (await r.json())["events"]
        assert listed and all(e["at"] >= since for e in listed)
        status, err = await h.get("/v1/events?since=yesterday")
        assert status == 422 and err["fields"][0]["field"] == "since"


async def test_readyz_gives_reasons_and_healthz_stays_live(tmp_path: Path):
    async with Service(make_config(), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            status, body = await h.get("/readyz")
            assert status == 503 and body["ready"] is False
            reasons = {r["reason"] for r in body["reasons"]}
            assert "zone empty has no endpoint connected" in reasons
            assert "zone hall has no endpoint connected" in reasons
            await h.endpoint("ep-a", ["hall", "gate"], ["pcm_s16le/16000"])
            _, body = await h.get("/readyz")
            assert [r["reason"] for r in body["reasons"]] == [
                "zone empty has no endpoint connected"
            ]
            # A store that cannot write (read-only here; a real full disk is in
            # test_durability.py): the probe notices within a second or so.
            store = svc.store
            assert store is not None
            await store._run(lambda: store._store._conn.execute("PRAGMA query_only = ON"))
            for _ in range(100):
                _, body = await h.get("/readyz")
                if any(r["check"] == "store" for r in body["reasons"]):
                    break
                await asyncio.sleep(0.1)
            assert any(
                r["check"] == "store" and r["reason"].startswith("store failing:")
                for r in body["reasons"]
            ), body
            status, live = await h.get("/healthz")
            assert status == 200 and live["status"] == "store_failing"  # alive, not ready
            events = (await h.get("/v1/events"))[1]["events"]
            assert any(e["kind"] == "store_fault" and e["severity"] == "error" for e in events)
            await store._run(lambda: store._store._conn.execute("PRAGMA query_only = OFF"))
            for _ in range(100):
                _, body = await h.get("/readyz")
                if all(r["check"] != "store" for r in body["reasons"]):
                    break
                await asyncio.sleep(0.1)
            assert all(r["check"] != "store" for r in body["reasons"]), body
        finally:
            await h.close()
    one_zone = parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0},
            "store": {"path": ":memory:"},
            "zones": [{"id": "hall"}],
            "endpoints": [
                {"id": "ep-b", "token_hash": hash_token(TOKENS["ep-b"]), "zones": ["hall"]}
            ],
            "api_tokens": api_tokens_config(limited_zone=None),
        },
        "ready-test",
    )
    async with Service(one_zone, engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            await h.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
            status, body = await h.get("/readyz")
            assert status == 200 and body == {"ready": True, "reasons": []}
        finally:
            await h.close()


async def test_metrics_parse_and_have_the_families(tmp_path: Path):
    async with Service(make_config(), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            await h.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
            _, ann = await h.post({"text": "Metrics please.", "zones": ["hall"]})
            assert (await wait_state(h, ann["id"]))["state"] == "finished"
            assert svc.metrics is not None
            assert svc.store is not None
            svc.store.health.failed("test fault")  # what every failed store write reports
            async with (
                aiohttp.ClientSession(headers=bearer()) as http,
                http.get(f"{h.api}/metrics") as r,
            ):
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
        finally:
            await h.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "broadcaster_announcements",
        "broadcaster_speech_first_audio_seconds",
        "broadcaster_speech_failures",
        "broadcaster_speech_cache_hits",
        "broadcaster_chunks_dropped",
        "broadcaster_endpoints_connected",
        "broadcaster_endpoints_faulty",
        "broadcaster_zones_uncovered",
        "broadcaster_queue_depth",
        "broadcaster_endpoint_rtt_seconds",
        "broadcaster_store_write_errors",
        "broadcaster_events",
        "broadcaster_endpoint_playback_skew_seconds",
    ):
        assert name in families, name

    def value(family: str, sample: str, **labels: str) -> float:
        for s in families[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"{sample} {labels} not found")

    assert (
        value(
            "broadcaster_announcements",
            "broadcaster_announcements_total",
            state="finished",
            band="routine",
        )
        == 1
    )
    assert (
        value("broadcaster_endpoints_connected", "broadcaster_endpoints_connected", zone="hall")
        == 1
    )
    assert value("broadcaster_zones_uncovered", "broadcaster_zones_uncovered") == 2
    skew = value(
        "broadcaster_endpoint_playback_skew_seconds",
        "broadcaster_endpoint_playback_skew_seconds",
        endpoint="ep-b",
    )
    # The reference endpoint reports "started" when its timer for the play-at instant
    # fires: on loopback that is on time, give or take the event loop's lateness on a
    # loaded machine (0.13 s was seen with both cores busy). A wrong sign or unit
    # (ms for s, or the offset left out) would be off by far more.
    assert abs(skew) < 0.25
    assert value("broadcaster_store_write_errors", "broadcaster_store_write_errors_total") == 1
    # The network edge: the endpoint's WebSocket is open, and this scrape's own connection.
    open_ws = value(
        "broadcaster_connections_open", "broadcaster_connections_open", listener="websocket"
    )
    assert open_ws == 1
    assert (
        value("broadcaster_connections_open", "broadcaster_connections_open", listener="http") >= 1
    )
    assert (
        value(
            "broadcaster_connections_refused",
            "broadcaster_connections_refused_total",
            listener="http",
            limit="per_address",
        )
        == 0
    )
    assert (
        value(
            "broadcaster_speech_first_audio_seconds",
            "broadcaster_speech_first_audio_seconds_count",
            engine="espeak-ng",
        )
        == 1
    )
