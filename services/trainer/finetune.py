"""The training recipe: fine-tune the mean-pooled cosine classifier with the Hugging Face `Trainer`.

Recipe (why, see ARCHITECTURE.md "Models"): the encoder keeps the mean pooling it was pre-trained with; the
cosine head starts from class prototypes (mean embedding of each unit group's training texts, the official
title for groups without any), so step 0 is already a working nearest-prototype classifier; the head learns
faster than the encoder (separate learning rate); early stopping on validation accuracy keeps the best epoch;
a temperature fitted on validation makes confidences calibrated. After training, an index of training-text
embeddings is stored with the model (kNN signal) and the blend weight is chosen on the validation split;
`shared.modeling.UnitScorer` combines both for every consumer.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    AutoModel,
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from shared.modeling import (
    AuxiliarySignals,
    IscoClassifier,
    KnnConfig,
    KnnIndex,
    LexicalConfig,
    LexicalIndex,
    build_knn_index,
    combine_signals,
    cpu_share,
    default_base_model,
    encode_texts,
    fit_knn_weight,
    knn_probabilities,
    load_model_dir,
    mix_probabilities,
    save_model_dir,
)
from shared.taxonomy import get_taxonomy

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
    scale: float = 30.0
    batch_size: int | None = Field(
        None, description="per-device batch; None = chosen from data size and device"
    )
    gradient_accumulation: int | None = Field(None, description="None = chosen to reach the effective batch")
    effective_batch_size: int | None = Field(None, description="None = from data size")
    gradient_checkpointing: bool = False
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
    lexical_weight: float | None = Field(
        None, ge=0, le=0.9, description="fixed lexical mixing weight; None = fit on val"
    )
    seed: int = 42
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
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, texts: list[str], labels: list[int], max_length: int
    ):
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
        return self.items[i]


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
) -> dict[str, Any]:
    """Fine-tune, calibrate and write the model directory `output_dir`; return metrics and timings.

    `codes` is the label order (all 436 unit groups for default models). `init_model_dir` starts from an
    existing model directory (corrections fine-tuning) instead of the base model.
    """
    started = time.monotonic()
    output_dir = Path(output_dir)
    set_seed(config.seed)
    device = choose_device(config.device)
    if device == "cpu":
        torch.set_num_threads(cpu_share())
    label_of = {c: i for i, c in enumerate(codes)}
    unknown = sorted({c for c in [*train_codes, *val_codes] if c not in label_of})
    if unknown:
        raise ValueError(f"codes outside the label map: {unknown[:10]}")
    y_train = [label_of[c] for c in train_codes]
    y_val = [label_of[c] for c in val_codes]

    parent_signals: AuxiliarySignals | None = None
    parent_label_map: np.ndarray | None = None
    if init_model_dir is not None:
        model, tokenizer, init_codes, init_meta = load_model_dir(Path(init_model_dir))
        parent_signals = AuxiliarySignals.load(Path(init_model_dir), init_meta, len(init_codes))
        # parent label id -> new label id (-1: a code the new label map lacks)
        parent_label_map = np.array([label_of.get(c, -1) for c in init_codes], dtype=np.int64)
        head = model.head.detach().clone()
        scale = float(model.scale.detach())
        base_model = str(init_model_dir)
        model = IscoClassifier(model.encoder, len(codes), scale=scale)
        init_pos = {c: i for i, c in enumerate(init_codes)}
        protos = None
        if any(c not in init_pos for c in codes):
            protos = _prototypes(model, tokenizer, train_texts, y_train, codes, config, device)
        with torch.no_grad():
            for i, c in enumerate(codes):
                model.head[i] = head[init_pos[c]] if c in init_pos else protos[i]  # type: ignore[index]
    else:
        base_model = config.base_model
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        encoder = AutoModel.from_pretrained(base_model, add_pooling_layer=False)
        model = IscoClassifier(encoder, len(codes), scale=config.scale)
    stage1_embeddings = None
    if init_model_dir is None and config.head_epochs > 0 and train_texts:
        # Stage 1: one forward pass over all training texts, then the head alone is trained on the frozen
        # embeddings (seconds). This gave a much better head than prototypes at a fraction of a fine-tuning
        # epoch; fine-tuning then starts from a trained classifier instead of disturbing the encoder early.
        stage1_embeddings = encode_texts(
            model, tokenizer, train_texts, device=device, max_length=config.max_length
        )
        _train_head_on_embeddings(model, tokenizer, stage1_embeddings, y_train, codes, config)
    elif init_model_dir is None and config.prototype_init:
        protos = _prototypes(model, tokenizer, train_texts, y_train, codes, config, device)
        with torch.no_grad():
            model.head.copy_(protos)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if config.freeze_word_embeddings:
        model.encoder.get_input_embeddings().weight.requires_grad_(False)
    if config.freeze_layers:
        layers = getattr(getattr(model.encoder, "encoder", None), "layer", None)
        if layers is None:
            raise ValueError("freeze_layers needs a BERT-like encoder (encoder.encoder.layer)")
        for layer in list(layers)[: config.freeze_layers]:
            layer.requires_grad_(False)

    per_device, accumulation = choose_batching(len(train_texts), device, config)
    use_cuda = device == "cuda"
    bf16 = use_cuda and torch.cuda.is_bf16_supported()
    fp16 = (use_cuda and not bf16) or device == "mps"
    train_ds = _Encoded(tokenizer, train_texts, y_train, config.max_length)
    # Sorting validation by length keeps padding (and evaluation time) small; order does not matter there.
    val_order = sorted(range(len(val_texts)), key=lambda i: len(val_texts[i]))
    val_ds = _Encoded(
        tokenizer, [val_texts[i] for i in val_order], [y_val[i] for i in val_order], config.max_length
    )
    has_val = len(val_ds) > 0
    run_trainer = config.epochs > 0 and len(train_ds) > 0

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
        lr_scheduler_type="linear",
        label_smoothing_factor=0.0,
        eval_strategy="epoch" if has_val else "no",
        save_strategy="epoch" if has_val else "no",
        save_total_limit=2,
        save_only_model=True,
        load_best_model_at_end=has_val,
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
    if has_val and config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = _CodeTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds if has_val else None,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_accuracy,
        callbacks=callbacks,
    )
    trainer.head_learning_rate = config.head_learning_rate
    trainer.warmup_ratio = config.warmup_ratio
    epoch_log.trainer = trainer
    if config.label_smoothing:
        trainer.compute_loss_func = _smoothed_loss(config.label_smoothing)
    if run_trainer:
        trainer.train()
        model = trainer.model  # type: ignore[assignment]
    shutil.rmtree(work, ignore_errors=True)
    train_seconds = time.monotonic() - started
    model = model.to("cpu").eval()

    temperature, val_accuracy = 1.0, float("nan")
    val_texts_sorted = [val_texts[i] for i in val_order]
    val_labels = np.asarray([y_val[i] for i in val_order], dtype=np.int64)
    val_emb = np.zeros((0, model.encoder.config.hidden_size), dtype=np.float32)
    val_logits = np.zeros((0, len(codes)), dtype=np.float32)
    if has_val:
        val_emb = encode_texts(model, tokenizer, val_texts_sorted, device="cpu", max_length=config.max_length)
        with torch.no_grad():
            val_logits = model.logits_from_embeddings(torch.from_numpy(val_emb)).numpy()
        val_accuracy = float((val_logits.argmax(-1) == val_labels).mean())
        temperature = fit_temperature(val_logits, val_labels)

    knn_index = None
    knn_meta: dict[str, Any] = {}
    if config.knn and len(train_texts):
        if stage1_embeddings is not None and not run_trainer:
            knn_index = _index_from_embeddings(stage1_embeddings, y_train, config)
        else:
            knn_index = build_knn_index(
                model,
                tokenizer,
                train_texts,
                y_train,
                device=device,
                max_length=config.max_length,
                max_items=config.knn_max_index,
                seed=config.seed,
            )
        if parent_signals is not None and parent_signals.knn_index is not None:
            # Corrections: keep the parent's index (its entries were embedded by the parent encoder, which a
            # short corrections run changes little) and add the new texts, so the vote does not shrink to the
            # replay sample.
            knn_index = _merge_knn(parent_signals.knn_index, parent_label_map, knn_index)
        knn_cfg = KnnConfig(k=config.knn_k, tau=config.knn_tau, weight=config.knn_weight or 0.0)
        if config.knn_weight is None and has_val:
            knn_by_tau = {
                tau: knn_probabilities(val_emb, knn_index, KnnConfig(k=config.knn_k, tau=tau), len(codes))
                for tau in (0.02, 0.05, 0.1)
            }
            knn_cfg = fit_knn_weight(val_logits / temperature, knn_by_tau, val_labels, knn_cfg)
        elif config.knn_weight is None:
            knn_cfg.weight = 0.3
        elif has_val:
            knn_p = knn_probabilities(val_emb, knn_index, knn_cfg, len(codes))
            mixed = combine_signals(_softmax_np(val_logits / temperature), knn_p, knn_cfg.weight)
            knn_cfg.val_accuracy = float((mixed.argmax(1) == val_labels).mean())
        knn_meta = knn_cfg.model_dump()

    lexical_index = None
    lexical_meta: dict[str, Any] = {}
    if config.lexical and len(train_texts):
        lex_cfg = LexicalConfig(
            k=config.lexical_k, tau=config.lexical_tau, weight=config.lexical_weight or 0.0
        )
        if parent_signals is not None and parent_signals.lexical_index is not None:
            lexical_index = _merge_lexical(
                parent_signals.lexical_index, parent_label_map, train_texts, y_train
            )
        else:
            lexical_index = LexicalIndex.build(train_texts, y_train, lex_cfg)
        if has_val:
            head_p = _softmax_np(val_logits / temperature)
            parts = []
            if knn_index is not None and knn_meta.get("weight", 0) > 0:
                knn_p = knn_probabilities(val_emb, knn_index, KnnConfig(**knn_meta), len(codes))
                parts.append((knn_p, float(knn_meta["weight"])))
            lex_p = lexical_index.probabilities(val_texts_sorted, lex_cfg, len(codes))
            used = sum(w for _, w in parts)
            grid = (
                [lex_cfg.weight]
                if config.lexical_weight is not None
                else [w for w in np.linspace(0.0, 0.5, 11) if used + w < 0.95]
            )
            scored = []
            for w in grid:
                p = mix_probabilities(head_p, [*parts, (lex_p, float(w))])
                acc = float((p.argmax(1) == val_labels).mean())
                nll = float(-np.log(np.clip(p[np.arange(len(val_labels)), val_labels], 1e-12, None)).mean())
                scored.append((round(acc, 4), -nll, float(w)))
            best = max(scored)
            lex_cfg.weight = round(best[2], 3)
            lexical_meta = {**lex_cfg.model_dump(), "val_accuracy": best[0]}
        else:
            lex_cfg.weight = config.lexical_weight if config.lexical_weight is not None else 0.2
            lexical_meta = lex_cfg.model_dump()

    output_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "version": version,
        "base_model": base_model,
        "max_length": config.max_length,
        "scale": float(model.scale.detach()),
        "config": config.model_dump(),
        "knn": knn_meta or None,
        "lexical": lexical_meta or None,
    }
    save_model_dir(
        model,
        tokenizer,
        codes,
        output_dir,
        meta=meta,
        temperature=temperature,
        knn_index=knn_index,
        lexical_index=lexical_index,
    )
    result = {
        "epochs": epoch_log.epochs,
        "val_accuracy": val_accuracy,
        "val_accuracy_combined": (lexical_meta or knn_meta or {}).get("val_accuracy", val_accuracy),
        "temperature": temperature,
        "knn": knn_meta or None,
        "lexical": lexical_meta or None,
        "seconds": round(time.monotonic() - started, 1),
        "train_seconds": round(train_seconds, 1),
        "stopped_by_budget": epoch_log.stopped_by_budget,
        "train_size": len(train_texts),
        "val_size": len(val_texts),
        "batch_size": per_device,
        "gradient_accumulation": accumulation,
        "stages": ["head"] * (stage1_embeddings is not None) + ["trainer"] * run_trainer,
        "device": device,
        "mixed_precision": "bf16" if bf16 else "fp16" if fp16 else "no",
    }
    log.info("finetune done: %s", {k: v for k, v in result.items() if k != "epochs"})
    return result


def _merge_knn(parent: KnnIndex, label_map: np.ndarray | None, new: KnnIndex) -> KnnIndex:
    """The parent's kNN entries (labels mapped to the new label order) followed by the new ones."""
    labels = label_map[parent.labels] if label_map is not None else parent.labels
    keep = labels >= 0
    return KnnIndex(
        np.vstack([parent.embeddings[keep], new.embeddings]), np.concatenate([labels[keep], new.labels])
    )


