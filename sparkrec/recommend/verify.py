"""A deterministic check that a generated explanation names nothing outside its evidence.

An explanation's evidence is the row's ``history_items`` (titles the user liked), its
``shared_attributes`` ("Adventure", "by J. K. Rowling", "published by Tor", "tagged funny")
and its ``popularity_note`` ("Chosen by 12 users, #40 most popular"). A sentence passes only if

- it is one or two complete sentences, at most ``max_chars`` long, plain text (no markup,
  links, code or chat tokens);
- every quoted span and every run of capitalised words (a title, a person, a publisher, a
  genre) is made of pieces each found word for word, in order, inside one evidence string
  (pieces may be joined by "and", "&", "or", "with", ...); a sentence may open with a plain
  word ("Because", "You", "If", "The", ...);
- every number (digits, "#8", "8th", or a number word past "one") is a number of the evidence
  (or, for number words, the count of cited items);
- every genre or claim word it uses ("fantasy", "thriller", "bestseller", "award-winning",
  "popular", ..., plus the catalogue's own genres passed as ``vocabulary``) occurs in the
  evidence;
- when the evidence cites liked items, it names at least one of them.

Anything else is rejected, and the caller serves the template sentence instead.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that join two named things inside one capitalised run ("Dune and Emma", "Tolkien & Lewis").
JOINERS = frozenset({"and", "&", "or", "with", "plus", "nor"})
# Lower-case words allowed inside a capitalised run when a capitalised word follows
# ("Lord of the Rings"): they must still match the evidence as part of a piece.
INNER = frozenset({"of", "the", "a", "an", "in", "on", "to", "for", "at", "by", "from", "and", "&", "or",
                   "with", "de", "la", "le", "du", "von", "van", "der"})
# Plain words a sentence may open with (capitalised only because they come first).
STARTERS = _words("""
because since as if given based you your you'll you've you're we we're we've our this these that those
it it's its they their there here also and so just try enjoy fans readers viewers lovers like liked
recommended for in on with after from both the a an i why what when while chosen new
""")
# Genre and claim words: a sentence may use one only if the evidence does.
CLAIM_WORDS = _words("""
action adventure animation animated children children's kids comedy comedies crime documentary drama
dramas fantasy film-noir noir horror imax musical musicals mystery mysteries romance romantic sci-fi
science-fiction thriller thrillers war western westerns biography biographies memoir memoirs history
historical poetry fiction nonfiction non-fiction self-help cookbook cookbooks classic classics
bestseller bestsellers best-seller best-selling bestselling award award-winning awards acclaimed
critically must-read masterpiece cult iconic legendary famous popular popularity trending hit blockbuster
oscar pulitzer booker hugo nebula
""")
CLAIM_PHRASES = (("science", "fiction"), ("young", "adult"), ("non", "fiction"), ("must", "read"),
                 ("best", "selling"), ("award", "winning"), ("new", "york", "times"))
NUMBER_WORDS = {"zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "thirty": 30, "forty": 40,
                "fifty": 50, "hundred": 100, "hundreds": -1, "thousand": 1000, "thousands": -1,
                "million": 1_000_000, "millions": -1, "dozen": 12, "dozens": -1, "first": 1,
                "second": 2, "third": 3, "fourth": 4, "fifth": 5, "tenth": 10, "twice": 2, "double": 2,
                "triple": 3, "several": -1, "many": -1, "countless": -1, "numerous": -1}
_BAD_MARKUP = re.compile(r"https?://|www\.|<\||\|>|[<>{}\[\]`*_@\\]|#(?!\d)|\n|\t|\.\.\.")
_TOKEN = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|&|#\d+", re.UNICODE)
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|(?:^|(?<=[\s(]))'([^']+)'(?=[\s.,;:!?)]|$)")
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\b[A-Z]\.)\s+")
_ARTICLES = ("the", "a", "an")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("’", "'").replace("‘", "'")
    return text.replace("“", '"').replace("”", '"')


def tokens(text: str) -> list[str]:
    """Lower-case word tokens; a possessive "'s" is dropped ("Rowling's" -> "rowling")."""
    out = []
    for t in _TOKEN.findall(_norm(text)):
        t = t.lower()
        if t.endswith("'s") and len(t) > 2:
            t = t[:-2]
        out.append(t)
    return out


def _numbers(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"\d+", text.replace(",", ""))}


def as_evidence(evidence: Any) -> dict[str, Any]:
    """A plain dict (lists, str) from a dict, a Spark Row or a pandas-converted struct."""
    if hasattr(evidence, "asDict"):
        evidence = evidence.asDict(recursive=True)
    get = evidence.get

    def strings(value: Any) -> list[str]:
        return [str(v) for v in value if v is not None] if value is not None else []

    note = get("popularity_note")
    return {"history_items": strings(get("history_items")), "shared_attributes": strings(get("shared_attributes")),
            "popularity_note": None if note is None else str(note)}


def evidence_strings(evidence: Mapping) -> list[str]:
    """Every string of the evidence: titles, attributes (also without their "by "/"published by "/
    "tagged " lead), the popularity note."""
    out: list[str] = [str(t) for t in (evidence.get("history_items") or []) if t]
    for a in evidence.get("shared_attributes") or []:
        if not a:
            continue
        out.append(str(a))
        for lead in ("published by ", "by ", "tagged "):
            if str(a).startswith(lead):
                out.append(str(a)[len(lead):])
                break
    if evidence.get("popularity_note"):
        out.append(str(evidence["popularity_note"]))
    return out


def _contains(seq: Sequence[str], part: Sequence[str]) -> bool:
    n = len(part)
    return n > 0 and any(list(seq[i:i + n]) == list(part) for i in range(len(seq) - n + 1))


class _Evidence:
    def __init__(self, evidence: Mapping) -> None:
        self.strings = evidence_strings(evidence)
        self.phrases = [tokens(s) for s in self.strings]
        self.words = {w for p in self.phrases for w in p}
        self.numbers = set().union(*(_numbers(s) for s in self.strings)) if self.strings else set()
        self.titles = [tokens(re.sub(r"\(\d{4}\)\s*$", "", str(t))) for t in evidence.get("history_items") or [] if t]

    def is_piece(self, part: Sequence[str]) -> bool:
        return any(_contains(p, part) for p in self.phrases)

    def covers(self, run: Sequence[str]) -> bool:
        """True when ``run`` splits into evidence pieces separated by joiner words."""
        n = len(run)
        ready = [False] * (n + 1)  # a piece may start here (the run's start, or after a joiner)
        ended = [False] * (n + 1)  # a piece ends here
        ready[0] = True
        for i in range(n):
            if ended[i] and run[i] in JOINERS:
                ready[i + 1] = True
            if ready[i]:
                for j in range(i + 1, n + 1):
                    if self.is_piece(run[i:j]):
                        ended[j] = True
        return ended[n]

    def has_phrase(self, phrase: Sequence[str]) -> bool:
        return self.is_piece(phrase)


def _capitalised_runs(sentence: str) -> list[list[str]]:
    """Runs of capitalised words (with lower-case INNER words between two of them), as lower-case
    tokens; a run that opens the sentence loses its leading plain STARTERS words."""
    raw = _TOKEN.findall(_norm(sentence))
    runs: list[list[str]] = []
    i = 0
    # Punctuation between tokens ends a run ("Dune, Emma" is two runs).
    spans = [m.span() for m in _TOKEN.finditer(_norm(sentence))]
    text = _norm(sentence)
    while i < len(raw):
        if not raw[i][:1].isupper():
            i += 1
            continue
        start, j = i, i + 1
        while j < len(raw):
            gap = text[spans[j - 1][1]:spans[j][0]]
            if gap.strip():
                break
            if raw[j][:1].isupper() or raw[j].isdigit():
                j += 1
                continue
            k = j
            while k < len(raw) and raw[k].lower() in INNER and not text[spans[k - 1][1]:spans[k][0]].strip():
                k += 1
            if k < len(raw) and k > j and raw[k][:1].isupper() and not text[spans[k - 1][1]:spans[k][0]].strip():
                j = k + 1
                continue
            break
        run = tokens(" ".join(raw[start:j]))
        if start == 0:
            while run and (run[0] in STARTERS or run[0] == "i"):
                run = run[1:]
        if run and run != ["i"]:
            runs.append(run)
        i = j
    return runs


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def verify(text: str, evidence: Mapping, vocabulary: Iterable[str] = (), max_chars: int = 300) -> Verdict:
    """Accept ``text`` only if everything it names is in ``evidence`` (see the module doc)."""
    text = _norm(text or "").strip()
    if not text:
        return Verdict(False, "empty")
    if len(text) > max_chars:
        return Verdict(False, f"longer than {max_chars} characters")
    if _BAD_MARKUP.search(text):
        return Verdict(False, "markup, a link or a line break")
    parts = sentences(text)
    if len(parts) > 2:
        return Verdict(False, "more than two sentences")
    if not text.endswith((".", "!")):
        return Verdict(False, "not a complete sentence")
    ev = _Evidence(as_evidence(evidence))
    for m in _QUOTED.finditer(text):
        quoted = next(g for g in m.groups() if g is not None)
        run = tokens(quoted)
        if run and not ev.covers(run):
            return Verdict(False, f"quotes {quoted!r}, which is not in the evidence")
    for sentence in parts:
        for run in _capitalised_runs(sentence.strip().lstrip("\"'(")):
            if not ev.covers(run):
                return Verdict(False, f"names {' '.join(run)!r}, which is not in the evidence")
    words = tokens(text)
    for w in words:
        digits = re.sub(r"(st|nd|rd|th)$", "", w.lstrip("#"))
        if any(c.isdigit() for c in w):
            if not digits.isdigit() or int(digits) not in ev.numbers:
                return Verdict(False, f"the number {w!r} is not in the evidence")
        elif w in NUMBER_WORDS:
            value = NUMBER_WORDS[w]
            if w in ev.words:
                continue
            if value < 0 or (value not in ev.numbers and value != len(ev.titles)):
                return Verdict(False, f"the number word {w!r} is not in the evidence")
    vocab = [tokens(v) for v in vocabulary if v and v.strip()]
    for w in words:
        if w in CLAIM_WORDS and w not in ev.words:
            return Verdict(False, f"{w!r} is not in the evidence")
    for phrase in (*CLAIM_PHRASES, *vocab):
        if phrase and _contains(words, phrase) and not ev.has_phrase(phrase):
            return Verdict(False, f"{' '.join(phrase)!r} is not in the evidence")
    if ev.titles and not any(_names_title(words, t) for t in ev.titles):
        return Verdict(False, "names none of the liked items")
    return Verdict(True)


def _names_title(words: Sequence[str], title: Sequence[str]) -> bool:
    """The title's first two words after a leading article (or the whole of a shorter title)."""
    key = list(title)
    while len(key) > 1 and key[0] in _ARTICLES:
        key = key[1:]
    return _contains(words, key[:2])
