"""The fine-tuning run's shared state: inputs, the model being trained and what each stage produced.

Stages (services/trainer/finetune.py `STAGES`) are plain functions over one `TrainState`; `FinetuneResult` is
what a run reports (stored with the model version's training metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase

from services.trainer.config import FinetuneConfig
from shared.model.classifier import IscoClassifier
from shared.model.knn import KnnConfig, KnnIndex
from shared.model.lexical import LexicalConfig, LexicalIndex
from shared.model.rerank import Reranker
from shared.model.signals import Signals
from shared.routing import RoutingModel

if TYPE_CHECKING:
    from services.trainer.routing_data import RoutingData


@dataclass
class TrainState:
    """Everything the stages share: inputs, the model being trained and what each stage produced."""

    config: FinetuneConfig
    codes: list[str]
    train_texts: list[str]
    train_labels: list[int]
    val_texts: list[str]  # sorted by length (padding, and evaluation time, stay small)
    val_labels: np.ndarray
    output_dir: Path
    version: str
    device: str
    init_model_dir: Path | None = None
    started: float = field(default_factory=time.monotonic)
    # init
    model: IscoClassifier | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    base_model: str = ""
    parent_signals: Signals | None = None
    parent_label_map: np.ndarray | None = None  # parent label id -> new label id (-1: dropped)
    parent_duties_weight: float = 0.0
    # head
    train_embeddings: np.ndarray | None = None  # of the encoder before the trainer stage
    # trainer
    trainer_ran: bool = False
    epochs: list[dict[str, float]] = field(default_factory=list)
    stopped_by_budget: bool = False
    batch_size: int = 0
    gradient_accumulation: int = 0
    mixed_precision: str = "no"
    train_seconds: float = 0.0
    # calibrate
    val_embeddings: np.ndarray | None = None
    val_duties_embeddings: np.ndarray | None = None  # the duties view, from the same pass (zero: none)
    val_logits: np.ndarray | None = None
    temperature: float = 1.0
    val_accuracy: float = float("nan")
    # signals
    knn_index: KnnIndex | None = None
    knn_config: KnnConfig | None = None
    lexical_index: LexicalIndex | None = None
    lexical_config: LexicalConfig | None = None
    val_accuracy_combined: float | None = None
    reranker: Reranker | None = None
    # duties_view
    duties_weight: float = 0.0
    duties_view: dict[str, Any] | None = None
    val_duties_rows: np.ndarray | None = None  # validation records with duties, and their duties view
    val_duties_probs: np.ndarray | None = None
    # routing
    routing: RoutingModel | None = None
    routing_data: RoutingData | None = None  # what routing was fitted on (the pipeline saves it with the run)
    val_kinds: list[str] | None = None  # each validation record's training source (routing reports each)
    val_groups: list[str] | None = None  # each validation record's occupation (routing's bounds count them)
    stages_run: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def has_val(self) -> bool:
        return len(self.val_texts) > 0

    def require_model(self) -> tuple[IscoClassifier, PreTrainedTokenizerBase]:
        if self.model is None or self.tokenizer is None:
            raise RuntimeError("the init stage must run first")
        return self.model, self.tokenizer


class FinetuneResult(BaseModel):
    """What a fine-tuning run produced (stored with the model version's training metrics)."""

    epochs: list[dict[str, float]]
    val_accuracy: float
    val_accuracy_combined: float
    temperature: float
    knn: dict[str, Any] | None
    lexical: dict[str, Any] | None
    seconds: float
    train_seconds: float
    stopped_by_budget: bool
    train_size: int
    val_size: int
    batch_size: int
    gradient_accumulation: int
    stages: list[str]
    stage_seconds: dict[str, float]
    rerank: dict[str, Any] | None = None
    duties_view: dict[str, Any] | None = None
    routing: dict[str, Any] | None = None
    device: str
    mixed_precision: str
    architecture: str


Stage = Callable[[TrainState], None]
