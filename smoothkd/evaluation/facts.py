"""Fact precision: the share of the facts a summary states that its source supports (deterministic).

A fact is a named entity, a number or a date mentioned in the summary. Extraction runs in priority order
over the summary, each pass claiming its characters so later passes cannot re-read them:

1. dates: "27 November 2026", "Nov. 27", "November 27, 2026", "2026-11-27", "November 2026" (numeric
   forms like 27/11/2026 are ambiguous and skipped);
2. dictionary entities: every lexicon string (the embedded corpus's `lexicon.json`) and every entity value
   in the row's gold facts, case-insensitive, longest first;
3. numbers: "3.5 million", "3,500,000", "€3.5m", "2bn", "12 percent", "12 per cent", "12%", and number
   words from two up ("three", "twenty-five", "three hundred", "two million"; a lone "one" is too often no
   count to be a fact). A bare four-digit number in 1800-2100 is read by its context: a year after "in",
   "since", "during"... or before a singular verb ("2019 was"); a count before any other lower-case word
   ("2000 evacuated"); either reading otherwise ("the 2019 election", "by 2030."), and such a number is
   supported by a source year or count of that value. Thousands separators never make a year ("2,000");
4. capitalised spans (type `entity`): runs of capitalised words, joined by connectors like "of" or "van"
   ("Bank of England"), cut at role words inside them ("Apple CEO Tim Cook" is "Apple" and "Tim Cook",
   so it matches a source's "Apple chief executive Tim Cook"), with leading stopwords and titles dropped
   ("The", "President", "Mr"). A lone capitalised word that opens a sentence cannot be told apart from an
   ordinary word ("Revenue rose"), so it counts only when the summary or source capitalises it
   mid-sentence too, or when a role follows it ("Samsung CEO ...").

Values are normalised before comparison: numbers to their exact decimal value ("3.5 million" ==
"3,500,000"), percentages separately from counts, dates to (year, month, day) with missing parts unknown
("Nov. 27" == "27 November"), names case-folded with whitespace collapsed ("Mr Smith" is supported by
"John Smith"). A fact is supported when its
normalised value is among the gold source facts or occurs in the source: numbers by value, names as a
whole-word substring of the case-folded source, and dates when some source date agrees on every part the
summary states ("27 November" is supported by "27 November 2026"; "27 November 2025" is not). A summary
naming a prior trap's memorised chief (`gold["trap"]["memorized"]`) has that fact marked `trap`.

A summary that states no checkable fact (an empty or blank output, or filler such as "It was a good day")
has precision 0, not 1: "nothing unsupported" is vacuous there, and a free 1.0 would let a model that
says nothing pass a consistency floor. A news summary that says anything states a name, number or date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# Full month names, or abbreviations optionally followed by their dot (a full name's dot ends a sentence).
_MONTH = (r"(?P<mon>(?:January|February|March|April|May|June|July|August|September|October|November"
          r"|December)\b|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\b\.?)")
_DATE_PATTERNS = (
    re.compile(r"(?<![\d-])(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?![\d-])"),
    re.compile(rf"(?<![\w.,])(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}(?:,?\s+(?P<y>\d{{4}})(?!\d))?"),
    re.compile(rf"\b{_MONTH}\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?(?![\d,.]\d)(?:,?\s+(?P<y>\d{{4}})(?!\d))?"),
    re.compile(rf"\b{_MONTH}\s+(?P<y>\d{{4}})(?!\d)"),
)
_NUMBER = re.compile(
    r"(?<![\w.])(?<!\d,)(?P<cur>[$€£]\s?)?(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?(?!\d|,\d)"
    r"(?:\s*(?P<pct>%|percent\b|per\s+cent\b)|\s+(?P<scale>thousand|million|billion|trillion)\b"
    r"|(?P<abbr>bn|m|k)\b)?"
)
_SCALES = {"thousand": 10**3, "k": 10**3, "million": 10**6, "m": 10**6, "billion": 10**9, "bn": 10**9,
           "trillion": 10**12}
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER_WORDS = {w: i for i, w in enumerate(_UNITS)} | {w: 10 * (i + 2) for i, w in enumerate(_TENS)}
_SMALL = rf"(?:(?:{'|'.join(_TENS)})(?:[-\s](?:{'|'.join(_UNITS[1:10])}))?|{'|'.join(_UNITS[1:])})"
# "three", "twenty-five", "three hundred and fifty", "two million"; not a fraction ("two-thirds").
_NUMBER_PHRASE = re.compile(
    rf"(?<![\w-]){_SMALL}(?:\s+hundred(?:\s+(?:and\s+)?{_SMALL})?)?(?:\s+(?:thousand|million|billion|trillion))?"
    r"(?![\w]|-(?:thirds?|quarters?|halves|fifths?|tenths?)\b)", re.IGNORECASE)
# A bare four-digit number in 1800-2100 is a year after these words ("in 2000", "since 1998")...
_YEAR_CUES = frozenset("in since until till during throughout early late mid spring summer autumn winter "
                       "year season circa".split())
# ... or before a singular verb ("2019 was"); before any other lower-case word it counts ("2000 evacuated",
# "1950 members"), unless a determiner precedes ("the 2019 election", "the 2000 residents": either).
_YEAR_VERBS = frozenset("was is has had saw marked brought began ended proved remains".split())
_DETERMINERS = frozenset("the this that last next".split())

_CONNECTORS = frozenset({"of", "de", "du", "da", "del", "della", "der", "den", "van", "von", "la", "le", "al",
                         "bin", "y"})
# Dropped from the front of a capitalised span: sentence openers, pronouns, titles.
_LEADING = frozenset("""
a an the this that these those there here it its he she his her they their them we our you your i my
and but or so yet if when while after before as at in on for from by with without of to also however
meanwhile now then today yesterday tomorrow last next some many most all both each every no not one
mr mrs ms miss dr prof sir dame lord lady chief executive analyst president chairman chairwoman chair
minister prime secretary senator governor mayor judge ceo cfo coo officer director managing founder deputy
vice senior former acting spokesman spokeswoman spokesperson professor
monday tuesday wednesday thursday friday saturday sunday
""".split())
# Role words that cut a capitalised run in two when they stand inside it ("Apple CEO Tim Cook").
_ROLES = frozenset("""
ceo cfo coo cto chief executive president chairman chairwoman chair minister secretary senator governor
mayor judge director founder spokesman spokeswoman spokesperson manager coach boss leader chancellor
commissioner ambassador general captain king queen prince princess professor mr mrs ms dr sir
""".split())
_ABBREVIATIONS = frozenset("""
mr mrs ms dr prof st jr sr inc corp ltd co plc vs gen sen rep gov jan feb mar apr jun jul aug sep sept oct
nov dec u.s u.k e.g i.e
""".split())
_OPENERS = "\"“‘'(:—–-["
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")

Key = tuple[str, Any]


@dataclass
class Fact:
    """One distinct fact a summary states. `spans` are its [start, end) character ranges in the summary."""

    type: str  # person, org, place (lexicon or gold), entity (capitalised span), number, date
    value: str
    supported: bool
    spans: tuple[tuple[int, int], ...] = ()
    trap: bool = False  # the memorised chief of a prior trap


@dataclass
class FactCheck:
    """The facts of one summary, each marked supported or not by its source."""

    facts: list[Fact] = field(default_factory=list)

    @property
    def unsupported(self) -> list[Fact]:
        return [f for f in self.facts if not f.supported]

    @property
    def n_unsupported(self) -> int:
        return len(self.unsupported)

    @property
    def precision(self) -> float:
        """Share of facts supported; 0.0 when the summary states no checkable fact (see the module doc)."""
        return 1.0 - self.n_unsupported / len(self.facts) if self.facts else 0.0

    @property
    def trap_hit(self) -> bool:
        """The summary names a prior trap's memorised chief."""
        return any(f.trap for f in self.facts)


