"""Routing variants fitted on a run's validation split, judged on its test split (issue 27: routing that holds
on records like users').

    python -m bench.experiments.routing_users RUN_DIR      (var/runs/<version> of a full `isco train` run)

A run keeps what its routing was fitted on (`routing_val.npz`) and its test split as routing reads it
(`routing_test.npz`, scored before the test records joined the indexes and the head was refitted):
`services.trainer.routing_data.RoutingData`. Each variant is fitted on validation only and judged on the test
split, whole and per training source (held-out ESCO occupations; held-out ONS index titles, alone and with
their industry: the survey-style records). The dev sets are scored with the run's model as served and
reported beside them, never chosen on. Writes bench/results/routing_users-<time>.json.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.devsets import load_devsets
from bench.experiments.routing_similarity import auroc
from services.trainer.evaluate import routing_data
from services.trainer.metrics import coverage_at_precision, expected_calibration_error
from services.trainer.routing_data import ROUTING_DATA_FILES, RoutingData
from services.trainer.routing_fit import fit_logistic, fit_routing, shape_thresholds
from shared.routing import RoutingModel, match_features, routing_features

Route = Callable[[RoutingData], tuple[np.ndarray, np.ndarray]]  # -> (confidence, auto-coded) per record


def shipped_route(routing: RoutingModel) -> Route:
    def route(d: RoutingData) -> tuple[np.ndarray, np.ndarray]:
        p, auto = routing.unit_routing(d.per_level, d.inputs, d.nearest)
        return p, auto & ~screened(d)

    return route


def screened(d: RoutingData) -> np.ndarray:
    return d.flagged if d.flagged is not None else np.zeros(len(d.inputs), dtype=bool)


def nearest_columns(d: RoutingData) -> np.ndarray:
    """The nearest training text's similarity (as the match rule reads it), whether it agrees with the
    answer, and both together."""
    assert d.nearest is not None
    agrees = (d.nearest.labels == d.per_level[4].argmax(axis=1)).astype(np.float64)
    similarity = match_features(d.nearest.similarity)[:, 0]
    return np.c_[similarity, agrees, similarity * agrees]


def base_columns(d: RoutingData) -> np.ndarray:
    return routing_features(d.per_level[4], d.inputs)


def with_nearest(d: RoutingData) -> np.ndarray:
    return np.c_[base_columns(d), nearest_columns(d)]


def logistic_route(
    val: RoutingData,
    shipped: RoutingModel,
    columns: Callable[[RoutingData], np.ndarray],
    z: float,
    per_shape: bool = False,
    match_rule: bool = True,
) -> Route:
    """A 4-digit router on `columns` (one logistic, or one per record shape with 200+ validation records),
    per-shape thresholds held on validation (lower bound `z` SEs down), and the match rule refitted at `z`."""
    x, y = columns(val), val.correct[4].astype(np.float64)
    shapes = val.inputs.shapes()
    groups = sorted(set(shapes.tolist())) if per_shape else []
    models = {"*": fit_logistic(x, y)}
    for g in groups:
        if (shapes == g).sum() >= 200 and 0 < y[shapes == g].sum() < (shapes == g).sum():
            models[g] = fit_logistic(x[shapes == g], y[shapes == g])

    def probability(d: RoutingData) -> np.ndarray:
        xd, sd = columns(d), d.inputs.shapes()
        out = np.empty(len(xd))
        for g, (mean, std, w, b) in models.items():
            rows = np.ones(len(xd), dtype=bool) if g == "*" else sd == g
            if g == "*":
                rows &= ~np.isin(sd, [k for k in models if k != "*"])
            out[rows] = 1.0 / (1.0 + np.exp(-np.clip(((xd[rows] - mean) / std) @ w + b, -40, 40)))
        return out

    thresholds = shape_thresholds(probability(val), val.correct[4], shipped.target_precision, shapes, z)
    matcher = fit_routing(
        val.per_level, val.correct, val.inputs, shipped.target_precision, nearest=val.nearest, z=z
    )

    def route(d: RoutingData) -> tuple[np.ndarray, np.ndarray]:
        p, sd = probability(d), d.inputs.shapes()
        auto = p >= np.array([thresholds.get(s, np.inf) for s in sd])
        if match_rule:
            auto |= matcher.matched(d.per_level[4].argmax(axis=1), d.nearest, sd)
        return p, auto & ~screened(d)

    return route


def report(p: np.ndarray, auto: np.ndarray, right: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(len(p)),
        "auto": round(float(auto.mean()), 4),
        "precision": round(float(right[auto].mean()), 4) if auto.any() else None,
        "ece": round(expected_calibration_error(p, right), 4),
        "auroc": round(auroc(p, right), 4),
        "oracle_cov95": round(coverage_at_precision(p, right, 0.95)["coverage"], 4),
    }


def judge(name: str, route: Route, splits: dict[str, RoutingData]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for split, d in splits.items():
        p, auto = route(d)
        right = d.correct[4]
        row[split] = report(p, auto, right)
        if split == "test" and d.kinds is not None:
            kinds = np.asarray(d.kinds)
            for kind in sorted(set(d.kinds)):
                rows = kinds == kind
                if rows.sum() >= 100:
                    row[f"test:{kind}"] = report(p[rows], auto[rows], right[rows])
    cells = " | ".join(
        f"{k.replace('test:', '')} {v['auto']:.3f}@{v['precision'] or 0:.3f} e{v['ece']:.3f}"
        for k, v in row.items()
    )
    print(f"{name:30s} {cells}", flush=True)
    return row


def main(run_dir: Path) -> None:
    from shared.predictor import Predictor

    t0 = time.time()
    val = RoutingData.load(run_dir / ROUTING_DATA_FILES["val"])
    splits = {"test": RoutingData.load(run_dir / ROUTING_DATA_FILES["test"])}
    model_dir = run_dir.parent.parent / "models" / run_dir.name
    predictor = Predictor.load(model_dir)
    for name, dev in load_devsets().items():
        splits[name] = routing_data(predictor, dev)
    kinds = np.asarray(val.kinds)
    print(
        f"validation {len(kinds)}: "
        + ", ".join(f"{k} {int((kinds == k).sum())}" for k in sorted(set(val.kinds or [])))
        + "; shapes "
        + ", ".join(f"{s} {int((val.inputs.shapes() == s).sum())}" for s in ("title", "industry", "duties"))
    )
    shipped = RoutingModel.load(model_dir)
    results: dict[str, Any] = {"run": str(run_dir), "validation_n": len(kinds)}
    results["shipped"] = judge("shipped routing.json", shipped_route(shipped), splits)
    for z in (0.0, 1.28):
        refit = fit_routing(val.per_level, val.correct, val.inputs, nearest=val.nearest, kinds=val.kinds, z=z)
        results[f"refit z={z}"] = judge(f"refit z={z}", shipped_route(refit), splits)
        variants: dict[str, dict[str, Any]] = {
            "per-shape logistic": {"columns": base_columns, "per_shape": True},
            "+ nearest": {"columns": with_nearest},
            "+ nearest, no match rule": {"columns": with_nearest, "match_rule": False},
            "+ nearest per-shape": {"columns": with_nearest, "per_shape": True},
        }
        for name, kwargs in variants.items():
            results[f"{name} z={z}"] = judge(
                f"{name} z={z}", logistic_route(val, shipped, z=z, **kwargs), splits
            )
    results["seconds"] = round(time.time() - t0)
    out = Path("bench/results") / f"routing_users-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
