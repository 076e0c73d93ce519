"""Text preparation for PA speech: tables of input → spoken text, per rule and language."""

import datetime as dt
from decimal import Decimal

import pytest

from broadcaster.model import LANGUAGES
from broadcaster.speech.textprep import (
    NUM2WORDS_CODES,
    digits,
    number_words,
    prepare_text,
    prepare_value,
    spell,
    time_words,
)

# --- times -------------------------------------------------------------------------------

TIMES = [
    # English: 24-hour rail style
    ("English", "12:40", "twelve forty"),
    ("English", "08:05", "eight oh five"),
    ("English", "8:05", "eight oh five"),
    ("English", "13:00", "thirteen hundred"),
    ("English", "00:15", "zero fifteen"),
    ("English", "00:00", "zero hundred"),
    ("English", "12:00", "twelve hundred"),
    ("English", "23:59", "twenty-three fifty-nine"),
    # English: 12-hour with a.m./p.m.
    ("English", "6:40 a.m.", "six forty a.m."),
    ("English", "6:40 pm", "six forty p.m."),
    ("English", "6:40PM", "six forty p.m."),
    ("English", "6:05 am", "six oh five a.m."),
    ("English", "6:00 p.m.", "six p.m."),
    ("English", "6 am", "six a.m."),
    ("English", "11 p.m.", "eleven p.m."),
    # German
    ("German", "12:40", "zwölf Uhr vierzig"),
    ("German", "12:40 Uhr", "zwölf Uhr vierzig"),
    ("German", "12.40 Uhr", "zwölf Uhr vierzig"),
    ("German", "8:00", "acht Uhr"),
    ("German", "08:05", "acht Uhr fünf"),
    ("German", "1:00", "ein Uhr"),
    ("German", "1 Uhr", "ein Uhr"),
    ("German", "0:15", "null Uhr fünfzehn"),
    ("German", "21:01", "einundzwanzig Uhr eins"),
    # French
    ("French", "12:40", "douze heures quarante"),
    ("French", "12h40", "douze heures quarante"),
    ("French", "12 h", "douze heures"),
    ("French", "8:00", "huit heures"),
    ("French", "1:05", "une heure cinq"),
    ("French", "21:01", "vingt et une heures une"),
    ("French", "0:15", "zéro heure quinze"),
    # Spanish
    ("Spanish", "12:40", "doce y cuarenta"),
    ("Spanish", "8:00", "ocho en punto"),
    ("Spanish", "1:15", "una y quince"),
    ("Spanish", "21:05", "veintiuna y cinco"),
    # Italian
    ("Italian", "12:40", "dodici e quaranta"),
    ("Italian", "8:05", "otto e zero cinque"),
    ("Italian", "13:00", "tredici"),
    ("Italian", "1:30", "una e trenta"),
    # Portuguese
    ("Portuguese", "12:40", "doze e quarenta"),
    ("Portuguese", "8:00", "oito horas"),
    ("Portuguese", "1:00", "uma hora"),
    ("Portuguese", "2:15", "duas e quinze"),
    ("Portuguese", "12h40", "doze e quarenta"),
    # Russian, Japanese, Korean
    ("Russian", "12:40", "двенадцать сорок"),
    ("Russian", "8:05", "восемь ноль пять"),
    ("Russian", "13:00", "тринадцать ноль ноль"),
    ("Japanese", "12:40", "十二時四十分"),
    ("Japanese", "8:00", "八時"),
    ("Korean", "12:40", "열두 시 사십 분"),
    ("Korean", "1:00", "한 시"),
    ("Korean", "20:05", "스무 시 오 분"),
    # No num2words: the engine reads the digits
    ("Chinese", "12:40", "12:40"),
    ("Auto", "12:40", "12:40"),
]


@pytest.mark.parametrize(("language", "text", "spoken"), TIMES)
def test_times(language, text, spoken):
    assert prepare_text(text, language) == spoken


