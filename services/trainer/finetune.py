"""The training recipe: fine-tune the mean-pooled cosine classifier, stage by stage, into a model directory.

Recipe (why: docs/architecture.md, "The model"): the encoder keeps the mean pooling it was pre-trained with;
the cosine head starts from class prototypes or from training on frozen embeddings (head.py), so
step 0 is already a working classifier; the Hugging Face `Trainer` then fine-tunes encoder and head, the head
faster (services/trainer/hf_loop.py); a temperature fitted on validation makes confidences calibrated
(calibrate.py). After training, an index of training-text embeddings is stored with the model (kNN signal) and
the blend weights are chosen on the validation split (signals_fit.py), then the duties view's weight
(duties_view.py) and the router (routing_fit.py); `shared.model.scorer.UnitScorer` combines them for every
consumer.

Stages (`STAGES`, plain functions over one `TrainState`, services/trainer/state.py):
init -> head -> trainer -> calibrate -> signals -> rerank -> duties_view -> routing ->
index_validation -> save.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import set_seed

from services.trainer.calibrate import calibrate_stage
from services.trainer.config import FinetuneConfig
from services.trainer.duties_view import duties_view_stage
from services.trainer.head import head_stage, prototypes
from services.trainer.hf_loop import trainer_stage
from services.trainer.routing_data import ROUTING_DATA_FILES
from services.trainer.routing_fit import routing_stage, routing_summary
from services.trainer.signals_fit import index_validation_stage, rerank_stage, signals_stage
from services.trainer.state import FinetuneResult, Stage, TrainState
from shared.model.classifier import IscoClassifier, load_classifier, load_encoder, save_model_dir
from shared.model.directory import DUTIES_VIEW, ModelDir
from shared.model.resources import cpu_share

log = logging.getLogger(__name__)


def choose_device(requested: str = "auto") -> str:
    """cuda, then mps, then cpu (unless a device is requested)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def init_stage(state: TrainState) -> None:
    """The classifier to train: the base encoder with a fresh head, or a parent model directory (corrections)
    whose head rows are kept for the codes it knows."""
    config, codes = state.config, state.codes
    if state.init_model_dir is None:
        state.base_model = config.base_model
        encoder, tokenizer = load_encoder(config.base_model)
        state.model, state.tokenizer = IscoClassifier(encoder, len(codes), scale=config.scale), tokenizer
        return
    parent = ModelDir.read(state.init_model_dir)
    parent_model, tokenizer = load_classifier(parent)
    label_of = {c: i for i, c in enumerate(codes)}
    state.parent_signals = parent.signals()
    state.parent_duties_weight = parent.duties_weight
    state.parent_label_map = np.array([label_of.get(c, -1) for c in parent.codes], dtype=np.int64)
    state.base_model = str(state.init_model_dir)
    model = IscoClassifier(parent_model.encoder, len(codes), scale=float(parent_model.scale.detach()))
    parent_pos = {c: i for i, c in enumerate(parent.codes)}
    protos = None
    if any(c not in parent_pos for c in codes):
        protos = prototypes(
            model, tokenizer, state.train_texts, state.train_labels, codes, config, state.device
        )
    with torch.no_grad():
        for i, c in enumerate(codes):
            model.head[i] = parent_model.head[parent_pos[c]] if c in parent_pos else protos[i]  # type: ignore[index]
    state.model, state.tokenizer = model, tokenizer


def save_stage(state: TrainState) -> None:
    """Write the model directory (layout: shared.model.directory)."""
    model, tokenizer = state.require_model()
    meta = {
        "version": state.version,
        "base_model": state.base_model,
        "max_length": state.config.max_length,
        "scale": float(model.scale.detach()),
        "config": state.config.model_dump(),
        "knn": state.knn_config.model_dump() if state.knn_config is not None else None,
        "lexical": state.lexical_config.model_dump() if state.lexical_config is not None else None,
        "duties_view": {"weight": state.duties_weight, "view": DUTIES_VIEW},
        "languages": list(state.config.languages),  # serving codes these; others go to a coder
    }
    save_model_dir(
        model,
        tokenizer,
        state.codes,
        state.output_dir,
        meta=meta,
        temperature=state.temperature,
        knn_index=state.knn_index,
        lexical_index=state.lexical_index,
    )
    if state.reranker is not None:
        state.reranker.save(state.output_dir)
    if state.routing is not None:
        state.routing.save(state.output_dir)


