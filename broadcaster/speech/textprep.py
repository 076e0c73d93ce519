"""Text preparation for public-address speech: numbers, times, codes and abbreviations.

Pure functions. ``prepare_text`` rewrites the parts of a text a speech engine is
likely to misread in an announcement; ``prepare_value`` does the same for one value
a template prints. Numbers are turned into words by ``num2words`` (no number tables
of our own); anything not recognised passes through unchanged, so no text is ever
dropped, and running the functions twice gives the same result as running them once
(their output holds no digits or abbreviations they would rewrite).

The PA reading style (English; other languages follow their own conventions):

* Times, 24-hour rail style: the hour as a number (``0`` is "zero"), then the
  minutes: ``:00`` is "hundred", ``:01``–``:09`` are "oh one"…"oh nine", the rest
  are numbers. "12:40" → "twelve forty", "08:05" → "eight oh five", "13:00" →
  "thirteen hundred", "00:15" → "zero fifteen", "00:00" → "zero hundred".
  With a.m./p.m. (hours 1–12): "6:40 a.m." → "six forty a.m.", "6:00 pm" →
  "six p.m.", "6 am" → "six a.m." (the suffix is always written "a.m."/"p.m.").
* German: "12:40" / "12.40 Uhr" → "zwölf Uhr vierzig", "8:00" → "acht Uhr",
  "1:00" → "ein Uhr". French: "12:40" / "12h40" → "douze heures quarante",
  "1:00" → "une heure". Spanish "doce y cuarenta", "ocho en punto"; Italian
  "dodici e quaranta", "otto e zero cinque", "tredici"; Portuguese "doze e
  quarenta", "oito horas"; Russian "двенадцать сорок", "восемь ноль пять";
  Japanese "十二時四十分"; Korean "열두 시 사십 분" (native hour, Sino minutes).
* Codes are read character by character: letters spaced, digits one by one.
  A code is 1–3 capital letters joined to digits ("A12", "ICE578") or 2–3 capital
  letters, a space and digits ("IC 2735", "BA 117") — the spaced form is not a
  code inside all-capital text ("DELAYED BY 18 MINUTES"). "IC 2735" → "I C two
  seven three five". A number with one capital letter after it is a route or
  platform: "12A" → "twelve A".
* Platform, track, gate (and the like, per language) numbers are whole numbers
  with their letter: "platform 2" → "platform two", "Platform 2b" → "Platform two
  B", "Gate B12" → "Gate B twelve".
* Times with a full stop ("17.30"): a time where the full stop is not the decimal
  point (German, French, Spanish, Italian, Portuguese, Russian), unless a unit
  follows or it is a day and month ("am 12.05." — a full stop after, 1–12 after
  the first one). English: "17.30", "08.15" (two-digit hour), "5.30pm" and "at
  9.15" / "the 9.15" (a cue word before a one-digit hour) are times; "2.50" stays
  "two point five zero". Japanese and Korean read only "17:30" as a time.
* Phone numbers: 7–15 digits in groups joined by spaces or hyphens, with a "+",
  or a first group starting with 0 ("020 7946 0018"), or hyphens only ("555-0123",
  "555-123-4567"; two groups: 3 or 4 digits, then 4). Read as written, one group
  after another with a pause (a comma): digit by digit ("five five five, zero one
  two three"); French reads a group of two as a number ("zéro un, vingt-trois"),
  Russian groups of two or three as numbers and four as two pairs; Japanese runs
  the digits together with "の" between groups; Korean says zero "공", German two
  "zwo". "+" is
  "plus" ("más", "più", "mais", "плюс", "プラス", "플러스"). "1990-1995" stays a
  range and "2026-05-01", "01-05-2026" dates.
* Headcodes: a digit, a capital letter and two digits ("1A23") → "one A
  twenty-three"; a leading zero: English "oh" ("2C05" → "two C oh five"), other
  languages digit by digit.
* Platform lists: more numbers after a platform word, joined by "and"/"or"/"to",
  commas or a hyphen, are platform numbers too ("platforms 4, 5 and 6a" →
  "platforms four, five and six A"; German "Gleise 4 und 5", French "voies 4 et
  5"...).
* Fractions: a one-digit numerator over a larger denominator of at most 10 with
  nothing joined on either side ("3/4" → "three quarters", "drei Viertel", "trois
  quarts", "tres cuartos", "tre quarti", "três quartos", "три четверти",
  "四分の三", "사분의 삼"). Anything else with a slash ("12/05", "1/12", "24/7",
  "3/4/2026") is a date or a count and is left as written.
* Other numbers: whole numbers in words ("18" → "eighteen"); English and German
  four-digit numbers from 1900 to 2099 are read as years ("2026" → "twenty
  twenty-six"); numbers with a leading zero ("007") and very long numbers are read
  digit by digit; decimals digit by digit after the point ("2.5" → "two point
  five"; the decimal comma "2,5" in languages that write it); "10-15" → "ten to
  fifteen"; English "1st" → "first"; a minus sign → "minus".
* Units after a number agree with it: "1 min" → "one minute", "5 mins" → "five
  minutes", "50%" → "fifty percent", "-5 °C" → "minus five degrees Celsius".

Numbers written against letters of any script ("18時", "5x", "COVID-19"'s "COVID")
and amounts with a currency sign ("£5") are left for the speech engine.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

from num2words import num2words

from broadcaster.model import LANGUAGES

__all__ = [
    "NUM2WORDS_CODES",
    "digits",
    "number_words",
    "prepare_text",
    "prepare_value",
    "spell",
    "time_words",
    "written_number",
]

#: ``speech.language`` → the num2words ``lang`` code. Chinese has no num2words
#: converter and "Auto" names no language: numbers stay digits for the engine.
NUM2WORDS_CODES: dict[str, str] = {
    "English": "en",
    "German": "de",
    "French": "fr",
    "Spanish": "es",
    "Italian": "it",
    "Portuguese": "pt",
    "Russian": "ru",
    "Japanese": "ja",
    "Korean": "ko",
}

#: Integers longer than this are identifiers, read digit by digit.
_MAX_WHOLE_DIGITS = 12
#: How far around a match its neighbouring words are looked for (keeps passes linear).
_WINDOW = 200

_Gender = Literal["m", "f", "n"] | None

# --- boundaries shared by the patterns -------------------------------------------------

#: Thousands may be grouped with no-break, narrow no-break or thin spaces.
_GROUP_SPACES = "\u00a0\u202f\u2009"
#: A number does not start right after these (it would be part of another token).
_NOT_BEFORE = r"(?<![\w.,:/\-–£€$¥₩₽+#])"
#: …and does not end right before these.
_NOT_AFTER = r"(?![\w]|[.,:/\-–]\d)"
_RUN = rf"\d+(?:(?:[.,:/\-–]|[{_GROUP_SPACES}])\d+)*"


@dataclass(frozen=True, slots=True)
class _Unit:
    pattern: str  # regex for the unit as written after the number
    singular: str
    plural: str
    gender: _Gender = None
    period: bool = False  # the pattern may consume an abbreviation's full stop


@dataclass(frozen=True, slots=True)
class _Abbrev:
    pattern: str
    expansion: str | Callable[[re.Match[str]], str]
    #: An expansion that may end a sentence keeps the abbreviation's full stop there.
    sentence_final: bool = False
    ignore_case: bool = False


@dataclass(frozen=True)
class _Rules:
    language: str
    code: str | None
    point: str = ""  # decimal point word
    comma: str = ""  # decimal comma word
    decimal_comma: bool = False  # "2,5" is two and a half (and "1,200" is not 1200)
    minus: str = ""
    years: bool = False
    range_word: str | None = None
    yes_no: tuple[str, str] = ("yes", "no")
    platform_words: tuple[str, ...] = ()
    units: tuple[_Unit, ...] = ()
    abbreviations: tuple[_Abbrev, ...] = ()
    #: A capital letter after an expanded "etc." starts a new sentence (not in German,
    #: whose nouns are capitalised).
    capital_ends_sentence: bool = True
    #: Words joining numbers in a list after a platform word ("platforms 4 and 5").
    list_words: tuple[str, ...] = ()
    #: The "+" of an international phone number.
    plus: str = "plus"
    #: How a phone number's written groups are read: "digits" one by one, "pairs"
    #: (French: a group of two is a number), "groups" (Russian: groups of two or
    #: three are numbers, four are two pairs).
    phone_style: Literal["digits", "pairs", "groups"] = "digits"
    #: Digits said otherwise in a phone number (Korean zero "공", German two "zwo").
    phone_digits: dict[str, str] = field(default_factory=dict)
    #: Between a phone number's groups (a short pause).
    phone_separator: str = ", "
    #: Fractions: denominator → (singular, plural) of its word, e.g. 4 → ("quarter",
    #: "quarters"); Japanese and Korean build theirs (see ``_fraction_words``).
    fractions: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: The numerator 1 before a fraction noun when it is not the cardinal ("ein Viertel").
    fraction_one: str | None = None


@dataclass(frozen=True)
class _Compiled:
    time: re.Pattern[str] | None
    platform: re.Pattern[str] | None
    number: re.Pattern[str]
    abbreviations: tuple[tuple[re.Pattern[str], _Abbrev], ...]
    unit_patterns: tuple[re.Pattern[str], ...]


# --- num2words, wrapped ---------------------------------------------------------------


def _n2w(value: int | Decimal, code: str, to: str = "cardinal") -> str | None:
    """num2words, or None when it cannot say the number (never raises)."""
    try:
        words = num2words(value, lang=code, to=to)
    except (NotImplementedError, OverflowError, ValueError, TypeError, InvalidOperation):
        return None
    # English puts commas between groups ("one thousand, two hundred"); a PA voice
    # should not pause there.
    return str(words).replace(",", "")


def _cardinal(n: int, r: _Rules) -> str | None:
    return None if r.code is None else _n2w(n, r.code)


def _digit_words(text: str, r: _Rules) -> str:
    """Each digit on its own ("0800" → "zero eight zero zero"); digits stay without num2words."""
    out = []
    for ch in text:
        words = _cardinal(int(ch), r) if ch.isdigit() else None
        out.append(words if words is not None else ch)
    return " ".join(out)


def _agree(words: str, r: _Rules, gender: _Gender, *, exactly_one: bool) -> str:
    """Make the number's last word agree with a following noun of ``gender``."""
    lang = r.code
    if lang == "de" and exactly_one and words == "eins":
        return "eine" if gender == "f" else "ein"
    if lang == "fr" and gender == "f" and words.endswith("un"):
        return words + "e"
    if lang == "es" and words.endswith("uno") and gender in ("m", "f"):
        if gender == "f":
            return words[:-1] + "a"  # "veintiuna"
        head = words[:-3]
        return head + ("ún" if head.endswith("i") else "un")  # "un", "veintiún", "treinta y un"
    if lang == "it" and words == "uno" and gender in ("m", "f"):
        return "una" if gender == "f" else "un"
    if lang == "pt" and gender == "f":
        head, _, last = words.rpartition(" ")
        last = {"um": "uma", "dois": "duas"}.get(last, last)
        return f"{head} {last}" if head else last
    return words


