"""How long the Runware cache warm-up takes for the demo's templates.

Runs the real service with configs/demo.toml's templates against the local fake
Runware server (tests/fakes) at a synthesis latency of 400 ms + 4 ms per character,
for each warm-up concurrency, with an empty cache; then once more on the warm cache
(a restart). Prints the segments, the time, the cost and the Runware tasks sent.

    python bench/warm_up.py [--concurrency 1 2 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from _api import api_tokens

from broadcaster.app import Service
from broadcaster.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.fakes
from tests.fakes.runware import FakeRunware  # noqa: E402


def config(fake: FakeRunware, cache: Path, concurrency: int):
    demo = load_config(ROOT / "configs" / "demo.toml")
    templates = [{**t.model_dump(exclude_unset=True), "zones": ["z"]} for t in demo.templates]
    return parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0},
            "store": {"path": ":memory:"},
            "api_tokens": api_tokens(),
            "speech": {
                "engine": "runware",
                "runware": {
                    "ws_url": fake.ws_url,
                    "rest_url": fake.rest_url,
                    "cache_dir": str(cache),
                    "warm_up_concurrency": concurrency,
                },
            },
            "zones": [{"id": "z"}],
            "templates": templates,
        }
    )


async def warm(fake: FakeRunware, cache: Path, concurrency: int) -> tuple[dict[str, object], int]:
    before = len(fake.tasks_received)
    svc = Service(config(fake, cache, concurrency), environ={"RUNWARE_API_KEY": "bench"})
    await svc.start()
    try:
        assert svc.warm_up is not None
        await svc.warm_up.done.wait()
        return svc.warm_up.as_dict(), len(fake.tasks_received) - before
    finally:
        await svc.stop()


async def main(levels: list[int]) -> None:
    async with FakeRunware(api_key="bench") as fake:
        fake.set_latency(base_ms=400, per_char_ms=4)
        print("demo templates on the fake Runware at 400 ms + 4 ms/char")
        print(
            f"{'run':<26}{'templates':>10}{'segments':>9}{'time s':>8}{'tasks':>7}{'cost USD':>10}"
        )
        for level in levels:
            cache = Path(tempfile.mkdtemp())
            for name in (f"cold, {level} at a time", f"restart, {level} at a time"):
                report, tasks = await warm(fake, cache, level)
                print(
                    f"{name:<26}{report['templates']:>10}{report['segments']:>9}"
                    f"{report['elapsed_s']:>8.1f}{tasks:>7}{report['cost_usd']:>10}"
                )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    a = p.parse_args()
    asyncio.run(main(a.concurrency))