@dataclass(frozen=True)
class _Mention:
    type: str
    key: Key
    start: int
    end: int


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) character spans of the sentences of `text`, whitespace trimmed.

    Newlines always end a sentence; `.`, `!` or `?` do when followed by whitespace and an upper-case letter,
    a digit or an opening quote, unless the word before a `.` is a known abbreviation or an initial.
    """
    spans: list[tuple[int, int]] = []
    for line in re.finditer(r"[^\n]+", text):
        start = line.start()
        for boundary in _BOUNDARY.finditer(text, line.start(), line.end()):
            rest = text[boundary.end():line.end()].lstrip().lstrip("\"'“‘([")
            if not rest or not (rest[0].isupper() or rest[0].isdigit()):
                continue
            before = re.search(r"[\w.]+$", text[start:boundary.start()])
            word = before.group().casefold() if before else ""
            abbreviation = word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())
            if boundary.group().startswith(".") and abbreviation:
                continue
            spans.append(_trim(text, start, boundary.end()))
            start = boundary.end()
        spans.append(_trim(text, start, line.end()))
    return [(s, e) for s, e in spans if e > s]


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (see `sentence_spans`)."""
    return [text[s:e] for s, e in sentence_spans(text)]


def _norm(text: str) -> str:
    return " ".join(text.replace("’", "'").casefold().split())


