"""Transit text read as station staff say it: phone numbers, times with a full stop,
headcodes, platform lists and fractions, per language (tables: written → spoken)."""

import pytest

from broadcaster.model import LANGUAGES
from broadcaster.speech.textprep import prepare_text

# --- phone numbers -------------------------------------------------------------------------

PHONES = [
    # digit by digit, a pause (comma) between the groups as written
    ("English", "555-0123", "five five five, zero one two three"),
    ("English", "555-123-4567", "five five five, one two three, four five six seven"),
    ("English", "020 7946 0018", "zero two zero, seven nine four six, zero zero one eight"),
    ("English", "0800-123-456", "zero eight zero zero, one two three, four five six"),
    (
        "English",
        "+44 20 7946 0018",
        "plus four four, two zero, seven nine four six, zero zero one eight",
    ),
    ("English", "+1 555 0123", "plus one, five five five, zero one two three"),
    (
        "English",
        "1-800-555-0123",
        "one, eight zero zero, five five five, zero one two three",
    ),
    (
        "English",
        "For help call 555-0123.",
        "For help call five five five, zero one two three.",
    ),
    ("German", "555-0123", "fünf fünf fünf, null eins zwo drei"),
    (
        "German",
        "+49 30 1234 5678",
        "plus vier neun, drei null, eins zwo drei vier, fünf sechs sieben acht",
    ),
    ("Spanish", "555-0123", "cinco cinco cinco, cero uno dos tres"),
    ("Spanish", "+34 91 123", "más tres cuatro, nueve uno, uno dos tres"),
    ("Italian", "555-0123", "cinque cinque cinque, zero uno due tre"),
    ("Italian", "+39 06 1234", "più tre nove, zero sei, uno due tre quattro"),
    ("Portuguese", "555-0123", "cinco cinco cinco, zero um dois três"),
    ("Portuguese", "+351 21 123", "mais três cinco um, dois um, um dois três"),
    # French: a group of two is a number ("01 23 45 67 89"), other groups digit by digit
    (
        "French",
        "01 23 45 67 89",
        "zéro un, vingt-trois, quarante-cinq, soixante-sept, quatre-vingt-neuf",
    ),
    (
        "French",
        "+33 1 23 45 67 89",
        "plus trente-trois, un, vingt-trois, quarante-cinq, soixante-sept, quatre-vingt-neuf",
    ),
    ("French", "555-0123", "cinq cinq cinq, zéro un deux trois"),
    # Russian: groups of two or three are numbers, four are two pairs
    ("Russian", "555-01-23", "пятьсот пятьдесят пять, ноль один, двадцать три"),
    ("Russian", "555-0123", "пятьсот пятьдесят пять, ноль один двадцать три"),
    (
        "Russian",
        "+7 495 123-45-67",
        "плюс семь, четыреста девяносто пять, сто двадцать три, сорок пять, шестьдесят семь",
    ),
    # Japanese: digits run together, "の" between the groups
    ("Japanese", "03-1234-5678", "零三の一二三四の五六七八"),
    ("Japanese", "555-0123", "五五五の零一二三"),
    # Korean: zero is "공" in a phone number
    ("Korean", "010-1234-5678", "공 일 공, 일 이 삼 사, 오 육 칠 팔"),
    # No number words: the engine reads the digits
    ("Chinese", "555-0123", "555-0123"),
    ("Auto", "+44 20 7946 0018", "+44 20 7946 0018"),
]

NOT_PHONES = [
    # (language, written, spoken): ranges, dates, short numbers keep their readings
    ("English", "10-15", "ten to fifteen"),
    ("English", "1990-1995", "nineteen ninety to nineteen ninety-five"),
    ("English", "2026-05-01", "2026-05-01"),  # dates are left as they are
    ("English", "01-05-2026", "01-05-2026"),
    ("German", "1-2-2026", "1-2-2026"),
    ("English", "12 34", "twelve thirty-four"),  # spaced, no "+", no leading zero
    ("English", "platforms 2 3", "platforms two three"),
    ("German", "10-15", "zehn bis fünfzehn"),
    ("German", "in 10-15 Min.", "in zehn bis fünfzehn Minuten."),  # the stop ends the sentence
    ("English", "in 10-15 min. Then", "in ten to fifteen minutes. Then"),
]


@pytest.mark.parametrize(("language", "text", "spoken"), PHONES)
def test_phone_numbers(language, text, spoken):
    assert prepare_text(text, language) == spoken


@pytest.mark.parametrize(("language", "text", "spoken"), NOT_PHONES)
def test_what_is_not_a_phone_number(language, text, spoken):
    assert prepare_text(text, language) == spoken


# --- times written with a full stop ------------------------------------------------------------

