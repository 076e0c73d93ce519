"""Split announcement text into pieces an engine accepts.

Engines have a maximum text length, and a short first piece lets audio start
sooner. Splitting happens at the most natural place that fits, in order of
preference:

1. sentence ends (``. ! ? …``, CJK ``。！？``, line breaks);
2. clause boundaries (``, ; :`` followed by a space, dashes, CJK ``，；：、``);
3. spaces between words;
4. only when a single "word" is longer than the limit: between two CJK
   characters, or after a title abbreviation such as "Mr.", or between a time
   and its "a.m."; failing even that, a hard cut.

A full stop only ends a sentence when it is followed by whitespace (so 3.5,
12:40, example.com/a.b and "..." mid-token never split) and is not part of an
abbreviation ("Dr.", "e.g.", "a.m.", single initials like "J."). A full stop
followed by a lower-case word is taken to be an abbreviation we do not know.

Pure functions, no I/O. Segments are stripped of surrounding whitespace; the
text inside a segment is kept exactly as written.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable
from typing import Final

# Break levels: higher is a better place to split.
_SENTENCE: Final = 3
_CLAUSE: Final = 2
_WORD: Final = 1
_WEAK: Final = 0  # used only instead of a hard cut

#: Abbreviations (lower-case, with their dots) after which a full stop never ends a
#: sentence: titles and words that are always followed by something.
_ABBREVIATIONS: Final = frozenset(
    {
        "mr.", "mrs.", "ms.", "mx.", "dr.", "prof.", "sr.", "jr.", "st.", "mt.", "ft.",
        "rev.", "hon.", "gen.", "col.", "lt.", "sgt.", "capt.", "cpt.", "cmdr.", "adm.",
        "gov.", "sen.", "rep.", "pres.", "supt.", "insp.", "det.", "messrs.",
        "e.g.", "i.e.", "cf.", "vs.", "viz.", "approx.", "appt.", "apt.", "ca.", "dept.",
        "est.", "fig.", "figs.", "vol.", "vols.", "pp.", "ch.", "sec.", "art.", "op.",
        "ave.", "blvd.", "rd.", "ln.", "sq.", "hwy.", "pl.", "bldg.", "fl.", "rm.", "terr.",
        "jan.", "feb.", "mar.", "apr.", "jun.", "jul.", "aug.", "sep.", "sept.",
        "oct.", "nov.", "dec.", "mon.", "tue.", "tues.", "wed.", "thu.", "thur.",
        "thurs.", "fri.", "sat.", "sun.", "min.", "mins.", "max.", "hr.", "hrs.",
        "tel.", "ext.", "incl.", "excl.", "dist.", "corp.", "inc.", "ltd.", "co.", "bros.",
        "univ.", "assn.", "intl.", "natl.", "govt.",
    }
)  # fmt: skip

#: Abbreviations that often end a sentence too: they end one when the next word is
#: capitalised ("... at 6:40 a.m. Please board"), otherwise they do not.
_TERMINAL_ABBREVIATIONS: Final = frozenset({"etc.", "a.m.", "p.m.", "am.", "pm.", "al."})

#: "No." is only an abbreviation before a number ("No. 5", "No. #5"); otherwise it is
#: the word "no" ending a sentence.
_NUMBER_ABBREVIATIONS: Final = frozenset({"no.", "nos.", "nr.", "num."})

#: Titles: the space after them is a poor place to split ("Dr. | Smith").
_TITLES: Final = frozenset(
    {"mr.", "mrs.", "ms.", "mx.", "dr.", "prof.", "st.", "mt.", "no.", "nos.", "nr."}
)

#: Words a PA announcement puts before a single-letter label ("Gate B.", "Platform A."):
#: there the capital letter is not a name initial, so its full stop can end a sentence.
_LABEL_NOUNS: Final = frozenset(
    {
        "gate", "gates", "platform", "platforms", "terminal", "terminals", "track", "zone",
        "hall", "level", "floor", "deck", "row", "section", "sector", "block", "building",
        "wing", "pier", "concourse", "lane", "door", "exit", "entrance", "car", "coach",
        "carriage", "wagon", "bay", "stand", "counter", "desk", "area", "room", "lot",
        "line", "route", "bus", "group", "class", "category", "plan", "vitamin", "grade",
    }
)  # fmt: skip

_OPENERS: Final = "\"'“‘«([{「『（【《¿¡"
_CLOSERS: Final = "\"'”’»)]}」』）】》"

_SENTENCE_PUNCT: Final = re.compile(r"[.!?…‼⁇⁈⁉]+|[。！？｡]+")
_CLAUSE_PUNCT: Final = re.compile(r"[,;:]|[，；：、]")
_DASH: Final = re.compile(r"—|\s[–-]\s")
_WHITESPACE: Final = re.compile(r"\s+")
_INITIALISM: Final = re.compile(r"(?:[^\W\d_]\.){2,}")  # U.S., e.g., a.m.
_INITIAL: Final = re.compile(r"[A-Z]\.")  # "J." in "J. Smith"
_TIME_SUFFIX: Final = re.compile(r"(?:a\.?m\.?|p\.?m\.?)(?=$|[\s,;:!?)\]}\"'”’])", re.IGNORECASE)


def _is_cjk(ch: str) -> bool:
    """Han, kana and other scripts written without spaces between words."""
    code = ord(ch)
    return (
        0x3040 <= code <= 0x30FF  # kana
        or 0x3400 <= code <= 0x4DBF
        or 0x4E00 <= code <= 0x9FFF
        or 0xF900 <= code <= 0xFAFF
        or 0x20000 <= code <= 0x2FA1F
        or 0xFF66 <= code <= 0xFF9F  # half-width kana
    )


def _token_before(text: str, end: int) -> str:
    """The whitespace-delimited token ending at ``end``, without opening quotes/brackets."""
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:end].lstrip(_OPENERS)


def _next_char(text: str, pos: int) -> str:
    """The first character of the next token after ``pos`` (skipping spaces and openers)."""
    i = pos
    while i < len(text) and (text[i].isspace() or text[i] in _OPENERS):
        i += 1
    return text[i : i + 1]


def _is_name_initial(text: str, token_end: int, token: str) -> bool:
    """Whether ``token`` (a capital letter and a dot) is an initial, as in "J. Smith".

    After a word like "Gate" or "Platform" it is a label ("Gate B.") instead.
    """
    if not _INITIAL.fullmatch(token):
        return False
    before = token_end - len(token)
    while before > 0 and text[before - 1].isspace():
        before -= 1
    return _token_before(text, before).casefold() not in _LABEL_NOUNS


def _stop_ends_sentence(text: str, stop_end: int, after: int) -> bool:
    """Decide whether full stops / an ellipsis ending at ``stop_end`` end a sentence.

    ``after`` is where the following whitespace starts (after any closing quotes).
    """
    token = _token_before(text, stop_end)
    lowered = token.casefold()
    first = _next_char(text, after)
    starts_lower = first.isalpha() and first.islower()
    if token.endswith(("..", "…")):  # an ellipsis: ends a sentence unless the thought goes on
        return not starts_lower
    if lowered in _ABBREVIATIONS:
        return False
    if _INITIAL.fullmatch(token):
        return not _is_name_initial(text, stop_end, token) and not starts_lower
    if lowered in _NUMBER_ABBREVIATIONS:
        return not (first.isdigit() or first == "#")
    if lowered in _TERMINAL_ABBREVIATIONS or _INITIALISM.fullmatch(token):
        return first.isupper()
    return not starts_lower


def _sentence_breaks(text: str) -> Iterable[tuple[int, int]]:
    for match in _SENTENCE_PUNCT.finditer(text):
        end = match.end()
        while end < len(text) and text[end] in _CLOSERS:
            end += 1
        cjk = match.group()[0] in "。！？｡"
        if not cjk and end < len(text) and not text[end].isspace():
            continue  # "3.5", "example.com", "?q=1": punctuation inside a token
        if end >= len(text):
            continue
        if match.group().endswith((".", "…")) and not _stop_ends_sentence(text, match.end(), end):
            continue
        yield end, _SENTENCE


def _clause_breaks(text: str) -> Iterable[tuple[int, int]]:
    for match in _CLAUSE_PUNCT.finditer(text):
        end = match.end()
        while end < len(text) and text[end] in _CLOSERS:
            end += 1
        if end >= len(text):
            continue
        if match.group() in ",;:" and not text[end].isspace():
            continue  # "1,000", "12:40", "https://"
        yield end, _CLAUSE
    for match in _DASH.finditer(text):
        end = match.end()
        if match.group() != "—":
            end -= 1  # keep " -" with the left part, split before the following space
        if end < len(text):
            yield end, _CLAUSE


def _space_breaks(text: str) -> Iterable[tuple[int, int]]:
    for match in _WHITESPACE.finditer(text):
        start, end = match.start(), match.end()
        if start == 0 or end >= len(text):
            continue
        if "\n" in match.group() or "\r" in match.group() or "\u2028" in match.group():
            yield start, _SENTENCE
            continue
        before = _token_before(text, start)
        if before[-1:].isdigit() and _TIME_SUFFIX.match(text, end):
            yield start, _WEAK  # "6:40 a.m." belongs together
        elif before.casefold() in _TITLES or _is_name_initial(text, start, before):
            yield start, _WEAK  # "Dr. Smith", "J. R. R. Tolkien"
        else:
            yield start, _WORD


def _cjk_breaks(text: str) -> Iterable[tuple[int, int]]:
    for i in range(1, len(text)):
        if _is_cjk(text[i - 1]) and _is_cjk(text[i]):
            yield i, _WEAK


def break_levels(text: str) -> dict[int, int]:
    """Every place ``text`` may be split, mapped to how good a place it is.

    A key ``i`` means "split between ``text[i-1]`` and ``text[i]``"; whitespace
    around a split is dropped by :func:`split_text`.
    """
    levels: dict[int, int] = {}
    for source in (_cjk_breaks, _space_breaks, _clause_breaks, _sentence_breaks):
        for pos, level in source(text):
            if level > levels.get(pos, -1):
                levels[pos] = level
    return levels


def _best_break(
    positions: list[int], levels: list[int], start: int, limit_end: int, min_level: int
) -> int | None:
    """The best split in ``(start, limit_end]``: highest level, then the latest."""
    best_pos: int | None = None
    best_level = -1
    for i in range(bisect_right(positions, start), bisect_right(positions, limit_end)):
        level = levels[i]
        if level >= min_level and level >= best_level:
            best_pos, best_level = positions[i], level
    return best_pos


def _first_break(
    positions: list[int], levels: list[int], start: int, limit_end: int, min_level: int
) -> int | None:
    """The earliest split in ``(start, limit_end]`` of at least ``min_level``."""
    for i in range(bisect_right(positions, start), bisect_right(positions, limit_end)):
        if levels[i] >= min_level:
            return positions[i]
    return None


def _hard_cut(text: str, start: int, limit_end: int) -> int:
    """A cut at ``limit_end`` that at least keeps combining marks with their base."""
    cut = limit_end
    while cut > start + 1 and (
        unicodedata.combining(text[cut]) or unicodedata.category(text[cut]) == "Mn"
    ):
        cut -= 1
    return cut


def split_text(text: str, max_chars: int, first_max_chars: int | None = None) -> list[str]:
    """Split ``text`` into stripped, non-empty segments of at most ``max_chars`` characters.

    Each segment is as long as possible and ends at the best boundary available
    (sentence, then clause, then word). ``first_max_chars`` limits the first
    segment further so audio can start early; if no word boundary fits within it,
    the first segment ends at the earliest one after it rather than cutting a word.

    Nothing is lost or reordered: the segments joined together contain exactly
    the input's non-whitespace characters in order, and unless a single word
    had to be cut, ``" ".join(segments).split() == text.split()`` for text with
    spaces between words. Whitespace-only input gives ``[]``.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    if first_max_chars is not None and first_max_chars < 1:
        raise ValueError("first_max_chars must be at least 1")

    breaks = sorted(break_levels(text).items())
    positions = [p for p, _ in breaks]
    levels = [level for _, level in breaks]
    segments: list[str] = []
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            return segments
        end = n
        while end > pos and text[end - 1].isspace():
            end -= 1

        cut: int | None = None
        if not segments and first_max_chars is not None and first_max_chars < max_chars:
            if end - pos <= first_max_chars:
                cut = end
            else:
                cut = _best_break(positions, levels, pos, pos + first_max_chars, _WORD)
                if cut is None:
                    # Nothing fits: take the shortest first segment that cuts no word.
                    cut = _first_break(positions, levels, pos, min(end, pos + max_chars), _WORD)
        if cut is None:
            if end - pos <= max_chars:
                cut = end
            else:
                cut = _best_break(positions, levels, pos, pos + max_chars, _WEAK)
                if cut is None:
                    cut = _hard_cut(text, pos, pos + max_chars)

        piece = text[pos:cut].strip()
        if piece:
            segments.append(piece)
        pos = cut
