from __future__ import annotations

import random

import pytest

from broadcaster.speech.segmenter import break_levels, split_text


def _no_space(text: str) -> str:
    return "".join(text.split())


def check_invariants(text: str, segments: list[str], max_chars: int) -> None:
    """What every split must satisfy, whatever the text."""
    assert all(seg for seg in segments), "empty segment"
    assert all(seg == seg.strip() for seg in segments), "unstripped segment"
    assert all(len(seg) <= max_chars for seg in segments), [len(s) for s in segments]
    # Nothing lost, nothing reordered.
    assert _no_space("".join(segments)) == _no_space(text)


# -- basics -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\n\t  \n"])
def test_empty_and_whitespace_give_nothing(text: str) -> None:
    assert split_text(text, 100) == []


def test_short_text_is_one_stripped_segment() -> None:
    assert split_text("  Hello there.  ", 100) == ["Hello there."]


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        split_text("x", 0)
    with pytest.raises(ValueError):
        split_text("x", 10, first_max_chars=0)


def test_packs_sentences_up_to_the_limit() -> None:
    text = "One two. Three four. Five six. Seven eight."
    assert split_text(text, 19) == ["One two.", "Three four.", "Five six.", "Seven eight."]
    assert split_text(text, 22) == ["One two. Three four.", "Five six. Seven eight."]


def test_splits_at_question_and_exclamation_marks() -> None:
    assert split_text("Are you there? Yes! Good.", 15) == ["Are you there?", "Yes! Good."]


def test_sentence_end_keeps_closing_quotes() -> None:
    segs = split_text('He said "Stop here." Then he left the station.', 25)
    assert segs == ['He said "Stop here."', "Then he left the station."]


def test_newline_is_a_sentence_boundary() -> None:
    text = "Platform change for the train\nto Leeds now at platform four"
    assert split_text(text, 40) == [
        "Platform change for the train",
        "to Leeds now at platform four",
    ]


# -- fallbacks ----------------------------------------------------------------------------


def test_falls_back_to_clause_boundaries() -> None:
    text = "The train to Leeds, calling at York and Doncaster, is delayed"
    assert split_text(text, 40) == [
        "The train to Leeds,",
        "calling at York and Doncaster,",
        "is delayed",
    ]


def test_clause_boundary_is_preferred_over_a_later_space() -> None:
    text = "Attention please, the next train is the delayed service to Brighton"
    assert split_text(text, 40)[0] == "Attention please,"


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("Wait; the doors are closing now for the last time", "Wait;"),
        ("Note: the doors are closing now for the last time", "Note:"),
        ("It was — as always — very late tonight again", "It was — as always —"),
        ("Sorry - the lift is out of order for today", "Sorry -"),
    ],
)
def test_other_clause_marks(text: str, first: str) -> None:
    segs = split_text(text, 30)
    assert segs[0] == first
    check_invariants(text, segs, 30)


def test_falls_back_to_spaces() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta"
    segs = split_text(text, 12)
    assert segs == ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]


def test_hard_cut_only_for_a_word_longer_than_the_limit() -> None:
    text = "short Supercalifragilisticexpialidocious end"
    segs = split_text(text, 10)
    check_invariants(text, segs, 10)
    assert segs[0] == "short"
    assert segs[-1].endswith("end")
    # Only the long word was cut; the short ones survived whole.
    assert "short" in segs and all(" " not in s or s.endswith(" end") for s in segs)


def test_cjk_sentences_and_clauses() -> None:
    text = "各位旅客请注意，开往上海的列车即将进站。请站在安全线以内，谢谢合作！"
    segs = split_text(text, 15)
    assert segs == ["各位旅客请注意，", "开往上海的列车即将进站。", "请站在安全线以内，谢谢合作！"]
    assert split_text(text, 100) == [text]


def test_cjk_without_punctuation_splits_between_characters() -> None:
    text = "请注意" * 10
    segs = split_text(text, 7)
    check_invariants(text, segs, 7)
    assert len(segs) == 5