def _date_key(match: re.Match) -> Key | None:
    groups = match.groupdict()
    month = int(groups["m"]) if groups.get("m") else _MONTHS.index(groups["mon"][:3].lower()) + 1
    day = int(groups["d"]) if groups.get("d") else None
    year = int(groups["y"]) if groups.get("y") else None
    if not 1 <= month <= 12 or (day is not None and not 1 <= day <= 31):
        return None
    return ("date", (year, month, day))


def _year_reading(text: str, start: int, end: int) -> str:
    """How to read a bare four-digit number in 1800-2100: `date` (a year), `number` (a count) or `either`."""
    before = re.search(r"([^\W\d_]+)[\s-]*$", text[max(0, start - 40):start])
    previous = before.group(1).casefold() if before else ""
    if previous in _YEAR_CUES or re.match(r"'?s\b", text[end:]):
        return "date"
    if previous in _DETERMINERS:
        return "either"
    after = re.match(r" ([a-z]+)\b", text[end:])
    if after:
        return "date" if after.group(1) in _YEAR_VERBS else "number"
    return "either"


def _number_key(match: re.Match, text: str) -> Key:
    value = Decimal(match["num"].replace(",", "") + (match["frac"] or ""))
    if match["pct"]:
        return ("percent", value)
    scale = match["scale"] or match["abbr"]
    if scale:
        return ("number", value * _SCALES[scale])
    if not match["cur"] and len(match["num"]) == 4 and 1800 <= value <= 2100:
        reading = _year_reading(text, match.start(), match.end())
        if reading == "date":
            return ("date", (int(value), None, None))
        if reading == "either":
            return ("year_or_number", value)
    return ("number", value)


def _words_value(phrase: str) -> Decimal | None:
    """The value of a number phrase matched by `_NUMBER_PHRASE`; None for a lone "one" (rarely a count)."""
    words = [w for w in re.split(r"[-\s]+", phrase.casefold()) if w != "and"]
    if words == ["one"]:
        return None
    total = 0
    for word in words:
        if word == "hundred":
            total *= 100
        elif word in _SCALES:
            total *= _SCALES[word]
        else:
            total += _NUMBER_WORDS[word]
    return Decimal(total)


