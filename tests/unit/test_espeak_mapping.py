"""The pure mapping half of the espeak engine: no library is loaded here."""

from __future__ import annotations

import math

import pytest

from broadcaster.model import LANGUAGES, SPEED_MAX, SPEED_MIN, VOICES, SpeechRequest
from broadcaster.speech.engine import SpeechError
from broadcaster.speech.espeak import (
    ESPEAK_LANGUAGES,
    SYNTH_FLAGS,
    VOICE_STYLES,
    EspeakVoice,
    atempo_factors,
    clean_text,
    detect_language,
    espeak_voice_for,
    plan_synthesis,
    resolve_language,
    resolve_voice,
    speed_plan_for,
)

FEMALE = {"vivian", "serena", "ono_anna", "sohee"}


# -- voices -------------------------------------------------------------------------------


def test_every_production_voice_has_a_style() -> None:
    assert set(VOICE_STYLES) == set(VOICES)


@pytest.mark.parametrize("voice", VOICES)
def test_voice_gender_and_parameter_ranges(voice: str) -> None:
    style = VOICE_STYLES[voice]
    assert style.variant[0] == ("f" if voice in FEMALE else "m")
    assert 0 <= style.pitch <= 100
    assert 0 <= style.pitch_range <= 100


def test_voices_are_distinct() -> None:
    settings = {(s.variant, s.pitch, s.pitch_range) for s in VOICE_STYLES.values()}
    assert len(settings) == len(VOICES)
    # Within a gender no two voices share a variant, so their timbres differ too.
    variants = [s.variant for s in VOICE_STYLES.values()]
    assert len(set(variants)) == len(variants)


def test_older_man_is_lowest_and_playful_woman_highest() -> None:
    pitches = {v: s.pitch for v, s in VOICE_STYLES.items()}
    assert min(pitches, key=lambda v: pitches[v]) == "uncle_fu"
    assert max(pitches, key=lambda v: pitches[v]) == "ono_anna"


def test_espeak_voice_name_combines_language_and_variant() -> None:
    v = espeak_voice_for("vivian", "Chinese")
    assert v == EspeakVoice(
        language="cmn",
        variant=VOICE_STYLES["vivian"].variant,
        pitch=VOICE_STYLES["vivian"].pitch,
        pitch_range=VOICE_STYLES["vivian"].pitch_range,
        preset="vivian",
    )
    assert v.name == f"cmn+{VOICE_STYLES['vivian'].variant}"


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("English", "en-us"),
        ("Chinese", "cmn"),
        ("Japanese", "ja"),
        ("Korean", "ko"),
        ("German", "de"),
        ("French", "fr"),
        ("Russian", "ru"),
        ("Portuguese", "pt"),
        ("Spanish", "es"),
        ("Italian", "it"),
    ],
)
def test_language_mapping(language: str, expected: str) -> None:
    assert ESPEAK_LANGUAGES[language] == expected
    assert espeak_voice_for("ryan", language).language == expected


def test_every_concrete_language_is_mapped() -> None:
    assert set(ESPEAK_LANGUAGES) == set(LANGUAGES) - {"Auto"}


def test_names_are_case_insensitive() -> None:
    assert espeak_voice_for(" Uncle_Fu ", "chinese") == espeak_voice_for("uncle_fu", "Chinese")
    assert resolve_language("AUTO", "hello") == "English"


@pytest.mark.parametrize("voice", ["", "alice", "ryan2"])
def test_unknown_voice(voice: str) -> None:
    with pytest.raises(SpeechError, match="unknown voice"):
        espeak_voice_for(voice, "English")


@pytest.mark.parametrize("language", ["", "Klingon", "en"])
def test_unknown_language(language: str) -> None:
    with pytest.raises(SpeechError, match="unknown language"):
        espeak_voice_for("ryan", language)


@pytest.mark.parametrize(
    ("language", "voice"),
    [
        ("Chinese", "vivian"),
        ("Japanese", "ono_anna"),
        ("Korean", "sohee"),
        ("English", "ryan"),
        ("German", "ryan"),
        ("Italian", "ryan"),
    ],
)
def test_auto_voice_fits_language(language: str, voice: str) -> None:
    assert resolve_voice("auto", language) == voice
    assert espeak_voice_for("Auto", language).preset == voice


