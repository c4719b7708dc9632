"""The Hugging Face `Trainer` loop that fine-tunes encoder and head together (the `trainer` stage).

A separate (higher) learning rate for the cosine head and its scale, a linear schedule that is shortened while
training to fit a time budget (the best epoch kept), batch size and accumulation chosen from data size and
device, mixed precision where the device has it, and label smoothing when the profile asks for it.
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
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from services.trainer.config import FinetuneConfig
from services.trainer.state import TrainState
from shared.model.resources import native_cpu_bf16

log = logging.getLogger(__name__)


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
    """Tokenised training records."""

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
    train_ds = _Encoded(tokenizer, state.train_texts, state.train_labels, config.max_length)
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
    if config.label_smoothing:
        trainer.compute_loss_func = code_loss(config.label_smoothing)
    started = time.monotonic()
    try:
        trainer.train()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    state.model = trainer.model  # type: ignore[assignment]
    state.trainer_ran = True
    state.epochs, state.stopped_by_budget = epoch_log.epochs, epoch_log.stopped_by_budget
    state.train_seconds = time.monotonic() - started


def code_loss(epsilon: float) -> Any:
    """The Trainer's loss with label smoothing `epsilon`: cross entropy over the unit groups."""

    def loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, num_items_in_batch: Any = None) -> Any:
        return F.cross_entropy(outputs["logits"], labels, label_smoothing=epsilon)

    return loss