class _Claims:
    """Character ranges already read by an earlier extraction pass."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.mentions: list[_Mention] = []

    def free(self, start: int, end: int) -> bool:
        return all(end <= a or start >= b for a, b in self.ranges)

    def claim(self, mention: _Mention) -> None:
        if mention.end > mention.start and self.free(mention.start, mention.end):
            self.ranges.append((mention.start, mention.end))
            self.mentions.append(mention)


def _dates_and_numbers(text: str, claims: _Claims, numbers: bool = True) -> None:
    for pattern in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            key = _date_key(match)
            if key:
                claims.claim(_Mention("date", key, *_trim(text, match.start(), match.end())))
    if numbers:
        for match in _NUMBER.finditer(text):
            key = _number_key(match, text)
            claims.claim(_Mention("date" if key[0] == "date" else "number", key, match.start(), match.end()))
        for match in _NUMBER_PHRASE.finditer(text):
            value = _words_value(match.group())
            if value is not None:
                claims.claim(_Mention("number", ("number", value), match.start(), match.end()))


@lru_cache(maxsize=8)
def _dictionary_pattern(entries: tuple[str, ...]) -> re.Pattern | None:
    if not entries:
        return None
    alternatives = "|".join(re.escape(e) for e in sorted(entries, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _dictionary(text: str, claims: _Claims, types: dict[str, str], patterns: list[re.Pattern]) -> None:
    matches = [m for pattern in patterns for m in pattern.finditer(text)]
    for match in sorted(matches, key=lambda m: (m.start(), m.start() - m.end())):
        key = _norm(match.group())
        claims.claim(_Mention(types[key], ("entity", key), match.start(), match.end()))


def _initial(text: str, start: int, sentence_starts: set[int]) -> bool:
    """Whether a word at `start` opens a sentence, a quote, a parenthesis or a clause after a colon/dash."""
    i = start
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return start in sentence_starts or i == 0 or text[i - 1] in _OPENERS


def _midsentence_capitalised(text: str) -> set[str]:
    starts = {s for s, _ in sentence_spans(text)}
    return {_norm(m.group()) for m in _WORD.finditer(text)
            if m.group()[0].isupper() and not _initial(text, m.start(), starts)}


def _capitalised(text: str, claims: _Claims, proper: set[str]) -> None:
    starts = {s for s, _ in sentence_spans(text)}
    runs: list[list[re.Match]] = []
    run: list[re.Match] = []
    for word in _WORD.finditer(text):
        if not claims.free(word.start(), word.end()):
            run = []
            continue
        gap = text[run[-1].end():word.start()] if run else ""
        adjacent = bool(gap) and not gap.strip(" ")
        if word.group()[0].isupper():
            if not adjacent:
                run = []
                runs.append(run)
            run.append(word)
        elif adjacent and word.group() in _CONNECTORS:
            run.append(word)
        else:
            run = []
    for run in runs:
        for words, qualifier in _split_at_roles(run):
            while words and (words[0].group().casefold() in _LEADING or not words[0].group()[0].isupper()):
                words = words[1:]
            while words and not words[-1].group()[0].isupper():
                words = words[:-1]
            if not words:
                continue
            start, end = words[0].start(), words[-1].end()
            if text[end - 2:end] in ("'s", "’s"):
                end -= 2
            # A word before a role ("Samsung" in "Samsung CEO ...") names something even when it opens the
            # sentence; a lone opener otherwise counts only if some text capitalises it mid-sentence.
            lone_opener = len(words) == 1 and _initial(text, start, starts) and not qualifier
            if lone_opener and _norm(text[start:end]) not in proper:
                continue
            claims.claim(_Mention("entity", ("entity", _norm(text[start:end])), start, end))


def _split_at_roles(run: list[re.Match]) -> list[tuple[list[re.Match], bool]]:
    """A capitalised run cut at the role words inside it: "Apple CEO Tim Cook" -> "Apple", "Tim Cook".

    Each part comes with whether a role followed it (it qualifies the role: a firm, a country). Roles
    opening the run are left to the leading-word trim, so "General Motors" stays whole.
    """
    parts: list[tuple[list[re.Match], bool]] = []
    current: list[re.Match] = []
    for i, word in enumerate(run):
        if i and word.group().casefold() in _ROLES:
            if current:
                parts.append((current, True))
            current = []
        else:
            current.append(word)
    parts.append((current, False))
    return parts


@lru_cache(maxsize=8)
def _lexicon_index(entries: tuple[tuple[str, tuple[str, ...]], ...]
                   ) -> tuple[dict[str, str], re.Pattern | None]:
    """Type by normalised string, and the pattern matching any of them (built once per lexicon).

    Callers must not mutate the cached dict.
    """
    types: dict[str, str] = {}
    for kind, values in entries:
        types.update((_norm(v), kind) for v in values)
    return types, _dictionary_pattern(tuple(sorted(types)))


def _gold_types(gold: dict | None, known: dict[str, str]) -> dict[str, str]:
    """Types of the row's gold entities (and trap names) that the lexicon does not already know."""
    types: dict[str, str] = {}
    if not gold:
        return types
    for fact in [*gold.get("source", []), *gold.get("summary", [])]:
        if fact["type"] not in ("number", "date"):
            types.setdefault(_norm(fact["value"]), fact["type"])
    trap = gold.get("trap") or {}
    for name in (trap.get("memorized"), trap.get("actual")):
        if name:
            types.setdefault(_norm(name), "person")
    return {k: v for k, v in types.items() if k not in known}