# -- language detection -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("各位旅客请注意，列车即将进站。", "Chinese"),
        ("まもなく電車が参ります。", "Japanese"),  # kanji + kana: kana wins
        ("カタカナ", "Japanese"),
        ("열차가 곧 도착합니다.", "Korean"),
        ("Внимание, поезд прибывает.", "Russian"),
        ("Attention please.", "English"),
        ("Achtung, der Zug fährt ein.", "English"),  # Latin script: no guess beyond English
        ("", "English"),
        ("12:40 !!!", "English"),
        ("请前往 Gate 5 登机", "Chinese"),  # a few Han characters outweigh Latin letters
        ("Flight to Moscow departs, say Москва", "English"),  # mostly Latin
    ],
)
def test_detect_language(text: str, language: str) -> None:
    assert detect_language(text) == language
    assert resolve_language("Auto", text) == language


def test_auto_language_and_voice_together() -> None:
    v = espeak_voice_for("auto", "Auto", "열차가 곧 도착합니다.")
    assert (v.language, v.preset) == ("ko", "sohee")


def test_explicit_language_ignores_the_script() -> None:
    assert espeak_voice_for("ryan", "German", "各位旅客").language == "de"


# -- speed --------------------------------------------------------------------------------


def test_normal_speed_needs_no_filter() -> None:
    plan = speed_plan_for(1.0)
    assert (plan.rate_wpm, plan.tempo) == (175, 1.0)


@pytest.mark.parametrize("speed", [0.5, 0.75, 1.5, 2.0, 2.5])
def test_mid_speeds_use_espeak_rate_only(speed: float) -> None:
    plan = speed_plan_for(speed)
    assert plan.tempo == 1.0
    assert plan.rate_wpm == round(175 * speed)


@pytest.mark.parametrize(
    ("speed", "rate", "tempo"),
    [(0.25, 80, 0.25 * 175 / 80), (4.0, 450, 4.0 * 175 / 450), (3.0, 450, 3.0 * 175 / 450)],
)
def test_extreme_speeds_use_atempo_for_the_rest(speed: float, rate: int, tempo: float) -> None:
    plan = speed_plan_for(speed)
    assert plan.rate_wpm == rate
    assert plan.tempo == pytest.approx(tempo)


@pytest.mark.parametrize("speed", [0.25, 0.3, 0.45, 0.9, 1.0, 1.1, 2.6, 3.3, 4.0])
def test_effective_speed_matches(speed: float) -> None:
    plan = speed_plan_for(speed)
    assert 80 <= plan.rate_wpm <= 450
    assert plan.effective_speed == pytest.approx(speed, rel=0.011)


@pytest.mark.parametrize("speed", [0.0, 0.24, 4.01, -1.0, math.nan, math.inf])
def test_speed_out_of_range(speed: float) -> None:
    with pytest.raises(SpeechError, match="speed"):
        speed_plan_for(speed)


def test_speed_bounds_are_inclusive() -> None:
    speed_plan_for(SPEED_MIN)
    speed_plan_for(SPEED_MAX)


@pytest.mark.parametrize("tempo", [0.547, 1.0, 1.556, 0.1, 0.3, 3.0, 9.0])
def test_atempo_factors_multiply_to_tempo(tempo: float) -> None:
    factors = atempo_factors(tempo)
    assert factors
    assert math.prod(factors) == pytest.approx(tempo)
    assert all(0.5 <= f <= 2.0 for f in factors)


def test_atempo_factors_reject_nonsense() -> None:
    with pytest.raises(SpeechError):
        atempo_factors(0.0)


# -- request planning ---------------------------------------------------------------------


def test_synth_flags_are_plain_utf8() -> None:
    ssml, phonemes, utf8 = 0x10, 0x100, 0x1
    assert SYNTH_FLAGS & utf8
    assert not SYNTH_FLAGS & (ssml | phonemes)


def test_clean_text_removes_nul_and_control_characters() -> None:
    assert clean_text("a\x00b\x07c\nd\te") == "a b c\nd\te"
    assert clean_text("<speak>[[h@l'oU]]</speak>") == "<speak>[[h@l'oU]]</speak>"


def test_plan_synthesis() -> None:
    plan = plan_synthesis(SpeechRequest(text="Hallo", voice="aiden", language="German"), 1000)
    assert plan.voice.name == f"de+{VOICE_STYLES['aiden'].variant}"
    assert plan.speed.rate_wpm == 175
    assert plan.text == "Hallo"


def test_plan_synthesis_rejects_too_long_text() -> None:
    with pytest.raises(SpeechError, match="longer than"):
        plan_synthesis(SpeechRequest(text="x" * 1001), 1000)


def test_plan_synthesis_rejects_bad_speed() -> None:
    with pytest.raises(SpeechError, match="speed"):
        plan_synthesis(SpeechRequest(text="x", speed=5.0), 1000)
