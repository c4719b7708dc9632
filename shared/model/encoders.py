"""Encoders: model inputs (int64 arrays) -> normalised mean-pooled embeddings (float32) of the records and of
their duties tokens alone (`IscoClassifier.embed_views`), one per backend.

- `TorchEncoder`: fp32 (CUDA: bf16/fp16 autocast), or int8 dynamic quantisation of the linear layers (CPU).
- `OnnxEncoder`: the encoder with mean pooling as an ONNX graph (`shared.model.onnx_export`: written by
  training, fp32 or static int8), run on CPU by ONNX Runtime. Static int8 has fixed activation scales, so it
  scores length-sorted batches (dynamic int8 computes its scales per call over the batch and must score one
  record per call).

Everything after the embedding (head, temperature, signals) is numpy in `shared.model.scorer`, the same for
all. int8 (torch dynamic, ONNX static): per-output-channel weight scales (per-tensor lost ~1 point of top-1
here); the FFN output projections of the first `int8_fp32_layers` layers stay fp32 (`shared.model.int8`).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from shared.model.directory import EncoderSpec, ModelDir
from shared.model.int8 import keeps_fp32
from shared.model.onnx_export import onnx_graph
from shared.model.resources import cpu_share

# torch's OpenMP threads spin while they wait by default. When the CPUs are shared (gateway, workers, the
# event loop and tokenizer of this very process, other jobs), spinning threads starve the one doing the work:
# measured on this 2-core machine under load, 2 threads fell from ~120 to ~3 records/s; with passive waiting
# they stay at ~120. Effective only before torch is first imported; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class Encoder(Protocol):
    name: str  # backend description, e.g. "onnx-int8"
    # Dynamic int8 quantises activations with one scale per call, computed over the whole batch (padding
    # included): a record's answer would depend on its batch-mates, and the sync API (micro-batches) and CSV
    # jobs (chunks) would disagree. Such encoders get one unpadded record per call.
    per_record: bool

    def embed(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(records' embeddings, their duties tokens' embeddings), both (batch, hidden)."""
        ...


class TorchEncoder:
    """The classifier's encoder on torch: fp32, int8 (CPU) or CUDA with autocast."""

    def __init__(self, model: Any, device: str, quantize: str = "none", int8_fp32_layers: int = 0):
        import torch

        self.device = torch.device(device)
        self.autocast = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.autocast and torch.cuda.is_bf16_supported() else torch.float16
        if quantize == "int8" and self.device.type == "cpu":
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            spec = {
                name: per_channel_dynamic_qconfig
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and not keeps_fp32(name, int8_fp32_layers)
            }
            model = quantize_dynamic(model, spec, dtype=torch.qint8)
        self.model = model.to(self.device).eval()
        int8 = quantize == "int8" and self.device.type == "cpu"
        self.per_record = int8
        self.name = f"torch-{'int8' if int8 else 'fp32'}" + (f"-{self.device.type}" if self.autocast else "")

    def embed(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.autocast):
                whole, duties = self.model.embed_views(**tensors)
            return whole.float().cpu().numpy(), duties.float().cpu().numpy()


class OnnxEncoder:
    """The exported encoder (+ mean pooling) on ONNX Runtime, CPU."""

    def __init__(
        self,
        model_dir: ModelDir,
        tokenizer: Any,
        spec: EncoderSpec,
        *,
        quantize: str = "none",
        threads: int | None = None,
        int8_fp32_layers: int = 0,
    ):
        import onnxruntime as ort

        path = onnx_graph(model_dir, tokenizer, spec, quantize, int8_fp32_layers)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cpu_share()
        opts.inter_op_num_threads = 1
        # like OMP_WAIT_POLICY=PASSIVE for torch: spinning threads starve the other processes on shared CPUs.
        # Measured through the gateway (bench.throughput's latency run, 2 cores): spinning made one record
        # 0.8 ms faster in process but /predict/job p50 22.9 ms instead of 11.3-13.3, 16 clients 63 instead
        # of 88-110 requests/s
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.name = f"onnx-{'int8' if quantize == 'int8' else 'fp32'}"
        # static int8: fixed activation scales, so rows are independent of their batch-mates -> batched
        self.per_record = False

    def embed(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        whole, duties = self.session.run(
            ["embedding", "duties_embedding"], {k: batch[k] for k in self.inputs}
        )
        return whole, duties


def load_encoder_backend(
    model_dir: ModelDir,
    tokenizer: Any,
    spec: EncoderSpec,
    *,
    backend: str,
    device: str,
    quantize: str,
    threads: int | None,
    int8_fp32_layers: int,
) -> Encoder:
    """The encoder a backend name asks for. "auto": torch on CUDA when there is one, else ONNX Runtime."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "auto":
        backend = "torch" if device.startswith("cuda") else "onnx"
    if backend == "onnx":
        return OnnxEncoder(
            model_dir, tokenizer, spec, quantize=quantize, threads=threads, int8_fp32_layers=int8_fp32_layers
        )
    import torch

    from shared.model.classifier import load_classifier

    if device == "cpu":
        torch.set_num_threads(threads or cpu_share())
    model, _ = load_classifier(model_dir)
    return TorchEncoder(model, device, quantize, int8_fp32_layers)