def test_japanese_and_korean() -> None:
    ja = "まもなく二番線に電車が参ります。危ないですから黄色い線の内側までお下がりください。"
    assert split_text(ja, 30) == [
        "まもなく二番線に電車が参ります。",
        "危ないですから黄色い線の内側までお下がりください。",
    ]
    ko = "열차가 곧 도착합니다. 안전선 밖으로 물러나 주십시오."
    assert split_text(ko, 20) == ["열차가 곧 도착합니다.", "안전선 밖으로 물러나 주십시오."]


# -- things never split -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The fare is 3.5 euros today",
        "The fare is 1,250.75 euros today",
        "Departure at 12:40 from here",
        "Departure at 6:40 a.m. from here",
        "Departure at 6:40 p.m. sharp today",
        "Departure at 6 am from here today",
        "Mr. Smith please come to the desk",
        "Dr. Jones please come to the desk",
        "Meet at St. Pancras International",
        "Bring things, e.g. tickets and passes",
        "Bring tickets, i.e. paper ones, please",
        "It takes approx. ten minutes from here",
        "Please go to No. 5 on the left",
        "Written by J. R. R. Tolkien long ago",
        "Wait... the train is here at last",
        "Wait… the train is here at last",
        "See www.example.com/a.b?c=1 for details",
        "See https://example.com:8080/x.html for more",
        "Trains, buses, etc. are all delayed now",
    ],
)
def test_no_sentence_break_inside_protected_tokens(text: str) -> None:
    # Plenty of room: a sentence split would only happen at a real sentence end.
    levels = break_levels(text)
    assert 3 not in levels.values(), {text[:p]: lv for p, lv in levels.items() if lv == 3}
    assert split_text(text, 200) == [text]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Departure at 6:40 a.m. from the main hall", "6:40 a.m."),
        ("Departure at 11:05 pm from the main hall", "11:05 pm"),
        ("Mr. Smith please come to the main desk", "Mr. Smith"),
        ("Ask for J. R. R. Tolkien at the desk", "J. R. R. Tolkien"),
        ("Price is 1,250.75 euros", "1,250.75"),
        ("Open www.example.com/a.b?c=1 now", "www.example.com/a.b?c=1"),
    ],
)
def test_tight_limits_still_keep_tokens_together(text: str, kept: str) -> None:
    limit = max(len(kept), 12)
    segs = split_text(text, limit)
    check_invariants(text, segs, limit)
    assert any(kept in seg for seg in segs), segs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "The train leaves at 6:40 a.m. Please be on time.",
            ["The train leaves at 6:40 a.m.", "Please be on time."],
        ),
        (
            "Proceed to Gate B. Boarding is now open.",
            ["Proceed to Gate B.", "Boarding is now open."],
        ),
        (
            "The answer is no. Please ask again later.",
            ["The answer is no.", "Please ask again later."],
        ),
        (
            "We sell apples, pears etc. The shop is open.",
            ["We sell apples, pears etc.", "The shop is open."],
        ),
        (
            "The train is at platform 3. It leaves soon.",
            ["The train is at platform 3.", "It leaves soon."],
        ),
        (
            "Visit example.com. It has the timetable.",
            ["Visit example.com.", "It has the timetable."],
        ),
    ],
)
def test_sentence_ends_next_to_protected_tokens(text: str, expected: list[str]) -> None:
    assert split_text(text, 30) == expected


def test_unknown_abbreviation_followed_by_lowercase_is_not_a_sentence_end() -> None:
    levels = break_levels("See the dept. store downstairs")
    assert 3 not in levels.values()
    levels = break_levels("We stop at Pl. de la Gare soon")
    assert 3 not in levels.values()


# -- first segment ------------------------------------------------------------------------


