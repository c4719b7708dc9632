"""Frozen-encoder experiments (issue 10): head + kNN + lexical fusion, duties-aware scoring, routing, rerank.

    python -m bench.experiments.exp_frozen [TAG]      (TAG: cached embeddings, default "base")

Everything is chosen on held-out ESCO occupations (exp_common.occupation_split); the dev sets are scored once
with those choices. Prints one line per variant: dev top-1/top-3 ILO and O*NET, and routing figures.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from bench.experiments.cache_views import CACHE
from bench.experiments.encode_base import encode
from bench.experiments.exp_common import (
    fit_temperature,
    knn_probs,
    load_context,
    prototypes,
    softmax,
    topk,
    train_head,
)
from services.trainer.metrics import coverage_at_precision, expected_calibration_error
from services.trainer.routing_fit import fit_routing
from shared.decision import Hierarchy, level_probabilities
from shared.model.resources import default_base_model
from shared.routing import RecordInputs
from shared.text import model_input


def lexical_probs(vec, matrix, labels, texts, n, k=10, tau=0.05):
    q = vec.transform(texts)
    out = np.zeros((len(texts), n), np.float32)
    for s in range(0, len(texts), 256):
        sims = (q[s : s + 256] @ matrix.T).toarray()
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        ts = np.take_along_axis(sims, top, axis=1)
        w = np.exp((ts - ts.max(1, keepdims=True)) / tau)
        rows = np.repeat(np.arange(len(top)), k)
        np.add.at(out[s : s + 256], (rows, labels[top].ravel()), w.ravel())
    return out / np.clip(out.sum(1, keepdims=True), 1e-12, None)


def nll(p, y):
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-9, None)).mean())


def main(tag: str = "base") -> None:
    t0 = time.time()
    ctx = load_context(tag)
    codes, records, y = ctx["codes"], ctx["records"], ctx["y"]
    tr, va = ctx["train"], ctx["val"]
    n = len(codes)
    E = ctx["corpus"]
    texts = [model_input(r.job_title, r.duties_description) for r in records]
    # head on frozen embeddings, from prototypes
    proto = prototypes(E[tr], y[tr], n)
    W, s = train_head(E[tr], y[tr], proto, epochs=8)
    val_logits = s * E[va] @ W.T
    temp = fit_temperature(val_logits, y[va])
    print(f"head trained ({time.time() - t0:.0f}s), scale {s:.1f}, temperature {temp:.2f}", flush=True)
    vec = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(3, 4), min_df=2, sublinear_tf=True, dtype=np.float32
    )
    mat = vec.fit_transform([texts[i] for i in tr])
    print(f"lexical built ({time.time() - t0:.0f}s)", flush=True)

    def signals(q, qtexts):
        return {
            "head": softmax(s * q @ W.T / temp),
            "proto": softmax(30 * q @ proto.T),
            "knn": knn_probs(q, E[tr], y[tr], n, k=10, tau=0.05),
            "lex": lexical_probs(vec, mat, y[tr], qtexts, n),
        }

    val_texts = [texts[i] for i in va]
    sv = signals(E[va], val_texts)
    devs = ctx["dev"]
    dev_texts = {
        "ilo": [model_input(t, d) for t, d in zip(*_dev_fields("ilo_titles_dev"), strict=True)],
        "onet": [model_input(t, d) for t, d in zip(*_dev_fields("onet_jobs_dev"), strict=True)],
    }
    sd = {k: signals(devs[k][0], dev_texts[k]) for k in devs}
    print(f"signals ({time.time() - t0:.0f}s)", flush=True)

    def report(label, pick):
        cells = []
        for k in ("ilo", "onet"):
            p = pick(sd[k], k)
            acc = devs[k][1]
            cells.append(f"{k} {topk(p, acc, codes):.3f}/{topk(p, acc, codes, 3):.3f}")
        print(f"{label:40s} " + "  ".join(cells), flush=True)

    for name in ("proto", "head", "knn", "lex"):
        report(name, lambda sig, _k, name=name: sig[name])
    # fusion weights on held-out occupations (lowest log loss)
    best = None
    for wk in np.arange(0, 0.7, 0.1):
        for wl in np.arange(0, 0.5, 0.05):
            if wk + wl > 0.9:
                continue
            p = (1 - wk - wl) * sv["head"] + wk * sv["knn"] + wl * sv["lex"]
            cand = (nll(p, y[va]), round(wk, 2), round(wl, 2))
            best = min(best, cand) if best else cand
    _, wk, wl = best
    print("fusion weights (held-out occupations): knn", wk, "lex", wl, flush=True)

    def fuse(sig):
        return (1 - wk - wl) * sig["head"] + wk * sig["knn"] + wl * sig["lex"]

    report(f"head+knn+lex ({wk},{wl})", lambda sig, _k: fuse(sig))

    # duties-aware: O*NET title alone, duties alone, together (weights on held-out ESCO description records)
    desc = np.array([j for j, i in enumerate(va) if records[i].duties_description])
    v_title = [model_input(records[va[j]].job_title, "") for j in desc]
    v_duties = [model_input("", records[va[j]].duties_description) for j in desc]
    cache = CACHE / f"{tag}_val_views.npz"
    if cache.exists():
        z = np.load(cache)
        et, ed = z["title"], z["duties"]
    else:
        model_dir = default_base_model() if tag == "base" else str(CACHE / f"enc_{tag}")
        et, ed = encode(v_title, model_dir, max_length=64), encode(v_duties, model_dir, max_length=64)
        np.savez(cache, title=et, duties=ed)
    st, sdu = signals(et, v_title), signals(ed, v_duties)
    yv = y[va][desc]
    full_v = fuse({k: v[desc] for k, v in sv.items()})
    bestd = None
    for a in np.arange(0, 0.8, 0.1):
        for b in np.arange(0, 0.8, 0.1):
            if a + b > 0.9:
                continue
            p = (1 - a - b) * full_v + a * fuse(st) + b * fuse(sdu)
            cand = (nll(p, yv), round(a, 2), round(b, 2))
            bestd = min(bestd, cand) if bestd else cand
    _, a, b = bestd
    print("duties-aware weights (held-out description records): title", a, "duties", b, flush=True)
    ot = signals(ctx["onet_title"], [model_input(t, "") for t in _dev_fields("onet_jobs_dev")[0]])
    od = signals(ctx["onet_duties"], [model_input("", d) for d in _dev_fields("onet_jobs_dev")[1]])
    onet_fused = (1 - a - b) * fuse(sd["onet"]) + a * fuse(ot) + b * fuse(od)
    report(
        f"+ duties-aware O*NET ({a},{b})",
        lambda sig, k: onet_fused if k == "onet" else fuse(sig),
    )

    # routing: routers fitted on held-out occupations, applied to the dev sets
    hierarchy = Hierarchy.from_codes(codes)
    pv = fuse(sv)
    has_duties_v = np.array([bool(records[i].duties_description) for i in va])
    words_v = np.array([len(t.split()) for t in val_texts])
    per_v = level_probabilities(pv, hierarchy)
    gold_v = [codes[j] for j in y[va]]
    correct_v = {lv: _correct_level(per_v[lv], hierarchy, lv, [{g} for g in gold_v]) for lv in (4, 3, 2, 1)}
    routing = fit_routing(
        per_v,
        correct_v,
        RecordInputs(has_duties_v, words_v, np.zeros(len(words_v), bool)),
        0.95,
        fitted_on="held-out ESCO occupations",
    )
    print(
        "router thresholds", {lv: round(r.threshold, 3) for lv, r in routing.levels.items()},
        "val coverage@95", {lv: round(r.fitted_coverage or 0, 3) for lv, r in routing.levels.items()},
        flush=True,
    )  # fmt: skip
    for k, p in (("ilo", fuse(sd["ilo"])), ("onet", onet_fused)):
        acc = devs[k][1]
        per = level_probabilities(p, hierarchy)
        has = np.array([" : " in t for t in dev_texts[k]]) if k == "ilo" else np.ones(len(p), bool)
        words = np.array([len(t.split()) for t in dev_texts[k]])
        routed = routing.probabilities(per, RecordInputs(has, words, np.zeros(len(words), bool)))[4]
        correct = _correct_level(per[4], hierarchy, 4, acc)
        raw = p.max(1)
        accepted = routed >= routing.levels[4].threshold
        ece_raw, ece_routed = (
            expected_calibration_error(raw, correct),
            expected_calibration_error(routed, correct),
        )
        cov_raw, cov_routed = (
            coverage_at_precision(raw, correct, 0.95)["coverage"],
            coverage_at_precision(routed, correct, 0.95)["coverage"],
        )
        precision = correct[accepted].mean() if accepted.any() else float("nan")
        print(
            f"routing {k}: ECE raw {ece_raw:.3f} routed {ece_routed:.3f}; cov@95 raw {cov_raw:.3f} routed "
            f"{cov_routed:.3f}; val-threshold: auto-coded {accepted.mean():.3f} at precision {precision:.3f}",
            flush=True,
        )
    np.savez_compressed(
        CACHE / f"{tag}_signals.npz",
        val_y=y[va],
        val_has_duties=has_duties_v,
        val_words=words_v,
        weights=np.array([wk, wl]),
        **{
            f"{part}_{name}": sig[name]
            for part, sig in (("val", sv), ("ilo", sd["ilo"]), ("onet", sd["onet"]))
            for name in ("head", "knn", "lex")
        },
    )
    print(f"done in {(time.time() - t0) / 60:.1f} min", flush=True)


def _dev_fields(name):
    from bench.devsets import load_devsets

    dev = load_devsets()[name]
    return dev.job_titles, dev.duties


def _correct_level(p, hierarchy, level, accept):
    best = p.argmax(1)
    codes = hierarchy.group_codes[level]
    return np.array(
        [any(a.startswith(codes[j]) for a in acc) for j, acc in zip(best, accept, strict=True)], dtype=bool
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "base")