DOT_TIMES = [
    ("English", "17.30", "seventeen thirty"),
    ("English", "17:30", "seventeen thirty"),
    ("English", "08.15", "eight fifteen"),
    ("English", "13.00", "thirteen hundred"),
    ("English", "5.30pm", "five thirty p.m."),
    ("English", "5.30 a.m.", "five thirty a.m."),
    ("English", "12.50pm", "twelve fifty p.m."),
    ("English", "the 9.15 to Leeds", "the nine fifteen to Leeds"),
    ("English", "at 9.05", "at nine oh five"),
    ("English", "Expected 5.30", "Expected five thirty"),
    ("English", "departing 9.45 from platform 2", "departing nine forty-five from platform two"),
    ("English", "between 9.30 and 10.15", "between nine thirty and ten fifteen"),
    ("English", "The 17.30 service", "The seventeen thirty service"),
    ("German", "17.30", "siebzehn Uhr dreißig"),
    ("German", "um 17.30 Uhr", "um siebzehn Uhr dreißig"),
    ("German", "Abfahrt 17.30.", "Abfahrt siebzehn Uhr dreißig."),  # no month 30: a time
    ("French", "17.30", "dix-sept heures trente"),
    ("French", "17h30", "dix-sept heures trente"),
    ("Spanish", "17.30", "diecisiete y treinta"),
    ("Italian", "17.30", "diciassette e trenta"),
    ("Italian", "alle 8.05", "alle otto e zero cinque"),
    ("Portuguese", "17.30", "dezassete e trinta"),
    ("Russian", "17.30", "семнадцать тридцать"),
    # ":" only where the full stop is the decimal point and no clock reading is usual
    ("Japanese", "17:30", "十七時三十分"),
    ("Korean", "17:30", "열일곱 시 삼십 분"),
]

DOTS_THAT_ARE_NOT_TIMES = [
    ("English", "2.50", "two point five zero"),  # one-digit hour, no cue, no a.m./p.m.
    ("English", "17.75", "seventeen point seven five"),  # no such minute
    ("English", "21.50 °C", "twenty-one point five zero degrees Celsius"),  # a measure
    ("English", "2.5", "two point five"),
    ("English", "17.30 EUR", "seventeen point three zero EUR"),  # an amount
    ("German", "17.30 €", "17.30 €"),
    ("German", "am 12.05. fährt", "am 12.05. fährt"),  # day and month
    ("German", "21.50 °C", "21.50 °C"),
    ("German", "2,5", "zwei Komma fünf"),
]


@pytest.mark.parametrize(("language", "text", "spoken"), DOT_TIMES)
def test_times_with_a_full_stop(language, text, spoken):
    assert prepare_text(text, language) == spoken


@pytest.mark.parametrize(("language", "text", "spoken"), DOTS_THAT_ARE_NOT_TIMES)
def test_full_stops_that_are_not_times(language, text, spoken):
    assert prepare_text(text, language) == spoken


# --- headcodes -------------------------------------------------------------------------------

HEADCODES = [
    ("English", "1A23", "one A twenty-three"),
    ("English", "2C05", "two C oh five"),
    ("English", "5Z00", "five Z zero zero"),
    ("English", "the 1A23 to Leeds", "the one A twenty-three to Leeds"),
    ("German", "1A23", "eins A dreiundzwanzig"),
    ("German", "2C05", "zwei C null fünf"),
    ("French", "1A23", "un A vingt-trois"),
    ("Spanish", "1A23", "uno A veintitrés"),
    ("Italian", "1A23", "uno A ventitré"),
    ("Portuguese", "1A23", "um A vinte e três"),
    ("Russian", "1A23", "один A двадцать три"),
    ("Japanese", "1A23", "一 A 二十三"),
    ("Korean", "1A23", "일 A 이십삼"),
    ("Chinese", "1A23", "1A23"),
    # not headcodes: other shapes keep their readings
    ("English", "A12", "A one two"),
    ("English", "12A", "twelve A"),
    ("English", "1A234", "1A234"),
    ("English", "1a23", "1a23"),
]


@pytest.mark.parametrize(("language", "text", "spoken"), HEADCODES)
def test_headcodes(language, text, spoken):
    assert prepare_text(text, language) == spoken


# --- platform numbers --------------------------------------------------------------------------

