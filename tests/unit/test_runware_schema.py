"""The audioInference task model: every rule of the seed parameter reference."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from broadcaster.speech.runware.errors import ErrorCategory, RunwareError
from broadcaster.speech.runware.schema import (
    MODEL_ID,
    AudioInferenceTask,
    AudioResult,
    DeliveryMethod,
    OutputFormat,
    OutputType,
    TaskValidationError,
    audio_extension,
    authentication_task,
    build_task,
    decode_inline_audio,
    get_response_task,
    max_new_tokens_for,
    parse_audio_result,
    ping_task,
    validate_task,
)

# The four examples of the seed document, request JSON copied verbatim.
SEED_REQUESTS: dict[str, dict[str, Any]] = {
    "museum": {
        "taskType": "audioInference",
        "taskUUID": "4a9082fd-1865-4261-a0bc-c6cfe96001fc",
        "model": "alibaba:qwen@3-tts-1.7b-customvoice",
        "positivePrompt": "Calm, polished museum guide voice with refined diction and a growing undercurrent of suspense. Begin warmly and informative, then gradually sharpen the tension without becoming frantic.",
        "speech": {
            "text": "Welcome to Gallery Twelve, home of the Harrow Collection. Please pause in front of the porcelain crane with cobalt feathers and a gold-tipped beak. At first glance, it appears delicate, almost weightless, yet the base is reinforced with hidden iron pins, a technique used to protect objects that were expected to travel long distances. If you look closely at the label, you may notice a discrepancy. The accession number ends in 314. The crane before you ends in 341. That is not a printing error. Security has asked that visitors remain where they are and avoid the east corridor. A replacement has been placed on display within the last seven minutes. The original artifact is missing. If you are wearing a gray wool hat, carrying a folded map, and standing nearest the skylight, this message is for you: the case you opened triggered a silent pressure alarm. Please set the object down carefully. Museum staff are approaching, and no one needs to get hurt. For all other guests, thank you for your patience. The tour will resume shortly.",
            "voice": "vivian",
            "language": "English",
            "speed": 0.97,
        },
        "settings": {"maxNewTokens": 2048},
    },
    "midnight_train": {
        "taskType": "audioInference",
        "taskUUID": "8a7a66d5-0479-4f38-9796-7f2e42ee7ad5",
        "model": "alibaba:qwen@3-tts-1.7b-customvoice",
        "positivePrompt": "Speak with composed professionalism, warm reassurance, and crisp public-address clarity. Slight ambient urgency, but never panicked.",
        "speech": {
            "text": "Attention passengers waiting for the northbound line. The twelve forty service to Greenhaven is currently delayed by approximately eighteen minutes due to a signal check beyond Westbridge. We apologize for the inconvenience. If you are continuing to Hill Square, please remain on platform two. Connecting passengers for the coastal route should follow updated departure screens and listen for further announcements. Thank you for your patience, and please stand clear of the platform edge.",
            "voice": "vivian",
            "language": "English",
            "speed": 0.96,
        },
        "settings": {"maxNewTokens": 2048},
    },
    "seaside_bulletin": {
        "taskType": "audioInference",
        "taskUUID": "72068ae4-7c01-433f-8ead-e4a2f58864b9",
        "model": "alibaba:qwen@3-tts-1.7b-customvoice",
        "positivePrompt": "Calm, authoritative coastal radio announcer voice with crisp diction, steady urgency, and clear phrasing for public safety communication. Avoid panic; sound reassuring and organized.",
        "speech": {
            "text": "Attention residents of Harrow Point and nearby marinas. This is a weather and harbor safety bulletin issued at 6:40 a.m. A fast-moving squall line is expected to reach the bay within twenty minutes, bringing sudden wind gusts, sharp visibility loss, and dangerous surface chop. Small craft should return to dock immediately. Ferry passengers should expect temporary suspension of service until conditions stabilize. Secure loose equipment on piers, move away from exposed breakwaters, and keep access roads clear for response crews. If you are already on the water and cannot return safely, contact harbor control on channel sixteen and report your location, vessel color, and number of passengers. Repeat: small craft return to dock immediately. Further updates will follow in ten minutes.",
            "voice": "ryan",
            "language": "English",
            "speed": 0.96,
        },
        "settings": {"maxNewTokens": 2048},
    },
    "orbital_docking": {
        "taskType": "audioInference",
        "taskUUID": "2af3ff02-0808-4557-ab22-3f98d59b1fb5",
        "model": "alibaba:qwen@3-tts-1.7b-customvoice",
        "positivePrompt": "Calm, authoritative station announcer with crisp diction, controlled urgency, and reassuring professionalism. Emphasize safety terms clearly, with brief natural pauses between numbered instructions.",
        "speech": {
            "text": "Attention incoming crews and transfer passengers. This is Dock Ring Four arrival briefing for orbital cycle seventeen. Due to micro-debris activity in the western approach corridor, all docking craft must reduce approach speed and maintain manual confirmation during final alignment. Please remain seated until pressure equalization is complete and the green entry band appears above your hatch. Travelers connecting to medical, customs, or long-haul berths should proceed by the blue guidance line after disembarkation. If you hear a double chime, stand by for route reassignment and await staff direction. For your safety, do not unseal cargo cages, remove tether tags, or cross any marked maintenance threshold. Welcome to Meridian Transfer Hub, and thank you for your precision and patience.",
            "voice": "serena",
            "language": "English",
            "speed": 0.97,
        },
        "settings": {"maxNewTokens": 2048},
    },
}

SEED_RESPONSES: list[dict[str, Any]] = [
    {
        "taskType": "audioInference",
        "taskUUID": "4a9082fd-1865-4261-a0bc-c6cfe96001fc",
        "audioUUID": "af1e5bfc-25d5-49cc-a13e-fea28fc57bcf",
        "audioURL": "https://am.runware.ai/audio/os/a24d12/ws/5/ai/af1e5bfc-25d5-49cc-a13e-fea28fc57bcf.wav",
        "cost": 0.0006,
    },
    {
        "taskType": "audioInference",
        "taskUUID": "8a7a66d5-0479-4f38-9796-7f2e42ee7ad5",
        "audioUUID": "9d17b034-814c-45db-af72-36d85dd8dc02",
        "audioURL": "https://am.runware.ai/audio/os/a10d08/ws/5/ai/9d17b034-814c-45db-af72-36d85dd8dc02.wav",
        "cost": 0.0003,
    },
    {
        "taskType": "audioInference",
        "taskUUID": "72068ae4-7c01-433f-8ead-e4a2f58864b9",
        "audioUUID": "79b099fe-9278-4a6f-915c-95046f14361d",
        "audioURL": "https://am.runware.ai/audio/os/a09d21/ws/5/ai/79b099fe-9278-4a6f-915c-95046f14361d.wav",
        "cost": 0.0004,
    },
    {
        "taskType": "audioInference",
        "taskUUID": "2af3ff02-0808-4557-ab22-3f98d59b1fb5",
        "audioUUID": "0fd5cca0-2779-47c4-a8de-9305eafd71a0",
        "audioURL": "https://am.runware.ai/audio/os/a22d05/ws/5/ai/0fd5cca0-2779-47c4-a8de-9305eafd71a0.wav",
        "cost": 0.0004,
    },
]

VOICES = [
    "vivian",
    "serena",
    "uncle_fu",
    "dylan",
    "eric",
    "ryan",
    "aiden",
    "ono_anna",
    "sohee",
    "auto",
]
LANGUAGES = [
    "Auto", "English", "Chinese", "Japanese", "Korean", "German",
    "French", "Russian", "Portuguese", "Spanish", "Italian",
]  # fmt: skip

# audioSettings limits as printed in the seed document, typed in again by hand:
# (format, channels, sample rate Hz, min kbps, max kbps). MP3 rows hold for 1 and 2 channels.
MP3_ROWS = [
    (8000, 8, 64), (11025, 8, 64), (12000, 8, 64),
    (16000, 8, 160), (22050, 8, 160), (24000, 8, 160),
    (32000, 32, 320), (44100, 32, 320), (48000, 32, 320),
]  # fmt: skip
OGG_MONO_ROWS = [(8000, 8, 40), (12000, 16, 48), (16000, 16, 96), (24000, 16, 80), (48000, 32, 224)]
OGG_STEREO_ROWS = [
    (8000, 16, 80),
    (12000, 16, 96),
    (16000, 24, 192),
    (24000, 32, 160),
    (48000, 48, 256),
]
TABLE = (
    [("MP3", ch, rate, lo, hi) for ch in (1, 2) for rate, lo, hi in MP3_ROWS]
    + [("OGG", 1, rate, lo, hi) for rate, lo, hi in OGG_MONO_ROWS]
    + [("OGG", 2, rate, lo, hi) for rate, lo, hi in OGG_STEREO_ROWS]
)
ROW_IDS = [f"{f}-{c}ch-{r}" for f, c, r, _, _ in TABLE]


def task(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"speech": {"text": "Platform two."}}
    for key, value in over.items():
        if key.startswith("speech_"):
            data["speech"][key.removeprefix("speech_")] = value
        else:
            data[key] = value
    return data


def refused(data: dict[str, Any]) -> TaskValidationError:
    with pytest.raises(TaskValidationError) as e:
        validate_task(data)
    return e.value


def audio(fmt: str, channels: int, rate: int, bitrate: int) -> dict[str, Any]:
    return task(
        outputFormat=fmt,
        audioSettings={"sampleRate": rate, "bitrate": bitrate, "channels": channels},
    )


# --- defaults -------------------------------------------------------------------------


def test_defaults_follow_the_api():
    t = build_task(speech={"text": "hello"})
    assert t.taskType == "audioInference"
    assert t.model == MODEL_ID
    assert uuid.UUID(t.taskUUID).version == 4
    assert t.outputType is OutputType.URL
    assert t.outputFormat is OutputFormat.MP3
    assert t.deliveryMethod is DeliveryMethod.SYNC
    assert t.speech.voice == "auto"
    assert t.speech.language == "Auto"
    assert t.speech.speed == 1
    assert t.includeCost is False
    assert t.numberResults == 1
    assert t.settings is None and t.audioSettings is None and t.ttl is None


def test_every_task_gets_its_own_uuid():
    assert build_task(speech={"text": "a"}).taskUUID != build_task(speech={"text": "a"}).taskUUID


def test_audio_settings_channels_default_to_stereo():
    t = validate_task(task(audioSettings={"sampleRate": 24000, "bitrate": 64}))
    assert t.audioSettings is not None and t.audioSettings.channels == 2


# --- speech ----------------------------------------------------------------------------


@pytest.mark.parametrize("speed", [0.25, 0.26, 0.97, 1, 1.0, 1.5, 3.99, 4, 4.0])
def test_speed_accepted(speed):
    assert validate_task(task(speech_speed=speed)).speech.speed == pytest.approx(speed)


@pytest.mark.parametrize("speed", [0.24, 4.01, 1.234, 0.255, 0, -1, float("nan"), float("inf")])
def test_speed_refused(speed):
    assert refused(task(speech_speed=speed)).field == "speech.speed"


@pytest.mark.parametrize("speed", ["1.0", True, None])
def test_speed_must_be_a_number(speed):
    assert refused(task(speech_speed=speed)).field == "speech.speed"


def test_speed_float_noise_is_tidied():
    assert validate_task(task(speech_speed=0.1 + 0.2 + 0.7)).speech.speed == 1.0
    assert validate_task(task(speech_speed=0.29 * 3)).to_wire()["speech"]["speed"] == 0.87


def test_text_lengths():
    assert validate_task(task(speech_text="a" * 2000)).speech.text == "a" * 2000
    e = refused(task(speech_text="a" * 2001))
    assert e.field == "speech.text" and "2000" in e.message
    assert refused(task(speech_text="")).field == "speech.text"
    assert refused(task(speech_text="   \n")).field == "speech.text"
    assert refused({"speech": {}}).field == "speech.text"
    assert refused({"speech": {"text": 5}}).field == "speech.text"


def test_text_counts_characters_not_bytes():
    assert validate_task(task(speech_text="中" * 2000)).speech.text == "中" * 2000


@pytest.mark.parametrize("voice", VOICES)
def test_voices_accepted(voice):
    assert validate_task(task(speech_voice=voice)).speech.voice == voice


@pytest.mark.parametrize("voice", ["Vivian", "uncle-fu", "Uncle_Fu", "alice", "", "AUTO"])
def test_voices_refused(voice):
    e = refused(task(speech_voice=voice))
    assert e.field == "speech.voice"
    assert "ono_anna" in e.message  # the message lists the allowed ones


@pytest.mark.parametrize("language", LANGUAGES)
def test_languages_accepted(language):
    assert validate_task(task(speech_language=language)).speech.language == language


@pytest.mark.parametrize("language", ["english", "en", "Cantonese", "", "auto"])
def test_languages_refused(language):
    assert refused(task(speech_language=language)).field == "speech.language"


def test_unknown_speech_field_refused():
    # Keys other models take (volume, pitch, ...) must not be sent to Qwen.
    e = refused(task(speech_volume=1.0))
    assert e.field == "speech.volume" and "unknown" in e.message


def test_speech_required():
    assert refused({}).field == "speech"
    assert refused({"speech": "hello"}).field == "speech"


# --- task-level fields -------------------------------------------------------------------


def test_task_uuid_v4_required():
    good = str(uuid.uuid4())
    assert validate_task(task(taskUUID=good)).taskUUID == good
    assert validate_task(task(taskUUID=good.upper())).taskUUID == good
    for bad in [str(uuid.uuid1()), str(uuid.uuid3(uuid.NAMESPACE_DNS, "x")), "not-a-uuid",
                good.replace("-", ""), "{" + good + "}", "", 5]:  # fmt: skip
        assert refused(task(taskUUID=bad)).field == "taskUUID", bad


def test_task_type_and_model_fixed():
    assert refused(task(taskType="imageInference")).field == "taskType"
    e = refused(task(model="alibaba:qwen@3-tts-1.7b-voicedesign"))
    assert e.field == "model" and MODEL_ID in e.message
    assert refused(task(model=None)).field == "model"


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_number_results_accepted(n):
    assert validate_task(task(numberResults=n)).numberResults == n


@pytest.mark.parametrize("n", [0, 5, -1, 2.0, "2", True])
def test_number_results_refused(n):
    assert refused(task(numberResults=n)).field == "numberResults"


def test_ttl():
    assert validate_task(task(ttl=60)).ttl == 60
    assert validate_task(task(ttl=86400, outputType="URL")).ttl == 86400
    assert refused(task(ttl=59)).field == "ttl"
    assert refused(task(ttl=60.0)).field == "ttl"
    for output_type in ("base64Data", "dataURI"):
        e = refused(task(ttl=3600, outputType=output_type))
        assert e.field == "ttl" and "URL" in e.message


@pytest.mark.parametrize("field", ["webhookURL", "uploadEndpoint"])
def test_uris(field):
    for good in ["https://example.com/hook?token=abc", "http://10.0.0.5:8080/x"]:
        assert getattr(validate_task(task(**{field: good})), field) == good
    for bad in ["ftp://example.com/x", "example.com/x", "https://", "https://a b.com/", "", 7]:
        assert refused(task(**{field: bad})).field == field, bad


def test_enums():
    for value in ("URL", "base64Data", "dataURI"):
        assert validate_task(task(outputType=value)).outputType == value
    for value in ("MP3", "WAV", "FLAC", "OGG"):
        assert validate_task(task(outputFormat=value)).outputFormat == value
    for value in ("sync", "async"):
        assert validate_task(task(deliveryMethod=value)).deliveryMethod == value
    assert refused(task(outputType="url")).field == "outputType"
    assert refused(task(outputType="base64")).field == "outputType"
    assert refused(task(outputFormat="mp3")).field == "outputFormat"
    assert refused(task(outputFormat="AAC")).field == "outputFormat"
    assert refused(task(deliveryMethod="stream")).field == "deliveryMethod"


def test_include_cost_and_prompt():
    assert validate_task(task(includeCost=True)).includeCost is True
    assert refused(task(includeCost="yes")).field == "includeCost"
    assert refused(task(includeCost=1)).field == "includeCost"
    assert validate_task(task(positivePrompt="Speak calmly.")).positivePrompt == "Speak calmly."
    assert refused(task(positivePrompt="")).field == "positivePrompt"
    assert refused(task(positivePrompt=3)).field == "positivePrompt"


def test_settings():
    assert validate_task(task(settings={"maxNewTokens": 1})).settings is not None
    assert refused(task(settings={"maxNewTokens": 0})).field == "settings.maxNewTokens"
    assert refused(task(settings={"maxNewTokens": 2048.0})).field == "settings.maxNewTokens"
    assert refused(task(settings={})).field == "settings.maxNewTokens"
    assert refused(task(settings={"maxNewTokens": 10, "topP": 1})).field == "settings.topP"


@pytest.mark.parametrize("field", ["seed", "negativePrompt", "duration", "foo"])
def test_unknown_fields_refused(field):
    e = refused(task(**{field: 1}))
    assert e.field == field and "unknown" in e.message


def test_error_names_the_first_bad_field_and_lists_all():
    e = refused(task(taskUUID="x", speech_speed=9, numberResults=0))
    assert e.field == "taskUUID"
    assert [f for f, _ in e.problems] == ["taskUUID", "speech.speed", "numberResults"]
    assert str(e).startswith("taskUUID: ")
    assert isinstance(e, ValueError)


def test_task_is_immutable():
    t = build_task(speech={"text": "x"})
    with pytest.raises(ValueError):
        t.ttl = 5  # type: ignore[misc]


# --- audioSettings tables -------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "channels", "rate", "low", "high"), TABLE, ids=ROW_IDS)
def test_audio_settings_table_edges(fmt, channels, rate, low, high):
    for bitrate in (low, high):
        s = validate_task(audio(fmt, channels, rate, bitrate)).audioSettings
        assert s is not None and (s.sampleRate, s.bitrate, s.channels) == (rate, bitrate, channels)
    for bitrate in (low - 1, high + 1):
        e = refused(audio(fmt, channels, rate, bitrate))
        assert e.field == "audioSettings.bitrate", (bitrate, e)
    assert str(high) in refused(audio(fmt, channels, rate, high + 1)).message


ALL_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 96000, 0)
TABLES = [
    ("MP3", 1, MP3_ROWS),
    ("MP3", 2, MP3_ROWS),
    ("OGG", 1, OGG_MONO_ROWS),
    ("OGG", 2, OGG_STEREO_ROWS),
]


@pytest.mark.parametrize(("fmt", "channels", "rows"), TABLES, ids=lambda x: str(x)[:8])
def test_unsupported_sample_rates_refused(fmt, channels, rows):
    # Each (format, channels) pair takes exactly the seed's sample rates, nothing else.
    allowed = {rate: low for rate, low, _ in rows}
    for rate in ALL_RATES:
        data = audio(fmt, channels, rate, allowed.get(rate, 64))
        if rate in allowed:
            validate_task(data)
            continue
        e = refused(data)
        assert e.field == "audioSettings.sampleRate"
        for r in allowed:  # the message names the allowed ones
            assert str(r) in e.message


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_audio_settings_refused_with_lossless(fmt):
    e = refused(audio(fmt, 1, 24000, 64))
    assert e.field == "audioSettings" and fmt in e.message
    assert validate_task(task(outputFormat=fmt)).audioSettings is None


def test_audio_settings_default_format_is_mp3():
    # No outputFormat: the API default MP3 applies, and so does its table.
    assert validate_task(task(audioSettings={"sampleRate": 44100, "bitrate": 320})).audioSettings
    e = refused(task(audioSettings={"sampleRate": 44100, "bitrate": 321}))
    assert e.field == "audioSettings.bitrate"


def test_audio_settings_fields():
    base = {"sampleRate": 24000, "bitrate": 64}
    assert refused(task(audioSettings={**base, "channels": 3})).field == "audioSettings.channels"
    assert refused(task(audioSettings={**base, "channels": 0})).field == "audioSettings.channels"
    assert refused(task(audioSettings={"bitrate": 64})).field == "audioSettings.sampleRate"
    assert refused(task(audioSettings={"sampleRate": 24000})).field == "audioSettings.bitrate"
    assert refused(task(audioSettings={**base, "bitrate": 7})).field == "audioSettings.bitrate"
    assert refused(task(audioSettings={**base, "bitrate": "64"})).field == "audioSettings.bitrate"
    assert refused(task(audioSettings={**base, "codec": "x"})).field == "audioSettings.codec"


# --- wire ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SEED_REQUESTS))
def test_seed_examples_round_trip_exactly(name):
    wire = SEED_REQUESTS[name]
    t = validate_task(wire)
    assert t.to_wire() == wire
    assert json.dumps(t.to_wire(), sort_keys=True) == json.dumps(wire, sort_keys=True)
    assert validate_task(t.to_wire()) == t


def test_to_wire_full_round_trip():
    t = build_task(
        taskUUID=str(uuid.uuid4()),
        positivePrompt="Calm and clear.",
        speech={"text": "Mind the gap.", "voice": "ryan", "language": "English", "speed": 1.25},
        settings={"maxNewTokens": 300},
        outputType="URL",
        outputFormat="OGG",
        audioSettings={"sampleRate": 48000, "bitrate": 128, "channels": 1},
        webhookURL="https://hooks.example.com/runware?k=1",
        deliveryMethod="async",
        uploadEndpoint="https://bucket.example.com/a.ogg?sig=x",
        ttl=3600,
        includeCost=True,
        numberResults=2,
    )
    wire = t.to_wire()
    assert wire == {
        "taskType": "audioInference",
        "taskUUID": t.taskUUID,
        "model": MODEL_ID,
        "positivePrompt": "Calm and clear.",
        "speech": {"text": "Mind the gap.", "voice": "ryan", "language": "English", "speed": 1.25},
        "settings": {"maxNewTokens": 300},
        "outputType": "URL",
        "outputFormat": "OGG",
        "audioSettings": {"sampleRate": 48000, "bitrate": 128, "channels": 1},
        "webhookURL": "https://hooks.example.com/runware?k=1",
        "deliveryMethod": "async",
        "uploadEndpoint": "https://bucket.example.com/a.ogg?sig=x",
        "ttl": 3600,
        "includeCost": True,
        "numberResults": 2,
    }
    assert json.loads(json.dumps(wire)) == wire  # plain JSON types only
    assert validate_task(wire) == t
    assert validate_task(wire).to_wire() == wire


def test_to_wire_leaves_out_unset_and_none():
    t = build_task(speech={"text": "x"}, positivePrompt=None, webhookURL=None)
    assert t.to_wire() == {
        "taskType": "audioInference",
        "taskUUID": t.taskUUID,
        "model": MODEL_ID,
        "speech": {"text": "x", "voice": "auto"},
    }
    full = t.to_wire(include_defaults=True)
    assert full["outputType"] == "URL" and full["outputFormat"] == "MP3"
    assert full["deliveryMethod"] == "sync" and full["speech"]["language"] == "Auto"
    assert "positivePrompt" not in full and "ttl" not in full
    assert validate_task(full).to_wire(include_defaults=True) == full


def test_other_tasks():
    assert ping_task() == {"taskType": "ping", "ping": True}
    assert authentication_task("k") == {"taskType": "authentication", "apiKey": "k"}
    session = str(uuid.uuid4())
    assert authentication_task("k", session) == {
        "taskType": "authentication",
        "apiKey": "k",
        "connectionSessionUUID": session,
    }
    with pytest.raises(ValueError):
        authentication_task("")
    u = str(uuid.uuid4())
    assert get_response_task(u) == {"taskType": "getResponse", "taskUUID": u}
    with pytest.raises(ValueError):
        get_response_task("nope")


# --- results -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("item", SEED_RESPONSES, ids=lambda i: i["taskUUID"][:8])
def test_parse_seed_responses(item):
    r = parse_audio_result(item)
    assert r.task_uuid == item["taskUUID"] and r.audio_uuid == item["audioUUID"]
    assert r.audio_url == item["audioURL"] and r.cost == item["cost"]
    assert decode_inline_audio(r) is None


def test_parse_base64_and_data_uri():
    payload = b"RIFF\x00\x01\x02fake wav"
    b64 = base64.b64encode(payload).decode()
    tid = str(uuid.uuid4())
    r = parse_audio_result(
        {"taskType": "audioInference", "taskUUID": tid, "audioUUID": "a1", "audioBase64Data": b64,
         "seed": 42, "resultIndex": 1, "cost": 0, "newKey": {"x": 1}}
    )  # fmt: skip
    assert (r.audio_base64, r.seed, r.result_index, r.cost, r.audio_url) == (b64, 42, 1, 0.0, None)
    assert decode_inline_audio(r) == payload
    r = parse_audio_result(
        {"taskUUID": tid, "audioUUID": "a2", "audioDataURI": f"data:audio/wav;base64,{b64}"}
    )
    assert decode_inline_audio(r) == payload
    r = parse_audio_result(
        {"taskUUID": tid, "audioDataURI": f"DATA:audio/mpeg;codecs=mp3;base64,{b64}"}
    )
    assert decode_inline_audio(r) == payload


def test_parse_poll_items():
    tid = str(uuid.uuid4())
    r = parse_audio_result({"taskUUID": tid, "status": "processing", "progress": 40})
    assert r.is_processing and not r.has_audio and decode_inline_audio(r) is None
    r = parse_audio_result(
        {"taskUUID": tid, "status": "success", "audioUUID": "u", "audioURL": "https://x/y.wav"}
    )
    assert r.status == "success" and r.has_audio
    with pytest.raises(RunwareError) as e:
        parse_audio_result(
            {
                "taskUUID": tid,
                "status": "error",
                "error": {"code": "timeoutProvider", "message": "slow"},
            }
        )
    assert (
        e.value.category is ErrorCategory.TIMEOUT and e.value.task_uuid == tid and e.value.retryable
    )


@pytest.mark.parametrize(
    "item",
    [
        {"taskUUID": "t", "audioUUID": "u"},
        {"taskUUID": "t", "status": "success"},
        {"audioURL": "https://x/y.mp3"},
        {"taskUUID": "t", "audioURL": 5},
        {"taskUUID": "t", "audioURL": "https://x", "cost": "0.1"},
        {"taskUUID": "t", "audioURL": "https://x", "seed": 1.5},
    ],
)
def test_parse_malformed(item):
    with pytest.raises(RunwareError) as e:
        parse_audio_result(item)
    assert e.value.code == "malformedResult"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"audio_base64": "not base64!"},
        {"audio_base64": ""},
        {"audio_base64": "===="},
        {"audio_data_uri": "data:audio/wav,plain%20text"},
        {"audio_data_uri": "audio/wav;base64,AAAA"},
        {"audio_data_uri": "data:audio/wav;base64"},
        {"audio_data_uri": "data:audio/wav;base64,@@@@"},
    ],
)
def test_decode_refuses_bad_payloads(kwargs):
    with pytest.raises(RunwareError) as e:
        decode_inline_audio(AudioResult(task_uuid="t", **kwargs))
    assert e.value.code == "malformedResult"


def test_decode_tolerates_line_breaks_and_missing_padding():
    payload = bytes(range(256)) * 3
    b64 = base64.b64encode(payload).decode()
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    assert decode_inline_audio(AudioResult(task_uuid="t", audio_base64=wrapped)) == payload
    assert decode_inline_audio(AudioResult(task_uuid="t", audio_base64="YWI")) == b"ab"


def test_audio_extension():
    assert [audio_extension(f) for f in OutputFormat] == [".mp3", ".wav", ".flac", ".ogg"]


# --- maxNewTokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SEED_REQUESTS))
def test_max_new_tokens_fits_seed_examples(name):
    speech = SEED_REQUESTS[name]["speech"]
    tokens = max_new_tokens_for(speech["text"], speech["speed"])
    assert tokens <= SEED_REQUESTS[name]["settings"]["maxNewTokens"]
    # ... yet covers the text read at a slow 10 characters per second.
    assert tokens >= len(speech["text"]) / 10 / speech["speed"] * 12.5


def test_max_new_tokens_bounds_and_scripts():
    assert max_new_tokens_for("Hi.") == 64
    assert max_new_tokens_for("中" * 2000) == 4096
    assert max_new_tokens_for("a" * 2000) <= 4096
    # CJK needs far more per character than Latin text.
    assert max_new_tokens_for("请注意" * 20) > 2 * max_new_tokens_for("abc" * 20)
    # Slower speech needs more; faster speech never gets less than speed 1.
    text = "Attention please, the train now arriving is the express service. " * 3
    assert max_new_tokens_for(text, 0.5) > max_new_tokens_for(text, 1.0)
    assert max_new_tokens_for(text, 2.0) == max_new_tokens_for(text, 1.0)
    # Whitespace padding does not inflate it.
    assert max_new_tokens_for("a  \n\n   b") == max_new_tokens_for("a b")
    with pytest.raises(ValueError):
        max_new_tokens_for("x", 0.1)


def test_max_new_tokens_is_a_valid_setting():
    t = build_task(
        speech={"text": "x" * 2000, "speed": 0.25},
        settings={"maxNewTokens": max_new_tokens_for("x" * 2000, 0.25)},
    )
    assert isinstance(t, AudioInferenceTask) and t.settings is not None