# ----------------------------------------------------------------------------------------------------
# Stages: plain functions over one typed state, run in order by `finetune`. To add a stage (e.g. encoder
# pre-training before "head"), write `def my_stage(state: TrainState)` and insert ("my_stage", my_stage)
# into a copy of STAGES passed as `finetune(..., stages=...)`.
# ----------------------------------------------------------------------------------------------------


STAGES: tuple[tuple[str, Stage], ...] = (
    ("init", init_stage),
    ("head", head_stage),
    ("trainer", trainer_stage),
    ("calibrate", calibrate_stage),
    ("signals", signals_stage),
    ("rerank", rerank_stage),
    ("duties_view", duties_view_stage),
    ("routing", routing_stage),
    ("index_validation", index_validation_stage),
    ("save", save_stage),
)


def finetune(
    train_texts: list[str],
    train_codes: list[str],
    val_texts: list[str],
    val_codes: list[str],
    *,
    codes: list[str],
    config: FinetuneConfig,
    output_dir: Path,
    version: str,
    init_model_dir: Path | None = None,
    stages: Sequence[tuple[str, Stage]] = STAGES,
    val_kinds: Sequence[str] | None = None,
    report_dir: Path | None = None,
    val_groups: Sequence[str] | None = None,
) -> FinetuneResult:
    """Fine-tune, calibrate and write the model directory `output_dir` by running `stages` in order.

    `codes` is the label order (all 436 unit groups for default models). `init_model_dir` starts from an
    existing model directory (corrections fine-tuning) instead of the base model. `val_kinds` (each
    validation record's source): routing reports the threshold each kind would need (`fit_routing`).
    `val_groups` (each validation record's occupation): routing's precision bounds count occupations.
    `report_dir`: where the run keeps what routing was fitted on (`RoutingData`).
    """
    set_seed(config.seed)
    device = choose_device(config.device)
    if device == "cpu":
        torch.set_num_threads(cpu_share())
    label_of = {c: i for i, c in enumerate(codes)}
    unknown = sorted({c for c in [*train_codes, *val_codes] if c not in label_of})
    if unknown:
        raise ValueError(f"codes outside the label map: {unknown[:10]}")
    val_order = sorted(range(len(val_texts)), key=lambda i: len(val_texts[i]))
    state = TrainState(
        config=config,
        codes=list(codes),
        train_texts=list(train_texts),
        train_labels=[label_of[c] for c in train_codes],
        val_texts=[val_texts[i] for i in val_order],
        val_labels=np.asarray([label_of[val_codes[i]] for i in val_order], dtype=np.int64),
        val_kinds=[val_kinds[i] for i in val_order] if val_kinds is not None else None,
        val_groups=[val_groups[i] for i in val_order] if val_groups is not None else None,
        output_dir=Path(output_dir),
        version=version,
        device=device,
        init_model_dir=Path(init_model_dir) if init_model_dir is not None else None,
    )
    for name, stage in stages:
        t0 = time.monotonic()
        stage(state)
        state.stage_seconds[name] = round(time.monotonic() - t0, 1)
        state.stages_run.append(name)
        log.info("finetune stage %s: %.1fs", name, state.stage_seconds[name])
    if report_dir is not None and state.routing_data is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        state.routing_data.save(report_dir / ROUTING_DATA_FILES["val"])
    model, _ = state.require_model()
    result = FinetuneResult(
        epochs=state.epochs,
        val_accuracy=state.val_accuracy,
        val_accuracy_combined=(
            state.val_accuracy_combined if state.val_accuracy_combined is not None else state.val_accuracy
        ),
        temperature=state.temperature,
        knn=state.knn_config.model_dump() if state.knn_config is not None else None,
        lexical=state.lexical_config.model_dump() if state.lexical_config is not None else None,
        seconds=round(time.monotonic() - state.started, 1),
        train_seconds=round(state.train_seconds, 1),
        stopped_by_budget=state.stopped_by_budget,
        train_size=len(train_texts),
        val_size=len(val_texts),
        batch_size=state.batch_size,
        gradient_accumulation=state.gradient_accumulation,
        stages=state.stages_run,
        stage_seconds=state.stage_seconds,
        rerank=state.reranker.model_dump() if state.reranker is not None else None,
        duties_view=state.duties_view,
        routing=routing_summary(state.routing) if state.routing is not None else None,
        device=device,
        mixed_precision=state.mixed_precision,
        architecture=str(model.encoder.config.model_type),
    )
    log.info("finetune done: %s", result.model_dump(exclude={"epochs"}))
    return result