NOT_TIMES = [
    ("English", "24:00"),
    ("English", "12:60"),
    ("English", "12:40:30"),
    ("English", "13:00 pm"),
    ("English", "3:1"),
    ("German", "am 12.05. fährt"),  # a day and month, not a time
    ("German", "21.50 °C"),  # a measure
]


@pytest.mark.parametrize(("language", "text"), NOT_TIMES)
def test_what_is_not_a_time_is_left_alone(language, text):
    assert prepare_text(text, language) == text


@pytest.mark.parametrize(
    ("hour", "minute", "language", "spoken"),
    [
        (12, 40, "English", "twelve forty"),
        (8, 5, "English", "eight oh five"),
        (8, 0, "German", "acht Uhr"),
        (12, 40, "French", "douze heures quarante"),
        (12, 40, "Chinese", "12:40"),
    ],
)
def test_time_words(hour, minute, language, spoken):
    assert time_words(hour, minute, language) == spoken


def test_time_words_refuses_an_impossible_time():
    with pytest.raises(ValueError, match="not a time"):
        time_words(25, 0, "Chinese")


# --- numbers -----------------------------------------------------------------------------

NUMBERS = [
    ("English", "18", "eighteen"),
    ("English", "0", "zero"),
    ("English", "117", "one hundred and seventeen"),
    ("English", "1,200", "one thousand two hundred"),
    ("English", "2.5", "two point five"),
    ("English", "0.75", "zero point seven five"),
    ("English", "2026", "twenty twenty-six"),
    ("English", "1999", "nineteen ninety-nine"),
    ("English", "1250", "one thousand two hundred and fifty"),  # not a year
    ("English", "007", "zero zero seven"),
    ("English", "-5", "minus five"),
    ("English", "10-15", "ten to fifteen"),
    ("English", "10–15", "ten to fifteen"),
    ("English", "1st", "first"),
    ("English", "22nd", "twenty-second"),
    ("English", "1\u202f200", "one thousand two hundred"),
    ("English", "1234567890123", "one two three four five six seven eight nine zero one two three"),
    ("German", "18", "achtzehn"),
    ("German", "2,5", "zwei Komma fünf"),
    ("German", "1999", "neunzehnhundertneunundneunzig"),
    ("German", "10-15", "zehn bis fünfzehn"),
    ("French", "18", "dix-huit"),
    ("French", "2,5", "deux virgule cinq"),
    ("French", "1\u202f200", "mille deux cents"),
    ("Spanish", "18", "dieciocho"),
    ("Spanish", "2,5", "dos coma cinco"),
    ("Italian", "18", "diciotto"),
    ("Italian", "2,5", "due virgola cinque"),  # num2words' own Italian decimals drop the fraction
    ("Portuguese", "18", "dezoito"),
    ("Portuguese", "2,5", "dois vírgula cinco"),
    ("Russian", "18", "восемнадцать"),
    ("Russian", "2,5", "две целых пять десятых"),
    ("Japanese", "18", "十八"),
    ("Korean", "18", "십팔"),
    ("Chinese", "18", "18"),
    ("Auto", "18", "18"),
]


@pytest.mark.parametrize(("language", "text", "spoken"), NUMBERS)
def test_numbers(language, text, spoken):
    assert prepare_text(text, language) == spoken


