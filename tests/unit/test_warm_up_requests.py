"""What the Runware cache warm-up synthesizes (pure): each template's fixed text, split
as an announcement of it is, once per distinct request."""

from __future__ import annotations

from pathlib import Path

from broadcaster.config import load_config, parse_config
from broadcaster.speech.runware.warmup import warm_requests
from broadcaster.speech.segmenter import split_text

ROOT = Path(__file__).resolve().parents[2]


def test_demo_templates_rendered_with_their_defaults():
    cfg = load_config(ROOT / "configs" / "demo.toml")
    items, skipped = warm_requests(cfg, max_text_chars=300, max_request_chars=2000)
    assert skipped == []
    assert {i.template for i in items} == {t.name for t in cfg.templates}
    by_template: dict[str, list[str]] = {}
    for item in items:
        by_template.setdefault(item.template, []).append(item.request.text)
    # split = false: one take, exactly the seed's text, voice, speed and style
    [midnight] = [i.request for i in items if i.template == "midnight-train-delay"]
    tpl = cfg.template("midnight-train-delay")
    assert tpl is not None
    assert midnight.text == tpl.compiled().render({}, language="English")
    assert (midnight.voice, midnight.speed, midnight.style) == (tpl.voice, tpl.speed, tpl.style)
    assert midnight.max_new_tokens == tpl.max_new_tokens == 2048
    # split: as the announcer splits, short first segment included
    safety = cfg.template("platform-safety")
    assert safety is not None
    assert by_template["platform-safety"] == split_text(
        safety.text, 300, cfg.speech.first_segment_max_chars
    )
    # translations are warmed in their language
    german = [
        i.request for i in items if i.template == "no-smoking" and i.request.language == "German"
    ]
    assert german and "Nichtraucherbahnhof" in german[0].text
    # defaults filled in (departure's text has variables, all with defaults)
    assert any("Greenhaven" in t for t in by_template["departure"])


def test_a_template_needing_a_value_is_skipped_and_requests_are_not_repeated():
    cfg = parse_config(
        {
            "zones": [{"id": "hall"}],
            "templates": [
                {"name": "gate", "text": "Gate {{ gate }} is open.", "variables": {"gate": "str"}},
                {"name": "a", "text": "Mind the gap."},
                {"name": "b", "text": "Mind the gap."},
                {"name": "c", "text": "Mind the gap.", "speed": 1.2},
            ],
        }
    )
    items, skipped = warm_requests(cfg, max_text_chars=300, max_request_chars=2000)
    assert skipped == ["gate"]
    assert [(i.template, i.request.speed) for i in items] == [("a", 1.0), ("c", 1.2)]
