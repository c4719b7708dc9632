"""Trainer commands: `isco train`, `isco evaluate`, `isco data info`, `isco models ...`, `isco db upgrade`.

Heavy imports (torch, transformers) happen inside the commands, so `isco --help` stays fast. Bad input ends
with a message naming the file, field and reason, and exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)
data_app = typer.Typer(help="Training data.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: list, show, promote, roll back.", no_args_is_help=True)
db_app = typer.Typer(help="The metadata database.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")

console = Console()
err = Console(stderr=True)

BAD_INPUT = 2


def _fail(message: str, code: int = BAD_INPUT) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def _input_errors() -> tuple[type[Exception], ...]:
    from services.trainer.config import ProfileError
    from services.trainer.evaluate import EvalDataError
    from services.trainer.records import DataError
    from shared.registry import RegistryError

    return DataError, EvalDataError, ProfileError, RegistryError


def _common_settings() -> Any:
    from shared.settings import CommonSettings

    settings = CommonSettings()
    settings.ensure_dirs()
    return settings


def _upgraded(settings: Any) -> Any:
    from shared.db.migrate import upgrade

    upgrade(settings.db_url)
    return settings


@app.command()
def train(
    profile: str = typer.Option(
        None, "--profile", "-p", help="quick | full | a profile YAML (default: full)"
    ),
    data: Path = typer.Option(
        None, "--data", help="coded CSV: job_title, duties_description, isco_code[, industry]"
    ),
    corrections: Path = typer.Option(
        None,
        "--corrections",
        help="CSV file or folder of corrections (corrected_isco_code); fine-tunes the best",
    ),
    base_model: str = typer.Option(
        None, "--base-model", help="HF id or directory; with --corrections a registered version to start from"
    ),
    no_corpus: bool = typer.Option(
        False, "--no-corpus", help="train on --data only, without the default corpus"
    ),
) -> None:
    """Train a model, evaluate it, register it and promote it if it beats the current best."""
    from services.trainer.config import ProfileError, TrainerSettings
    from services.trainer.pipeline import run_training
    from services.trainer.report import print_report

    for path, what in ((data, "--data"), (corrections, "--corrections")):
        if path is not None and not path.exists():
            raise _fail(f"{what}: {path} does not exist")
    overrides: dict[str, Any] = {}
    if profile:
        overrides["profile"] = profile
    if no_corpus:
        overrides["use_default_corpus"] = False
    try:
        settings = TrainerSettings(**overrides)
    except ProfileError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"profile [bold]{settings.profile}[/bold], data dir {settings.data_dir}, db {settings.db_url}"
    )
    try:
        result = run_training(
            settings, data_csv=data, corrections=corrections, base_model=base_model, reporter=console.print
        )
    except _input_errors() as exc:
        raise _fail(str(exc)) from None
    tables = {"test": result.metrics["test"], **result.metrics.get("devsets", {})}
    print_report(tables, title=f"{result.version} ({result.seconds / 60:.1f} min)")
    console.print(f"model directory: {result.model_dir}\nreports: {result.report_dir}")
    status = "[green]promoted to best[/green]" if result.promoted else "[yellow]not promoted[/yellow]"
    console.print(f"{result.version}: {status}: {result.promotion.reason}")


@app.command()
def evaluate(
    data: Path = typer.Option(
        ..., "--data", help="coded CSV (job_title, duties_description, isco_code[, accept])"
    ),
    model: str = typer.Option(None, "--model", help="version or model directory (default: the best model)"),
    output: Path = typer.Option(None, "--output", "-o", help="metrics JSON (default: next to the model)"),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="skip rows with bad codes instead of failing"
    ),
    plot: Path = typer.Option(
        None, "--plot", help="coverage-precision curve PNG (default: next to the metrics JSON)"
    ),
) -> None:
    """Evaluate a model on any coded CSV: a table (with coverage at 90/95/99% precision), the metrics as JSON,
    and the coverage-precision curve as a PNG."""
    from services.trainer.evaluate import evaluate_set, load_eval_csv, routed_confidence
    from services.trainer.metrics import unit_answers
    from services.trainer.report import plot_coverage_precision, print_report, write_report
    from shared.registry import model_dir_for

    settings = _upgraded(_common_settings())
    try:
        eval_set = load_eval_csv(data, skip_invalid=skip_invalid)
        model_dir = model_dir_for(settings, model)
    except _input_errors() as exc:
        raise _fail(str(exc)) from None
    if not len(eval_set):
        raise _fail(f"{data}: no usable rows")
    from shared.predictor import Predictor

    predictor = Predictor.load(model_dir, settings)
    metrics = evaluate_set(predictor, eval_set)
    metrics["model_version"] = predictor.version
    metrics["data"] = str(data.resolve())
    for line, reason in eval_set.skipped[:10]:
        err.print(f"[yellow]skipped[/yellow] {data}, line {line}: {reason}", highlight=False)
    output = output or settings.results_dir / "evaluations" / f"{predictor.version}__{data.stem}.json"
    write_report(metrics, output)
    print_report({eval_set.name: metrics}, title=f"{predictor.version} on {data.name}")
    console.print(f"metrics written to {output}")
    probs, nearest = predictor.scores(eval_set.texts())  # cached by the predictor: no second forward pass
    confidence, correct = unit_answers(probs, predictor.codes, eval_set.gold, eval_set.accept)
    curves = {"top-1 probability": {"confidence": confidence, "correct": correct}}
    routed = routed_confidence(
        predictor.routing, predictor.hierarchy, eval_set, probs, nearest, predictor.languages
    )
    if routed is not None:
        curves["router confidence"] = {"confidence": routed[0], "correct": correct}
    png = plot_coverage_precision(
        curves, plot or output.with_suffix(".png"), title=f"{predictor.version} on {data.name}"
    )
    console.print(f"coverage-precision curve: {png}" if png else "matplotlib not installed: no curve drawn")


@data_app.command("info")
def data_info(
    data: Path = typer.Option(None, "--data", help="also check a coded CSV (invalid rows, groups covered)"),
) -> None:
    """Counts of the default training corpus per source (and of a coded CSV, if given)."""
    from services.trainer.preprocess import repair_lines, validate
    from services.trainer.records import DataError, read_coded_csv
    from shared.corpus import SOURCES, build_default_corpus, corpus_counts
    from shared.taxonomy import get_taxonomy

    settings = _common_settings()
    records = build_default_corpus(settings)
    counts = corpus_counts(records)
    table = Table(title="Default training corpus (ESCO v1.2 (c) European Union, CC BY 4.0; ISCO-08 (c) ILO)")
    table.add_column("source")
    table.add_column("records", justify="right")
    table.add_column("unit groups", justify="right")
    for source in [*SOURCES, *(s for s in counts if s not in SOURCES)]:
        if source in counts:
            groups = len({r.isco_code for r in records if r.source == source})
            table.add_row(source, f"{counts[source]:,}", str(groups))
    total_groups = {r.isco_code for r in records}
    all_groups = get_taxonomy().unit_groups
    table.add_row("[bold]total[/bold]", f"{len(records):,}", f"{len(total_groups)} of {len(all_groups)}")
    console.print(table)
    missing = sorted(set(all_groups) - total_groups)
    if missing:
        console.print(
            f"unit groups without corpus records ({len(missing)}; still in every label map): "
            + ", ".join(missing)
        )
    if data is not None:
        repaired: list[dict[str, str]] = []
        try:
            valid, invalid = validate(read_coded_csv(data), repaired=repaired)
        except DataError as exc:
            raise _fail(str(exc)) from None
        console.print(
            f"{data}: {len(valid) + len(invalid):,} rows, {len(valid):,} valid, {len(invalid):,} invalid, "
            f"{len(repaired):,} codes repaired, {len({e.code for e in valid})} unit groups"
        )
        for row in invalid[:10]:
            console.print(f"  {row.origin}: {row.reason}", highlight=False)
        for line in repair_lines(repaired):
            console.print(line, highlight=False)


def _versions_table(rows: list[Any]) -> Table:
    table = Table(title="Model versions (newest first)")
    table.add_column("version", no_wrap=True)
    for column in ("status", "best", "test accuracy", "dev sets (accuracy)", "parent", "created"):
        table.add_column(column)
    for mv in rows:
        devsets = (mv.metrics or {}).get("devsets", {})
        dev = ", ".join(f"{name}: {m.get('accuracy', 0):.3f}" for name, m in devsets.items())
        table.add_row(
            mv.version,
            mv.status,
            "*" if mv.is_best else "",
            "-" if mv.eval_score is None else f"{mv.eval_score:.4f}",
            dev or "-",
            mv.parent_version or "-",
            mv.created_at.strftime("%Y-%m-%d %H:%M") if mv.created_at else "-",
        )
    return table


@models_app.command("list")
def models_list(limit: int = typer.Option(50, help="show at most this many versions")) -> None:
    """Registered model versions, newest first; * marks the best."""
    from shared import registry
    from shared.db.session import session_scope

    settings = _upgraded(_common_settings())
    with session_scope(settings.db_url) as session:
        rows = registry.list_versions(session, limit)
        if not rows:
            console.print("no model versions yet: run `isco train`")
            return
        console.print(_versions_table(rows))


@models_app.command("show")
def models_show(version: str = typer.Argument(None, help="version (default: the best model)")) -> None:
    """Everything recorded about one version (JSON)."""
    from shared import registry
    from shared.db.session import session_scope

    settings = _upgraded(_common_settings())
    with session_scope(settings.db_url) as session:
        mv = registry.get_version(session, version) if version else registry.best_model(session)
        if mv is None:
            raise _fail(f"no model version {version!r}" if version else "no best model yet")
        console.print_json(json.dumps(registry.describe(mv), default=str))


@models_app.command("promote")
def models_promote(
    version: str = typer.Argument(..., help="version to make the best model"),
    force: bool = typer.Option(False, "--force", help="promote even if it does not beat the current best"),
) -> None:
    """Promote a version if it beats the current best on the same evaluation data (or with --force)."""
    from shared import registry
    from shared.db.session import session_scope

    settings = _upgraded(_common_settings())
    try:
        with session_scope(settings.db_url) as session:
            decision = registry.promote(session, version, force=force)
    except registry.RegistryError as exc:
        raise _fail(str(exc)) from None
    if not decision.promote:
        raise _fail(f"{version} not promoted: {decision.reason}", code=1)
    console.print(f"[green]{version} is now the best model[/green]: {decision.reason}")


@models_app.command("rollback")
def models_rollback(
    to: str = typer.Option(None, "--to", help="version to restore (default: the previously promoted one)"),
) -> None:
    """Make the previously promoted model (or --to VERSION) the best again."""
    from shared import registry
    from shared.db.session import session_scope

    settings = _upgraded(_common_settings())
    try:
        with session_scope(settings.db_url) as session:
            mv = registry.rollback(session, to)
            version = mv.version
    except registry.RegistryError as exc:
        raise _fail(str(exc)) from None
    console.print(f"[green]{version} is the best model again[/green]")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations to the configured database (ISCO_DATABASE_URL, default SQLite)."""
    settings = _upgraded(_common_settings())
    console.print(f"database at head: {settings.db_url}")