def _merge_lexical(
    parent: LexicalIndex, label_map: np.ndarray | None, texts: list[str], labels: list[int]
) -> LexicalIndex:
    """The parent's lexical index with the new texts added (vectorised with the parent's vocabulary)."""
    from scipy.sparse import vstack

    parent_labels = label_map[parent.labels] if label_map is not None else parent.labels
    keep = np.flatnonzero(parent_labels >= 0)
    matrix = vstack([parent.matrix[keep], parent.vectorizer.transform(texts)])
    return LexicalIndex(parent.vectorizer, matrix, np.concatenate([parent_labels[keep], np.asarray(labels)]))


def _softmax_np(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _index_from_embeddings(embeddings: np.ndarray, labels: list[int], config: FinetuneConfig) -> KnnIndex:
    idx = np.arange(len(labels))
    if len(idx) > config.knn_max_index:
        idx = np.sort(np.random.default_rng(config.seed).choice(idx, config.knn_max_index, replace=False))
    return KnnIndex(embeddings[idx], np.asarray(labels)[idx])


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
    head, scale = model.head, model.scale
    opt = torch.optim.Adam([head, scale], lr=config.head_stage_lr)
    gen = torch.Generator().manual_seed(config.seed)
    trained = torch.zeros(len(codes), dtype=torch.bool)
    trained[y] = True
    for _ in range(config.head_epochs):
        perm = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 1024):
            i = perm[start : start + 1024]
            logits = scale * emb[i] @ F.normalize(head, dim=-1).T
            loss = F.cross_entropy(logits, y[i], label_smoothing=config.label_smoothing)
            opt.zero_grad()
            loss.backward()
            head.grad[~trained] = 0  # type: ignore[index]  # keep title prototypes of unseen groups as they are
            opt.step()
    log.info(
        "head stage: %d epochs on %d embeddings, scale %.1f, %d groups from their titles",
        config.head_epochs,
        len(y),
        float(scale.detach()),
        len(missing),
    )


def _smoothed_loss(epsilon: float) -> Any:
    def loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, num_items_in_batch: Any = None) -> Any:
        return F.cross_entropy(outputs["logits"], labels, label_smoothing=epsilon)

    return loss