# --- times ----------------------------------------------------------------------------


def _ko_hour(h: int) -> str | None:
    """Korean hours use native numbers ("열두 시"); num2words has them only as ordinals."""
    if h == 0:
        return _n2w(0, "ko")
    if h == 1:
        return "한"
    if h == 20:
        return "스무"
    ordinal = _n2w(h, "ko", to="ordinal")
    return None if ordinal is None else ordinal.removesuffix(" 번째")


def _time_words(h: int, m: int, r: _Rules, ampm: str | None = None) -> str | None:
    """The spoken time, or None when the language has no reading (the caller keeps digits)."""
    if r.code is None or not (0 <= h <= 23 and 0 <= m <= 59):
        return None
    hw, mw = _cardinal(h, r), _cardinal(m, r)
    if hw is None or mw is None:
        return None
    code = r.code
    if code == "en":
        if ampm is not None:
            parts = [hw] if m == 0 else [hw, f"oh {mw}" if m < 10 else mw]
            return " ".join([*parts, ampm])
        if m == 0:
            return f"{hw} hundred"
        return f"{hw} oh {mw}" if m < 10 else f"{hw} {mw}"
    if code == "de":
        hour = "ein" if h == 1 else hw
        return f"{hour} Uhr" if m == 0 else f"{hour} Uhr {mw}"
    if code == "fr":
        hour = _agree(hw, r, "f", exactly_one=h == 1)
        heures = "heure" if h <= 1 else "heures"
        if m == 0:
            return f"{hour} {heures}"
        return f"{hour} {heures} {_agree(mw, r, 'f', exactly_one=m == 1)}"
    if code == "es":
        hour = _agree(hw, r, "f", exactly_one=h == 1)
        return f"{hour} en punto" if m == 0 else f"{hour} y {mw}"
    if code == "it":
        hour = "una" if h == 1 else hw
        if m == 0:
            return hour
        return f"{hour} e zero {mw}" if m < 10 else f"{hour} e {mw}"
    if code == "pt":
        hour = _agree(hw, r, "f", exactly_one=h == 1)
        if m == 0:
            return f"{hour} {'hora' if h == 1 else 'horas'}"
        return f"{hour} e {mw}"
    if code == "ru":
        zero = _cardinal(0, r)
        if m == 0:
            return f"{hw} {zero} {zero}"
        return f"{hw} {zero} {mw}" if m < 10 else f"{hw} {mw}"
    if code == "ja":
        return f"{hw}時" if m == 0 else f"{hw}時{mw}分"
    if code == "ko":
        hour_ko = _ko_hour(h)
        if hour_ko is None:
            return None
        return f"{hour_ko} 시" if m == 0 else f"{hour_ko} 시 {mw} 분"
    return None


