"""Issue 28: which language-identification library reads short job titles best, within the speed budget.

Compared on the 26 languages of the service (en + ESCO's 25), each library restricted to them:
- `py3langid` 0.4 (langid.py's naive Bayes over byte n-grams, numpy), probabilities normalised;
- `lingua-language-detector` 2.1 in its accurate (default) and low-accuracy modes (no Maltese model: `mt`
  labels can only be wrong; Norwegian is its `nb`);
- `shared.language.identify`, the service's identification: py3langid within the script's languages, with
  the CONFIDENT threshold (unsure: None).

Data (never the dev sets for choosing anything): `--per-lang` ESCO v1.0.8 labels per language
(../shared/data/esco/multilingual/occupation_labels_v1_0_8.csv.gz, seeded sample) and as many English job
titles from the project's corpus (shared/corpus.py: ESCO and ONS titles), plus English corpus records with
duties. Reported: top-1 accuracy per language, µs per record, load time.

Then, for the English-only model that serves today: how often an English record would go to a coder for its
language (a confident non-English identification or a script English is not written in) on the corpus titles,
corpus records with duties and - measured only, nothing is tuned on it - the ILO titles dev set; and the share
of each language's labels that would go to a coder. `--sweep` prints those two rates for several thresholds
(corpus and ESCO only).

lingua is not a project dependency (96 MB, only this comparison): `pip install lingua-language-detector`,
or pass --no-lingua.

Usage: python bench/experiments/language_id.py [--per-lang 300] [--no-lingua] [--sweep]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared import language as lang_mod  # noqa: E402
from shared.corpus import build_default_corpus  # noqa: E402
from shared.language import LANGUAGES, identify  # noqa: E402
from shared.screening import read_language  # noqa: E402

LABELS = ROOT.parent / "shared/data/esco/multilingual/occupation_labels_v1_0_8.csv.gz"
ILO = ROOT.parent / "shared/data/devsets/ilo_titles_dev.csv"


def esco_sample(per_lang: int, seed: int = 0) -> dict[str, list[str]]:
    by_lang: dict[str, list[str]] = defaultdict(list)
    with gzip.open(LABELS, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_lang[row["lang"]].append(row["label"])
    rng = random.Random(seed)
    return {
        lang: rng.sample(sorted(set(labels)), min(per_lang, len(set(labels))))
        for lang, labels in by_lang.items()
    }


def english_samples(per_lang: int, seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    corpus = build_default_corpus()
    rng = random.Random(seed)
    titles = sorted({r.job_title for r in corpus if r.source in ("esco_title", "ons_title") and r.job_title})
    with_duties = sorted({(r.job_title, r.duties_description) for r in corpus if r.duties_description})
    return rng.sample(titles, per_lang), rng.sample(with_duties, per_lang)


def py3langid_method() -> Callable[[str], str]:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages(list(LANGUAGES))
    return lambda text: str(ident.classify(text)[0])


def lingua_method(low: bool) -> Callable[[str], str]:
    from lingua import Language, LanguageDetectorBuilder

    wanted = set(LANGUAGES) | {"nb"}
    languages = [lg for lg in Language.all() if lg.iso_code_639_1.name.lower() in wanted]
    builder = LanguageDetectorBuilder.from_languages(*languages).with_preloaded_language_models()
    detector = (builder.with_low_accuracy_mode() if low else builder).build()

    def detect(text: str) -> str:
        found = detector.detect_language_of(text)
        code = found.iso_code_639_1.name.lower() if found is not None else "?"
        return "no" if code == "nb" else code

    return detect


def service_method(text: str) -> str:
    found = identify(text)
    return found.language or "?"


def service_read_all(text: str) -> str:
    """The language a record is coded as by a 26-language model (unsure: the likeliest of them)."""
    return read_language(text, "", "", model_languages=LANGUAGES).language


def evaluate(name: str, make: Callable[[], Callable[[str], str]], data: dict[str, list[str]]) -> dict:
    started = time.perf_counter()
    detect = make()
    detect("warm up")
    load_s = time.perf_counter() - started
    per_lang, n_all, t_all = {}, 0, 0.0
    for lang, texts in data.items():
        t0 = time.perf_counter()
        right = sum(detect(t) == lang for t in texts)
        t_all += time.perf_counter() - t0
        n_all += len(texts)
        per_lang[lang] = right / len(texts)
    return {"name": name, "load_s": load_s, "us": t_all / n_all * 1e6, "acc": per_lang}


def goes_to_coder(title: str, duties: str, threshold: float | None = None) -> bool:
    """What the English-only model does with a record's language: True when it sends it to a coder."""
    if threshold is not None:
        lang_mod.CONFIDENT = threshold  # the sweep only: the service reads the constant
    return read_language(title, duties, "", model_languages=("en",)).unsupported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-lang", type=int, default=300)
    parser.add_argument("--no-lingua", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()

    data = esco_sample(args.per_lang)
    en_titles, en_duties = english_samples(args.per_lang)
    data["en"] = en_titles
    methods: list[tuple[str, Callable[[], Callable[[str], str]]]] = [
        ("py3langid", py3langid_method),
        ("shared.language (sure only)", lambda: service_method),
        ("shared.language, read for a 26-language model", lambda: service_read_all),
    ]
    if not args.no_lingua:
        methods += [
            ("lingua (accurate)", lambda: lingua_method(False)),
            ("lingua (low)", lambda: lingua_method(True)),
        ]
    results = [evaluate(name, make, data) for name, make in methods]

    langs = sorted(data, key=lambda c: LANGUAGES.index(c))
    print("| language | " + " | ".join(r["name"] for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for lang in langs:
        print(f"| {lang} | " + " | ".join(f"{r['acc'][lang]:.2f}" for r in results) + " |")
    print(
        "| **mean** | "
        + " | ".join(f"**{sum(r['acc'].values()) / len(r['acc']):.3f}**" for r in results)
        + " |"
    )
    print("| µs / record | " + " | ".join(f"{r['us']:.0f}" for r in results) + " |")
    print("| load s | " + " | ".join(f"{r['load_s']:.1f}" for r in results) + " |")

    ilo = []
    with open(ILO, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            ilo.append((row["job_title"], row.get("duties_description") or ""))
    print(
        f"\nEnglish-only model, threshold {lang_mod.CONFIDENT}: English records sent to a coder for language"
    )
    for name, records in (
        ("corpus titles", [(t, "") for t in en_titles]),
        ("corpus title + duties", en_duties),
        ("ILO titles dev (measured only)", ilo),
    ):
        flagged = [r for r in records if goes_to_coder(*r)]
        print(
            f"  {name}: {len(flagged)}/{len(records)} = {len(flagged) / len(records):.2%}  e.g. {flagged[:6]}"
        )
    all_model = {
        lang: sum(read_language(t, "", "", model_languages=LANGUAGES).unsupported for t in data[lang])
        / len(data[lang])
        for lang in langs
    }
    print("Labels sent to a coder for their language by a 26-language model (should be none):")
    print("  " + " ".join(f"{lang} {v:.3f}" for lang, v in all_model.items() if v))
    print("Labels sent to a coder (English-only model), per language:")
    caught = {
        lang: sum(goes_to_coder(t, "") for t in data[lang]) / len(data[lang])
        for lang in langs
        if lang != "en"
    }
    print(
        "  "
        + " ".join(f"{lang} {v:.2f}" for lang, v in caught.items())
        + f"  mean {sum(caught.values()) / len(caught):.3f}"
    )

    if args.sweep:
        print(
            "\n| threshold | English corpus titles to a coder | title + duties "
            "| foreign labels to a coder (mean) |"
        )
        print("|---:|---:|---:|---:|")
        for th in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
            fp = sum(goes_to_coder(t, "", th) for t in en_titles) / len(en_titles)
            fpd = sum(goes_to_coder(t, d, th) for t, d in en_duties) / len(en_duties)
            rates = [
                sum(goes_to_coder(t, "", th) for t in data[g]) / len(data[g]) for g in langs if g != "en"
            ]
            print(f"| {th} | {fp:.2%} | {fpd:.2%} | {sum(rates) / len(rates):.3f} |")


if __name__ == "__main__":
    main()
