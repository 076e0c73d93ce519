"""Issue 9: invalid speech values are refused before the provider, naming the field.

Everywhere a value can come from: API bodies (announcements, triggers), templates and
defaults in the config, and — as a last line — the Runware task check itself.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from broadcaster.api.schemas import AnnouncementRequest, TriggerRequest, field_errors
from broadcaster.clock import FakeClock
from broadcaster.config import ConfigError, parse_config
from broadcaster.model import SpeechRequest, check_speed
from broadcaster.speech.runware.engine import RunwareEngine
from broadcaster.speech.runware.schema import TaskValidationError, build_task

ZONES = [{"id": "hall"}]


def config_error(**sections: object) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config({"zones": ZONES, **sections}, "site.toml")
    return str(e.value)


def api_fields(body: dict[str, object], model: type[AnnouncementRequest] = AnnouncementRequest):
    with pytest.raises(ValidationError) as e:
        model.model_validate({"text": "Mind the gap.", **body})
    return {f["field"]: f["message"] for f in field_errors(e.value)}


# --- speed: on the model's 0.01 grid, 0.25-4, never rounded -------------------------------


@pytest.mark.parametrize("speed", [0.25, 0.97, 0.96, 1, 1.15, 0.57, 0.29, 2.33, 4])
def test_speeds_on_the_grid_are_kept_exactly(speed):
    assert check_speed(speed) == pytest.approx(speed, abs=1e-12)
    assert round(check_speed(speed), 2) == check_speed(speed)
    assert AnnouncementRequest.model_validate({"speed": speed}).speed == check_speed(speed)


@pytest.mark.parametrize("speed", [0.975, 1.005, 0.251, 3.999])
def test_a_speed_off_the_grid_is_refused_not_rounded(speed):
    message = api_fields({"speed": speed})["speed"]
    assert "multiple of 0.01" in message and "never rounded" in message
    assert "multiple of 0.01" in api_fields({"speed": speed}, TriggerRequest)["speed"]
    msg = config_error(templates=[{"name": "t", "text": "hi", "speed": speed}])
    assert msg.startswith("site.toml: templates[0].speed: must be a multiple of 0.01"), msg
    msg = config_error(speech={"default_speed": speed})
    assert msg.startswith("site.toml: speech.default_speed: must be a multiple of 0.01"), msg


def test_the_grid_message_names_both_neighbours():
    with pytest.raises(ValueError, match=r"0\.97 or 0\.98"):
        check_speed(0.975)


@pytest.mark.parametrize("speed", [0.24, 4.01, 0, -1])
def test_a_speed_out_of_range_is_refused(speed):
    assert "speed" in api_fields({"speed": speed})
    assert "templates[0].speed" in config_error(
        templates=[{"name": "t", "text": "hi", "speed": speed}]
    )


# --- booleans are not numbers ------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_speed_is_refused_in_api_bodies(value):
    assert "speed" in api_fields({"speed": value})
    assert "speed" in api_fields({"speed": value}, TriggerRequest)
    assert "priority" in api_fields({"priority": value})
    assert "repeats" in api_fields({"repeats": value})


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"templates": [{"name": "t", "text": "hi", "speed": True}]}, "templates[0].speed"),
        ({"templates": [{"name": "t", "text": "hi", "priority": True}]}, "templates[0].priority"),
        ({"templates": [{"name": "t", "text": "hi", "repeats": False}]}, "templates[0].repeats"),
        ({"speech": {"default_speed": True}}, "speech.default_speed"),
        ({"speech": {"first_audio_deadline_s": True}}, "speech.first_audio_deadline_s"),
        ({"speech": {"runware": {"max_in_flight": True}}}, "speech.runware.max_in_flight"),
        ({"speech": {"runware": {"ttl_s": True}}}, "speech.runware.ttl_s"),
        ({"server": {"http_port": True}}, "server.http_port"),
        ({"announcements": {"default_priority": False}}, "announcements.default_priority"),
    ],
)
def test_a_boolean_is_not_a_number_in_the_config(sections, key):
    msg = config_error(**sections)
    assert msg.startswith(f"site.toml: {key}: must be a number, not "), msg


def test_booleans_stay_booleans_in_the_config():
    cfg = parse_config(
        {"zones": ZONES, "speech": {"fallback": False, "runware": {"include_cost": False}}}
    )
    assert cfg.speech.fallback is False and cfg.speech.runware.include_cost is False


# --- style: a blank one is refused (not dropped) ------------------------------------------


@pytest.mark.parametrize("style", ["", " ", "\t\n ", "\u3000"])
def test_a_blank_style_is_refused_naming_the_field(style):
    assert "blank" in api_fields({"style": style})["style"]
    assert "blank" in api_fields({"style": style}, TriggerRequest)["style"]
    msg = config_error(templates=[{"name": "t", "text": "hi", "style": style}])
    assert msg.startswith("site.toml: templates[0].style: is blank"), msg


def test_a_style_with_words_is_kept_as_given():
    req = AnnouncementRequest.model_validate({"style": " Calm, reassuring. "})
    assert req.style == " Calm, reassuring. "


def test_the_task_check_refuses_a_blank_positive_prompt():
    with pytest.raises(TaskValidationError) as e:
        build_task(speech={"text": "hi", "voice": "ryan"}, positivePrompt="   ")
    assert e.value.field == "positivePrompt"


# --- the engine sends the speed as given (no silent rounding) -----------------------------


def test_the_runware_engine_does_not_round_a_speed_off_the_grid():
    engine = RunwareEngine(client=None, clock=FakeClock())  # type: ignore[arg-type]
    fields = engine.task_fields(SpeechRequest(text="hi", voice="ryan", speed=0.975))
    assert fields["speech"]["speed"] == 0.975  # type: ignore[index]
    with pytest.raises(TaskValidationError) as e:
        build_task(**fields)
    assert e.value.field == "speech.speed"
    ok = engine.task_fields(SpeechRequest(text="hi", voice="ryan", speed=0.97))
    assert build_task(**ok).speech.speed == 0.97


# --- URLs of [speech.runware], checked at load with the key named -------------------------


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("ws_url", "https://ws-api.runware.ai/v1", "must start with ws:// or wss://"),
        ("ws_url", "wss//ws-api.runware.ai/v1", "must start with ws:// or wss://"),
        ("ws_url", "ws-api.runware.ai", "must start with ws:// or wss://"),
        ("ws_url", "wss:///v1", "must be an absolute"),
        ("ws_url", "wss://host:port/v1", "not a valid URL"),
        ("rest_url", "wss://api.runware.ai/v1", "must start with http:// or https://"),
        ("rest_url", "https://api.runware .ai/v1", "must be an absolute"),
        ("webhook_url", "ftp://example.com/hook", "must start with http:// or https://"),
        ("webhook_url", "example.com/hook", "must start with http:// or https://"),
        ("upload_endpoint", "s3://bucket/key", "must start with http:// or https://"),
        ("upload_endpoint", "https://:99/up", "must be an absolute"),
    ],
)
def test_runware_urls_are_checked_at_load(key, value, problem):
    msg = config_error(speech={"runware": {key: value}})
    assert msg.startswith(f"site.toml: speech.runware.{key}: {problem}"), msg


def test_good_runware_urls_load():
    cfg = parse_config(
        {
            "zones": ZONES,
            "speech": {
                "runware": {
                    "ws_url": "ws://127.0.0.1:9/v1",
                    "rest_url": "http://127.0.0.1:9/v1",
                    "webhook_url": "https://hooks.example.com/runware?token=x",
                    "upload_endpoint": "https://bucket.s3.amazonaws.com/a.wav?X-Amz-Signature=1",
                }
            },
        }
    )
    assert cfg.speech.runware.ws_url == "ws://127.0.0.1:9/v1"


def test_a_boolean_is_not_a_number_in_a_configured_schedule():
    msg = config_error(
        templates=[{"name": "t", "text": "hi", "zones": ["hall"]}],
        schedules=[{"id": "s", "template": "t", "every_s": True}],
    )
    assert "site.toml: schedules[0] (id 's').every_s: must be a number, not true" in msg, msg