def test_first_segment_is_short_and_split_at_a_clause() -> None:
    text = (
        "Ladies and gentlemen, the next train to arrive at platform two is the delayed "
        "service to Manchester Piccadilly. Please stand well back from the platform edge."
    )
    segs = split_text(text, 200, first_max_chars=40)
    assert segs[0] == "Ladies and gentlemen,"
    assert len(segs[1]) > 40  # later segments use the full limit
    check_invariants(text, segs, 200)


def test_first_segment_prefers_a_sentence_end() -> None:
    text = "Attention. The next train to arrive at platform two is delayed by ten minutes."
    segs = split_text(text, 200, first_max_chars=30)
    assert segs == [
        "Attention.",
        "The next train to arrive at platform two is delayed by ten minutes.",
    ]


def test_first_segment_falls_back_to_words() -> None:
    text = "The next train to arrive at platform two is the delayed service to Manchester"
    segs = split_text(text, 200, first_max_chars=20)
    assert segs[0] == "The next train to"
    assert len(segs) == 2


def test_first_segment_does_not_hard_cut_a_word_that_fits_max() -> None:
    text = "Supercalifragilisticexpialidocious is a long word"
    segs = split_text(text, 100, first_max_chars=10)
    assert segs == ["Supercalifragilisticexpialidocious", "is a long word"]
    # ...and with no word boundary at all within max_chars, it falls back to max_chars.
    assert split_text("Supercalifragilisticexpialidocious", 100, first_max_chars=10) == [
        "Supercalifragilisticexpialidocious"
    ]


def test_first_max_larger_than_max_is_harmless() -> None:
    text = "One two three four five six seven eight nine ten"
    assert split_text(text, 15, first_max_chars=100) == split_text(text, 15)


def test_short_text_with_first_max() -> None:
    assert split_text("Hello.", 100, first_max_chars=10) == ["Hello."]


# -- invariants on many texts -------------------------------------------------------------

_WORDS = [
    "the", "train", "to", "London", "Mr.", "Smith", "3.5", "12:40", "a.m.", "e.g.",
    "platform", "www.example.com/x.y", "Gate", "B.", "J.", "No.", "5", "...", "—",
    "请注意", "列车", "열차가", "まもなく", "Supercalifragilisticexpialidocious",
]  # fmt: skip
_PUNCT = ["", "", "", "", ",", ".", "!", "?", ";", ":", "。", "，", "…", "\n"]


def _random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 60)):
        parts.append(rng.choice(_WORDS) + rng.choice(_PUNCT))
        parts.append(rng.choice([" ", " ", " ", "  ", "\n", ""]))
    return "".join(parts)


@pytest.mark.parametrize("seed", range(40))
def test_invariants_on_random_texts(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        text = _random_text(rng)
        max_chars = rng.choice([1, 3, 8, 15, 40, 100, 1000])
        first = rng.choice([None, None, 1, 5, 20, 60])
        segs = split_text(text, max_chars, first)
        check_invariants(text, segs, max_chars)
        if first is not None and segs and len(segs[0]) > first:
            # first_max_chars may only be exceeded when no word boundary fits in it.
            start = len(text) - len(text.lstrip())
            assert not any(
                start < pos <= start + first and level >= 1
                for pos, level in break_levels(text).items()
            ), (text, first, segs[0])


@pytest.mark.parametrize("seed", range(10))
def test_words_survive_when_nothing_is_cut(seed: int) -> None:
    rng = random.Random(1000 + seed)
    words = ["alpha", "beta", "gamma,", "delta.", "Epsilon", "zeta;", "eta!", "Theta?"]
    text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 80)))
    for max_chars in (8, 20, 50, 300):
        segs = split_text(text, max_chars, first_max_chars=rng.choice([None, 10, 30]))
        check_invariants(text, segs, max_chars)
        assert " ".join(segs).split() == text.split()


def test_long_text_is_fast_enough_to_be_linear() -> None:
    text = "The next train to London, calling at Reading, departs at 12:40. " * 500
    segs = split_text(text, 1000, first_max_chars=100)
    check_invariants(text, segs, 1000)
    assert len(segs[0]) <= 100