def _time_pattern(r: _Rules) -> re.Pattern[str] | None:
    if r.code is None:
        return None
    hm = r"(?P<h>\d{1,2})"
    if r.code == "en":
        ampm = r"(?P<ampm>[aApP])\.?\s?[mM](?P<dot>\.?)(?!\w)"
        body = rf"{hm}(?:(?P<sep>[:.])(?P<m>\d{{2}}))?(?:\s?{ampm})?"
    elif r.code == "de":
        body = rf"{hm}(?:(?P<sep>[:.])(?P<m>\d{{2}}))?(?P<uhr>\s?Uhr\b)?"
    elif r.code in ("fr", "pt"):
        body = rf"{hm}(?:(?P<sep>[:.])(?P<m>\d{{2}})|\s?h(?:\s?(?P<hm>\d{{2}}))?(?!\w))"
    elif r.decimal_comma:  # "17.30" is no number where the decimal sign is a comma
        body = rf"{hm}(?P<sep>[:.])(?P<m>\d{{2}})"
    else:
        body = rf"{hm}:(?P<m>\d{{2}})"
    return re.compile(_NOT_BEFORE + body + _NOT_AFTER)


#: English words after which "H.MM" with a one-digit hour is a time ("at 9.15").
_EN_TIME_CUES = frozenset(
    {
        "at", "the", "from", "until", "till", "by", "after", "before", "between", "since",
        "due", "expected", "scheduled", "departs", "departing", "departure", "arrives",
        "arriving", "arrival", "leaves", "leaving",
    }
)  # fmt: skip


_MONEY_AFTER = re.compile(
    r"\s?(?:[€$£¥₩₽]|(?:EUR|USD|GBP|CHF|euros?|pounds?|dollars?|Euro|Franken)\b)"
)


def _dot_time(match: re.Match[str], r: _Rules, c: _Compiled) -> bool:
    """Whether "H.MM" (a full stop between hour and minutes) is a time here.

    Not when a unit follows ("21.50 °C"), nor a day and month ("am 12.05." in a
    decimal-comma language: a full stop after, the "minutes" 1–12). English, where
    the full stop is also the decimal point: a two-digit hour ("17.30", "08.15"),
    a.m./p.m. ("5.30pm") or a cue word before ("at 9.15", "the 9.15 to Leeds");
    otherwise "2.50" stays a decimal.
    """
    g = match.groupdict()
    h, m = g["h"], g.get("m") or ""
    if not (int(h) <= 23 and len(m) == 2 and int(m) <= 59):
        return False
    number = c.number.match(match.string, match.start())
    if number is not None and number.group("unit") is not None:
        return False
    if _MONEY_AFTER.match(match.string, match.end()):
        return False  # "17.30 EUR", "17.30€": an amount
    if r.code == "en":
        if g.get("ampm") is not None or len(h) == 2:
            return True
        before = _word_before(match.string, match.start())
        return before is not None and before.lower().strip("(\"'") in _EN_TIME_CUES
    date_like = 1 <= int(h) <= 31 and 1 <= int(m) <= 12
    return not (date_like and match.string.startswith(".", match.end()))


def _replace_time(match: re.Match[str], r: _Rules, c: _Compiled) -> str:
    g = match.groupdict()
    whole = match.group(0)
    h = int(g["h"])
    minutes = g.get("m") or g.get("hm")
    m = int(minutes) if minutes is not None else 0
    dotted = g.get("sep") == "."
    if dotted and g.get("uhr") is None and not _dot_time(match, r, c):
        return whole  # a decimal, a date, a measure: the number pass reads it
    if r.code == "en":
        if g.get("ampm") is not None:
            if not 1 <= h <= 12:
                return whole
            words = _time_words(h, m, r, ampm="a.m." if g["ampm"] in "aA" else "p.m.")
        elif minutes is None:
            return whole  # a bare number: the number pass reads it
        else:
            words = _time_words(h, m, r)
    elif r.code == "de":
        if g.get("uhr") is None and minutes is None:
            return whole  # "8" without "Uhr" is not known to be a time
        words = _time_words(h, m, r)
    else:
        words = _time_words(h, m, r)
    return whole if words is None else words


def time_words(hour: int, minute: int, language: str) -> str:
    """A clock time as the PA voice says it in ``language`` ("twelve forty").

    Languages without a reading (Chinese, Auto) get ``"H:MM"`` for the engine.
    """
    r = _rules(language)
    words = _time_words(hour, minute, r)
    if words is None:
        if not (0 <= hour <= 23 and 0 <= minute <= 59):
            raise ValueError(f"not a time of day: {hour}:{minute:02d}")
        return f"{hour}:{minute:02d}"
    return words


# --- numbers --------------------------------------------------------------------------


def _integer_words(text: str, r: _Rules, *, year_ok: bool) -> str | None:
    if (len(text) > 1 and text[0] == "0") or len(text) > _MAX_WHOLE_DIGITS:
        return _digit_words(text, r)
    n = int(text)
    if year_ok and r.years and r.code is not None and len(text) == 4 and 1900 <= n <= 2099:
        return _n2w(n, r.code, to="year")
    return _cardinal(n, r)


def _decimal_words(whole: str, fraction: str, separator: str, r: _Rules) -> str | None:
    if r.code is None:
        return None
    if r.code in ("ru", "ja", "ko"):  # num2words says these properly ("две целых пять десятых")
        return _n2w(Decimal(f"{whole}.{fraction}"), r.code)
    head = _cardinal(int(whole), r)
    if head is None:
        return None
    point = r.comma if separator == "," else r.point
    return f"{head} {point} {_digit_words(fraction, r)}"


_EN_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SPACE_THOUSANDS = re.compile(rf"\d{{1,3}}(?:[{_GROUP_SPACES}]\d{{3}})+(?:[.,]\d+)?")
_SIMPLE_RANGE = re.compile(r"(\d+)[-–](\d+)")


def _run_value(run: str, r: _Rules) -> tuple[str, str, str] | None:
    """Split a number as written into (whole digits, fraction digits, separator)."""
    if run.isdigit():
        return run, "", ""
    if _SPACE_THOUSANDS.fullmatch(run):
        run = re.sub(f"[{_GROUP_SPACES}]", "", run)
    elif not r.decimal_comma and _EN_THOUSANDS.fullmatch(run):
        run = run.replace(",", "")
    if run.isdigit():
        return run, "", ""
    sep = "," if r.decimal_comma else "."
    whole, found, fraction = run.partition(sep)
    if found and whole.isdigit() and fraction.isdigit():
        return whole, fraction, sep
    return None


def _number_words(
    run: str, r: _Rules, *, negative: bool, year_ok: bool
) -> tuple[str, Decimal] | None:
    parts = _run_value(run, r)
    if parts is None:
        return None
    whole, fraction, sep = parts
    if fraction:
        words = _decimal_words(whole, fraction, sep, r)
        value = Decimal(f"{whole}.{fraction}")
    else:
        words = _integer_words(whole, r, year_ok=year_ok and not negative)
        value = Decimal(whole)
    if words is None:
        return None
    if negative:
        return f"{r.minus} {words}", -value
    return words, value


