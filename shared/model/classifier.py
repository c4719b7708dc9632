"""The ISCO classifier (torch): a transformer encoder, mean pooling and a cosine head over the unit groups.

Why not `AutoModelForSequenceClassification`'s CLS pooler head: the default base model (all-MiniLM-L6-v2) was
trained with mean pooling, and measured here its pooler is a poor start (docs/architecture.md, "The model").
A cosine head can be initialised from class prototypes (mean embeddings of each group's texts), so training
starts from a working nearest-prototype classifier.

Any Hugging Face encoder works (BERT, RoBERTa, XLM-R, ...): what differs between them (pad id, special
tokens, whether token_type_ids exist) is taken from the model's own tokenizer and config (`EncoderSpec`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from shared.model.directory import EncoderSpec, ModelDir
from shared.model.knn import KnnIndex
from shared.model.lexical import LexicalIndex


def _mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean of the masked token states (a zero vector where the mask is empty)."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return F.normalize((states * m).sum(1) / m.sum(1).clamp(min=1e-6), dim=-1)


class IscoClassifier(nn.Module):
    """Encoder + masked mean pooling + cosine-similarity head with a learnable scale."""

    # a Hugging Face PreTrainedModel (config, save_pretrained, ...): plain nn.Module typing lacks those
    encoder: Any

    def __init__(self, encoder: nn.Module, num_labels: int, scale: float = 20.0):
        super().__init__()
        self.encoder = encoder
        hidden = self.encoder.config.hidden_size
        self.head = nn.Parameter(torch.randn(num_labels, hidden) * 0.02)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    @property
    def config(self) -> Any:  # Trainer looks at model.config
        return self.encoder.config

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L2-normalised mean-pooled token embeddings."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return _mean_pool(out, attention_mask)

    def embed_views(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        duties_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """From one pass: the records' embeddings, and their duties tokens' own (`duties_mask`, from
        `shared.model.batching`; zero vectors for titles alone): the duties view of `shared.model.scorer`."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return _mean_pool(out, attention_mask), _mean_pool(out, duties_mask)

    def logits_from_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        return self.scale * emb @ F.normalize(self.head, dim=-1).T

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        logits = self.logits_from_embeddings(self.embed(input_ids, attention_mask, token_type_ids))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Non-reentrant checkpointing (the current API; the reentrant default is deprecated)."""
        self.encoder.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": False}
        )


def load_encoder(name_or_dir: str | Path) -> tuple[Any, PreTrainedTokenizerBase]:
    """A Hugging Face encoder without its pooler (the classifier never uses it) and its tokenizer."""
    try:
        encoder = AutoModel.from_pretrained(str(name_or_dir), add_pooling_layer=False)
    except TypeError:  # architectures without a pooler option
        encoder = AutoModel.from_pretrained(str(name_or_dir))
    return encoder, AutoTokenizer.from_pretrained(str(name_or_dir))


def save_model_dir(
    model: IscoClassifier,
    tokenizer: PreTrainedTokenizerBase,
    codes: list[str],
    model_dir: Path,
    *,
    meta: dict[str, Any],
    temperature: float = 1.0,
    knn_index: KnnIndex | None = None,
    lexical_index: LexicalIndex | None = None,
) -> None:
    """Write the model directory (layout: `shared.model.directory`)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(model_dir / "encoder")
    tokenizer.save_pretrained(model_dir / "encoder")
    save_file(
        {
            "head": model.head.detach().float().cpu().contiguous(),
            "scale": model.scale.detach().float().cpu().reshape(1),
        },
        model_dir / "head.safetensors",
    )
    labels = {
        "codes": codes,
        "label2id": {c: i for i, c in enumerate(codes)},
        "id2label": {str(i): c for i, c in enumerate(codes)},
    }
    (model_dir / "labels.json").write_text(json.dumps(labels, indent=1))
    spec = EncoderSpec.of(model.encoder.config, tokenizer)
    model_json = {"pooling": "mean", "head": "cosine", "encoder": spec.model_dump(), **meta}
    (model_dir / "model.json").write_text(json.dumps(model_json, indent=1))
    (model_dir / "calibration.json").write_text(json.dumps({"temperature": temperature}))
    if knn_index is not None:
        knn_index.save(model_dir)
    if lexical_index is not None:
        lexical_index.save(model_dir)


def load_classifier(model_dir: ModelDir) -> tuple[IscoClassifier, PreTrainedTokenizerBase]:
    """The classifier (fp32, eval mode) and tokenizer of a model directory."""
    encoder, tokenizer = load_encoder(model_dir.encoder_dir)
    head, scale = model_dir.head
    model = IscoClassifier(encoder, len(model_dir.codes))
    with torch.no_grad():
        model.head.copy_(torch.from_numpy(head))
        model.scale.fill_(scale)
    return model.eval(), tokenizer


@torch.inference_mode()
def encode_texts(
    model: IscoClassifier,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    device: str = "cpu",
    max_length: int = 128,
    batch_size: int = 128,
) -> np.ndarray:
    """Normalised mean-pooled embeddings (len(texts), hidden) during training, batches sorted by length."""
    whole, _ = encode_views(
        model, tokenizer, texts, device=device, max_length=max_length, batch_size=batch_size
    )
    return whole


@torch.inference_mode()
def encode_views(
    model: IscoClassifier,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    device: str = "cpu",
    max_length: int = 128,
    batch_size: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """`encode_texts`, and each record's duties view (`IscoClassifier.embed_views`) from the same pass."""
    from shared.model.batching import token_batches

    was_training = model.training
    model.eval()
    model.to(device)
    spec = EncoderSpec.of(model.encoder.config, tokenizer)
    whole = np.zeros((len(texts), model.encoder.config.hidden_size), dtype=np.float32)
    duties = np.zeros_like(whole)
    for idx, batch in token_batches(
        tokenizer, texts, max_length, batch_size, spec.pad_token_id, spec.token_type_ids
    ):
        tensors = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
        views = model.embed_views(**tensors)
        whole[idx], duties[idx] = (v.float().cpu().numpy() for v in views)
    model.train(was_training)
    return whole, duties
