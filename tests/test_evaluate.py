"""Evaluation metrics on hand-computed examples (see the docstring of services/trainer/metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from services.trainer.evaluate import EvalDataError, data_hash_of, load_eval_csv
from services.trainer.metrics import compute_metrics, expected_calibration_error
from services.trainer.report import format_table

CODES = ["1111", "1112", "1120", "2111"]
# Worked by hand:
#   rec  probabilities (1111 1112 1120 2111)  gold  accept  top1  4d  3d(best minor)  2d  top3
#   r0   .62  .28  .05  .05                  1111          1111  T   111 .90 T       T   T
#   r1   .40  .10  .45  .05                  1112          1120  F   111 .50 T       T   T
#   r2   .25  .25  .12  .38                  1120          2111  F   111 .50 F       T   F (2111,1111,1112)
#   r3   .30  .36  .30  .04                  1120   1112   1112  T   111 .66 T       T   T
#   r4   .10  .10  .08  .72                  2111          2111  T   211 .72 T       T   T
PROBS = np.array(
    [
        [0.62, 0.28, 0.05, 0.05],
        [0.40, 0.10, 0.45, 0.05],
        [0.25, 0.25, 0.12, 0.38],
        [0.30, 0.36, 0.30, 0.04],
        [0.10, 0.10, 0.08, 0.72],
    ]
)
GOLD = ["1111", "1112", "1120", "1120", "2111"]
ACCEPT = [set(), set(), set(), {"1112"}, set()]


@pytest.fixture(scope="module")
def metrics() -> dict:
    return compute_metrics(PROBS, CODES, GOLD, ACCEPT, n_bins=10)


def test_accuracy_at_each_level(metrics: dict) -> None:
    assert metrics["n"] == 5
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["accuracy_3digit"] == pytest.approx(4 / 5)
    assert metrics["accuracy_2digit"] == pytest.approx(1.0)
    assert metrics["accuracy_1digit"] == pytest.approx(1.0)


def test_top_k(metrics: dict) -> None:
    assert metrics["top3"] == pytest.approx(4 / 5)
    assert metrics["top5"] == pytest.approx(1.0)


def test_macro_f1(metrics: dict) -> None:
    # effective gold (r3 hit its alternative 1112): 1111 1112 1120 1112 2111
    # predictions:                                  1111 1120 2111 1112 2111
    # F1: 1111 = 1, 1112 = 2/3 (tp1 fn1), 1120 = 0, 2111 = 2/3 (tp1 fp1)
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 0 + 2 / 3) / 4)


def test_error_rate_per_major(metrics: dict) -> None:
    assert metrics["error_rate_per_major"] == {
        "1": {"n": 4, "error_rate": 0.5},
        "2": {"n": 1, "error_rate": 0.0},
    }


def test_calibration(metrics: dict) -> None:
    # bins of width .1: {.38 F, .36 T} -> |.5-.37|*2/5; {.45 F} -> .45/5; {.62 T} -> .38/5; {.72 T} -> .28/5
    assert metrics["mean_confidence"] == pytest.approx(2.53 / 5)
    assert metrics["ece"] == pytest.approx(0.052 + 0.09 + 0.076 + 0.056)


def test_coverage_unit_only(metrics: dict) -> None:
    # sorted by confidence: .72 T, .62 T, .45 F, .38 F, .36 T -> precision 1, 1, 2/3, 1/2, 3/5
    for target in ("0.90", "0.95", "0.99"):
        cov = metrics["coverage"][target]["unit_only"]
        assert cov == {"coverage": pytest.approx(0.4), "threshold": pytest.approx(0.62), "precision": 1.0}


def test_coverage_with_fallback(metrics: dict) -> None:
    # 3-digit (best minor group) confidences .90 .50 .50 .66 .72, right T T F T T.
    # t4=.62 codes r0, r4 at 4 digits (right); of the rest (.66 T, .50 T, .50 F) the prefix .66 keeps
    # precision 1 and the tied .50 pair drops it to 4/5: 3 of 5 coded. No t4 does better (t4=.72 and no
    # 4-digit answers at all also reach 3/5, with fewer 4-digit answers).
    cov = metrics["coverage"]["0.90"]["with_fallback"]
    assert cov["coverage"] == pytest.approx(0.6)
    assert cov["coverage_unit"] == pytest.approx(0.4)
    assert cov["coverage_minor"] == pytest.approx(0.2)
    assert cov["threshold_unit"] == pytest.approx(0.62)
    assert cov["threshold_minor"] == pytest.approx(0.66)
    assert cov["precision"] == pytest.approx(1.0)


def test_fallback_never_covers_less_than_unit_only() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(4, 0.3), size=200)
    gold = [CODES[i] for i in rng.integers(0, 4, size=200)]
    m = compute_metrics(probs, CODES, gold)
    for target in ("0.90", "0.95", "0.99"):
        entry = m["coverage"][target]
        assert entry["with_fallback"]["coverage"] >= entry["unit_only"]["coverage"]


def test_coverage_respects_ties() -> None:
    # Two records tied at .9 (one wrong) cannot be split by a threshold: no coverage at 90% precision.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5]])
    m = compute_metrics(probs, ["1111", "1112"], ["1111", "1112", "1111"])
    assert m["coverage"]["0.90"]["unit_only"]["coverage"] == 0.0
    assert m["coverage"]["0.90"]["unit_only"]["threshold"] is None


def test_ece_perfectly_calibrated() -> None:
    conf = np.array([0.75, 0.75, 0.75, 0.75])
    assert expected_calibration_error(conf, np.array([True, True, True, False])) == pytest.approx(0.0)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(PROBS[:2], CODES, GOLD)


def test_table_renders(metrics: dict) -> None:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(format_table({"toy": metrics}))
    text = console.export_text()
    assert "accuracy (4-digit)" in text and "0.6000" in text and "major group 2" in text


def test_load_eval_csv(tmp_path) -> None:
    path = tmp_path / "dev.csv"
    path.write_text(
        "job_title,duties_description,isco_code,accept\n"
        "nurse,,2221,2221|3221\n"
        ",soldiering,110,\n"
        "bad,,99999,\n"
        ",,2221,\n",
        encoding="utf-8",
    )
    with pytest.raises(EvalDataError, match="line 4: isco_code"):
        load_eval_csv(path)
    ev = load_eval_csv(path, skip_invalid=True)
    assert ev.gold == ["2221", "0110"]
    assert ev.accept[0] == {"2221", "3221"}
    assert [line for line, _ in ev.skipped] == [4, 5]
    assert "both empty" in ev.skipped[1][1]
    assert ev.texts() == ["nurse", "soldiering"]


def test_load_eval_csv_missing_column(tmp_path) -> None:
    path = tmp_path / "dev.csv"
    path.write_text("job_title,code\nnurse,2221\n")
    with pytest.raises(EvalDataError, match="missing column.*isco_code"):
        load_eval_csv(path)


def test_data_hash_is_order_independent() -> None:
    assert data_hash_of(["a", "b"], ["1111", "2222"]) == data_hash_of(["b", "a"], ["2222", "1111"])
    assert data_hash_of(["a", "b"], ["1111", "2222"]) != data_hash_of(["a", "b"], ["1111", "2221"])


def test_per_source_metrics_by_hand() -> None:
    from services.trainer.evaluate import EvalSet, per_source_metrics

    # sources of r0..r4: a a b b a; top-1 hits T F F T T (table above); top-3 hits T T F T T
    ev = EvalSet("t", [""] * 5, [""] * 5, GOLD, ACCEPT, [], sources=["a", "a", "b", "b", "a"])
    auto = np.array([True, True, False, False, False])
    out = per_source_metrics(PROBS, CODES, ev, (np.zeros(5), auto))
    assert out["a"] == {
        "n": 3,
        "accuracy": pytest.approx(2 / 3),
        "top3": 1.0,
        "auto_coded": pytest.approx(2 / 3),
        "auto_coded_precision": 0.5,
    }
    assert out["b"]["accuracy"] == 0.5 and out["b"]["auto_coded"] == 0.0
    assert out["b"]["auto_coded_precision"] is None
    # the same rows grouped by each record's language instead (a multilingual model's test split)
    by_language = per_source_metrics(
        PROBS, CODES, ev, (np.zeros(5), auto), groups=["de", "en", "en", "de", "de"]
    )
    assert by_language["de"]["n"] == 3 and by_language["de"]["accuracy"] == 1.0
    assert (
        by_language["de"]["auto_coded_precision"] == 1.0 and by_language["en"]["auto_coded_precision"] == 0.0
    )


def test_load_eval_csv_reads_industry(tmp_path) -> None:
    path = tmp_path / "dev.csv"
    path.write_text("job_title,industry,isco_code\nbreaker,paper mfr,8171\nnurse,,2221\n", encoding="utf-8")
    ev = load_eval_csv(path)
    assert ev.texts() == ["breaker (industry: paper manufacturing)", "nurse"]