def _unit_words(unit: _Unit, value: Decimal, r: _Rules) -> tuple[str, bool]:
    """The unit's words for ``value``, and whether the number is exactly one."""
    one = abs(value) == 1
    singular = abs(value) < 2 if r.code == "fr" else one
    return (unit.singular if singular else unit.plural), one


def _ends_sentence(text: str, end: int, r: _Rules | None) -> bool:
    """Whether a full stop just before ``end`` may have ended the sentence.

    Always at the end of the text; before a capital letter too when ``r`` says so
    (``None``: only at the end, for "Main St." whose next word may be a name).
    """
    if _BLANK_TO_END.match(text, end):
        return True
    capital = r is not None and r.capital_ends_sentence
    return capital and _SPACE_CAPITAL.match(text, end) is not None


_BLANK_TO_END = re.compile(r"\s*\Z")
_SPACE_CAPITAL = re.compile(r"\s+[A-Z]")


def _replace_number(match: re.Match[str], r: _Rules, c: _Compiled) -> str:
    whole_match = match.group(0)
    run = match.group("run")
    negative = match.group("sign") is not None
    unit_text = match.group("unit")
    ordinal = match.groupdict().get("ordinal")
    unit = None
    if unit_text is not None:
        stripped = unit_text.strip()
        for pattern, candidate in zip(c.unit_patterns, r.units, strict=True):
            if pattern.fullmatch(stripped):
                unit = candidate
                break

    if ordinal is not None:
        if negative or not run.isdigit() or r.code is None:
            return whole_match
        words = _n2w(int(run), r.code, to="ordinal")
        return whole_match if words is None else words

    range_match = _SIMPLE_RANGE.fullmatch(run)
    if range_match is not None:
        if negative or r.range_word is None:
            return whole_match
        low = _number_words(range_match.group(1), r, negative=False, year_ok=unit is None)
        high = _number_words(range_match.group(2), r, negative=False, year_ok=unit is None)
        if low is None or high is None:
            return whole_match
        spoken = f"{low[0]} {r.range_word} {high[0]}"
        if unit is not None:
            spoken += " " + unit.plural
            if _keeps_stop(unit, unit_text, match, r):
                spoken += "."
        return spoken

    said = _number_words(run, r, negative=negative, year_ok=unit is None)
    if said is None:
        return whole_match
    words, value = said
    if unit is None:
        return words
    if run.isdigit() and run[0] == "0" and len(run) > 1:
        words = _cardinal(int(run), r) or words  # "05 min": five minutes
        if negative:
            words = f"{r.minus} {words}"
    unit_name, one = _unit_words(unit, value, r)
    words = _agree(words, r, unit.gender, exactly_one=one)
    spoken = f"{words} {unit_name}"
    if _keeps_stop(unit, unit_text, match, r):
        spoken += "."
    return spoken


def _keeps_stop(unit: _Unit, unit_text: str | None, match: re.Match[str], r: _Rules) -> bool:
    """Whether the unit abbreviation's full stop also ended the sentence ("5 min.")."""
    written_stop = unit.period and unit_text is not None and unit_text.endswith(".")
    return written_stop and _ends_sentence(match.string, match.end(), r)


# --- codes and platforms ----------------------------------------------------------------

_JOINED_CODE = re.compile(
    _NOT_BEFORE + r"(?P<letters>[A-Z]{1,3})(?P<digits>\d{1,6})(?P<suffix>[A-Z]?)" + _NOT_AFTER
)
_SPACED_CODE = re.compile(
    _NOT_BEFORE + r"(?P<letters>[A-Z]{2,3})[ \u00a0](?P<digits>\d{1,6})" + _NOT_AFTER
)
_NUMBER_LETTER = re.compile(_NOT_BEFORE + r"(?P<digits>\d{1,4})(?P<suffix>[A-Z])" + _NOT_AFTER)


def _word_before(text: str, start: int) -> str | None:
    words = text[max(0, start - _WINDOW) : start].split()
    return words[-1] if words else None


def _word_after(text: str, end: int) -> str | None:
    words = text[end : end + _WINDOW].split(maxsplit=1)
    return words[0] if words else None


def _shouting(word: str | None) -> bool:
    letters = [ch for ch in word or "" if ch.isalpha()]
    return len(letters) >= 2 and all(ch.isupper() for ch in letters)


def _replace_spaced_code(match: re.Match[str], r: _Rules) -> str:
    text = match.string
    prev_word = _word_before(text, match.start())
    next_word = _word_after(text, match.end())
    if _shouting(prev_word) or _shouting(next_word):
        return match.group(0)  # capitals here are emphasis, not a code
    return _spell(match.group("letters") + match.group("digits"), r)


def _replace_joined_code(match: re.Match[str], r: _Rules) -> str:
    return _spell(match.group(0), r)


def _replace_number_letter(match: re.Match[str], r: _Rules) -> str:
    words = _integer_words(match.group("digits"), r, year_ok=False)
    return match.group(0) if words is None else f"{words} {match.group('suffix')}"


def _platform_pattern(r: _Rules) -> re.Pattern[str] | None:
    if not r.platform_words:
        return None
    words = "|".join(sorted(r.platform_words, key=len, reverse=True))
    joins = "|".join(sorted(r.list_words, key=len, reverse=True)) or "(?!)"
    # More numbers may follow: "platforms 4 and 5", "4, 5 or 6a", "2-3", "B12 & B14".
    joiner = rf"(?:,?\s+(?:{joins})\s+|,\s+|\s*[&\-–]\s*)"
    item = r"[A-Z]?\d{1,4}[A-Za-z]?" + _NOT_AFTER
    return re.compile(
        rf"\b(?P<word>(?i:{words}))(?P<space>\s+)(?:(?P<prefix>[A-Z])\s?)?"
        rf"(?P<digits>\d{{1,4}})(?P<suffix>[A-Za-z])?"
        + _NOT_AFTER
        + rf"(?P<rest>(?:{joiner}{item})*)"
    )


_LIST_ITEM = re.compile(r"(?P<join>\D*?)(?P<prefix>[A-Z]?)(?P<digits>\d{1,4})(?P<suffix>[A-Za-z]?)")


def _designator(digits: str, prefix: str | None, suffix: str | None, r: _Rules) -> str | None:
    """A platform-style number: "B12" → "B twelve", "3a" → "three A"."""
    words = _integer_words(digits, r, year_ok=False)
    if words is None:
        return None
    return " ".join(p for p in (prefix, words, suffix.upper() if suffix else None) if p)


def _replace_platform(match: re.Match[str], r: _Rules) -> str:
    first = _designator(match.group("digits"), match.group("prefix"), match.group("suffix"), r)
    if first is None:
        return match.group(0)
    out = [f"{match.group('word')}{match.group('space')}{first}"]
    for item in _LIST_ITEM.finditer(match.group("rest")):
        join = item.group("join")
        if join.strip() in ("-", "–") and r.range_word:
            join = f" {r.range_word} "
        elif join.strip() == "&":
            join = " & "  # the abbreviations pass ran already; "&" is left as written
        said = _designator(item.group("digits"), item.group("prefix"), item.group("suffix"), r)
        out.append(join + (said if said is not None else item.group(0)[len(item.group("join")) :]))
    return "".join(out)


