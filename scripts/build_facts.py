"""Build the project's small facts tables from the reference files beside the checkout.

- shared/data/isco08_groups.csv: ISCO-08 code, level, English title, parent (titles only, no definitions).
- shared/data/esco_occupations.csv: ESCO occupation URI -> ISCO-08 unit group, preferred and alt titles.
- shared/data/ons_coding_index.csv: the ONS SOC 2020 coding index, each entry's title, qualifier, the
  industry in which it is coded that way, its SOC 2020 code and the ISCO-08 unit group ONS assigned to it.
- shared/data/esco_labels_multilingual.csv.gz: ESCO v1.0.8's preferred and alternative occupation labels in 25
  languages other than English, each with its occupation URI and ISCO-08 unit group (read by
  shared/corpus_multilingual.py; gzip without a timestamp, so a rebuild from the same file is byte-identical).

ESCO v1.2 (c) European Union, CC BY 4.0. ISCO-08 (c) International Labour Organization. ONS SOC 2020
Volume 2 coding index (c) Crown copyright, Office for National Statistics, Open Government Licence v3.0.
ESCO v1.0.8 multilingual labels (c) European Union, reuse authorised with the source acknowledged.
Descriptions and definitions are deliberately not copied: they are loaded at run time.

Usage: python scripts/build_facts.py [--source ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_groups(structure_csv: Path, out: Path) -> int:
    rows = []
    with structure_csv.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            code = row["ISCO 08 Code"].strip()
            level = int(row["Level"])
            code = code.zfill(level)  # armed forces: 0, 01, 011, 0110
            parent = code[:-1] if level > 1 else ""
            rows.append((code, level, " ".join(row["Title EN"].split()), parent))
    rows.sort(key=lambda r: r[0])
    with out.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["code", "level", "title", "parent"])
        w.writerows(rows)
    return len(rows)


def build_occupations(occupations_csv: Path, out: Path) -> int:
    n = 0
    with occupations_csv.open(encoding="utf-8") as f, out.open("w", encoding="utf-8", newline="") as g:
        w = csv.writer(g)
        w.writerow(["uri", "isco_code", "preferred_label", "alt_labels"])
        for row in csv.DictReader(f):
            alts = [" ".join(a.split()) for a in row["altLabels"].split("\n") if a.strip()]
            w.writerow(
                [
                    row["conceptUri"],
                    row["iscoGroup"].strip().zfill(4),
                    row["preferredLabel"].strip(),
                    "|".join(alts),
                ]
            )
            n += 1
    return n


def build_ons_index(index_csv: Path, out: Path) -> int:
    """The ONS coding index as it is published, white space folded, codes kept as 4-digit strings; rows
    without a title or a code are left out. Order and repeated titles are kept: each row is one entry."""
    n = 0
    with index_csv.open(encoding="utf-8") as f, out.open("w", encoding="utf-8", newline="") as g:
        w = csv.writer(g)
        w.writerow(["job_title", "qualifier", "industry", "soc2020_ext", "isco_code"])
        for row in csv.DictReader(f):
            title, code = " ".join(row["job_title"].split()), row["isco_code"].strip()
            if not title or not code:
                continue
            qualifier, industry = (" ".join(row[c].split()) for c in ("qualifier", "industry"))
            w.writerow([title, qualifier, industry, row["soc2020_ext"].strip(), code.zfill(4)])
            n += 1
    return n


def build_multilingual_labels(labels_csv_gz: Path, out: Path) -> int:
    """The 25-language label file as published, white space folded, codes as 4-digit strings, blank labels
    left out, in the file's order; written with gzip's timestamp at 0 (byte-identical rebuilds)."""
    columns = ["concept_uri", "lang", "label_kind", "label", "isco_code"]
    buffer = io.StringIO()
    w = csv.writer(buffer, lineterminator="\n")
    w.writerow(columns)
    n = 0
    with gzip.open(labels_csv_gz, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            label, code = " ".join(row["label"].split()), row["isco_code"].strip()
            if not label or not code:
                continue
            w.writerow(
                [
                    row["concept_uri"].strip(),
                    row["lang"].strip(),
                    row["label_kind"].strip(),
                    label,
                    code.zfill(4),
                ]
            )
            n += 1
    with out.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as g:
        g.write(buffer.getvalue().encode("utf-8"))
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    data = ROOT / "shared" / "data"
    data.mkdir(parents=True, exist_ok=True)
    g = build_groups(args.source / "isco08" / "isco08_structure_en.csv", data / "isco08_groups.csv")
    o = build_occupations(args.source / "esco" / "occupations_en.csv", data / "esco_occupations.csv")
    ons = build_ons_index(
        args.source / "ons" / "soc2020_coding_index_isco08.csv", data / "ons_coding_index.csv"
    )
    ml = build_multilingual_labels(
        args.source / "esco" / "multilingual" / "occupation_labels_v1_0_8.csv.gz",
        data / "esco_labels_multilingual.csv.gz",
    )
    print(
        f"isco08_groups.csv: {g} groups; esco_occupations.csv: {o} occupations; ons_coding_index.csv: {ons}; "
        f"esco_labels_multilingual.csv.gz: {ml} labels"
    )


if __name__ == "__main__":
    main()