PLATFORM_LISTS = [
    ("English", "platform 3a", "platform three A"),
    ("English", "platforms 4 and 5", "platforms four and five"),
    ("English", "platforms 4, 5 and 6a", "platforms four, five and six A"),
    ("English", "platform 3a or 4", "platform three A or four"),
    ("English", "platforms 2-3", "platforms two to three"),
    ("English", "Gates B12 and B14", "Gates B twelve and B fourteen"),
    ("German", "Gleis 3", "Gleis drei"),
    ("German", "Gleis 3a", "Gleis drei A"),
    ("German", "Gleise 4 und 5b", "Gleise vier und fünf B"),
    ("French", "voies 4 et 5a", "voies quatre et cinq A"),
    ("French", "quais 2 à 3", "quais deux à trois"),
    ("Spanish", "andenes 4 y 5a", "andenes cuatro y cinco A"),
    ("Italian", "binari 4 e 5a", "binari quattro e cinque A"),
    ("Portuguese", "linhas 4 e 5a", "linhas quatro e cinco A"),
    ("Russian", "пути 4 и 5", "пути четыре и пять"),
    # a list stops where the numbers stop being designators
    ("English", "platform 2 and 12:40", "platform two and twelve forty"),
    ("German", "Gleis 4,5", "Gleis vier Komma fünf"),  # a decimal comma, not a list
]


@pytest.mark.parametrize(("language", "text", "spoken"), PLATFORM_LISTS)
def test_platform_numbers_and_lists(language, text, spoken):
    assert prepare_text(text, language) == spoken


# --- fractions ---------------------------------------------------------------------------------

FRACTIONS = [
    ("English", "3/4", "three quarters"),
    ("English", "1/2", "one half"),
    ("English", "1/4 mile", "one quarter mile"),
    ("English", "2/3", "two thirds"),
    ("English", "1/10", "one tenth"),
    ("German", "3/4", "drei Viertel"),
    ("German", "1/4", "ein Viertel"),
    ("German", "1/2", "ein halb"),
    ("French", "3/4", "trois quarts"),
    ("French", "1/2", "un demi"),
    ("French", "2/3", "deux tiers"),
    ("Spanish", "3/4", "tres cuartos"),
    ("Spanish", "1/2", "un medio"),
    ("Italian", "3/4", "tre quarti"),
    ("Italian", "1/3", "un terzo"),
    ("Portuguese", "3/4", "três quartos"),
    ("Portuguese", "2/3", "dois terços"),
    ("Russian", "3/4", "три четверти"),
    ("Russian", "1/2", "одна вторая"),
    ("Russian", "2/3", "две третьих"),
    ("Russian", "5/8", "пять восьмых"),
    ("Japanese", "3/4", "四分の三"),
    ("Korean", "3/4", "사분의 삼"),
    ("Chinese", "3/4", "3/4"),
]

#: The rule, the same in every language: a one-digit numerator over a larger
#: denominator of at most 10, nothing joined on either side. The rest are dates, times
#: or counts ("24/7") and are left as written.
NOT_FRACTIONS = ["12/05", "1/12", "5/4", "24/7", "3/4/2026", "12/05/2026", "03/04", "1/1"]


@pytest.mark.parametrize(("language", "text", "spoken"), FRACTIONS)
def test_fractions(language, text, spoken):
    assert prepare_text(text, language) == spoken


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("text", NOT_FRACTIONS)
def test_dates_are_not_fractions(language, text):
    assert prepare_text(text, language) == text


# --- together, and twice ---------------------------------------------------------------------


def test_an_announcement_with_everything():
    text = (
        "The 17.30 to Leeds, headcode 1A23, leaves from platforms 4 and 5 in 3/4 of an hour. "
        "For help call 555-0123."
    )
    assert prepare_text(text, "English") == (
        "The seventeen thirty to Leeds, headcode one A twenty-three, leaves from platforms "
        "four and five in three quarters of an hour. For help call five five five, zero one "
        "two three."
    )


TABLES = PHONES + DOT_TIMES + HEADCODES + PLATFORM_LISTS + FRACTIONS


@pytest.mark.parametrize(("language", "text", "spoken"), TABLES)
def test_preparing_twice_is_preparing_once(language, text, spoken):
    assert prepare_text(spoken, language) == spoken


# --- the README's examples ----------------------------------------------------------------------


def readme_examples() -> list[tuple[str, str]]:
    """Every `written` → "spoken" pair of the README's text-reading section (English)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Text read as station staff say it", 1)[1].split("\n## ", 1)[0]
    bullets = section.split("In English:", 1)[1].strip().split("\n\n", 1)[0]
    return re.findall(r"`([^`]+)` → \"([^\"]+)\"", bullets)


def test_the_readme_shows_examples():
    assert len(readme_examples()) >= 12


@pytest.mark.parametrize(("text", "spoken"), readme_examples())
def test_the_readme_examples_are_read_as_written(text, spoken):
    assert prepare_text(text, "English") == spoken


@pytest.mark.parametrize(
    ("language", "text", "spoken"),
    [("German", "17.30", "siebzehn Uhr dreißig"), ("Japanese", "3/4", "四分の三")],
)
def test_the_readme_examples_in_other_languages(language, text, spoken):
    assert prepare_text(text, language) == spoken