# --- phone numbers, fractions, headcodes -------------------------------------------------

#: A phone number as written: an optional "+", then groups of digits joined by single
#: spaces or hyphens. Which of these are phone numbers is decided in ``_is_phone``.
_PHONE = re.compile(
    rf"(?:(?<![\w+])(?P<plus>\+)\s?|{_NOT_BEFORE})"
    r"(?P<body>\d{1,5}(?:[ \u00a0\-]\d{1,5}){1,5})" + _NOT_AFTER
)
_PHONE_SEPARATORS = re.compile(r"[ \u00a0\-]")
#: Dates written with hyphens: "2026-05-01", "01-05-2026".
_HYPHEN_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}-\d{1,2}-\d{4}")


def _is_phone(plus: bool, body: str) -> bool:
    """The rule: 7–15 digits in all, and one of

    * a "+" before it (international: "+44 20 7946 0018");
    * a first group starting with 0 (national: "020 7946 0018", "0800-123-456");
    * only hyphens, no one-digit group but the first, and three or more groups
      ("555-123-4567", "1-800-555-0123"), or two groups of 3 (or 4) and 4 digits
      where the second starts with 0 if the first has 4 ("555-0123", "2345-0678";
      "1990-1995" stays a range).

    A date written with hyphens ("2026-05-01", "01-05-2026") is never a phone number.
    """
    groups = _PHONE_SEPARATORS.split(body)
    total = sum(len(g) for g in groups)
    if not 7 <= total <= 15 or _HYPHEN_DATE.fullmatch(body):
        return False
    if plus:
        return True
    if len(groups[0]) >= 2 and groups[0][0] == "0":
        return True
    if " " in body or "\u00a0" in body or any(len(g) == 1 for g in groups[1:]):
        return False
    if len(groups) >= 3:
        return True  # "555-123-4567", "1-800-555-0123"
    if len(groups[0]) == 1:
        return False
    first, second = groups
    return len(second) == 4 and (len(first) == 3 or (len(first) == 4 and second[0] == "0"))


def _phone_digits(group: str, r: _Rules) -> str:
    words = []
    for ch in group:
        words.append(r.phone_digits.get(ch) or _digit_words(ch, r))
    return ("" if r.code == "ja" else " ").join(words)


def _phone_number(group: str, r: _Rules) -> str:
    """A group read as a number, its leading zeros one by one ("01" → "zéro un")."""
    rest = group.lstrip("0")
    zeros = [_digit_words("0", r)] * (len(group) - len(rest))
    said = _cardinal(int(rest), r) if rest else None
    return " ".join([*zeros, *([said] if said else [])])


def _phone_group(group: str, r: _Rules) -> str:
    if r.phone_style == "pairs" and len(group) == 2:
        return _phone_number(group, r)
    if r.phone_style == "groups":
        if len(group) in (2, 3):
            return _phone_number(group, r)
        if len(group) == 4:
            return f"{_phone_number(group[:2], r)} {_phone_number(group[2:], r)}"
    return _phone_digits(group, r)


def _replace_phone(match: re.Match[str], r: _Rules) -> str:
    plus = match.group("plus") is not None
    body = match.group("body")
    if not _is_phone(plus, body):
        return match.group(0)
    said = r.phone_separator.join(_phone_group(g, r) for g in _PHONE_SEPARATORS.split(body))
    return f"{r.plus} {said}" if plus else said


#: "3/4": a one-digit numerator below a denominator of 2 to 10, with nothing joined on
#: either side. "12/05", "1/12", "24/7" or "3/4/2026" are not fractions (dates, times).
_FRACTION = re.compile(_NOT_BEFORE + r"(?P<num>[1-9])/(?P<den>10|[2-9])" + r"(?![\w/]|[.,:\-–]\d)")


def _fraction_words(num: int, den: int, r: _Rules) -> str | None:
    code = r.code
    if code is None or num >= den:
        return None
    top, bottom = _cardinal(num, r), _cardinal(den, r)
    if top is None or bottom is None:
        return None
    if code == "ja":
        return f"{bottom}分の{top}"
    if code == "ko":
        return f"{bottom}분의 {top}"
    nouns = r.fractions.get(den)
    if nouns is None:
        return None
    if code == "ru":
        return _ru_fraction(num, den, nouns)
    noun = nouns[0] if num == 1 else nouns[1]
    head = r.fraction_one if num == 1 and r.fraction_one else top
    return f"{head} {noun}"


#: Russian: the numerator feminine (одна, две), the ordinal nominative after 1 and
#: genitive plural after 2 and more; the everyday words for a half and quarters.
_RU_FRACTION_SPECIAL = {(1, 2): "одна вторая", (1, 4): "одна четвёртая", (3, 4): "три четверти"}
_RU_NUMERATORS = {1: "одна", 2: "две"}


def _ru_fraction(num: int, den: int, nouns: tuple[str, str]) -> str | None:
    special = _RU_FRACTION_SPECIAL.get((num, den))
    if special is not None:
        return special
    head = _RU_NUMERATORS.get(num) or _n2w(num, "ru")
    if head is None:
        return None
    return f"{head} {nouns[0] if num == 1 else nouns[1]}"


def _replace_fraction(match: re.Match[str], r: _Rules) -> str:
    words = _fraction_words(int(match.group("num")), int(match.group("den")), r)
    return match.group(0) if words is None else words


#: A British-style train headcode: a digit (the class), a capital letter (the area)
#: and two digits (the train): "1A23" → "one A twenty-three".
_HEADCODE = re.compile(_NOT_BEFORE + r"(?P<cls>\d)(?P<letter>[A-Z])(?P<num>\d{2})" + _NOT_AFTER)


def _replace_headcode(match: re.Match[str], r: _Rules) -> str:
    cls = _cardinal(int(match.group("cls")), r)
    num = match.group("num")
    if num[0] != "0":
        train = _cardinal(int(num), r)
    elif r.code == "en" and num != "00":
        train = f"oh {_cardinal(int(num[1]), r)}"  # "1A05": "one A oh five"
    else:
        train = _digit_words(num, r)
    if cls is None or train is None:
        return match.group(0)
    return f"{cls} {match.group('letter')} {train}"


# --- abbreviations ----------------------------------------------------------------------


def _capitalised(word: str | None) -> bool:
    return word is not None and word[:1].isupper()


def _starts_sentence(text: str, start: int) -> bool:
    """Whether the word just before ``start`` opens its sentence (or the text)."""
    words = text[max(0, start - _WINDOW) : start].split()
    if len(words) < 2:
        return True
    return words[-2][-1] in ".!?:"


def _en_street_or_saint(match: re.Match[str]) -> str:
    text = match.string
    prev_word = _word_before(text, match.start())
    next_word = _word_after(text, match.end())
    name_before = _capitalised(prev_word) and not _starts_sentence(text, match.start())
    street = "Street" + (
        "." if match.group(0).endswith(".") and _ends_sentence(text, match.end(), None) else ""
    )
    if name_before:
        return street
    if _capitalised(next_word):
        return "Saint"
    if _capitalised(prev_word):
        return street
    return match.group(0)


