"""kill -9 the real server mid-work and start it again: nothing lost, nothing played twice."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from broadcaster.config import hash_token
from broadcaster.endpoint import ReferenceEndpoint

from .served import start_server, stop

pytestmark = pytest.mark.integration


def write_config(path: Path, store: Path) -> None:
    path.write_text(
        f"""
[server]
http_port = 0
ws_port = 0
[store]
path = "{store}"
[streaming]
playout_delay_ms = 200
[[zones]]
id = "hall"
[[endpoints]]
id = "ep"
token_hash = "{hash_token("t")}"
zones = ["hall"]
[[api_tokens]]
id = "admin"
role = "admin"
token_hash = "{hash_token("test-admin-token")}"
"""
    )


async def get(http, base, path):
    async with http.get(f"{base}{path}") as r:
        return await r.json()


async def test_kill_9_with_work_pending_loses_nothing_and_doubles_nothing(tmp_path):
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
        async with aiohttp.ClientSession(
            headers={"Authorization": "Bearer test-admin-token"}
        ) as http:
            ids = []
            for text in (
                "First, a longer announcement that is playing when the server dies. " * 2,
                "Second announcement.",
                "Third announcement.",
            ):
                async with http.post(
                    f"{api}/v1/announcements", json={"text": text, "zones": ["hall"]}
                ) as r:
                    assert r.status == 202
                    ids.append((await r.json())["id"])
            # the first is on air, the others wait in the zone's queue
            for _ in range(300):
                body = await get(http, api, f"/v1/announcements/{ids[0]}")
                if body["chunks"] > 20:
                    break
                await asyncio.sleep(0.02)
            assert (await get(http, api, f"/v1/announcements/{ids[1]}"))["state"] == "queued"
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            drain.cancel()

            proc, api, _, drain, _ = await start_server(config, http_port, ws_port)
            await asyncio.wait_for(endpoint.joined.wait(), 20)  # reconnected by itself
            finals = {}
            for ann_id in ids:
                for _ in range(600):
                    body = await get(http, api, f"/v1/announcements/{ann_id}")
                    if body["state"] not in ("queued", "playing"):
                        break
                    await asyncio.sleep(0.05)
                finals[ann_id] = body
            history = await get(http, api, "/v1/announcements?limit=10")
        assert finals[ids[0]]["state"] == "failed"
        assert finals[ids[0]]["reason"] == "interrupted by a restart while playing"
        assert finals[ids[1]]["state"] == finals[ids[2]]["state"] == "finished", finals  # not lost
        for _ in range(100):
            if all(
                endpoint.announcements.get(i) and endpoint.announcements[i].status != "receiving"
                for i in ids[1:]
            ):
                break
            await asyncio.sleep(0.05)
        for ann_id in ids[1:]:
            rec = endpoint.announcements[ann_id]
            assert rec.status == "complete" and rec.seqs == list(range(rec.chunks))  # once, whole
        started = [
            e["announcement_id"] for e in endpoint.events if e["type"] == "announcement_started"
        ]
        assert started.count(ids[0]) == 1  # the interrupted one was not played again
        assert started.count(ids[1]) == 1 and started.count(ids[2]) == 1
        listed = {a["id"]: a["state"] for a in history["announcements"]}
        assert set(ids) <= set(listed)
    finally:
        endpoint.stop()
        ep_task.cancel()
        await stop(proc, drain)
