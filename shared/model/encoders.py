"""Encoders: model inputs (int64 arrays) -> normalised mean-pooled embeddings (float32) of the records and of
their duties tokens alone (`IscoClassifier.embed_views`), one per backend.

- `TorchEncoder`: fp32 (CUDA: bf16/fp16 autocast), or int8 dynamic quantisation of the linear layers (CPU).
- `OnnxEncoder`: the encoder with mean pooling exported to ONNX (trace inputs made by the model's own
  tokenizer, so any vocabulary and pad id works), optionally int8-quantised by onnxruntime, run on CPU.
  ONNX int8 is static: activation scales calibrated once at export, so it scores length-sorted batches
  (dynamic int8 computes its scales per call over the batch and must score one record per call).

Everything after the embedding (head, temperature, signals) is numpy in `shared.model.scorer`, the same for
all. int8 (torch dynamic, ONNX static): per-output-channel weight scales (per-tensor lost ~1 point of top-1
here); the FFN output projections of the first `int8_fp32_layers` layers stay fp32 (`keeps_fp32`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared.model.directory import EncoderSpec, ModelDir
from shared.model.knn import KNN_TEXTS_FILE
from shared.model.resources import cpu_share

# torch's OpenMP threads spin while they wait by default. When the CPUs are shared (gateway, workers, the
# event loop and tokenizer of this very process, other jobs), spinning threads starve the one doing the work:
# measured on this 2-core machine under load, 2 threads fell from ~120 to ~3 records/s; with passive waiting
# they stay at ~120. Effective only before torch is first imported; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FFN_OUT_MODULE = re.compile(r"(?:^|\.)layer\.(\d+)\.output\.dense$")  # not attention.output.dense
FFN_OUT_ONNX_NODE = re.compile(r"layer\.(\d+)/output/dense/MatMul")
# Static int8 activation scales: the 99.999th percentile of |activation| over 256 training texts. Measured on
# the quick MiniLM model (both dev sets, 2,500 records), top-1 vs fp32: MinMax -0.6/-0.2 points, percentile
# 99.99 (clips real outliers) -3.9/-5.4, 99.999 -0.3/-0.1 (dynamic per-record int8: -0.1/-0.7).
CALIBRATION_TEXTS = 256
CALIBRATION_METHOD = "Percentile"
CALIBRATION_OPTIONS: dict[str, Any] = {"CalibPercentile": 99.999}
ONNX_EXPORT_REVISION = 3  # bump when the exported graph changes (file names carry it)


def keeps_fp32(name: str, fp32_layers: int, pattern: re.Pattern[str] = FFN_OUT_MODULE) -> bool:
    """Whether a linear layer stays fp32 under int8: the FFN output projection of the first layers.
    (Figures below: dynamic int8; static ONNX int8 with the same two layers fp32: see CALIBRATION_METHOD.)

    Their inputs have large outlier activations that one int8 scale per batch cannot represent. Measured on a
    fine-tuned MiniLM over both dev sets (2,500 records), top-1 agreement with fp32: all int8 0.893; first
    two FFN outputs fp32 0.914 (top-1 -0.5/-0.1 points -> +0.1/+0.4), for 1/9 of the linear FLOPs in fp32.
    """
    match = pattern.search(name)
    return match is not None and int(match.group(1)) < fp32_layers


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

        path = export_onnx(model_dir, tokenizer, spec, quantize, int8_fp32_layers)
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


def export_onnx(
    model_dir: ModelDir, tokenizer: Any, spec: EncoderSpec, quantize: str, int8_fp32_layers: int = 0
) -> Path:
    """Export once to <model_dir>/onnx/ (a temporary directory when the model store is read-only), written
    under a temporary name and renamed, so concurrent processes never read a half-written graph."""
    out_dir = model_dir.path / "onnx"
    try:
        out_dir.mkdir(exist_ok=True)
        (out_dir / ".writable").touch()
    except OSError:
        out_dir = Path(tempfile.mkdtemp(prefix="isco-onnx-"))
    fp32 = out_dir / f"encoder.r{ONNX_EXPORT_REVISION}.onnx"
    int8 = out_dir / f"encoder.r{ONNX_EXPORT_REVISION}.int8static-fp32ffn{int8_fp32_layers}.onnx"
    target = int8 if quantize == "int8" else fp32
    if target.exists():
        return target
    if not fp32.exists():
        _trace(model_dir, tokenizer, spec, fp32)
    if quantize == "int8":
        tmp = out_dir / f"{int8.name}.tmp{os.getpid()}"
        _quantize_static(model_dir, tokenizer, spec, fp32, tmp, int8_fp32_layers)
        tmp.replace(int8)
    return target


def calibration_texts(model_dir: ModelDir, n: int = CALIBRATION_TEXTS) -> list[str]:
    """Training-like texts for the static activation scales: an even spread over the model's kNN training
    texts (knn_texts.json), else over the default corpus (models stored before the texts were)."""
    path = model_dir.path / KNN_TEXTS_FILE
    if path.exists():
        texts: list[str] = json.loads(path.read_text(encoding="utf-8"))
    else:
        from shared.corpus import build_default_corpus
        from shared.text import model_input

        texts = [model_input(r.job_title, r.duties_description) for r in build_default_corpus()]
    step = max(1, len(texts) // n)
    return texts[::step][:n]


def _quantize_static(
    model_dir: ModelDir, tokenizer: Any, spec: EncoderSpec, fp32: Path, target: Path, fp32_layers: int
) -> None:
    """Static int8 (QDQ): per-channel int8 weights of the linear layers (MatMuls with a constant weight),
    uint8 activations with one scale per tensor, fixed here from calibration texts, so a row's answer never
    depends on its batch-mates. Everything else (attention scores, softmax, LayerNorm, GELU, residual adds)
    stays fp32, and so do the `keeps_fp32` layers."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from shared.model.batching import token_batches

    graph = onnx.load(str(fp32)).graph
    inputs = {i.name for i in graph.input}
    constants = {t.name for t in graph.initializer}
    quantized = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and node.input[1] in constants
        and not keeps_fp32(node.name, fp32_layers, FFN_OUT_ONNX_NODE)
    ]
    texts = calibration_texts(model_dir)
    # one text per batch, padded to max_length: the histogram calibrators need one shape per tensor
    width = model_dir.max_length
    batches = []
    for _, batch in token_batches(tokenizer, texts, width, 1, spec.pad_token_id, spec.token_type_ids):
        pad = ((0, 0), (0, width - batch["input_ids"].shape[1]))
        batches.append(
            {
                k: np.pad(v, pad, constant_values=spec.pad_token_id if k == "input_ids" else 0)
                for k, v in batch.items()
                if k in inputs
            }
        )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(fp32),
        str(target),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_quantize=quantized,
        op_types_to_quantize=["MatMul"],
        calibrate_method=CalibrationMethod[CALIBRATION_METHOD],
        calibration_providers=["CPUExecutionProvider"],
        # inputs quantized only: ORT fuses DQ + MatMul into MatMulIntegerToFloat (fp32 out, per-channel
        # scales); quantized outputs (QLinearMatMul + DequantizeLinear) were slower and less accurate
        extra_options={
            "MatMulConstBOnly": True,
            "OpTypesToExcludeOutputQuantization": ["MatMul"],
            **CALIBRATION_OPTIONS,
        },
    )


def _trace(model_dir: ModelDir, tokenizer: Any, spec: EncoderSpec, target: Path) -> None:
    import torch

    from shared.model.batching import token_batches
    from shared.model.classifier import load_classifier

    model, _ = load_classifier(model_dir)

    class _Embed(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            return self.inner.embed_views(*inputs)

    # A padded batch made by the model's own tokenizer: valid ids for this vocabulary, its pad id, its special
    # tokens; the traced graph must handle padding and any batch/sequence size.
    samples = ["registered nurse : cares for patients on a hospital ward", "cook"]
    _, batch = next(token_batches(tokenizer, samples, 32, 2, spec.pad_token_id, spec.token_type_ids))
    names = ["input_ids", "attention_mask", "duties_mask"] + ["token_type_ids"] * spec.token_type_ids
    args = tuple(torch.from_numpy(batch[n]) for n in names)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    with torch.no_grad():
        torch.onnx.export(
            _Embed(model),
            args,
            str(tmp),
            input_names=names,
            output_names=["embedding", "duties_embedding"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={
                **{n: {0: "batch", 1: "seq"} for n in names},
                "embedding": {0: "batch"},
                "duties_embedding": {0: "batch"},
            },
        )
    tmp.replace(target)


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
