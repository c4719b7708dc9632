"""Evaluation reports: the metrics table printed by `isco train` and `isco evaluate`, the metrics JSON and the
coverage-precision curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.trainer.metrics import PRECISION_TARGETS, coverage_precision_curve


def plot_coverage_precision(curves: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Draw coverage (share auto-coded) against precision for each evaluated set into a PNG.

    `curves`: name -> {"confidence": [...], "correct": [...]} (`unit_answers`, or the router's confidence).
    Returns None when matplotlib is not installed (the metrics still say coverage at 90/95/99%).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for name, curve in curves.items():
        coverage, precision = coverage_precision_curve(curve["confidence"], curve["correct"])
        ax.plot(coverage, precision, label=name)
    for target in PRECISION_TARGETS:
        ax.axhline(target, color="grey", lw=0.6, ls=":")
        ax.text(1.0, target, f" {target:.0%}", va="center", fontsize=7, color="grey")
    ax.set_xlabel("coverage (share auto-coded, most confident first)")
    ax.set_ylabel("precision of the auto-coded (4 digits)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0.4, 1.005)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "Coverage-precision", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_table(results: dict[str, dict[str, Any]], title: str = "Evaluation") -> Any:
    """A rich Table with one column per evaluated set."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    names = list(results)
    for name in names:
        table.add_column(name, justify="right")

    def cell(m: dict[str, Any], key: str) -> str:
        value = m.get(key)
        return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

    rows = [
        ("records", "n"),
        ("accuracy (4-digit)", "accuracy"),
        ("accuracy 3-digit", "accuracy_3digit"),
        ("accuracy 2-digit", "accuracy_2digit"),
        ("accuracy 1-digit", "accuracy_1digit"),
        ("top-3", "top3"),
        ("top-5", "top5"),
        ("macro-F1", "macro_f1"),
        ("mean confidence", "mean_confidence"),
        ("ECE", "ece"),
    ]
    for label, key in rows:
        table.add_row(label, *(cell(results[n], key) for n in names))
    for p in PRECISION_TARGETS:
        key = f"{p:.2f}"
        table.add_row(
            f"coverage @{p:.0%} precision, 4-digit", *(_fmt_cov(results[n], key, "unit_only") for n in names)
        )
        table.add_row(
            f"coverage @{p:.0%} precision, +3-digit fallback",
            *(_fmt_cov(results[n], key, "with_fallback") for n in names),
        )
    if any("routing" in results[n] for n in names):
        table.add_row("routed: ECE", *(cell(results[n].get("routing", {}), "ece") for n in names))
        for p in PRECISION_TARGETS:
            key = f"{p:.2f}"
            table.add_row(
                f"routed: coverage @{p:.0%} precision",
                *(
                    f"{results[n]['routing']['coverage'][key]['coverage']:.3f}"
                    if "routing" in results[n]
                    else "-"
                    for n in names
                ),
            )
        table.add_row(
            "routed: auto-coded share", *(cell(results[n].get("routing", {}), "auto_coded") for n in names)
        )
        table.add_row(
            "routed: auto-coded precision",
            *(cell(results[n].get("routing", {}), "auto_coded_precision") for n in names),
        )
    majors = sorted({m for n in names for m in results[n].get("error_rate_per_major", {})})
    for major in majors:
        table.add_row(
            f"error rate, major group {major}",
            *(
                f"{results[n]['error_rate_per_major'][major]['error_rate']:.3f} "
                f"(n={results[n]['error_rate_per_major'][major]['n']})"
                if major in results[n].get("error_rate_per_major", {})
                else "-"
                for n in names
            ),
        )
    return table


def _fmt_cov(m: dict[str, Any], key: str, kind: str) -> str:
    entry = m.get("coverage", {}).get(key, {}).get(kind)
    if not entry:
        return "-"
    if kind == "with_fallback" and entry.get("coverage"):
        return f"{entry['coverage']:.3f} ({entry['coverage_unit']:.3f} at 4 digits)"
    return f"{entry['coverage']:.3f}"


def print_report(results: dict[str, dict[str, Any]], title: str = "Evaluation") -> None:
    """Print the metrics table for one or more evaluated sets."""
    from rich.console import Console

    Console().print(format_table(results, title))


def write_report(results: dict[str, Any], path: Path) -> Path:
    """Write metrics as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True))
    return path
