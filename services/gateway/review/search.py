"""The review page's code search: the titles the model knows, ranked, each with the unit group it belongs to.

Titles come from the project's facts tables, the same ones training reads (`shared.corpus`): every ESCO
preferred and alternative label, every entry of the ONS coding index (its qualifier in parentheses, and the
industry when the index codes the title by industry), and the official ISCO-08 unit-group titles. A query of
digits is a code prefix and lists unit groups in code order. Otherwise titles are ranked by how they match:

    0  the whole title is the query                          "postman"   -> Postman (4412)
    1  the title begins with the query's words                "nurse"     -> Nurse adviser (2221)
    2  every query word is a word of the title                "army"      -> Regular army officer
    3  the title begins with the query, its last word in part "nurs"      -> Nurse adviser, Nursemaid
    4  every query word begins a word of the title            "nurs ward" -> Ward nurse

Words are lower-cased, split on anything but letters and digits, and a plural "s" is dropped on both sides
("plumbers" finds "plumber"). Hits are grouped by unit group: each group is listed once, at its best match,
showing that title. Among groups with the same best rank, a title coded for any industry comes before one
the ONS index codes that way only in one industry, then the group more titles point to (at that rank, then
as whole words), then the shorter title. The index is built once per process (`code_index`, a second or two)
and a query takes a few milliseconds (a one-letter query, the slowest, about 25 ms on a busy CPU).
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

from shared.corpus import load_esco_facts, load_ons_index
from shared.taxonomy import Taxonomy, get_taxonomy

SOURCE_ESCO = "ESCO"
SOURCE_ONS = "ONS index"
SOURCE_ISCO = "ISCO-08"
MAX_QUERY_WORDS = 8
MIN_QUERY_LETTERS = 2  # one letter matches a third of the index and says nothing
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> tuple[str, ...]:
    """A title or query as the index compares it: lower-case words, a plural "s" dropped."""
    out = []
    for word in _WORD.findall(text.lower()):
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return tuple(out)


@dataclass(frozen=True)
class Title:
    """One title of the index and the unit group it is coded to."""

    words: tuple[str, ...]
    text: str  # as the source writes it
    code: str
    source: str
    industry: str = ""  # ONS entries coded by industry: the industry the code holds in


@dataclass(frozen=True)
class Hit:
    """A unit group found by the search, with the title that matched best."""

    code: str
    title: str  # the unit group's official title
    matched: str
    source: str
    industry: str
    matches: int  # how many titles of the group matched at this rank


class CodeIndex:
    """Titles, and an inverted index from each word to the titles that hold it."""

    def __init__(self, titles: list[Title], taxonomy: Taxonomy):
        self.titles = titles
        self.taxonomy = taxonomy
        postings: dict[str, list[int]] = defaultdict(list)
        for i, title in enumerate(titles):
            for word in set(title.words):
                postings[word].append(i)
        self.vocabulary = sorted(postings)
        self.postings = {word: frozenset(ids) for word, ids in postings.items()}

    @classmethod
    def build(cls, taxonomy: Taxonomy | None = None) -> CodeIndex:
        taxonomy = taxonomy or get_taxonomy()
        units = set(taxonomy.unit_groups)
        seen: set[tuple[tuple[str, ...], str, str]] = set()
        titles: list[Title] = []

        def add(text: str, code: str, source: str, industry: str = "") -> None:
            key = (words(text), code, industry.lower())
            if code in units and key[0] and key not in seen:
                seen.add(key)
                titles.append(Title(key[0], text, code, source, industry))

        for code in taxonomy.unit_groups:
            add(taxonomy.title(code), code, SOURCE_ISCO)
        for _uri, code, labels in load_esco_facts():
            for label in labels:
                add(label.strip(), code, SOURCE_ESCO)
        for record in load_ons_index():
            add(record.job_title, record.isco_code, SOURCE_ONS, record.industry)
        return cls(titles, taxonomy)

    def _starting_with(self, prefix: str) -> frozenset[int]:
        """Titles with a word that begins with `prefix`."""
        at = end = bisect_left(self.vocabulary, prefix)
        while end < len(self.vocabulary) and self.vocabulary[end].startswith(prefix):
            end += 1
        return frozenset().union(*(self.postings[w] for w in self.vocabulary[at:end]))

    def _holding(self, asked: tuple[str, ...], whole: bool) -> frozenset[int]:
        """Titles holding every query word (whole words, or words that begin with it), rarest word first."""
        found: frozenset[int] | None = None
        for word in sorted(set(asked), key=lambda w: -len(w)):
            ids = self.postings.get(word, frozenset()) if whole else self._starting_with(word)
            found = ids if found is None else found & ids
            if not found:
                break
        return found or frozenset()

    def _by_code(self, prefix: str, limit: int) -> list[Hit]:
        codes = [c for c in self.taxonomy.unit_groups if c.startswith(prefix)][:limit]
        return [Hit(c, self.taxonomy.title(c), self.taxonomy.title(c), SOURCE_ISCO, "", 1) for c in codes]

    def search(self, query: str, limit: int = 20) -> list[Hit]:
        """Unit groups for a code prefix or title words, best first (see the module docstring)."""
        q = query.strip()
        if not q:
            return []
        if q.isdigit():
            return self._by_code(q, limit)
        asked = words(q)[:MAX_QUERY_WORDS]
        if sum(len(w) for w in asked) < MIN_QUERY_LETTERS:
            return []
        # whole-word matches (ranks 0-2) first; titles where a word only begins with a query word (ranks 3-4)
        # rank below every one of them, so they are looked at only when the first ones leave room
        candidates = self._holding(asked, whole=True)
        if len({self.titles[i].code for i in candidates}) < limit:
            candidates = self._holding(asked, whole=False)
        head, last = asked[:-1], asked[-1]
        n = len(asked)
        best: dict[str, tuple[int, bool, int, str, int]] = {}  # code -> (rank, industry, length, text, index)
        at_rank: dict[tuple[str, int], int] = defaultdict(int)
        in_all: dict[str, int] = defaultdict(int)
        for i in candidates:
            entry = self.titles[i]
            title = entry.words
            begins = len(title) >= n and title[: n - 1] == head
            if title == asked:
                rank = 0
            elif begins and title[n - 1] == last:
                rank = 1
            elif all(w in title for w in asked):
                rank = 2
            elif begins and title[n - 1].startswith(last):
                rank = 3
            else:
                rank = 4
            at_rank[(entry.code, rank)] += 1
            in_all[entry.code] += rank <= 2
            key = (rank, bool(entry.industry), len(entry.text), entry.text, i)
            if entry.code not in best or key < best[entry.code]:
                best[entry.code] = key

        def order(item: tuple[str, tuple[int, bool, int, str, int]]) -> tuple[int, bool, int, int, int, str]:
            code, (rank, industry, length, _text, _i) = item
            return (rank, industry, -at_rank[(code, rank)], -in_all[code], length, code)

        hits = []
        for code, (rank, _industry, _length, _text, i) in sorted(best.items(), key=order)[:limit]:
            entry = self.titles[i]
            official = self.taxonomy.title(code)
            hits.append(Hit(code, official, entry.text, entry.source, entry.industry, at_rank[(code, rank)]))
        return hits


@lru_cache(maxsize=1)
def code_index() -> CodeIndex:
    """The search index, built on first use and kept for the life of the process."""
    return CodeIndex.build()


_warming = threading.Lock()


def warm_up() -> None:
    """Build the index in the background (the first row page calls it), so a coder's first search is fast."""
    if code_index.cache_info().currsize or not _warming.acquire(blocking=False):
        return

    def build() -> None:
        try:
            code_index()
        finally:
            _warming.release()

    threading.Thread(target=build, name="review-code-index", daemon=True).start()