def _en_doctor_or_drive(match: re.Match[str]) -> str:
    text = match.string
    if _capitalised(_word_after(text, match.end())):
        return "Doctor"
    if _capitalised(_word_before(text, match.start())) and not _starts_sentence(
        text, match.start()
    ):
        return "Drive" + ("." if _ends_sentence(text, match.end(), None) else "")
    return "Doctor"


def _abbreviations(text: str, r: _Rules, c: _Compiled) -> str:
    for pattern, abbrev in c.abbreviations:

        def expand(match: re.Match[str], abbrev: _Abbrev = abbrev) -> str:
            if callable(abbrev.expansion):
                return abbrev.expansion(match)
            words = abbrev.expansion
            found = match.group(0)
            if found[:1].isupper() and not words[:1].isupper():
                words = words[0].upper() + words[1:]
            if abbrev.sentence_final and _ends_sentence(match.string, match.end(), r):
                words += "."
            return words

        text = pattern.sub(expand, text)
    return text


# --- per-language rules -----------------------------------------------------------------

_NOT_AFTER_DIGIT = r"(?<!\d)(?<!\d\s)"

_ENGLISH = _Rules(
    language="English",
    code="en",
    point="point",
    comma="point",
    minus="minus",
    years=True,
    range_word="to",
    platform_words=(
        "platforms?",
        "tracks?",
        "gates?",
        "stands?",
        "bays?",
        "piers?",
        "terminals?",
        "coach",
        "carriage",
        "car",
        "berth",
        "dock",
        "exit",
        "door",
    ),
    list_words=("and", "or", "to"),
    fractions={
        2: ("half", "halves"),
        3: ("third", "thirds"),
        4: ("quarter", "quarters"),
        5: ("fifth", "fifths"),
        6: ("sixth", "sixths"),
        7: ("seventh", "sevenths"),
        8: ("eighth", "eighths"),
        9: ("ninth", "ninths"),
        10: ("tenth", "tenths"),
    },
    units=(
        _Unit(r"%", "percent", "percent"),
        _Unit(r"°\s?C", "degree Celsius", "degrees Celsius"),
        _Unit(r"°\s?F", "degree Fahrenheit", "degrees Fahrenheit"),
        _Unit(r"°", "degree", "degrees"),
        _Unit(r"km/h", "kilometre per hour", "kilometres per hour"),
        _Unit(r"mph", "mile per hour", "miles per hour"),
        _Unit(r"km", "kilometre", "kilometres"),
        _Unit(r"mins?\.?", "minute", "minutes", period=True),
        _Unit(r"hrs?\.?", "hour", "hours", period=True),
        _Unit(r"secs?\.?", "second", "seconds", period=True),
    ),
    abbreviations=(
        _Abbrev(r"\bapprox\b\.?", "approximately", ignore_case=True),
        _Abbrev(r"\be\.\s?g\.", "for example", ignore_case=True),
        _Abbrev(r"\bi\.\s?e\.", "that is", ignore_case=True),
        _Abbrev(r"\betc\.", "et cetera", sentence_final=True, ignore_case=True),
        _Abbrev(r"\b[Nn]o\.(?=\s?\d)", "number"),
        _Abbrev(r"\bMrs\.", "Missus"),
        _Abbrev(r"\bMr\.", "Mister"),
        _Abbrev(r"\bDr\.", _en_doctor_or_drive),
        _Abbrev(r"\bSt\b\.?", _en_street_or_saint),
        _Abbrev(r"(?<=\s)&(?=\s)", "and"),
        _Abbrev(r"(?<=\w)&(?=\w)", " and "),
    ),
)

_GERMAN = _Rules(
    language="German",
    code="de",
    point="Komma",
    comma="Komma",
    decimal_comma=True,
    minus="minus",
    years=True,
    range_word="bis",
    yes_no=("ja", "nein"),
    platform_words=(
        "Gleise",
        "Gleis",
        "Bahnsteige",
        "Bahnsteig",
        "Flugsteig",
        "Steig",
        "Gate",
        "Terminal",
        "Wagen",
        "Ausgang",
    ),
    list_words=("und", "oder", "bis"),
    phone_digits={"2": "zwo"},  # on the phone "zwei" is "zwo" (not to be heard as "drei")
    fraction_one="ein",
    fractions={
        2: ("halb", "halbe"),
        3: ("Drittel", "Drittel"),
        4: ("Viertel", "Viertel"),
        5: ("Fünftel", "Fünftel"),
        6: ("Sechstel", "Sechstel"),
        7: ("Siebtel", "Siebtel"),
        8: ("Achtel", "Achtel"),
        9: ("Neuntel", "Neuntel"),
        10: ("Zehntel", "Zehntel"),
    },
    units=(
        _Unit(r"%", "Prozent", "Prozent", "n"),
        _Unit(r"°\s?C", "Grad Celsius", "Grad Celsius", "n"),
        _Unit(r"°", "Grad", "Grad", "n"),
        _Unit(r"km/h", "Kilometer pro Stunde", "Kilometer pro Stunde", "m"),
        _Unit(r"km", "Kilometer", "Kilometer", "m"),
        _Unit(r"(?:Min|min)\.?", "Minute", "Minuten", "f", period=True),
        _Unit(r"Std\.?", "Stunde", "Stunden", "f", period=True),
        _Unit(r"Sek\.?", "Sekunde", "Sekunden", "f", period=True),
    ),
    abbreviations=(
        _Abbrev(r"\bca\.", "circa"),
        _Abbrev(r"\bCa\.", "Circa"),
        _Abbrev(r"\bGl\.", "Gleis"),
        _Abbrev(r"\b[zZ]\.\s?B\.", "zum Beispiel"),
        _Abbrev(r"\bNr\.", "Nummer"),
        _Abbrev(_NOT_AFTER_DIGIT + r"\bMin\.", "Minuten", sentence_final=True),
        _Abbrev(_NOT_AFTER_DIGIT + r"\bStd\.", "Stunden", sentence_final=True),
        _Abbrev(r"\busw\.", "und so weiter", sentence_final=True),
        _Abbrev(r"\bbzw\.", "beziehungsweise"),
        _Abbrev(r"\b[dD]\.\s?h\.", "das heißt"),
        _Abbrev(r"\b[uU]\.\s?a\.", "unter anderem"),
        _Abbrev(r"(?<=\s)&(?=\s)", "und"),
        _Abbrev(r"(?<=\w)&(?=\w)", " und "),
    ),
    capital_ends_sentence=False,
)

