"""The train/validation/test split, stratified by unit group and grouped by occupation.

Records of one ESCO occupation (any of its titles, in any language, with or without duties) or, outside ESCO,
of one job title stay together, so validation and test hold titles the model has never seen, like the titles
users send (choose early stopping, weights, temperature and routing thresholds there). In each unit group the
occupations are ordered by a seeded hash of their key and the first ones go to test and validation, so a
record keeps its split when other records are added (re-trained and corrected models are evaluated on the same
records). Unit groups smaller than `min_group_size_to_split` and train-only sources (corrections) go to train.
Eval-only sources (`eval_only_sources`: ESCO's labels in other languages beyond the training sample) stay
with their occupation when it is held out and are dropped when it trains; they do not count towards the
sizes, so the same occupations are held out with or without them.
`group_by: record` restores the per-record split. With `val_known_titles`, validation also gets a share of the
ESCO titles whose occupation keeps other titles in training (the title alone, `_known_titles`): users send new
titles of known occupations as well as new occupations, and what is chosen on validation (the temperature, the
reranker, the routing thresholds) should see both. Test stays occupations only. Validation and test records
whose duties also train, word for word, are dropped (`drop_seen_duties`).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

from services.trainer.config import PreprocessConfig
from services.trainer.records import Example


def _split_key(seed: int, text: str) -> str:
    return hashlib.sha1(f"{seed}:{text}".encode()).hexdigest()


def _occupation_keys() -> dict[str, str]:
    """Lower-cased ESCO title -> its occupation URI (the first occupation that has it)."""
    from shared.corpus import load_esco_facts

    keys: dict[str, str] = {}
    for uri, _, labels in load_esco_facts():
        for label in labels:
            keys.setdefault(label.strip().lower(), uri)
    return keys


_QUALIFIER = re.compile(r"\s*\([^()]*\)$")


def split_group(example: Example, occupations: dict[str, str]) -> str:
    """The unit of the split: the record's own occupation (`Example.group`: the ESCO URI of a multilingual
    label), else the ESCO occupation of the title, else the title, else the text.

    A label in another language is keyed by the same URI as the occupation's English titles, so every language
    of one occupation lands in one split: a held-out occupation is one the model never saw in any language.

    The title is read without a trailing qualifier in parentheses and without its industry: a coding
    index's "inspector (railways)" and "inspector" in banking are one title, held out together, so a held-out
    title is one the model never saw in any context (as the dev sets' titles are). A title that is also an
    ESCO label goes with that ESCO occupation."""
    if example.group:
        return example.group
    title = example.job_title.strip().lower()
    if not title:
        return f"text:{example.text}"
    base = _QUALIFIER.sub("", title) or title
    return occupations.get(title, occupations.get(base, f"title:{base}"))


def split(
    examples: Sequence[Example], config: PreprocessConfig
) -> tuple[list[Example], list[Example], list[Example]]:
    """Stratified, hash-ordered train/validation/test split, grouped by occupation (see module docstring)."""
    train: list[Example] = []
    val: list[Example] = []
    test: list[Example] = []
    by_code: dict[str, list[Example]] = defaultdict(list)
    train_only = set(config.train_only_sources)
    eval_only = set(config.eval_only_sources)

    def trains(group: list[Example]) -> None:
        train.extend(e for e in group if e.source not in eval_only)

    def size(group: list[Example]) -> int:
        return sum(e.source not in eval_only for e in group)

    for e in examples:
        if e.source in train_only:
            train.append(e)
        else:
            by_code[e.code].append(e)
    occupations = _occupation_keys() if config.group_by == "occupation" else {}
    for code in sorted(by_code):
        members: dict[str, list[Example]] = defaultdict(list)
        for e in by_code[code]:
            key = split_group(e, occupations) if config.group_by == "occupation" else e.text
            e.group = key  # routing counts held-out occupations, not labels (routing_fit.py)
            members[key].append(e)
        groups = [members[k] for k in sorted(members, key=lambda k: _split_key(config.seed, k))]
        n = size(by_code[code])
        if n < config.min_group_size_to_split or len(groups) < 2:
            trains(by_code[code])
            continue
        n_test = max(1, round(n * config.test_fraction)) if config.test_fraction > 0 else 0
        n_val = max(1, round(n * config.val_fraction)) if config.val_fraction > 0 else 0
        while n_test + n_val > n - 1:  # keep at least one training example of every group
            if n_val >= n_test and n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
        taken_test = taken_val = 0
        for i, group in enumerate(groups):
            last = i == len(groups) - 1  # the last occupation always trains
            # an occupation larger than twice what a split still needs trains instead of swamping that split
            if not last and taken_test < n_test and size(group) <= 2 * (n_test - taken_test) + 1:
                test.extend(group)
                taken_test += size(group)
            elif not last and taken_val < n_val and size(group) <= 2 * (n_val - taken_val) + 1:
                val.extend(group)
                taken_val += size(group)
            else:
                trains(group)
    if config.val_known_titles > 0 and occupations:
        train, known = _known_titles(train, occupations, train_only, config)
        val.extend(known)
    return train, val, test


def _known_titles(
    train: list[Example], occupations: dict[str, str], train_only: set[str], config: PreprocessConfig
) -> tuple[list[Example], list[Example]]:
    """Move `val_known_titles` of the ESCO titles in training (chosen by a seeded hash) to validation, where
    the title's occupation keeps another title in training. Only the title alone goes to validation; its
    records with duties are dropped: their duties (the occupation's description) stay in training under the
    occupation's other titles, so validation would see them nearly verbatim and over-trust duties."""
    titles: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(train):
        title = e.job_title.strip().lower()
        if e.source not in train_only and title in occupations:
            titles[title].append(i)
    kept_titles = Counter(occupations[t] for t in titles)
    moved: set[int] = set()
    for title in sorted(titles, key=lambda t: _split_key(config.seed, f"known:{t}")):
        if len(moved) >= config.val_known_titles * len(train):
            break
        if kept_titles[occupations[title]] > 1:
            kept_titles[occupations[title]] -= 1
            moved.update(titles[title])
    known = [train[i] for i in sorted(moved) if not train[i].duties_description.strip()]
    return [e for i, e in enumerate(train) if i not in moved], known


def drop_seen_duties(train: list[Example], held_out: list[Example]) -> tuple[list[Example], int]:
    """The held-out records, less those whose duties are also a training record's duties (and how many).

    The split keeps an occupation's records together, but one text of duties can belong to several: an ISCO
    task line is paired with two titles of its unit group (`shared.corpus`), which may fall in different
    splits. Held out, such a record's duties alone give its code away (44% of the full profile's
    validation records with duties), so what is chosen on validation (the duties view's weight, the
    temperature, the routing thresholds) would over-trust duties, which users write in their own words."""
    trained = {e.duties_description.strip().lower() for e in train if e.duties_description.strip()}
    kept = [e for e in held_out if e.duties_description.strip().lower() not in trained]
    return kept, len(held_out) - len(kept)