def _summary_mentions(summary: str, source: str, gold: dict | None,
                      lexicon: dict[str, list[str]] | None) -> list[_Mention]:
    # Normalising the whole lexicon costs far more than scoring one summary, so it is cached.
    lexicon_types, lexicon_pattern = _lexicon_index(tuple((k, tuple(v)) for k, v in (lexicon or {}).items()))
    gold_types = _gold_types(gold, lexicon_types)
    patterns = [p for p in (lexicon_pattern, _dictionary_pattern(tuple(sorted(gold_types)))) if p]
    claims = _Claims()
    _dates_and_numbers(summary, claims, numbers=False)
    _dictionary(summary, claims, lexicon_types | gold_types, patterns)
    _dates_and_numbers(summary, claims)
    _capitalised(summary, claims, _midsentence_capitalised(summary) | _midsentence_capitalised(source))
    return sorted(claims.mentions, key=lambda m: m.start)


class _SourceFacts:
    """What a source supports: its numbers and dates, its gold facts, and its normalised text."""

    def __init__(self, source: str, gold: dict | None) -> None:
        claims = _Claims()
        _dates_and_numbers(source, claims)
        self.entities: set[str] = set()
        mentions = list(claims.mentions)
        for fact in (gold or {}).get("source", []):
            if fact["type"] in ("number", "date"):
                value_claims = _Claims()
                _dates_and_numbers(fact["value"], value_claims)
                mentions += value_claims.mentions
            else:
                self.entities.add(_norm(fact["value"]))
        # A source's own ambiguous four-digit number supports both of its readings.
        keys = [k for m in mentions
                for k in ([("number", m.key[1]), ("date", (int(m.key[1]), None, None))]
                          if m.key[0] == "year_or_number" else [m.key])]
        self.values = {k for k in keys if k[0] != "date"}
        self.dates = [k[1] for k in keys if k[0] == "date"]
        self.text = _norm(source)

    def supports(self, key: Key) -> bool:
        kind, value = key
        if kind == "year_or_number":
            return self.supports(("number", value)) or self.supports(("date", (int(value), None, None)))
        if kind == "date":
            return any(all(part is None or part == other for part, other in zip(value, date, strict=True))
                       for date in self.dates)
        if kind == "entity":
            return value in self.entities or bool(re.search(rf"(?<!\w){re.escape(value)}(?!\w)", self.text))
        return key in self.values


def score_facts(summary: str, source: str, gold: dict | None = None,
                lexicon: dict[str, list[str]] | None = None) -> FactCheck:
    """Extract the facts `summary` states and mark each supported or not by `source`.

    `gold` is an embedded-corpus row's `facts` field ({source, summary, trap}); `lexicon` maps entity type
    to strings (`smoothkd.data.corpus.load_lexicon`). Both are optional: without them, entities come from
    capitalised spans only. Each distinct normalised fact appears once, with every span it occupies.
    """
    support = _SourceFacts(source, gold)
    trap = (gold or {}).get("trap") or {}
    memorised = _norm(trap["memorized"]) if trap.get("memorized") else None
    facts: dict[Key, Fact] = {}
    for mention in _summary_mentions(summary, source, gold, lexicon):
        span = (mention.start, mention.end)
        if mention.key in facts:
            facts[mention.key].spans += (span,)
            continue
        facts[mention.key] = Fact(
            type=mention.type,
            value=summary[mention.start:mention.end],
            supported=support.supports(mention.key),
            spans=(span,),
            trap=mention.key == ("entity", memorised),
        )
    return FactCheck(list(facts.values()))