_FRENCH = _Rules(
    language="French",
    code="fr",
    point="point",
    comma="virgule",
    decimal_comma=True,
    minus="moins",
    range_word="à",
    yes_no=("oui", "non"),
    platform_words=(
        "voies?",
        "quais?",
        "portes?",
        "terminal",
        "voitures?",
        "sortie",
        "hall",
    ),
    list_words=("et", "ou", "à"),
    phone_style="pairs",
    fraction_one="un",
    fractions={
        2: ("demi", "demis"),
        3: ("tiers", "tiers"),
        4: ("quart", "quarts"),
        5: ("cinquième", "cinquièmes"),
        6: ("sixième", "sixièmes"),
        7: ("septième", "septièmes"),
        8: ("huitième", "huitièmes"),
        9: ("neuvième", "neuvièmes"),
        10: ("dixième", "dixièmes"),
    },
    units=(
        _Unit(r"%", "pour cent", "pour cent", "m"),
        _Unit(r"°\s?C", "degré Celsius", "degrés Celsius", "m"),
        _Unit(r"°", "degré", "degrés", "m"),
        _Unit(r"km/h", "kilomètre par heure", "kilomètres par heure", "m"),
        _Unit(r"km", "kilomètre", "kilomètres", "m"),
        _Unit(r"min\.?", "minute", "minutes", "f", period=True),
    ),
    abbreviations=(
        _Abbrev(r"\benv\.", "environ"),
        _Abbrev(r"\b[nN]°", "numéro"),
        _Abbrev(r"(?<=\s)&(?=\s)", "et"),
    ),
)

_SPANISH = _Rules(
    language="Spanish",
    code="es",
    point="punto",
    comma="coma",
    decimal_comma=True,
    minus="menos",
    range_word="a",
    yes_no=("sí", "no"),
    platform_words=(
        "vías?",
        "andenes",
        "andén",
        "puertas?",
        "terminal",
        "coches?",
        "salida",
        "dársenas?",
    ),
    list_words=("y", "o", "a"),
    plus="más",
    fraction_one="un",
    fractions={
        2: ("medio", "medios"),
        3: ("tercio", "tercios"),
        4: ("cuarto", "cuartos"),
        5: ("quinto", "quintos"),
        6: ("sexto", "sextos"),
        7: ("séptimo", "séptimos"),
        8: ("octavo", "octavos"),
        9: ("noveno", "novenos"),
        10: ("décimo", "décimos"),
    },
    units=(
        _Unit(r"%", "por ciento", "por ciento"),
        _Unit(r"°\s?C", "grado Celsius", "grados Celsius", "m"),
        _Unit(r"°", "grado", "grados", "m"),
        _Unit(r"km/h", "kilómetro por hora", "kilómetros por hora", "m"),
        _Unit(r"km", "kilómetro", "kilómetros", "m"),
        _Unit(r"min\.?", "minuto", "minutos", "m", period=True),
    ),
    abbreviations=(
        _Abbrev(r"\baprox\.", "aproximadamente", ignore_case=True),
        _Abbrev(r"(?<=\s)&(?=\s)", "y"),
    ),
)

_ITALIAN = _Rules(
    language="Italian",
    code="it",
    point="punto",
    comma="virgola",
    decimal_comma=True,
    minus="meno",
    range_word="a",
    yes_no=("sì", "no"),
    platform_words=("binario", "binari", "gate", "terminal", "carrozza", "uscita"),
    list_words=("e", "o", "a"),
    plus="più",
    fraction_one="un",
    fractions={
        2: ("mezzo", "mezzi"),
        3: ("terzo", "terzi"),
        4: ("quarto", "quarti"),
        5: ("quinto", "quinti"),
        6: ("sesto", "sesti"),
        7: ("settimo", "settimi"),
        8: ("ottavo", "ottavi"),
        9: ("nono", "noni"),
        10: ("decimo", "decimi"),
    },
    units=(
        _Unit(r"%", "per cento", "per cento"),
        _Unit(r"°\s?C", "grado Celsius", "gradi Celsius", "m"),
        _Unit(r"°", "grado", "gradi", "m"),
        _Unit(r"km/h", "chilometro orario", "chilometri orari", "m"),
        _Unit(r"km", "chilometro", "chilometri", "m"),
        _Unit(r"min\.?", "minuto", "minuti", "m", period=True),
    ),
    abbreviations=(
        _Abbrev(r"\bca\.", "circa", ignore_case=True),
        _Abbrev(r"(?<=\s)&(?=\s)", "e"),
    ),
)

_PORTUGUESE = _Rules(
    language="Portuguese",
    code="pt",
    point="ponto",
    comma="vírgula",
    decimal_comma=True,
    minus="menos",
    range_word="a",
    yes_no=("sim", "não"),
    platform_words=(
        "plataformas?",
        "linhas?",
        "cais",
        "portões",
        "portão",
        "terminal",
        "carruagem",
        "saída",
    ),
    list_words=("e", "ou", "a"),
    plus="mais",
    fraction_one="um",
    fractions={
        2: ("meio", "meios"),
        3: ("terço", "terços"),
        4: ("quarto", "quartos"),
        5: ("quinto", "quintos"),
        6: ("sexto", "sextos"),
        7: ("sétimo", "sétimos"),
        8: ("oitavo", "oitavos"),
        9: ("nono", "nonos"),
        10: ("décimo", "décimos"),
    },
    units=(
        _Unit(r"%", "por cento", "por cento"),
        _Unit(r"°\s?C", "grau Celsius", "graus Celsius", "m"),
        _Unit(r"°", "grau", "graus", "m"),
        _Unit(r"km/h", "quilómetro por hora", "quilómetros por hora", "m"),
        _Unit(r"km", "quilómetro", "quilómetros", "m"),
        _Unit(r"min\.?", "minuto", "minutos", "m", period=True),
    ),
    abbreviations=(
        _Abbrev(r"\baprox\.", "aproximadamente", ignore_case=True),
        _Abbrev(r"(?<=\s)&(?=\s)", "e"),
    ),
)

_RUSSIAN = _Rules(
    language="Russian",
    code="ru",
    point="",
    comma="",
    decimal_comma=True,
    minus="минус",
    yes_no=("да", "нет"),
    platform_words=("путь", "пути", "платформа", "платформы", "выход", "терминал", "вагон"),
    list_words=("и", "или"),
    plus="плюс",
    phone_style="groups",
    fractions={
        2: ("вторая", "вторых"),
        3: ("третья", "третьих"),
        4: ("четвёртая", "четвёртых"),
        5: ("пятая", "пятых"),
        6: ("шестая", "шестых"),
        7: ("седьмая", "седьмых"),
        8: ("восьмая", "восьмых"),
        9: ("девятая", "девятых"),
        10: ("десятая", "десятых"),
    },
)

_JAPANESE = _Rules(
    language="Japanese",
    code="ja",
    minus="マイナス",
    yes_no=("はい", "いいえ"),
    plus="プラス",
    phone_separator="の",  # "〇三の一二三四の五六七八"
)
_KOREAN = _Rules(
    language="Korean",
    code="ko",
    minus="마이너스",
    yes_no=("예", "아니요"),
    plus="플러스",
    phone_digits={"0": "공"},  # zero in a phone number is "공", not "영"
)
_CHINESE = _Rules(language="Chinese", code=None, yes_no=("是", "否"))
_AUTO = _Rules(language="Auto", code=None)


