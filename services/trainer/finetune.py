"""The training recipe: fine-tune the mean-pooled cosine classifier with the Hugging Face `Trainer`.

Recipe (why, see ARCHITECTURE.md "Models"): the encoder keeps the mean pooling it was pre-trained with; the
cosine head starts from class prototypes (mean embedding of each unit group's training texts, the official
title for groups without any), so step 0 is already a working nearest-prototype classifier; the head learns
faster than the encoder (separate learning rate); early stopping on validation accuracy keeps the best epoch;
a temperature fitted on validation makes confidences calibrated. After training, an index of training-text
embeddings is stored with the model (kNN signal) and the blend weights are chosen on the validation split;
`shared.model.scorer.UnitScorer` combines them for every consumer.

Stages (`STAGES`, plain functions over one `TrainState`):
init -> contrastive -> head -> trainer -> calibrate -> signals -> rerank -> duties_view -> routing ->
index_validation -> save.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from services.trainer.contrastive import contrastive_stage
from shared.model.classifier import (
    IscoClassifier,
    encode_texts,
    encode_views,
    load_classifier,
    load_encoder,
    save_model_dir,
)
from shared.model.directory import DUTIES_VIEW, ModelDir
from shared.model.rerank import Reranker, fit_reranker
from shared.model.resources import cpu_share, default_base_model, native_cpu_bf16
from shared.model.scorer import fuse_views, softmax
from shared.model.signals import (
    KnnConfig,
    KnnIndex,
    LexicalConfig,
    LexicalIndex,
    NearestMatch,
    Signals,
    extend_indexes,
    knn_probabilities,
    search_weights,
)
from shared.decision import Hierarchy, level_probabilities
from shared.routing import RecordInputs, RoutingModel, fit_routing
from shared.taxonomy import get_taxonomy
from shared.text import TITLE_SEPARATOR, duties_part
from shared.variants import normalise_title, variant

log = logging.getLogger(__name__)


class FinetuneConfig(BaseModel):
    """Hyper-parameters of one fine-tuning run (profiles in services/trainer/profiles/*.yaml set these)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt profile key must fail, not be ignored

    base_model: str = Field(default_factory=default_base_model, description="HF id or local directory")
    max_length: int = 128
    epochs: float = 3.0
    learning_rate: float = 5e-5
    head_learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    label_smoothing: float = 0.0
    minor_group_loss: float = Field(
        0.0, ge=0, description="weight of the minor-group (3-digit) cross entropy added in fine-tuning"
    )
    scale: float = 30.0
    batch_size: int | None = Field(
        None, description="per-device batch; None = chosen from data size and device"
    )
    gradient_accumulation: int | None = Field(None, description="None = chosen to reach the effective batch")
    effective_batch_size: int | None = Field(None, description="None = from data size")
    gradient_checkpointing: bool = False
    cpu_bf16: bool | None = Field(
        False,
        description="train in bf16 autocast on CPU (None = where the CPU has native bf16); GPUs always mix",
    )
    early_stopping_patience: int = 2
    prototype_init: bool = True
    prototype_max_per_class: int = 40
    head_epochs: int = Field(
        5,
        ge=0,
        description="stage 1: train the head on frozen embeddings of all training texts (0 = prototypes)",
    )
    head_stage_lr: float = 5e-3
    max_train_seconds: float | None = Field(
        None, description="time budget of the training loop: the LR schedule is shortened to fit, best kept"
    )
    freeze_word_embeddings: bool = Field(
        True,
        description="keep the 30k x 384 token embeddings fixed: half the parameters, small accuracy cost",
    )
    freeze_layers: int = Field(0, ge=0, description="keep the lowest N layers fixed (faster steps)")
    knn: bool = True
    knn_k: int = 10
    knn_max_index: int = 60000
    knn_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fixed kNN mixing weight (chosen on held-out occupations); None = fit on val",
    )
    knn_tau: float = 0.05
    lexical: bool = Field(True, description="store a character n-gram TF-IDF kNN signal with the model")
    lexical_k: int = 10
    lexical_tau: float = 0.05
    lexical_max_df: float = Field(
        0.01, gt=0, le=1, description="drop n-grams in more than this share of training texts (cost)"
    )
    lexical_weight: float | None = Field(
        None, ge=0, le=0.9, description="fixed lexical mixing weight; None = fit on val"
    )
    seed: int = 42
    title_variants: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the titles alone shown, each time they are drawn in fine-tuning, as a variant "
        "people write (inverted, gender-swapped, abbreviated, with a seniority word; shared.variants)",
    )
    contrastive_seconds: float = Field(
        0.0, ge=0, description="contrastive title training of the encoder before the head (0: skipped)"
    )
    contrastive_learning_rate: float = 5e-5
    contrastive_batch_size: int = Field(64, ge=8)
    contrastive_scale: float = 20.0
    contrastive_variants: bool = Field(
        True, description="half the anchors become title variants people write"
    )
    index_validation: bool = Field(
        True,
        description="after weights, temperature and routing are chosen on validation, add its records to the "
        "kNN and lexical indexes (the held-out occupations would otherwise be missing from the model)",
    )
    rerank: bool = Field(
        False,
        description="second stage: rerank the top candidates with a learned fusion of the signals and the "
        "hierarchy, fitted on validation (shared.model.rerank)",
    )
    rerank_k: int = Field(20, ge=2, description="candidates the reranker rescores")
    duties_weight: float | None = Field(
        None,
        ge=0,
        le=0.5,
        description="weight of a record's duties view (its duties tokens pooled apart) beside the whole "
        "record (shared.model.scorer fuse_views); None = the best on validation's records with duties, "
        "0 = off",
    )
    routing_precision: float = Field(
        0.95, gt=0, lt=1, description="target precision of the auto-coding thresholds (routing.json)"
    )
    routing_bound_z: float = Field(
        1.28,
        ge=0,
        description="thresholds hold `routing_precision` on the precision's Wilson lower bound this many "
        "standard errors down (1.28: one-sided 90%), not on the point estimate: a record shape's threshold "
        "rests on a few hundred validation records, and held-out test records fell 3-5 points short of a "
        "point-estimate threshold (bench/experiments/RESULTS-issue27.md)",
    )
    device: str = "auto"
    disable_tqdm: bool = False


def choose_device(requested: str = "auto") -> str:
    """cuda, then mps, then cpu (unless a device is requested)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def choose_batching(n_train: int, device: str, config: FinetuneConfig) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) from dataset size and device.

    The effective batch grows with the data (small sets need more update steps); the per-device batch is
    what the device handles comfortably for short texts, and accumulation makes up the rest.
    """
    effective = config.effective_batch_size or (8 if n_train < 500 else 16 if n_train < 5000 else 32)
    per_device = config.batch_size or {"cuda": 128, "mps": 32}.get(device, 32)
    per_device = max(1, min(per_device, effective))
    accumulation = config.gradient_accumulation or max(1, math.ceil(effective / per_device))
    return per_device, accumulation


class _Encoded(torch.utils.data.Dataset):
    """Tokenised training records. With `variants` > 0 a record that is a title alone is shown, with that
    probability each time it is drawn, as a title variant people write (`shared.variants`: inverted "head,
    qualifier", gender-swapped, abbreviated, with a seniority word), normalised as inference reads it (so a
    "head - qualifier" variant is read back in the natural order)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        texts: list[str],
        labels: list[int],
        max_length: int,
        variants: float = 0.0,
        seed: int = 0,
    ):
        self.tokenizer, self.texts, self.max_length = tokenizer, texts, max_length
        self.variants, self.rng = variants, random.Random(seed)
        if not texts:
            self.items: list[dict[str, Any]] = []
            return
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        self.items = [
            {
                "input_ids": enc["input_ids"][i],
                "attention_mask": enc["attention_mask"][i],
                "labels": labels[i],
            }
            for i in range(len(texts))
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        text = self.texts[i]
        # only titles alone vary
        if self.variants and TITLE_SEPARATOR not in text and self.rng.random() < self.variants:
            shown = normalise_title(variant(text, self.rng))
            if shown != text:
                enc = self.tokenizer(shown, truncation=True, max_length=self.max_length)
                return {
                    "input_ids": enc["input_ids"],
                    "attention_mask": enc["attention_mask"],
                    "labels": item["labels"],
                }
        return item


class _CodeTrainer(Trainer):
    """Trainer with a separate (higher) learning rate for the cosine head and its scale, and a linear
    schedule whose length can be shortened while training (to fit a time budget)."""

    head_learning_rate: float = 2e-3
    warmup_ratio: float = 0.06
    plan: dict[str, int] = {}

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is None:
            self.plan = {"total": num_training_steps, "planned": num_training_steps}
            plan, ratio = self.plan, self.warmup_ratio

            def factor(step: int) -> float:
                # warm-up is a share of the current plan: a schedule shortened for the budget keeps it short
                warmup = max(1, int(ratio * plan["total"]))
                if step < warmup:
                    return (step + 1) / warmup
                return max(0.0, (plan["total"] - step) / max(1, plan["total"] - warmup))

            target = optimizer or self.optimizer
            assert target is not None
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(target, factor)
        return self.lr_scheduler

    def create_optimizer(self, model: Any = None) -> Any:
        if self.optimizer is None:
            model = self.model
            decay, no_decay, head = [], [], []
            for name, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                if name in ("head", "scale"):
                    head.append(p)
                elif p.ndim < 2 or "LayerNorm" in name or name.endswith("bias"):
                    no_decay.append(p)
                else:
                    decay.append(p)
            groups = [
                {"params": decay, "weight_decay": self.args.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
                {"params": head, "weight_decay": 0.0, "lr": self.head_learning_rate},
            ]
            # fused AdamW: the optimizer step was a large share of a CPU step with the unfused one
            fused = next(iter(model.parameters())).device.type in ("cpu", "cuda")
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, fused=fused)
        return self.optimizer


class _EpochLog(TrainerCallback):
    """Collect per-epoch metrics and stop at the time budget (after an evaluation, keeping the best)."""

    def __init__(self, max_seconds: float | None):
        self.max_seconds = max_seconds
        self.start = time.monotonic()
        self.trainer: _CodeTrainer | None = None
        self.epochs: list[dict[str, float]] = []
        self.train_loss: list[float] = []
        self.stopped_by_budget = False

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any
    ) -> None:
        if logs and "loss" in logs:
            self.train_loss.append(float(logs["loss"]))
        if logs and "eval_accuracy" in logs:
            row = {
                "epoch": round(float(state.epoch or 0), 3),
                "train_loss": self.train_loss[-1] if self.train_loss else float("nan"),
                "val_loss": float(logs.get("eval_loss", float("nan"))),
                "val_accuracy": float(logs["eval_accuracy"]),
                "seconds": round(time.monotonic() - self.start, 1),
            }
            self.epochs.append(row)
            log.info("epoch %.2f: %s", row["epoch"], row)

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.start = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if not self.max_seconds:
            return
        elapsed = time.monotonic() - self.start
        plan = self.trainer.plan if self.trainer is not None else {}
        step = state.global_step
        # Re-plan every 25 steps from the measured pace (it changes when other processes share the CPU),
        # so the learning rate decays to zero within the budget instead of being cut off half-way.
        if plan and step >= 10 and step % 25 == 0:
            per_step = elapsed / step
            fits = step + int(max(0.0, self.max_seconds - elapsed) / per_step)
            new_total = max(step + 1, min(plan["planned"], fits))
            if new_total != plan["total"]:
                log.info(
                    "time budget: schedule %d -> %d steps (%.2fs/step)", plan["total"], new_total, per_step
                )
            plan["total"] = new_total
        if elapsed > self.max_seconds or (plan and step >= plan["total"] < plan["planned"]):
            self.stopped_by_budget = True
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True


def _accuracy(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the validation NLL of softmax(logits / T)."""
    if len(labels) == 0:
        return 1.0
    z = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    return t if math.isfinite(t) and t > 0 else 1.0


def _prototypes(
    model: IscoClassifier,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    labels: list[int],
    codes: list[str],
    config: FinetuneConfig,
    device: str,
) -> torch.Tensor:
    """Mean normalised embedding per class (at most `prototype_max_per_class` texts each)."""
    rng = np.random.default_rng(config.seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    chosen: list[int] = []
    for idx in by_class.values():
        if len(idx) > config.prototype_max_per_class:
            idx = sorted(rng.choice(idx, config.prototype_max_per_class, replace=False).tolist())
        chosen += idx
    taxonomy = get_taxonomy()
    missing = [c for c in range(len(codes)) if c not in by_class]
    sample_texts = [texts[i] for i in chosen] + [taxonomy.title(codes[c]).lower() for c in missing]
    sample_labels = [labels[i] for i in chosen] + missing
    emb = encode_texts(model, tokenizer, sample_texts, device=device, max_length=config.max_length)
    proto = torch.zeros(len(codes), emb.shape[1])
    proto.index_add_(0, torch.tensor(sample_labels), torch.from_numpy(emb))
    return F.normalize(proto, dim=-1)


# ----------------------------------------------------------------------------------------------------
# Stages: plain functions over one typed state, run in order by `finetune`. To add a stage (e.g. contrastive
# training before "head", routing calibration after "calibrate"), write `def my_stage(state: TrainState)`
# and insert ("my_stage", my_stage) into a copy of STAGES passed as `finetune(..., stages=...)`.
# ----------------------------------------------------------------------------------------------------


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
    val_kinds: list[str] | None = None  # each validation record's training source (routing reports each)
    # contrastive
    contrastive: dict[str, Any] | None = None
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
    contrastive: dict[str, Any] | None = None
    device: str
    mixed_precision: str
    architecture: str


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
        protos = _prototypes(
            model, tokenizer, state.train_texts, state.train_labels, codes, config, state.device
        )
    with torch.no_grad():
        for i, c in enumerate(codes):
            model.head[i] = parent_model.head[parent_pos[c]] if c in parent_pos else protos[i]  # type: ignore[index]
    state.model, state.tokenizer = model, tokenizer


def head_stage(state: TrainState) -> None:
    """A new model's head: trained on frozen embeddings of all training texts (one forward pass, then seconds
    of head-only training; a much better start than prototypes at a fraction of an epoch), or class
    prototypes when `head_epochs` is 0. Corrections keep the parent's head."""
    model, tokenizer = state.require_model()
    config = state.config
    if state.init_model_dir is not None or not state.train_texts:
        return
    if config.head_epochs > 0:
        state.train_embeddings = encode_texts(
            model, tokenizer, state.train_texts, device=state.device, max_length=config.max_length
        )
        _train_head_on_embeddings(
            model, tokenizer, state.train_embeddings, state.train_labels, state.codes, config
        )
    elif config.prototype_init:
        protos = _prototypes(
            model, tokenizer, state.train_texts, state.train_labels, state.codes, config, state.device
        )
        with torch.no_grad():
            model.head.copy_(protos)


def trainer_stage(state: TrainState) -> None:
    """Fine-tune encoder + head with the Hugging Face Trainer (early stopping, time budget, mixed precision on
    accelerators, gradient checkpointing when asked)."""
    model, tokenizer = state.require_model()
    config, device = state.config, state.device
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.freeze_word_embeddings:
        model.encoder.get_input_embeddings().weight.requires_grad_(False)
    if config.freeze_layers:
        layers = getattr(getattr(model.encoder, "encoder", None), "layer", None)
        if layers is None:
            raise ValueError("freeze_layers needs a BERT-like encoder (encoder.encoder.layer)")
        for layer in list(layers)[: config.freeze_layers]:
            layer.requires_grad_(False)
    per_device, accumulation = choose_batching(len(state.train_texts), device, config)
    use_cuda = device == "cuda"
    cpu_bf16 = native_cpu_bf16() if config.cpu_bf16 is None else config.cpu_bf16
    bf16 = (use_cuda and torch.cuda.is_bf16_supported()) or (device == "cpu" and cpu_bf16)
    fp16 = (use_cuda and not bf16) or device == "mps"
    state.batch_size, state.gradient_accumulation = per_device, accumulation
    state.mixed_precision = "bf16" if bf16 else "fp16" if fp16 else "no"
    if config.epochs <= 0 or not state.train_texts:
        return
    train_ds = _Encoded(
        tokenizer,
        state.train_texts,
        state.train_labels,
        config.max_length,
        variants=config.title_variants,
        seed=config.seed,
    )
    val_ds = _Encoded(tokenizer, state.val_texts, state.val_labels.tolist(), config.max_length)
    output_dir = state.output_dir
    work = Path(
        tempfile.mkdtemp(prefix=".ckpt-", dir=output_dir.parent if output_dir.parent.exists() else None)
    )
    epoch_log = _EpochLog(config.max_train_seconds)
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=max(per_device, 64),
        gradient_accumulation_steps=accumulation,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        eval_strategy="epoch" if state.has_val else "no",
        save_strategy="epoch" if state.has_val else "no",
        save_total_limit=2,
        save_only_model=True,
        load_best_model_at_end=state.has_val,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=50,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        fp16=fp16,
        use_cpu=device == "cpu",
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        disable_tqdm=config.disable_tqdm,
        remove_unused_columns=False,
    )
    callbacks: list[TrainerCallback] = [epoch_log]
    if state.has_val and config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = _CodeTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds if state.has_val else None,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_accuracy,
        callbacks=callbacks,
    )
    trainer.head_learning_rate = config.head_learning_rate
    trainer.warmup_ratio = config.warmup_ratio
    epoch_log.trainer = trainer
    if config.label_smoothing or config.minor_group_loss:
        trainer.compute_loss_func = code_loss(state.codes, config.label_smoothing, config.minor_group_loss)
    started = time.monotonic()
    try:
        trainer.train()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    state.model = trainer.model  # type: ignore[assignment]
    state.trainer_ran = True
    state.epochs, state.stopped_by_budget = epoch_log.epochs, epoch_log.stopped_by_budget
    state.train_seconds = time.monotonic() - started


def calibrate_stage(state: TrainState) -> None:
    """Validation embeddings and logits on CPU, the head's validation accuracy and the temperature."""
    model, tokenizer = state.require_model()
    state.model = model = model.to("cpu").eval()
    if model.encoder.is_gradient_checkpointing:
        model.encoder.gradient_checkpointing_disable()
    if not state.has_val:
        return
    state.val_embeddings, state.val_duties_embeddings = encode_views(
        model, tokenizer, state.val_texts, device="cpu", max_length=state.config.max_length
    )
    with torch.no_grad():
        state.val_logits = model.logits_from_embeddings(torch.from_numpy(state.val_embeddings)).numpy()
    state.val_accuracy = float((state.val_logits.argmax(-1) == state.val_labels).mean())
    state.temperature = fit_temperature(state.val_logits, state.val_labels)


def signals_stage(state: TrainState) -> None:
    """Build the kNN (with its training texts) and lexical indexes; choose the weights of both in one search
    on validation (weights fixed by the profile are kept, and their validation accuracy reported)."""
    model, tokenizer = state.require_model()
    config, codes = state.config, state.codes
    if not state.train_texts:
        return
    candidates: dict[str, dict[float, np.ndarray]] = {}
    fixed: dict[str, float | None] = {}
    if config.knn:
        entries = index_entries(state.train_texts, config.knn_max_index, config.seed)
        texts = [state.train_texts[i] for i in entries]
        if state.train_embeddings is not None and not state.trainer_ran:
            embeddings = state.train_embeddings[entries]  # the encoder did not change since they were made
        else:
            embeddings = encode_texts(
                model, tokenizer, texts, device=state.device, max_length=config.max_length
            )
        index = KnnIndex(embeddings, np.asarray(state.train_labels)[entries], texts)
        if state.parent_signals is not None and state.parent_signals.knn is not None:
            # Corrections: keep the parent's entries (embedded by the parent encoder, which a short
            # corrections run changes little) and add the new texts, so the vote does not shrink to the
            # replay sample.
            index = _merge_knn(state.parent_signals.knn, state.parent_label_map, index)
        state.knn_index = index
        # a fixed weight keeps the profile's vote temperature; otherwise it is searched with the weight
        taus = sorted({config.knn_tau} | (set() if config.knn_weight is not None else {0.02, 0.05, 0.1}))
        fixed["knn"] = config.knn_weight
        knn_config = KnnConfig(k=config.knn_k, tau=config.knn_tau, weight=config.knn_weight or 0.0)
        if state.has_val:
            assert state.val_embeddings is not None
            candidates["knn"] = {
                tau: knn_probabilities(
                    state.val_embeddings, index, knn_config.model_copy(update={"tau": tau}), len(codes)
                )
                for tau in taus
            }
        state.knn_config = knn_config
    if config.lexical:
        lexical_config = LexicalConfig(
            k=config.lexical_k,
            tau=config.lexical_tau,
            weight=config.lexical_weight or 0.0,
            max_df=config.lexical_max_df,
        )
        if state.parent_signals is not None and state.parent_signals.lexical is not None:
            parent = state.parent_signals.lexical
            labels = (
                state.parent_label_map[parent.labels] if state.parent_label_map is not None else parent.labels
            )
            keep = np.flatnonzero(labels >= 0)
            state.lexical_index = parent.extended(keep, labels[keep], state.train_texts, state.train_labels)
        else:
            state.lexical_index = LexicalIndex.build(state.train_texts, state.train_labels, lexical_config)
        fixed["lexical"] = config.lexical_weight
        if state.has_val:
            candidates["lexical"] = {
                lexical_config.tau: state.lexical_index.probabilities(
                    state.val_texts, lexical_config, len(codes)
                )
            }
        state.lexical_config = lexical_config
    if state.has_val and candidates:
        assert state.val_logits is not None
        head = softmax(state.val_logits / state.temperature)
        choice = search_weights(head, candidates, state.val_labels, fixed)
        state.val_accuracy_combined = choice.val_accuracy
        if state.knn_config is not None:
            state.knn_config.weight = round(choice.weights["knn"], 3)
            state.knn_config.tau = choice.taus["knn"]
            state.knn_config.val_accuracy = choice.val_accuracy
        if state.lexical_config is not None:
            state.lexical_config.weight = round(choice.weights["lexical"], 3)
            state.lexical_config.val_accuracy = choice.val_accuracy
    else:  # no validation split (corrections): the profile's weights, else the parent's
        parent_signals = state.parent_signals
        if state.knn_config is not None and config.knn_weight is None:
            parent_knn = parent_signals.knn_config if parent_signals is not None else None
            state.knn_config.weight = parent_knn.weight if parent_knn is not None else 0.2
        if state.lexical_config is not None and config.lexical_weight is None:
            parent_lex = parent_signals.lexical_config if parent_signals is not None else None
            state.lexical_config.weight = parent_lex.weight if parent_lex is not None else 0.0


def rerank_stage(state: TrainState) -> None:
    """The second stage (`rerank`): a conditional-logit fusion of the top candidates' signal probabilities and
    group masses, fitted on validation with the signals as they stand (the held-out occupations are not in
    the indexes yet), so its weights and probabilities are those of titles the model has not seen. A
    corrections run refits it on the original validation split; without one it keeps its parent's."""
    config = state.config
    if not config.rerank:
        return
    if not state.has_val or state.val_logits is None or state.val_embeddings is None:
        state.reranker = state.parent_signals.reranker if state.parent_signals is not None else None
        return
    signals = Signals(
        state.codes, state.knn_index, state.knn_config, state.lexical_index, state.lexical_config
    )
    mixed, parts = signals.first_stage(
        state.val_texts, state.val_embeddings, softmax(state.val_logits / state.temperature)
    )
    state.reranker = fit_reranker(
        state.codes,
        mixed,
        parts,
        state.val_labels,
        k=config.rerank_k,
        fitted_on=f"validation split ({len(state.val_labels)} records: unseen occupations and titles)",
    )
    log.info(
        "reranker: validation top-1 %.4f -> %.4f",
        state.reranker.val_accuracy_before,
        state.reranker.val_accuracy_after,
    )


DUTIES_WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(11))  # 0 .. 0.5


def _signals(state: TrainState) -> Signals:
    """The signals and reranker as they stand (the held-out occupations are not in the indexes yet)."""
    return Signals(
        state.codes,
        state.knn_index,
        state.knn_config,
        state.lexical_index,
        state.lexical_config,
        state.reranker,
    )


def _val_scores(state: TrainState, rows: np.ndarray | None = None) -> tuple[np.ndarray, NearestMatch]:
    """Validation probabilities (of `rows` only, when given) of the whole model as it stands, before the
    duties view, and each record's nearest training text. Each row is scored on its own, so a subset reads
    as it would among all of validation."""
    assert state.val_logits is not None and state.val_embeddings is not None
    if rows is None:
        rows = np.arange(len(state.val_texts))
    head = softmax(state.val_logits[rows] / state.temperature)
    return _signals(state).score([state.val_texts[i] for i in rows], state.val_embeddings[rows], head)


def duties_view_stage(state: TrainState) -> None:
    """The duties view's weight (`duties_weight`): validation's records with duties are scored on their duties
    tokens as well (`IscoClassifier.embed_views`: pooled apart in the record's own pass), and the weight of
    that view (0 - 0.5) is the one with the highest validation accuracy on them, ties to the lower log loss,
    as the signal weights are chosen. Runs after the reranker, so the views fused are what the services
    compute, and before routing, which is fitted on the fused probabilities. A corrections run (no
    validation) keeps its parent's weight."""
    fixed = state.config.duties_weight
    if not state.has_val or state.val_logits is None or state.val_duties_embeddings is None:
        state.duties_weight = fixed if fixed is not None else state.parent_duties_weight
        return
    # duties truncated away have no view: a zero vector (as in the scorer)
    has_view = np.asarray(state.val_duties_embeddings.any(axis=1))
    rows = np.array(
        [i for i, t in enumerate(state.val_texts) if duties_part(t) and has_view[i]], dtype=np.int64
    )
    if len(rows) == 0 or fixed == 0:
        state.duties_weight = fixed or 0.0
        return
    model, _ = state.require_model()
    embeddings = state.val_duties_embeddings[rows]
    duties = [duties_part(state.val_texts[i]) for i in rows]
    with torch.no_grad():
        logits = model.logits_from_embeddings(torch.from_numpy(embeddings)).numpy()
    alone = _signals(state).mix(duties, embeddings, softmax(logits / state.temperature))
    whole = _val_scores(state, rows)[0]
    labels = state.val_labels[rows]
    grid = DUTIES_WEIGHT_GRID if fixed is None else (fixed,)
    scores = {}
    for weight in {0.0, *grid}:
        p = fuse_views(whole, alone, weight)
        nll = float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())
        scores[weight] = (round(float((p.argmax(1) == labels).mean()), 4), -nll)
    state.duties_weight = max(grid, key=lambda w: scores[w])
    state.val_duties_rows, state.val_duties_probs = rows, alone
    state.duties_view = {
        "weight": state.duties_weight,
        "val_records": len(rows),
        "val_accuracy_before": scores[0.0][0],
        "val_accuracy_after": scores[state.duties_weight][0],
    }
    log.info(
        "duties view: weight %.2f, validation top-1 on %d records with duties %.4f -> %.4f",
        state.duties_weight,
        len(rows),
        scores[0.0][0],
        scores[state.duties_weight][0],
    )


def routing_stage(state: TrainState) -> None:
    """Routers for auto-coding: on validation (held-out occupations: titles like those users send), the
    probability that the answer at each level is right from score features, per-level thresholds that
    reach `routing_precision`, and the match rule's similarity (shared.routing). Needs the combined
    probabilities, so it runs after signals; validation is not in the kNN index yet, so each record's
    nearest training text is another record's, as a user's new answer would find."""
    if not state.has_val or state.val_logits is None or state.val_embeddings is None:
        return
    codes = state.codes
    probs, nearest = _val_scores(state)
    if state.val_duties_rows is not None and state.val_duties_probs is not None:
        rows = state.val_duties_rows
        probs[rows] = fuse_views(probs[rows], state.val_duties_probs, state.duties_weight)
    hierarchy = Hierarchy.from_codes(codes)
    per_level = level_probabilities(probs, hierarchy)
    gold = [codes[i] for i in state.val_labels]
    correct = {
        level: np.array(
            [
                g.startswith(hierarchy.group_codes[level][j])
                for g, j in zip(gold, p.argmax(axis=1), strict=True)
            ]
        )
        for level, p in per_level.items()
    }
    state.routing = fit_routing(
        per_level,
        correct,
        RecordInputs.from_texts(state.val_texts),
        target_precision=state.config.routing_precision,
        z=state.config.routing_bound_z,
        fitted_on=f"validation split ({len(gold)} records: unseen occupations and titles)",
        nearest=nearest,
        kinds=state.val_kinds,
    )


def index_validation_stage(state: TrainState) -> None:
    """Validation records join the kNN and lexical indexes once everything has been chosen on them: the split
    holds out whole occupations, and a model without them loses ~2 points of dev top-1 (measured with
    bench/experiments/split_cost.py; a kNN over all records recovers most of it). Test records join only
    after the test split is scored (`services.trainer.pipeline`)."""
    if not state.config.index_validation or not state.has_val or state.val_embeddings is None:
        return
    state.knn_index, state.lexical_index, _ = extend_indexes(
        state.knn_index, state.lexical_index, state.val_texts, state.val_embeddings, state.val_labels
    )


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


def _routing_summary(routing: RoutingModel) -> dict[str, Any]:
    """Per level the threshold and what it auto-codes on validation, and the match rule ("match")."""
    summary: dict[str, Any] = {
        str(level): {
            "threshold": round(r.threshold, 4),
            "shape_thresholds": {s: round(t, 4) for s, t in r.shape_thresholds.items()},
            "val_coverage": r.fitted_coverage,
            "val_precision": r.fitted_precision,
            "kind_thresholds": {k: round(t, 4) for k, t in r.kind_thresholds.items()},
        }
        for level, r in routing.levels.items()
    }
    summary["match"] = {
        "similarity": routing.match_similarity,
        "shape_similarities": {s: round(t, 4) for s, t in routing.match_shape_similarities.items()},
        "val_coverage": routing.match_coverage,
        "val_precision": routing.match_precision,
        "kind_similarities": {k: round(t, 4) for k, t in routing.match_kind_similarities.items()},
    }
    return summary


Stage = Callable[[TrainState], None]
STAGES: tuple[tuple[str, Stage], ...] = (
    ("init", init_stage),
    ("contrastive", contrastive_stage),
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
) -> FinetuneResult:
    """Fine-tune, calibrate and write the model directory `output_dir` by running `stages` in order.

    `codes` is the label order (all 436 unit groups for default models). `init_model_dir` starts from an
    existing model directory (corrections fine-tuning) instead of the base model. `val_kinds` (each
    validation record's source): routing reports the threshold each kind would need (`fit_routing`).
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
        routing=_routing_summary(state.routing) if state.routing is not None else None,
        contrastive=state.contrastive,
        device=device,
        mixed_precision=state.mixed_precision,
        architecture=str(model.encoder.config.model_type),
    )
    log.info("finetune done: %s", result.model_dump(exclude={"epochs"}))
    return result


def index_entries(texts: Sequence[str], max_items: int, seed: int) -> np.ndarray:
    """Which training texts the kNN index keeps, at most `max_items`, in order: every title first (texts
    without duties: ESCO labels and coding-index entries, with their industry), then a seeded sample of the
    texts with duties. Users send titles; the nearest coded title is what the kNN vote and the routing match
    rule read, and an index that sampled titles away would miss the very entries a survey answer repeats."""
    titles = np.array([i for i, t in enumerate(texts) if not duties_part(t)], dtype=np.int64)
    others = np.array([i for i, t in enumerate(texts) if duties_part(t)], dtype=np.int64)
    if len(titles) >= max_items:
        return titles[_sample(len(titles), max_items, seed)]
    kept = others[_sample(len(others), max_items - len(titles), seed)]
    return np.sort(np.concatenate([titles, kept]))


def _sample(n: int, max_items: int, seed: int) -> np.ndarray:
    """At most max_items of range(n), a seeded sample in order."""
    idx = np.arange(n)
    if n > max_items:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_items, replace=False))
    return idx


def _merge_knn(parent: KnnIndex, label_map: np.ndarray | None, new: KnnIndex) -> KnnIndex:
    """The parent's kNN entries (labels mapped to the new label order) followed by the new ones."""
    labels = label_map[parent.labels] if label_map is not None else parent.labels
    keep = labels >= 0
    texts = None
    if parent.texts is not None and new.texts is not None:  # models before knn_texts.json have none
        texts = [t for t, k in zip(parent.texts, keep, strict=True) if k] + new.texts
    return KnnIndex(
        np.vstack([parent.embeddings[keep], new.embeddings]),
        np.concatenate([labels[keep], new.labels]),
        texts,
    )


def _train_head_on_embeddings(
    model: IscoClassifier,
    tokenizer: PreTrainedTokenizerBase,
    embeddings: np.ndarray,
    labels: list[int],
    codes: list[str],
    config: FinetuneConfig,
) -> None:
    """Initialise the head from class prototypes, then train head and scale on the fixed embeddings.

    Groups without training texts get the embedding of their official title (the head never learns them
    otherwise, but a user record close to the title can still land there)."""
    emb = torch.from_numpy(embeddings)
    y = torch.tensor(labels, dtype=torch.long)
    proto = torch.zeros(len(codes), emb.shape[1])
    proto.index_add_(0, y, emb)
    missing = sorted(set(range(len(codes))) - set(labels))
    if missing:
        titles = [get_taxonomy().title(codes[i]).lower() for i in missing]
        proto[missing] = torch.from_numpy(
            encode_texts(model, tokenizer, titles, max_length=config.max_length)
        )
    with torch.no_grad():
        model.head.copy_(F.normalize(proto, dim=-1))
    trained = torch.zeros(len(codes), dtype=torch.bool)
    trained[y] = True
    train_head(
        model.head,
        model.scale,
        emb,
        y,
        epochs=config.head_epochs,
        lr=config.head_stage_lr,
        seed=config.seed,
        label_smoothing=config.label_smoothing,
        train_scale=True,
        frozen_rows=~trained,  # keep title prototypes of unseen groups as they are
    )
    log.info(
        "head stage: %d epochs on %d embeddings, scale %.1f, %d groups from their titles",
        config.head_epochs,
        len(y),
        float(model.scale.detach()),
        len(missing),
    )


def train_head(
    head: torch.nn.Parameter,
    scale: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    seed: int,
    label_smoothing: float = 0.0,
    train_scale: bool = False,
    frozen_rows: torch.Tensor | None = None,
) -> None:
    """Train the cosine head (and the scale with `train_scale`) in place on fixed embeddings: Adam, shuffled
    batches of 1024; `frozen_rows` (a mask over the head's rows) are left as they are."""
    opt = torch.optim.Adam([head, scale] if train_scale else [head], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(labels), generator=gen)
        for start in range(0, len(labels), 1024):
            i = perm[start : start + 1024]
            logits = scale * embeddings[i] @ F.normalize(head, dim=-1).T
            loss = F.cross_entropy(logits, labels[i], label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            if frozen_rows is not None:
                head.grad[frozen_rows] = 0  # type: ignore[index]
            opt.step()


def code_loss(codes: list[str], epsilon: float = 0.0, minor_weight: float = 0.0) -> Any:
    """The Trainer's loss: cross entropy over the unit groups (label smoothing `epsilon`), plus `minor_weight`
    times the cross entropy of the minor (3-digit) group, whose probability is the sum of its unit groups'. A
    coarse-level loss is worth 1-2 points in the literature (Beresewicz et al. 2024): a wrong answer in the
    right minor group costs less than one elsewhere."""
    member = torch.from_numpy(Hierarchy.from_codes(codes).indicators[3])  # (unit groups, minor groups)
    minor_of = member.argmax(dim=1)

    def loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"]
        total = F.cross_entropy(logits, labels, label_smoothing=epsilon)
        if minor_weight:
            minor_probs = logits.float().softmax(-1) @ member.to(logits.device)
            gold = minor_of.to(labels.device)[labels]
            total = total + minor_weight * F.nll_loss(minor_probs.clamp_min(1e-12).log(), gold)
        return total

    return loss
