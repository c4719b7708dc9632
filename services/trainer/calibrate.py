"""Calibration: validation embeddings and logits, the head's validation accuracy and the temperature that
makes its confidences calibrated (the `calibrate` stage)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from services.trainer.state import TrainState
from shared.model.classifier import encode_views


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
