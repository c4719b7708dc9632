"""Training pipeline: coded records -> preprocess -> fine-tune -> evaluate -> register -> promote if better.

    result = run_training(TrainerSettings(profile="quick"), data_csv=None)   # isco train
    result = run_training(settings, corrections=Path("corrections/"))        # isco train --corrections

Order of effects (MLflow-like): a `pending` registry row first, then the model directory, then the
evaluation files inside it, then the row is marked `ready`, and only then is promotion considered. A failure
at any point marks the row `failed` with the error. Reports of every run (invalid rows, conflicts, outliers,
metrics) are kept under `settings.runs_dir/<version>/`, also for failed runs.

Evaluation: the test split decides promotion (the registry compares models only on the same evaluation data:
when the current best was evaluated on other data, both are scored on the candidate's test records whose
titles the best never saw, so a split or corpus change cannot favour the old model). Then, with `index_test`,
the test records join the model's kNN and lexical indexes, and the head is refitted a few epochs on every
indexed record (a production model should know every labelled title; its test figures were taken before).
The development sets in `settings.devsets_dir` are scored last, as extra metrics, and are never read for
training.

Corrections: the current best (or `--base-model VERSION`) is fine-tuned on the corrected records, repeated
`correction_repeats` times, mixed with a replay sample of the original training split. Corrections only ever
go to the training split; the original validation and test splits stay as they were (minus records whose
text a correction re-codes), so the candidate is compared with its parent on the same records.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.trainer.config import TrainerSettings
from services.trainer.evaluate import EvalSet, evaluate_set, load_eval_csv, routing_data
from services.trainer.preprocess import PreparedData, prepare
from services.trainer.records import (
    CORRECTION_SOURCE,
    DataError,
    Example,
    RawRow,
    read_coded_csv,
    read_corrections,
    rows_from_corpus,
)
from services.trainer.routing_data import ROUTING_DATA_FILES
from shared import registry
from shared.db.session import session_scope
from shared.language import LANGUAGES
from shared.model.onnx_export import export_onnx_graphs
from shared.registry import PromotionDecision
from shared.text import TITLE_SEPARATOR

log = logging.getLogger(__name__)

Reporter = Callable[[str], None]


@dataclass
class TrainingResult:
    """What a training run produced."""

    version: str
    model_dir: Path
    report_dir: Path
    metrics: dict[str, Any]
    promotion: PromotionDecision
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.promotion.promote


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _refuse_devsets(settings: TrainerSettings, *paths: Path | None) -> None:
    # The dev sets measure generalisation; training on them would make every dev-set number meaningless.
    for path in paths:
        if path is not None and settings.devsets_dir.exists() and _within(Path(path), settings.devsets_dir):
            raise DataError(f"{path}: refusing to train on a development set ({settings.devsets_dir})")


def eval_set_from_examples(name: str, examples: Sequence[Example]) -> EvalSet:
    """An EvalSet over preprocessed examples (the test split)."""
    return EvalSet(
        name=name,
        job_titles=[e.job_title for e in examples],
        duties=[e.duties_description for e in examples],
        gold=[e.code for e in examples],
        accept=[set() for _ in examples],
        skipped=[],
        industries=[e.industry for e in examples],
        sources=[e.source for e in examples],
        languages=[e.language for e in examples],
        groups=[e.group for e in examples],
    )


# A language is one the model was trained on from this many training examples: identification reads about one
# English title in a hundred as another language (shared/language.py), so a user's English CSV would otherwise
# make the model claim languages it cannot code (serving codes a model's languages, sends others to a coder).
MIN_LANGUAGE_EXAMPLES = 50


def trained_languages(examples: Sequence[Example]) -> list[str] | None:
    """The service languages with at least MIN_LANGUAGE_EXAMPLES of the examples (in shared.language's order,
    English first); None when there is none."""
    counts = Counter(e.language for e in examples)
    return [code for code in LANGUAGES if counts[code] >= MIN_LANGUAGE_EXAMPLES] or None


def cap_examples(examples: Sequence[Example], cap: int | None, seed: int) -> list[Example]:
    """A stratified sample of at most about `cap` examples that keeps at least one example per unit group."""
    if cap is None or len(examples) <= cap:
        return list(examples)
    rng = random.Random(seed)
    by_code: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by_code[e.code].append(e)
    ratio = cap / len(examples)
    out: list[Example] = []
    for code in sorted(by_code):
        group = by_code[code]
        k = max(1, round(len(group) * ratio))
        out.extend(rng.sample(group, min(k, len(group))))
    rng.shuffle(out)
    return out


def _training_set(
    settings: TrainerSettings, prepared: PreparedData, corrections: bool
) -> tuple[list[Example], dict[str, int]]:
    """The examples fine-tuning sees, and how they were composed."""
    seed = settings.preprocess.seed
    if not corrections:
        train = cap_examples(prepared.train, settings.max_train_examples, seed)
        return train, {"train_examples": len(train)}
    fixes = [e for e in prepared.train if e.source == CORRECTION_SOURCE]
    original = [e for e in prepared.train if e.source != CORRECTION_SOURCE]
    if not fixes:
        raise DataError("no usable corrections (see invalid_rows.csv in the run's report directory)")
    replay = random.Random(seed).sample(original, min(settings.replay_size, len(original)))
    train = fixes * settings.correction_repeats + replay
    random.Random(seed + 1).shuffle(train)
    return train, {
        "train_examples": len(train),
        "corrections": len(fixes),
        "replay": len(replay),
        "correction_repeats": settings.correction_repeats,
    }


def _load_rows(
    settings: TrainerSettings,
    data_csv: Path | None,
    corrections: Path | None,
    parent_training: dict[str, Any] | None,
    say: Reporter,
) -> tuple[list[RawRow], dict[str, Any]]:
    rows: list[RawRow] = []
    sources: dict[str, Any] = {}
    use_corpus = settings.use_default_corpus
    languages, max_labels = settings.corpus_languages, settings.multilingual_max_labels
    if parent_training is not None and corrections is not None:
        # Replay the parent's own data: its corpus setting (languages too) and user CSV, unless given now.
        use_corpus = bool(parent_training.get("use_default_corpus", use_corpus))
        parent_sources = parent_training.get("sources") or {}
        languages = parent_sources.get("corpus_languages", languages)
        max_labels = parent_sources.get("multilingual_max_labels", max_labels)
        if data_csv is None and parent_training.get("data_csv"):
            candidate = Path(parent_training["data_csv"])
            if candidate.is_file():
                data_csv = candidate
            else:
                say(f"[yellow]the parent's training CSV {candidate} is gone; replaying without it[/yellow]")
    if use_corpus:
        from shared.corpus import build_default_corpus, corpus_languages

        started = time.monotonic()
        corpus = build_default_corpus(
            settings, sources=settings.corpus_sources, languages=languages, multilingual_max_labels=max_labels
        )
        rows += rows_from_corpus(corpus)
        sources["default_corpus"] = len(corpus)
        sources["corpus_languages"] = corpus_languages(corpus)
        sources["multilingual_max_labels"] = max_labels
        say(f"default corpus: {len(corpus):,} records ({time.monotonic() - started:.0f}s)")
    if data_csv is not None:
        user_rows = read_coded_csv(Path(data_csv))
        rows += user_rows
        sources["data_csv"] = str(Path(data_csv).resolve())
        say(f"{data_csv}: {len(user_rows):,} rows")
    if corrections is not None:
        fix_rows = read_corrections(Path(corrections))
        rows += fix_rows
        sources["corrections"] = str(Path(corrections).resolve())
        say(f"{corrections}: {len(fix_rows):,} corrections")
    if not rows:
        raise DataError("nothing to train on: give --data CSV or enable the default corpus")
    return rows, sources


def _evaluate_model(
    model_dir: Path,
    settings: TrainerSettings,
    test: Sequence[Example],
    best: tuple[str, Path] | None,
    train_texts: set[str],
    say: Reporter,
    report_dir: Path,
    corrections: EvalSet | None = None,
) -> tuple[dict[str, Any], registry.Rescore | None]:
    """Test split, the re-scoring of the current `best` (version, directory; given when it was evaluated on
    other data), indexing of the test records and the head refit (not in a corrections run: the refit would
    dilute the corrections), dev sets and (for a corrections run) how well the corrections were learnt. The
    test split as routing reads it is kept in `report_dir` (`RoutingData`)."""
    from services.trainer.head import refit_head
    from services.trainer.signals_fit import index_records
    from shared.predictor import Predictor

    predictor = Predictor.load(model_dir)
    started = time.monotonic()
    test_set = eval_set_from_examples("test", test)
    metrics: dict[str, Any] = {"test": evaluate_set(predictor, test_set), "devsets": {}}
    if test and predictor.routing is not None:
        routing_data(predictor, test_set).save(report_dir / ROUTING_DATA_FILES["test"])
    with_industry = [e for e in test if e.industry]
    if with_industry:
        # the same test records read without their industry: what the industry adds, measured on one model
        without = eval_set_from_examples("test", [replace(e, industry="") for e in with_industry])
        blind = evaluate_set(predictor, without)
        metrics["test_industry_ignored"] = {
            "n": blind["n"],
            "accuracy": blind["accuracy"],
            "top3": blind["top3"],
        }
    if corrections is not None:
        fit = evaluate_set(predictor, corrections)
        metrics["corrections_fit"] = {"n": fit["n"], "accuracy": fit["accuracy"]}
    rescore = _rescore_best(best, predictor, test, say) if best is not None else None
    if settings.index_test:
        added = metrics["test_records_indexed"] = index_records(model_dir, test)
        say(f"{added:,} test records added to the kNN and lexical indexes (after scoring the test split)")
    refit = settings.refit_head_epochs > 0 and corrections is None
    if refit:
        metrics["head_refit"] = refit_head(
            model_dir, settings.refit_head_epochs, settings.refit_head_lr, settings.preprocess.seed
        )
        say(f"head refitted on {metrics['head_refit']['records']:,} indexed records")
    if settings.index_test or refit:
        predictor = Predictor.load(model_dir)
    for path in sorted(settings.devsets_dir.glob("*.csv")) if settings.devsets_dir.is_dir() else []:
        dev = load_eval_csv(path, skip_invalid=True)
        dev_metrics = evaluate_set(predictor, dev)
        # Not a leak (dev sets are never read for training) but worth knowing: texts the model has seen.
        dev_metrics["texts_also_in_training"] = sum(1 for t in dev.texts() if t in train_texts)
        metrics["devsets"][dev.name] = dev_metrics
    say(f"evaluated in {time.monotonic() - started:.0f}s")
    return metrics, rescore


def unseen_records(examples: Sequence[Example], seen_texts: Sequence[str]) -> list[Example]:
    """The examples whose title a model never saw, alone or with duties (`seen_texts`: its kNN texts, model
    inputs "title : duties"). A model that indexed an occupation's titles knows that occupation, even where
    another corpus words the duties differently: the text alone would let it be re-scored on what it knows."""
    seen_titles = {text.split(TITLE_SEPARATOR, 1)[0] for text in seen_texts}
    return [e for e in examples if e.text.split(TITLE_SEPARATOR, 1)[0] not in seen_titles]


def _rescore_best(
    best: tuple[str, Path], candidate: Any, test: Sequence[Example], say: Reporter
) -> registry.Rescore | None:
    """Candidate and current best scored on the candidate's test records whose titles the best never saw (its
    kNN index holds every record it trained on or indexed); None when the best cannot be loaded."""
    from shared.predictor import Predictor

    version, best_dir = best
    try:
        best_predictor = Predictor.load(best_dir)
    except Exception as exc:  # a missing or broken directory must not fail the new model's run
        say(f"[yellow]could not load the current best {version} to re-score it: {exc}[/yellow]")
        return None
    # the kNN texts the loaded model already holds (models written before knn_texts.json have none)
    signals = getattr(best_predictor.scorer, "signals", None)
    knn = signals.knn if signals is not None else None
    seen = (knn.texts or []) if knn is not None else []
    unseen = eval_set_from_examples("test", unseen_records(test, seen))
    if not len(unseen):
        say(f"[yellow]the current best {version} has seen every test record: it cannot be re-scored[/yellow]")
        return None
    rescore = registry.Rescore(
        best_version=version,
        candidate_score=float(evaluate_set(candidate, unseen)["accuracy"]),
        best_score=float(evaluate_set(best_predictor, unseen)["accuracy"]),
        records=len(unseen),
    )
    say(
        f"on the {rescore.records:,} test records {version} never saw: "
        f"candidate {rescore.candidate_score:.4f}, {version} {rescore.best_score:.4f}"
    )
    return rescore


def run_training(
    settings: TrainerSettings,
    *,
    data_csv: Path | None = None,
    corrections: Path | None = None,
    base_model: str | None = None,
    reporter: Reporter | None = None,
) -> TrainingResult:
    """Train, evaluate, register and (if better) promote one model; see the module docstring.

    `base_model`: a Hugging Face id or directory for a normal run; with `corrections`, a registered version to
    start from instead of the current best.
    """
    from services.trainer.finetune import finetune
    from shared.db.migrate import upgrade
    from shared.taxonomy import get_taxonomy

    say: Reporter = reporter or (lambda message: log.info("%s", message))
    started = time.monotonic()
    _refuse_devsets(settings, data_csv, corrections)
    settings.ensure_dirs()
    upgrade(settings.db_url)

    parent_version: str | None = None
    parent_dir: Path | None = None
    parent_training: dict[str, Any] | None = None
    if corrections is not None:
        with session_scope(settings.db_url) as session:
            parent = (
                registry.require_version(session, base_model) if base_model else registry.best_model(session)
            )
            if parent is None:
                raise registry.RegistryError(
                    "corrections fine-tune the best model, but there is none: run "
                    "`isco train` first or name one with --base-model VERSION"
                )
            if parent.status != "ready":
                raise registry.RegistryError(f"model version {parent.version} is {parent.status}, not ready")
            parent_version = parent.version
            parent_dir = registry.resolve_model_dir(settings, parent)
            parent_training = dict((parent.metrics or {}).get("training", {}))
        say(f"fine-tuning corrections into {parent_version} ({parent_dir})")

    rows, sources = _load_rows(settings, data_csv, corrections, parent_training, say)
    version = registry.new_version_name()
    report_dir = settings.runs_dir / version
    model_dir = settings.model_store / version

    timings: dict[str, float] = {"load_s": round(time.monotonic() - started, 1)}
    t0 = time.monotonic()
    prepared = prepare(rows, settings.preprocess)
    prepared.write_reports(report_dir)
    stats = dict(prepared.stats)
    timings["preprocess_s"] = round(time.monotonic() - t0, 1)
    first, *repairs = prepared.summary(report_dir)
    say(f"preprocessed in {time.monotonic() - t0:.0f}s: {first}")
    for line in repairs:
        say(line)
    train, composition = _training_set(settings, prepared, corrections is not None)
    if not train:
        raise DataError(f"no usable training examples (see {report_dir / 'invalid_rows.csv'})")
    if not prepared.test:
        raise DataError("the test split is empty: too little data per unit group to evaluate a model")

    # model.json "languages" (what serving codes rather than sends to a coder): the languages the training
    # split holds, the corpus's and the users' rows' (given or identified, preprocess.validate), unless the
    # profile names them
    languages = None if "languages" in settings.finetune else trained_languages(prepared.train)
    config = settings.finetune_config(
        base_model=None if corrections is not None else base_model, languages=languages
    )
    base_name = str(parent_dir) if parent_dir is not None else str(config.base_model)
    training_info: dict[str, Any] = {
        "profile": settings.profile,
        "use_default_corpus": "default_corpus" in sources,
        "data_csv": sources.get("data_csv"),
        "corrections": sources.get("corrections"),
        "parent_version": parent_version,
        "sources": sources,
        "composition": composition,
        "preprocess": stats,
        "data_hash": prepared.data_hash,
        "eval_data_hash": prepared.eval_data_hash,
        "finetune_config": config.model_dump(mode="json"),
        "timings": timings,
    }
    with session_scope(settings.db_url) as session:
        registry.create_pending(
            session,
            version=version,
            path=model_dir,
            base_model=base_name,
            data_hash=prepared.data_hash,
            parent_version=parent_version,
            metrics={"training": training_info},
        )
    say(f"registered {version} (pending); training on {len(train):,} examples, base {base_name}")

    try:
        t0 = time.monotonic()
        codes = list(get_taxonomy().unit_groups)
        finetune_result = finetune(
            [e.text for e in train],
            [e.code for e in train],
            [e.text for e in prepared.val],
            [e.code for e in prepared.val],
            codes=codes,
            config=config,
            val_kinds=[e.source for e in prepared.val],
            val_groups=[e.group for e in prepared.val],
            output_dir=model_dir,
            report_dir=report_dir,
            version=version,
            init_model_dir=parent_dir,
        )
        training_info["finetune"] = finetune_result.model_dump(mode="json")
        timings["finetune_s"] = round(time.monotonic() - t0, 1)
        export_onnx_graphs(model_dir)  # the serving encoder graphs: written by training, never by serving
        t0 = time.monotonic()
        with session_scope(settings.db_url) as session:
            best = registry.best_model(session)
            rescore_best = (
                (best.version, registry.resolve_model_dir(settings, best))
                if best is not None and best.eval_data_hash != prepared.eval_data_hash
                else None
            )
        fixes = [e for e in prepared.train if e.source == CORRECTION_SOURCE]
        metrics, rescore = _evaluate_model(
            model_dir,
            settings,
            prepared.test,
            rescore_best,
            {e.text for e in train},
            say,
            report_dir,
            corrections=eval_set_from_examples("corrections", fixes) if corrections is not None else None,
        )
        timings["evaluate_s"] = round(time.monotonic() - t0, 1)
        timings["total_s"] = round(time.monotonic() - started, 1)
        metrics["training"] = training_info
        # Artifacts first: the evaluation and the run's record go into the model directory ...
        (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=str))
        (model_dir / "training.json").write_text(
            json.dumps(training_info, indent=1, sort_keys=True, default=str)
        )
        shutil.copy(report_dir / "preprocess.json", model_dir / "preprocess.json")
        (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=str))
        eval_score = float(metrics["test"]["accuracy"])
        # ... then the row becomes ready.
        with session_scope(settings.db_url) as session:
            registry.mark_ready(
                session,
                version,
                metrics=metrics,
                eval_score=eval_score,
                eval_data_hash=prepared.eval_data_hash,
            )
    except BaseException as exc:
        with session_scope(settings.db_url) as session:
            registry.mark_failed(session, version, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        raise

    with session_scope(settings.db_url) as session:
        decision = registry.promote(session, version, rescore=rescore, min_delta=settings.promotion_min_delta)
        mv = registry.require_version(session, version)
        mv.metrics = {**metrics, "promotion": decision.as_dict()}
    metrics["promotion"] = decision.as_dict()
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=str))
    say(("[green]promoted[/green] " if decision.promote else "not promoted: ") + decision.reason)
    return TrainingResult(
        version, model_dir, report_dir, metrics, decision, time.monotonic() - started, stats
    )
