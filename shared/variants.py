"""Job titles as people write them (issue 10).

- `expand_abbreviations`: the short forms of job boards and survey write-ins (HGV1, FLT, RGN, GP, snr ...)
  spelled out before the model reads a title, so "Snr software dev" reads "senior software developer". Used by
  `shared.text.model_input` for training and inference alike.
- `variant` and its transforms: random title variants (abbreviated, gender-swapped, with a seniority word,
  inverted "head - qualifier") for training augmentation. Deterministic given the random generator.
"""

from __future__ import annotations

import random
import re

# short form -> long form. Two forms where the word is a noun at the end ("software dev") and a modifier
# before another word ("dev manager"). Only whole words of the title are replaced.
EXPANSIONS: dict[str, str | tuple[str, str]] = {
    "hgv": "heavy goods vehicle",
    "hgv1": "heavy goods vehicle",
    "hgv2": "heavy goods vehicle",
    "lgv": "large goods vehicle",
    "pcv": "passenger carrying vehicle",
    "flt": "forklift truck",
    "rgn": "registered general nurse",
    "rmn": "registered mental health nurse",
    "rn": "registered nurse",
    "lpn": "licensed practical nurse",
    "hca": "healthcare assistant",
    "gp": "general practitioner",
    "nqt": "newly qualified teacher",
    "lsa": "learning support assistant",
    "snr": "senior",
    "sr": "senior",
    "jnr": "junior",
    "jr": "junior",
    "asst": "assistant",
    "mgr": "manager",
    "mngr": "manager",
    "supv": "supervisor",
    "coord": "coordinator",
    "rep": "representative",
    "dept": "department",
    "ops": "operations",
    "maint": "maintenance",
    "mech": ("mechanic", "mechanical"),
    "elec": ("electrician", "electrical"),
    "dev": ("developer", "development"),
    "devs": "developers",
    "eng": ("engineer", "engineering"),
    "engr": "engineer",
    "tech": ("technician", "technical"),
    "admin": ("administrator", "administrative"),
    "hr": "human resources",
    "qa": "quality assurance",
    "ceo": "chief executive officer",
    "cfo": "chief financial officer",
    "cto": "chief technology officer",
    "coo": "chief operating officer",
    "hvac": "heating ventilation and air conditioning",
}
_TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9]+")


def expand_abbreviations(title: str) -> str:
    """Spell out known job-title abbreviations in a lower-cased title ("snr software dev" -> "senior software
    developer"); anything else is left as it is."""
    tokens = _TOKEN.findall(title)
    words = [i for i, t in enumerate(tokens) if t[0].isalnum()]
    if not any(tokens[i] in EXPANSIONS for i in words):
        return title
    for k, i in enumerate(words):
        long = EXPANSIONS.get(tokens[i])
        if long is None:
            continue
        if isinstance(long, tuple):
            # a noun at the end or before a separator ("dev - london"), a modifier before another word
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            is_last = k == len(words) - 1 or nxt.strip() not in ("",)
            long = long[0] if is_last else long[1]
        tokens[i] = long
        if i + 1 < len(tokens) and tokens[i + 1].startswith("."):  # "sr. accountant"
            tokens[i + 1] = tokens[i + 1][1:] or " "
    return " ".join("".join(tokens).split())


# long form -> short forms people write (UK/US job boards, survey write-ins)
ABBREVIATIONS = {
    "senior": ["snr", "sr", "sr."],
    "junior": ["jnr", "jr", "jr."],
    "assistant": ["asst", "assist."],
    "manager": ["mgr"],
    "management": ["mgmt"],
    "developer": ["dev"],
    "development": ["dev"],
    "engineer": ["eng", "engr"],
    "engineering": ["eng"],
    "technician": ["tech"],
    "administrator": ["admin"],
    "administrative": ["admin"],
    "administration": ["admin"],
    "supervisor": ["supv"],
    "representative": ["rep"],
    "coordinator": ["co-ordinator", "coord"],
    "operative": ["op"],
    "operator": ["op"],
    "department": ["dept"],
    "information technology": ["it"],
    "human resources": ["hr"],
    "customer service": ["cs"],
    "heavy goods vehicle": ["hgv", "hgv1", "hgv2"],
    "large goods vehicle": ["lgv"],
    "forklift truck": ["flt"],
    "forklift": ["flt"],
    "registered general nurse": ["rgn"],
    "registered nurse": ["rn"],
    "general practitioner": ["gp"],
    "chief executive officer": ["ceo"],
    "chief financial officer": ["cfo"],
    "chief technology officer": ["cto"],
    "heating, ventilation and air conditioning": ["hvac"],
    "software": ["sw"],
    "quality assurance": ["qa"],
    "personal assistant": ["pa"],
    "teaching assistant": ["ta"],
    "healthcare assistant": ["hca"],
    "and": ["&"],
}
GENDERED = [
    ("man", "woman"),
    ("men", "women"),
    ("waiter", "waitress"),
    ("actor", "actress"),
    ("steward", "stewardess"),
    ("host", "hostess"),
    ("chairman", "chairwoman"),
    ("salesman", "saleswoman"),
    ("foreman", "forewoman"),
    ("headmaster", "headmistress"),
    ("manageress", "manager"),
]
SENIORITY = ["senior", "junior", "trainee", "lead", "chief", "head", "apprentice", "assistant", "principal"]
# Added words must keep the unit group: ISCO codes trainees and apprentices to their occupation, while
# "chief", "head" or "assistant" can make a title a supervisor, a manager or another occupation.
ADDED_SENIORITY = ["senior", "junior", "trainee", "apprentice"]
_WORD_BOUNDARY = r"(?<![a-z]){}(?![a-z])"


def abbreviate(title: str, rng: random.Random) -> str:
    """Replace one long form in the title with a short form (unchanged when none occurs)."""
    hits = [k for k in ABBREVIATIONS if re.search(_WORD_BOUNDARY.format(re.escape(k)), title)]
    if not hits:
        return title
    long = rng.choice(hits)
    return re.sub(_WORD_BOUNDARY.format(re.escape(long)), rng.choice(ABBREVIATIONS[long]), title, count=1)


def gender_swap(title: str, rng: random.Random) -> str:
    """Swap a gendered word ("-man" <-> "-woman", waiter <-> waitress); unchanged when none occurs."""
    for a, b in rng.sample(GENDERED, len(GENDERED)):
        for x, z in ((a, b), (b, a)):
            pattern = rf"{x}\b" if x in ("man", "men") else rf"\b{x}\b"
            if re.search(pattern, title):
                return re.sub(pattern, z, title, count=1)
    return title


def seniority(title: str, rng: random.Random) -> str:
    """Add a seniority word that keeps the unit group in front ("senior", "trainee" ...) unless one is
    there."""
    first = title.split(" ", 1)[0]
    if first in SENIORITY:
        return title
    return f"{rng.choice(ADDED_SENIORITY)} {title}"


def invert(title: str, rng: random.Random) -> str:
    """`qualifier head` -> `head - qualifier` or `head, qualifier`, as indexes and job boards list titles."""
    words = title.split()
    if len(words) < 2 or len(words) > 5:
        return title
    head, qualifier = words[-1], " ".join(words[:-1])
    return f"{head}{rng.choice([' - ', ', '])}{qualifier}"


TRANSFORMS = (abbreviate, gender_swap, seniority, invert)


def variant(title: str, rng: random.Random) -> str:
    """One random variant of a lower-cased title (may return the title itself)."""
    return rng.choice(TRANSFORMS)(title, rng)