UNITS = [
    ("English", "1 min", "one minute"),
    ("English", "5 mins", "five minutes"),
    ("English", "5 min.", "five minutes."),  # the full stop also ended the sentence
    ("English", "in 5 min. Then", "in five minutes. Then"),
    ("English", "in 5 min. then", "in five minutes then"),
    ("English", "2 hrs", "two hours"),
    ("English", "1 hr", "one hour"),
    ("English", "50%", "fifty percent"),
    ("English", "50 %", "fifty percent"),
    ("English", "-5 °C", "minus five degrees Celsius"),
    ("English", "1 °C", "one degree Celsius"),
    ("English", "23.5°C", "twenty-three point five degrees Celsius"),
    ("English", "80 km/h", "eighty kilometres per hour"),
    ("English", "30 mph", "thirty miles per hour"),
    ("English", "10-15 min", "ten to fifteen minutes"),
    ("English", "05 min", "five minutes"),
    ("English", "18 minutes", "eighteen minutes"),  # a word is not an abbreviation
    ("German", "1 Min.", "eine Minute."),
    ("German", "5 Min.", "fünf Minuten."),
    ("German", "5 Min. Verspätung", "fünf Minuten Verspätung"),  # nouns are capitalised
    ("German", "1 Std.", "eine Stunde."),
    ("German", "2 Std", "zwei Stunden"),
    ("German", "21,5 %", "einundzwanzig Komma fünf Prozent"),
    ("German", "1 °C", "ein Grad Celsius"),
    ("German", "80 km/h", "achtzig Kilometer pro Stunde"),
    ("French", "1 min", "une minute"),
    ("French", "21 min", "vingt et une minutes"),
    ("French", "1,5 km", "un virgule cinq kilomètre"),  # French: singular below two
    ("French", "50 %", "cinquante pour cent"),
    ("Spanish", "1 min", "un minuto"),
    ("Spanish", "21 min", "veintiún minutos"),
    ("Italian", "1 min", "un minuto"),
    ("Italian", "3 °C", "tre gradi Celsius"),
    ("Portuguese", "1 min", "um minuto"),
    ("Portuguese", "50%", "cinquenta por cento"),
]


@pytest.mark.parametrize(("language", "text", "spoken"), UNITS)
def test_units_agree_with_their_number(language, text, spoken):
    assert prepare_text(text, language) == spoken


# --- codes and platforms -------------------------------------------------------------------

CODES = [
    ("English", "IC 2735", "I C two seven three five"),
    ("English", "BA 117", "B A one one seven"),
    ("English", "A12", "A one two"),
    ("English", "ICE578", "I C E five seven eight"),
    ("English", "train IC 2735 to Hamburg", "train I C two seven three five to Hamburg"),
    ("English", "flight BA 117 is boarding", "flight B A one one seven is boarding"),
    ("English", "seat 12A", "seat twelve A"),
    ("English", "route 4K", "route four K"),
    # all-capital text is emphasis, not a code
    ("English", "DELAYED BY 18 MINUTES", "DELAYED BY eighteen MINUTES"),
    ("German", "ICE 578", "I C E fünf sieben acht"),
    ("French", "TGV 6201", "T G V six deux zéro un"),
    ("Chinese", "IC 2735", "I C 2 7 3 5"),
    ("Auto", "BA 117", "B A 1 1 7"),
]


@pytest.mark.parametrize(("language", "text", "spoken"), CODES)
def test_codes_are_read_character_by_character(language, text, spoken):
    assert prepare_text(text, language) == spoken


PLATFORMS = [
    ("English", "platform 2", "platform two"),
    ("English", "Platform 2b", "Platform two B"),
    ("English", "platform 12", "platform twelve"),
    ("English", "Gate B12", "Gate B twelve"),
    ("English", "Gate A 12", "Gate A twelve"),
    ("English", "track 10A", "track ten A"),
    ("English", "platforms 2-3", "platforms two to three"),
    ("German", "Gleis 7", "Gleis sieben"),
    ("German", "Gl. 2b", "Gleis zwei B"),
    ("French", "voie 3", "voie trois"),
    ("Spanish", "vía 2", "vía dos"),
    ("Spanish", "andén 3a", "andén tres A"),
    ("Italian", "binario 12", "binario dodici"),
    ("Portuguese", "linha 2", "linha dois"),
    ("Russian", "платформа 2", "платформа два"),
]


@pytest.mark.parametrize(("language", "text", "spoken"), PLATFORMS)
def test_platforms_are_whole_numbers_with_their_letter(language, text, spoken):
    assert prepare_text(text, language) == spoken


# --- abbreviations -----------------------------------------------------------------------