def _compile(r: _Rules) -> _Compiled:
    unit_patterns = tuple(re.compile(u.pattern) for u in r.units)
    # A unit written as letters must end there ("5 min" but not "5 minutes").
    alternatives = [
        u.pattern + (r"(?!\w)" if u.pattern[-1].isalpha() or u.period else "") for u in r.units
    ]
    never = "(?!)"
    unit_group = rf"(?P<unit>\s?(?:{'|'.join(alternatives) or never}))?"
    ordinal = r"(?P<ordinal>st|nd|rd|th)?" if r.code == "en" else ""
    number = re.compile(
        rf"(?:{_NOT_BEFORE}(?P<sign>[-−])(?=\d)|{_NOT_BEFORE})(?P<run>{_RUN}){ordinal}{unit_group}"
        + _NOT_AFTER
    )
    abbreviations = tuple(
        (re.compile(a.pattern, re.IGNORECASE if a.ignore_case else 0), a) for a in r.abbreviations
    )
    return _Compiled(
        time=_time_pattern(r),
        platform=_platform_pattern(r),
        number=number,
        abbreviations=abbreviations,
        unit_patterns=unit_patterns,
    )


_RULES: dict[str, _Rules] = {
    r.language: r
    for r in (
        _ENGLISH,
        _GERMAN,
        _FRENCH,
        _SPANISH,
        _ITALIAN,
        _PORTUGUESE,
        _RUSSIAN,
        _JAPANESE,
        _KOREAN,
        _CHINESE,
        _AUTO,
    )
}
assert set(_RULES) == set(LANGUAGES), "every speech language has text rules"
_COMPILED: dict[str, _Compiled] = {name: _compile(r) for name, r in _RULES.items()}


def _rules(language: str) -> _Rules:
    try:
        return _RULES[language]
    except KeyError:
        raise ValueError(
            f"unknown language {language!r}; choose one of {', '.join(LANGUAGES)}"
        ) from None


# --- public API -------------------------------------------------------------------------


def prepare_text(text: str, language: str) -> str:
    """Rewrite numbers, times, codes and abbreviations in ``text`` for speaking in ``language``.

    Raises ValueError for a language not in :data:`broadcaster.model.LANGUAGES`.
    """
    r = _rules(language)
    c = _COMPILED[r.language]
    text = _abbreviations(text, r, c)
    if r.code is not None:
        text = _PHONE.sub(lambda m: _replace_phone(m, r), text)
    if c.time is not None:
        text = c.time.sub(lambda m: _replace_time(m, r, c), text)
    if r.code is not None:
        text = _FRACTION.sub(lambda m: _replace_fraction(m, r), text)
        text = _HEADCODE.sub(lambda m: _replace_headcode(m, r), text)
    if c.platform is not None:
        text = c.platform.sub(lambda m: _replace_platform(m, r), text)
    text = _SPACED_CODE.sub(lambda m: _replace_spaced_code(m, r), text)
    text = _JOINED_CODE.sub(lambda m: _replace_joined_code(m, r), text)
    if r.code is not None:
        text = _NUMBER_LETTER.sub(lambda m: _replace_number_letter(m, r), text)
        text = c.number.sub(lambda m: _replace_number(m, r, c), text)
    return text


def prepare_value(value: object, language: str) -> str:
    """The words a template prints for ``value`` in ``language``.

    ``None`` prints nothing; ``bool`` is yes/no in the language; numbers are words;
    a ``datetime.time`` is a spoken time; a value that is just a number and a letter
    ("2b") is a platform-style designator ("two B"); other text goes through
    :func:`prepare_text`.
    """
    r = _rules(language)
    if value is None:
        return ""
    if isinstance(value, bool):
        return r.yes_no[0] if value else r.yes_no[1]
    if isinstance(value, dt.time):
        return time_words(value.hour, value.minute, language)
    if isinstance(value, int):
        return prepare_text(str(value), language)
    if isinstance(value, float | Decimal):
        return prepare_text(_decimal_text(value, r), language)
    text = str(value)
    designator = _DESIGNATOR.fullmatch(text.strip())
    if designator is not None and r.code is not None:
        # A value that is only a number and a letter names a platform, stand or
        # route ("2b"); printed after the template's own "Platform", it reads as one.
        words = _integer_words(designator.group(1), r, year_ok=False)
        if words is not None:
            return f"{words} {designator.group(2).upper()}"
    return prepare_text(text, language)


_DESIGNATOR = re.compile(r"(\d{1,4})([A-Za-z])")


def written_number(value: float | Decimal, language: str) -> str:
    """A float or Decimal as texts in ``language`` write it ("2.5"; German "2,5")."""
    return _decimal_text(value, _rules(language))


def _decimal_text(value: float | Decimal, r: _Rules) -> str:
    """A float or Decimal written the way the language's texts write it."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        value = Decimal(f"{value:.10g}")
    elif not value.is_finite():
        return str(value)
    text = format(value, "f")
    return text.replace(".", ",") if r.decimal_comma else text


def spell(text: str, language: str) -> str:
    """Character by character: "IC 2735" → "I C two seven three five".

    Letters are spoken as capitals, digits one by one; spaces, hyphens, dots,
    slashes and underscores only separate. Other characters are kept.
    """
    return _spell(text, _rules(language))


def _spell(text: str, r: _Rules) -> str:
    out: list[str] = []
    for ch in text:
        if ch.isspace() or ch in "-–._/":
            continue
        if ch.isdigit():
            out.append(_digit_words(ch, r))
        elif ch.isalpha():
            out.append(ch.upper())
        else:
            out.append(ch)
    return " ".join(out)


def digits(text: str, language: str) -> str:
    """Digit by digit: "0800 123" → "zero eight zero zero one two three".

    Words in the text stay words; spaces and hyphens only separate.
    """
    r = _rules(language)
    out: list[str] = []
    for token in re.findall(r"\d|[^\W\d_]+|[^\s\-–\w]", text):
        out.append(_digit_words(token, r) if token.isdigit() else token)
    return " ".join(out)


def number_words(value: object, language: str) -> str:
    """A number in words ("2026" → "two thousand and twenty-six"; never a year reading).

    Accepts int, float, Decimal or a string holding a plain number ("18", "-2.5";
    the language's decimal comma too). Raises ValueError for anything else.
    Chinese and Auto keep the digits.
    """
    r = _rules(language)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float | Decimal):
        text = _decimal_text(value, r)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ValueError(f"{value!r} is not a number")
    match = re.fullmatch(r"(?P<sign>[-−])?(?P<run>\d+(?:[.,]\d+)?)", text)
    if match is None:
        raise ValueError(f"{value!r} is not a number")
    if r.code is None:
        return text
    run = match.group("run")
    run = run.replace(".", ",") if r.decimal_comma else run.replace(",", ".")
    said = _number_words(run, r, negative=match.group("sign") is not None, year_ok=False)
    if said is None:
        raise ValueError(f"{value!r} is not a number in {language}")
    return said[0]
