"""The seed document's four examples ship as templates and make exactly the seed's requests."""

import json
from pathlib import Path

import pytest

from broadcaster.clock import FakeClock
from broadcaster.config import load_config
from broadcaster.model import SpeechRequest
from broadcaster.speech.runware.engine import RunwareEngine
from broadcaster.speech.runware.schema import build_task

ROOT = Path(__file__).resolve().parents[2]
SEEDS = json.loads((ROOT / "tests" / "unit" / "seed_requests.json").read_text())


@pytest.mark.parametrize("seed", SEEDS, ids=[s["name"] for s in SEEDS])
def test_template_request_matches_the_seed(seed):
    cfg = load_config(ROOT / "configs" / "demo.toml")
    tpl = cfg.template(seed["name"])
    assert tpl is not None and not tpl.split  # one take, as in the seed
    engine = RunwareEngine(client=None, clock=FakeClock())  # type: ignore[arg-type]
    text = tpl.compiled().render({}, language=tpl.language)  # the variables' defaults
    request = SpeechRequest(
        text=text,
        voice=tpl.voice,
        language=tpl.language,
        speed=tpl.speed,
        style=tpl.style,
        max_new_tokens=tpl.max_new_tokens,
    )
    assert len(text) <= engine.max_request_chars
    wire = build_task(**engine.task_fields(request)).to_wire()
    for key in ("taskType", "model", "positivePrompt", "speech", "settings"):
        assert wire[key] == seed[key], key
    assert wire["speech"]["text"] == seed["speech"]["text"]
    assert wire["settings"]["maxNewTokens"] == seed["settings"]["maxNewTokens"] == 2048