ABBREVIATIONS = [
    ("English", "approx. 18 minutes", "approximately eighteen minutes"),
    ("English", "Approx. 5", "Approximately five"),
    ("English", "No. 5", "Number five"),
    ("English", "ticket no. 7", "ticket number seven"),
    ("English", "Say no. Then leave", "Say no. Then leave"),  # "no." without a number
    ("English", "Dr. Smith", "Doctor Smith"),
    ("English", "Change at St. Pancras", "Change at Saint Pancras"),
    ("English", "St Albans", "Saint Albans"),
    ("English", "The St. Albans train", "The Saint Albans train"),
    ("English", "Meet on King St. near the exit", "Meet on King Street near the exit"),
    ("English", "Leave by Main St.", "Leave by Main Street."),
    ("English", "e.g. umbrellas", "for example umbrellas"),
    ("English", "i.e. now", "that is now"),
    ("English", "coats, bags etc. Please", "coats, bags et cetera. Please"),
    ("English", "bags etc. and coats", "bags et cetera and coats"),
    ("English", "fish & chips", "fish and chips"),
    ("English", "P&O ferries", "P and O ferries"),
    ("German", "ca. 5 Min.", "circa fünf Minuten."),
    ("German", "von Gl. 7", "von Gleis sieben"),
    ("German", "z. B. heute", "zum Beispiel heute"),
    ("German", "z.B. heute", "zum Beispiel heute"),
    ("German", "Nr. 3", "Nummer drei"),
    ("German", "einige Min. später", "einige Minuten später"),
    ("German", "2 Std. später", "zwei Stunden später"),
    ("German", "Koffer usw.", "Koffer und so weiter."),
    ("German", "Reise & Service", "Reise und Service"),
]


@pytest.mark.parametrize(("language", "text", "spoken"), ABBREVIATIONS)
def test_abbreviations(language, text, spoken):
    assert prepare_text(text, language) == spoken


# --- the seed document's phrases --------------------------------------------------------------

SEED_PHRASES = [
    (
        "The 12:40 service to Greenhaven is currently delayed by approximately 18 minutes "
        "due to a signal check beyond Westbridge.",
        "The twelve forty service to Greenhaven is currently delayed by approximately "
        "eighteen minutes due to a signal check beyond Westbridge.",
    ),
    (
        "If you are continuing to Hill Square, please remain on platform 2.",
        "If you are continuing to Hill Square, please remain on platform two.",
    ),
    (
        "This is a weather and harbor safety bulletin issued at 6:40 a.m. A fast-moving "
        "squall line is expected to reach the bay within 20 minutes",
        "This is a weather and harbor safety bulletin issued at six forty a.m. A fast-moving "
        "squall line is expected to reach the bay within twenty minutes",
    ),
    (
        "contact harbor control on channel 16 and report your location",
        "contact harbor control on channel sixteen and report your location",
    ),
    (
        "This is Dock Ring 4 arrival briefing for orbital cycle 17.",
        "This is Dock Ring four arrival briefing for orbital cycle seventeen.",
    ),
    ("Welcome to Gallery 12,", "Welcome to Gallery twelve,"),
]


@pytest.mark.parametrize(("text", "spoken"), SEED_PHRASES)
def test_seed_phrases(text, spoken):
    assert prepare_text(text, "English") == spoken


# --- nothing is dropped, and preparing twice changes nothing ----------------------------------

PASS_THROUGH = [
    ("English", "Welcome to Gallery Twelve, home of the Harrow Collection."),
    ("English", "£5"),
    ("English", "v2.5.1"),
    ("English", "2026-05-01"),
    ("English", "12/05/2026"),
    ("English", "COVID19"),
    ("English", "5x"),
    ("English", "1,2,3"),
    ("English", "#5"),
    ("English", ""),
    ("German", "am 3.5."),
    ("Japanese", "3番線"),  # a number against a counter is the engine's to read
    ("Korean", "3번 출구"),
    ("French", "1er"),
]


@pytest.mark.parametrize(("language", "text"), PASS_THROUGH)
def test_unrecognised_text_passes_through(language, text):
    assert prepare_text(text, language) == text


