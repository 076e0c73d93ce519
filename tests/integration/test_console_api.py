"""What the console needs from the API, through the real service, store and endpoints:
templates made through the API, schedules of free text, zone groups, gains."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import numpy as np
import pytest

from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.speech.espeak import EspeakEngine

from .conftest import TOKENS, Harness, api_tokens_config, bearer

pytestmark = pytest.mark.integration


def config(store: Any, **extra: Any):
    return parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0, "shutdown_timeout_s": 2},
            "store": {"path": str(store)},
            "streaming": {"playout_delay_ms": 200},
            "announcements": {"wait_for_endpoints_s": 0.3},
            "api_tokens": api_tokens_config(),
            "zones": [{"id": "hall"}, {"id": "gate", "gain_db": -6.0}],
            "zone_groups": [
                {"id": "everywhere", "name": "Hall and gate", "zones": ["hall", "gate"]}
            ],
            "endpoints": [
                {"id": "ep-a", "token_hash": hash_token(TOKENS["ep-a"]), "zones": ["hall", "gate"]},
                {"id": "ep-b", "token_hash": hash_token(TOKENS["ep-b"]), "zones": ["hall"]},
                {
                    "id": "ep-c",
                    "token_hash": hash_token(TOKENS["ep-c"]),
                    "zones": ["hall"],
                    "gain_db": -12.0,
                },
                {"id": "ep-d", "token_hash": hash_token(TOKENS["ep-d"]), "zones": ["gate"]},
            ],
            "templates": [
                {
                    "name": "delay",
                    "text": "The {{ time }} is delayed by {{ minutes }} minutes.",
                    "zones": ["hall"],
                    "variables": {"time": "time", "minutes": "int"},
                }
            ],
            **extra,
        },
        "console-api-test",
    )


async def call(
    h: Harness, method: str, path: str, body: Any = None, *, as_: str = "admin"
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers=bearer(as_)) as http,
        http.request(method, f"{h.api}{path}", json=body) as r,
    ):
        return r.status, await r.json()


PLATFORM = {
    "name": "platform-change",
    "text": "The {{ service }} now leaves from platform {{ platform }}.",
    "zones": ["everywhere"],
    "chime_before": "two-tone",
    "variables": {
        "service": {"type": "str", "choices": ["Leeds train", "York train"]},
        "platform": {"type": "int", "default": 4},
    },
}


def fields(body: dict[str, Any]) -> set[str]:
    return {f["field"] for f in body.get("fields", [])}


async def test_templates_are_listed_created_edited_deleted_with_roles_and_audited(tmp_path):
    async with Service(config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            status, listed = await call(h, "GET", "/v1/templates", as_="viewer")
            assert status == 200
            [delay] = listed["templates"]
            assert delay["source"] == "config" and delay["name"] == "delay"
            assert delay["variables"] == {
                "time": {
                    "type": "time",
                    "default": None,
                    "choices": None,
                    "max_length": None,
                    "required": True,
                },
                "minutes": {
                    "type": "int",
                    "default": None,
                    "choices": None,
                    "max_length": None,
                    "required": True,
                },
            }
            # a viewer may not create; an operator may
            status, _ = await call(h, "POST", "/v1/templates", PLATFORM, as_="viewer")
            assert status == 403
            status, made = await call(h, "POST", "/v1/templates", PLATFORM, as_="operator")
            assert status == 201, made
            assert made["source"] == "api" and made["created_by"] == "operator"
            assert made["variables"]["service"] == {
                "type": "str",
                "default": None,
                "choices": ["Leeds train", "York train"],
                "max_length": 200,
                "required": True,
            }
            assert made["variables"]["platform"]["default"] == 4
            assert made["zones_expanded"] == ["hall", "gate"]
            status, again = await call(h, "POST", "/v1/templates", PLATFORM, as_="operator")
            assert status == 409 and fields(again) == {"name"}
            # config templates are read-only through the API, naming why
            status, err = await call(h, "PUT", "/v1/templates/delay", {"text": "x"}, as_="admin")
            assert status == 409 and "config" in err["message"]
            status, err = await call(h, "DELETE", "/v1/templates/delay", as_="admin")
            assert status == 409 and "console-api-test" in err["message"]
            status, err = await call(h, "POST", "/v1/templates", {**PLATFORM, "name": "delay"})
            assert status == 409
            # emergency band: operator refused, dispatcher allowed
            urgent = {**PLATFORM, "name": "evacuate", "text": "Please leave.", "priority": 240}
            urgent.pop("variables")
            status, err = await call(h, "POST", "/v1/templates", urgent, as_="operator")
            assert status == 403 and fields(err) == {"priority"}
            status, _ = await call(h, "POST", "/v1/templates", urgent, as_="dispatcher")
            assert status == 201
            # an operator may not edit it down out of the band, nor delete it
            calm = {k: v for k, v in urgent.items() if k != "priority"}
            status, _ = await call(h, "PUT", "/v1/templates/evacuate", calm, as_="operator")
            assert status == 403
            status, _ = await call(h, "DELETE", "/v1/templates/evacuate", as_="operator")
            assert status == 403
            # a zone-limited token may not make a template for zones beyond its own
            status, err = await call(
                h, "POST", "/v1/templates", {**PLATFORM, "name": "p2"}, as_="gate-operator"
            )
            assert status == 403 and fields(err) == {"zones"}
            # edit: the text changes, the record says who
            edited = {**PLATFORM, "text": "The {{ service }} is at platform {{ platform }}."}
            status, body = await call(
                h, "PUT", "/v1/templates/platform-change", edited, as_="operator2"
            )
            assert status == 200, body
            assert body["text"] == edited["text"] and body["updated_by"] == "operator2"
            assert body["created_by"] == "operator"
            status, got = await call(h, "GET", "/v1/templates/platform-change", as_="viewer")
            assert status == 200 and got["text"] == edited["text"]
            status, err = await call(h, "PUT", "/v1/templates/nope", edited)
            assert status == 404
            status, err = await call(
                h, "PUT", "/v1/templates/platform-change", {**edited, "name": "other"}
            )
            assert status == 422 and fields(err) == {"name"}
            # admin deletes any; then it is gone
            status, body = await call(h, "DELETE", "/v1/templates/evacuate", as_="admin")
            assert status == 200 and body == {"deleted": "evacuate"}
            status, _ = await call(h, "GET", "/v1/templates/evacuate")
            assert status == 404
            # every change is in the audit log
            status, audit = await call(h, "GET", "/v1/audit?limit=50", as_="dispatcher")
            seen = {(a["method"], a["path"], a["status"]) for a in audit["audit"]}
            assert ("POST", "/v1/templates", 201) in seen
            assert ("PUT", "/v1/templates/platform-change", 200) in seen
            assert ("DELETE", "/v1/templates/evacuate", 200) in seen
            assert ("POST", "/v1/templates", 403) in seen
        finally:
            await h.close()


async def test_template_validation_names_the_field(tmp_path):
    async with Service(config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            cases = [
                ({**PLATFORM, "text": "Platform {{ platform"}, "text"),
                ({**PLATFORM, "text": "{{ undeclared }}"}, "text"),
                ({**PLATFORM, "variables": {"platform": "colour"}}, "variables"),
                (
                    {**PLATFORM, "variables": {"platform": {"type": "int", "default": "4"}}},
                    "variables",
                ),
                ({**PLATFORM, "zones": ["nowhere"]}, "zones"),
                ({**PLATFORM, "chime_before": "file:/etc/passwd"}, "chime_before"),
                ({**PLATFORM, "priority": 256}, "priority"),
                ({**PLATFORM, "speed": "fast"}, "speed"),
                ({**PLATFORM, "name": "has space"}, "name"),
                ({**PLATFORM, "colour": "red"}, "colour"),
                ({k: v for k, v in PLATFORM.items() if k != "text"}, "text"),
            ]
            for body, field in cases:
                status, err = await call(h, "POST", "/v1/templates", body)
                assert status == 422, (body, err)
                named = fields(err)
                assert any(f == field or f.startswith(field) for f in named) or (
                    named == {"(body)"} and field in err["fields"][0]["message"]
                ), (field, err)
            status, listed = await call(h, "GET", "/v1/templates")
            assert [t["name"] for t in listed["templates"]] == ["delay"]
        finally:
            await h.close()


async def test_api_template_is_triggered_and_scheduled_like_a_config_one_and_survives_restart(
    tmp_path,
):
    store = tmp_path / "s.db"
    async with Service(config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            status, _ = await call(h, "POST", "/v1/templates", PLATFORM, as_="operator")
            assert status == 201
            status, ann = await call(
                h,
                "POST",
                "/v1/triggers/platform-change",
                {"variables": {"service": "York train"}},
                as_="operator",
            )
            assert status == 202, ann
            assert ann["text"] == "The York train now leaves from platform four."
            assert ann["zones"] == ["hall", "gate"]  # the group, expanded at admission
            assert ann["template"] == "platform-change" and ann["chime_before"] == "two-tone"
            status, err = await call(
                h,
                "POST",
                "/v1/announcements",
                {"template": "platform-change", "variables": {"service": "Hull train"}},
            )
            assert status == 422 and fields(err) == {"variables.service"}
            # a schedule of it; the template cannot be deleted while the schedule uses it,
            # nor edited so that the schedule would no longer render
            status, sched = await call(
                h,
                "POST",
                "/v1/schedules",
                {
                    "id": "hourly-platform",
                    "template": "platform-change",
                    "cron": "0 3 * * *",
                    "variables": {"service": "Leeds train"},
                },
            )
            assert status == 201, sched
            status, err = await call(h, "DELETE", "/v1/templates/platform-change")
            assert status == 409 and "hourly-platform" in err["message"]
            narrowed = {
                **PLATFORM,
                "variables": {
                    "service": {"type": "str", "choices": ["York train"]},
                    "platform": "int",
                },
            }
            status, err = await call(h, "PUT", "/v1/templates/platform-change", narrowed)
            assert status == 409 and "hourly-platform" in err["message"]
        finally:
            await h.close()
    async with Service(config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            status, got = await call(h, "GET", "/v1/templates/platform-change", as_="viewer")
            assert status == 200 and got["source"] == "api" and got["created_by"] == "operator"
            status, sched = await call(h, "GET", "/v1/schedules/hourly-platform")
            assert status == 200 and sched["template"] == "platform-change"
            status, ann = await call(
                h, "POST", "/v1/triggers/platform-change", {"variables": {"service": "Leeds train"}}
            )
            assert status == 202 and ann["text"] == "The Leeds train now leaves from platform four."
            status, _ = await call(h, "DELETE", "/v1/schedules/hourly-platform")
            assert status == 200
            status, _ = await call(h, "DELETE", "/v1/templates/platform-change", as_="operator")
            assert status == 200
        finally:
            await h.close()
    async with Service(config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            status, _ = await call(h, "GET", "/v1/templates/platform-change")
            assert status == 404
        finally:
            await h.close()


async def test_schedule_of_free_text_is_stored_and_fires_with_its_options(tmp_path):
    async with Service(config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            due = datetime.now(UTC) + timedelta(seconds=30)
            base = {"id": "closing", "at": due.isoformat(), "zones": ["everywhere"]}
            status, err = await call(h, "POST", "/v1/schedules", base)
            assert status == 422 and fields(err) == {"template"}
            status, err = await call(
                h, "POST", "/v1/schedules", {**base, "text": "x", "template": "delay"}
            )
            assert status == 422 and fields(err) == {"template"}
            status, err = await call(
                h, "POST", "/v1/schedules", {**base, "text": "Closing.", "variables": {"a": 1}}
            )
            assert status == 422 and fields(err) == {"variables"}
            status, err = await call(
                h, "POST", "/v1/schedules", {**base, "text": "Closing.", "zones": None}
            )
            assert status == 422 and fields(err) == {"zones"}
            status, err = await call(
                h,
                "POST",
                "/v1/schedules",
                {**base, "text": "Closing.", "chime_before": "file:../x.wav"},
            )
            assert status == 422 and fields(err) == {"chime_before"}
            body = {
                **base,
                "text": "The station closes in ten minutes.",
                "chime_before": "three-tone",
                "repeats": 1,
            }
            status, made = await call(h, "POST", "/v1/schedules", body, as_="operator")
            assert status == 201, made
            assert made["text"] == body["text"] and made["template"] is None
            # pre-rendered at once (the firing is within the pre-render window)
            for _ in range(100):
                _, hist = await call(h, "GET", "/v1/announcements?limit=5")
                if hist["announcements"]:
                    break
                await asyncio.sleep(0.02)
            [ann] = hist["announcements"]
            assert ann["schedule_id"] == "closing" and ann["text"] == body["text"]
            assert ann["zones"] == ["hall", "gate"]
            assert ann["chime_before"] == "three-tone" and ann["repeats"] == 1
            # a zone-limited operator may not schedule beyond its zones
            status, err = await call(
                h, "POST", "/v1/schedules", {**body, "id": "other"}, as_="gate-operator"
            )
            assert status == 403
        finally:
            await h.close()


async def test_zone_groups_are_listed_expanded_and_limited_by_token_zones(tmp_path):
    async with Service(config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            status, zones = await call(h, "GET", "/v1/zones", as_="viewer")
            assert status == 200
            assert zones["groups"] == [
                {
                    "id": "everywhere",
                    "name": "Hall and gate",
                    "zones": ["hall", "gate"],
                    "builtin": False,
                },
                {"id": "all", "name": "All zones", "zones": ["hall", "gate"], "builtin": True},
            ]
            gate = next(z for z in zones["zones"] if z["id"] == "gate")
            assert gate["gain_db"] == -6.0 and gate["gain_source"] == "config"
            status, ann = await call(
                h, "POST", "/v1/announcements", {"text": "Hello all.", "zones": ["all", "hall"]}
            )
            assert status == 202 and ann["zones"] == ["hall", "gate"]
            status, err = await call(
                h,
                "POST",
                "/v1/announcements",
                {"text": "Hello.", "zones": ["everywhere"]},
                as_="gate-operator",
            )
            assert status == 403 and fields(err) == {"zones"}
            status, err = await call(
                h, "POST", "/v1/announcements", {"text": "Hello.", "zones": ["nowhere"]}
            )
            assert status == 422 and "nowhere" in err["fields"][0]["message"]
            # silencing a group silences each of its zones
            status, ann = await call(
                h,
                "POST",
                "/v1/announcements",
                {
                    "text": "Later.",
                    "zones": ["gate"],
                    "due_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
                },
            )
            assert status == 202
            status, err = await call(
                h, "POST", "/v1/zones/everywhere/silence", as_="gate-dispatcher"
            )
            assert status == 403
            status, done = await call(h, "POST", "/v1/zones/everywhere/silence", as_="dispatcher")
            assert status == 202 and ann["id"] in done["cancelled"]
        finally:
            await h.close()


async def test_gains_are_set_by_admin_kept_and_applied_by_the_endpoint(tmp_path):
    store = tmp_path / "s.db"
    async with Service(config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            status, _ = await call(
                h, "PUT", "/v1/zones/hall/gain", {"gain_db": -3}, as_="dispatcher"
            )
            assert status == 403
            for bad in (
                {"gain_db": 3},
                {"gain_db": -61},
                {"gain_db": "loud"},
                {},
                {"gain_db": True},
            ):
                status, err = await call(h, "PUT", "/v1/zones/hall/gain", bad)
                assert status == 422 and fields(err) == {"gain_db"}, (bad, err)
            status, _ = await call(h, "PUT", "/v1/zones/nope/gain", {"gain_db": -3})
            assert status == 404
            status, body = await call(h, "PUT", "/v1/endpoints/ep-b/gain", {"gain_db": -20})
            assert status == 200
            assert body == {
                "kind": "endpoint",
                "id": "ep-b",
                "gain_db": -20.0,
                "gain_db_config": 0.0,
                "gain_source": "api",
            }
        finally:
            await h.close()
    async with Service(config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            status, eps = await call(h, "GET", "/v1/endpoints", as_="viewer")
            by_id = {e["endpoint_id"]: e for e in eps["endpoints"]}
            assert by_id["ep-b"]["gain_db"] == -20.0 and by_id["ep-b"]["gain_source"] == "api"
            assert by_id["ep-c"]["gain_db"] == -12.0 and by_id["ep-c"]["gain_source"] == "config"
            status, body = await call(h, "PUT", "/v1/endpoints/ep-b/gain", {"gain_db": None})
            assert status == 200 and body["gain_db"] == 0.0 and body["gain_source"] == "config"
            fmt = ["pcm_s16le/16000"]
            plain = await h.endpoint("ep-b", ["hall"], fmt)
            quiet = await h.endpoint("ep-c", ["hall"], fmt)  # endpoint gain -12
            both = await h.endpoint("ep-a", ["hall", "gate"], fmt)  # zones 0 and -6: highest
            gate = await h.endpoint("ep-d", ["gate"], fmt)  # zone -6
            status, ann = await call(
                h, "POST", "/v1/announcements", {"text": "Mind the gap, please.", "zones": ["all"]}
            )
            assert status == 202
            await h.wait_receipts(ann["id"], ["ep-a", "ep-b", "ep-c", "ep-d"])
            started = {
                name: next(
                    e
                    for e in ep.events
                    if e["type"] == "announcement_started" and e["announcement_id"] == ann["id"]
                )
                for name, ep in (("plain", plain), ("quiet", quiet), ("both", both), ("gate", gate))
            }
            assert {k: v["gain_db"] for k, v in started.items()} == {
                "plain": 0.0,
                "quiet": -12.0,
                "both": 0.0,
                "gate": -6.0,
            }
            ref = np.frombuffer(bytes(plain.announcements[ann["id"]].pcm), "<i2").astype(float)
            assert np.abs(ref).max() > 1000
            for ep, gain in ((quiet, -12.0), (gate, -6.0), (both, 0.0)):
                got = np.frombuffer(bytes(ep.announcements[ann["id"]].pcm), "<i2").astype(float)
                assert len(got) == len(ref)
                want = np.rint(ref * 10 ** (gain / 20))
                assert np.abs(got - want).max() <= 1, gain
                ratio_db = 20 * np.log10(np.sqrt(np.mean(got**2)) / np.sqrt(np.mean(ref**2)))
                assert abs(ratio_db - gain) < 0.05
        finally:
            await h.close()


async def test_api_templates_are_warmed_into_the_runware_cache_at_start(tmp_path):
    from broadcaster.store import Store, TemplateRow
    from tests.fakes.runware import FakeRunware

    from .test_runware_service import runware_config

    async with FakeRunware(api_key="test-key") as fake:
        cfg = runware_config(fake, tmp_path / "cache")
        now = datetime.now(UTC)
        store = Store.open(cfg.store.path)
        try:
            store.upsert_template(
                TemplateRow(
                    name="closing",
                    data={
                        "name": "closing",
                        "text": "The ticket office closes soon.",
                        "zones": ["all"],
                    },
                    created_at=now,
                    updated_at=now,
                )
            )
        finally:
            store.close()
        service = Service(cfg, environ={"RUNWARE_API_KEY": "test-key"})
        await service.start()
        try:
            report = service.warm_up
            assert report is not None
            await asyncio.wait_for(report.done.wait(), 60)
            assert report.templates == 1 and report.failed == 0
            assert [t["speech"]["text"] for t in fake.tasks_received] == [
                "The ticket office closes soon."
            ]
        finally:
            await service.stop()