IDEMPOTENT = [
    *[(language, text) for language, text, _ in TIMES + NUMBERS + UNITS + CODES + PLATFORMS],
    *[(language, text) for language, text, _ in ABBREVIATIONS],
    *[("English", text) for text, _ in SEED_PHRASES],
]


@pytest.mark.parametrize(("language", "text"), IDEMPOTENT)
def test_preparing_twice_is_preparing_once(language, text):
    once = prepare_text(text, language)
    assert prepare_text(once, language) == once


def test_every_language_is_known():
    for language in LANGUAGES:
        prepare_text("Platform 2 at 12:40", language)
    assert set(NUM2WORDS_CODES) == set(LANGUAGES) - {"Auto", "Chinese"}


def test_unknown_language_is_an_error():
    with pytest.raises(ValueError, match="unknown language 'Klingon'"):
        prepare_text("18", "Klingon")
    with pytest.raises(ValueError, match="unknown language"):
        prepare_value(18, "english")


# --- values --------------------------------------------------------------------------------

VALUES = [
    (18, "English", "eighteen"),
    (16, "English", "sixteen"),
    (-3, "English", "minus three"),
    (2026, "English", "twenty twenty-six"),
    (2.5, "English", "two point five"),
    (2.5, "German", "zwei Komma fünf"),
    (0.1 + 0.2, "English", "zero point three"),
    (18.0, "English", "eighteen"),
    (Decimal("3.50"), "English", "three point five zero"),
    (float("nan"), "English", "nan"),
    (True, "English", "yes"),
    (False, "German", "nein"),
    (None, "English", ""),
    (dt.time(12, 40), "English", "twelve forty"),
    (dt.time(8, 0), "German", "acht Uhr"),
    (dt.time(12, 40), "Chinese", "12:40"),
    ("12:40", "English", "twelve forty"),
    ("Greenhaven", "English", "Greenhaven"),
    ("IC 2735", "English", "I C two seven three five"),
    ("platform 2b", "English", "platform two B"),
    ("2b", "English", "two B"),
    ("10A", "German", "zehn A"),
    ("2b", "Chinese", "2b"),
    (18, "Chinese", "18"),
]


@pytest.mark.parametrize(("value", "language", "spoken"), VALUES)
def test_prepare_value(value, language, spoken):
    assert prepare_value(value, language) == spoken


# --- spell, digits, number_words (the template filters) -----------------------------------------


@pytest.mark.parametrize(
    ("text", "language", "spoken"),
    [
        ("IC 2735", "English", "I C two seven three five"),
        ("IC-2735b", "English", "I C two seven three five B"),
        ("ba117", "English", "B A one one seven"),
        ("A12", "German", "A eins zwei"),
        ("A12", "Chinese", "A 1 2"),
    ],
)
def test_spell(text, language, spoken):
    assert spell(text, language) == spoken


@pytest.mark.parametrize(
    ("text", "language", "spoken"),
    [
        ("2735", "English", "two seven three five"),
        ("0800 123-456", "English", "zero eight zero zero one two three four five six"),
        ("ext 42", "English", "ext four two"),
        ("16", "French", "un six"),
    ],
)
def test_digits(text, language, spoken):
    assert digits(text, language) == spoken


@pytest.mark.parametrize(
    ("value", "language", "spoken"),
    [
        (2026, "English", "two thousand and twenty-six"),  # never a year
        ("18", "English", "eighteen"),
        ("2.5", "German", "zwei Komma fünf"),
        ("2,5", "German", "zwei Komma fünf"),
        (-3, "French", "moins trois"),
        (2.5, "English", "two point five"),
        (18, "Chinese", "18"),
    ],
)
def test_number_words(value, language, spoken):
    assert number_words(value, language) == spoken


@pytest.mark.parametrize("value", ["soon", "1e3", True, None, [1]])
def test_number_words_refuses_what_is_not_a_number(value):
    with pytest.raises(ValueError, match="is not a number"):
        number_words(value, "English")
