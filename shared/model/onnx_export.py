"""The encoder's ONNX graphs (the encoder with mean pooling, fp32 and static int8): an artefact of training.

    <model_dir>/onnx/encoder.r<REVISION>.onnx                        fp32
    <model_dir>/onnx/encoder.r<REVISION>.int8static-fp32ffn<N>.onnx  static int8, the first N FFN outputs fp32

`export_onnx_graphs` writes both into the model directory; the trainer's pipeline calls it after fine-tuning,
so the model store is written by training alone. Serving (`onnx_graph`) only reads them: a model directory
without them (trained before they were an artefact, a test model) or a serving setting that asks for another
int8 variant gets them exported once into a cache outside the model store (`cache_dir`), never into the
model directory, which may be read-only. Every graph is written under a temporary name and renamed
(`shared.files`), so concurrent processes never read a half-written one.

Trace inputs are made by the model's own tokenizer, so any vocabulary and pad id works. int8 is static:
activation scales calibrated once here, so a row's answer never depends on its batch-mates.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from shared.files import atomic_path
from shared.model.directory import EncoderSpec, ModelDir
from shared.model.int8 import FFN_OUT_ONNX_NODE, INT8_FP32_LAYERS, keeps_fp32
from shared.model.knn import KNN_TEXTS_FILE

ONNX_DIR = "onnx"
# Static int8 activation scales: the 99.999th percentile of |activation| over 256 training texts. Measured on
# the quick MiniLM model (both dev sets, 2,500 records), top-1 vs fp32: MinMax -0.6/-0.2 points, percentile
# 99.99 (clips real outliers) -3.9/-5.4, 99.999 -0.3/-0.1 (dynamic per-record int8: -0.1/-0.7).
CALIBRATION_TEXTS = 256
CALIBRATION_METHOD = "Percentile"
CALIBRATION_OPTIONS: dict[str, Any] = {"CalibPercentile": 99.999}
ONNX_EXPORT_REVISION = 3  # bump when the exported graph changes (file names carry it)


def graph_name(quantize: str, int8_fp32_layers: int) -> str:
    """The file name of the graph for a quantisation (none | int8) and, for int8, its fp32 FFN layers."""
    if quantize == "int8":
        return f"encoder.r{ONNX_EXPORT_REVISION}.int8static-fp32ffn{int8_fp32_layers}.onnx"
    return f"encoder.r{ONNX_EXPORT_REVISION}.onnx"


def export_onnx_graphs(model_dir: str | Path, int8_fp32_layers: int = INT8_FP32_LAYERS) -> list[Path]:
    """Training: write the fp32 and the int8 graph into <model_dir>/onnx/ (those already there are kept)."""
    directory = ModelDir.read(model_dir)
    tokenizer = directory.tokenizer()
    spec = directory.encoder_spec(tokenizer)
    out_dir = directory.path / ONNX_DIR
    return [_export(directory, tokenizer, spec, out_dir, q, int8_fp32_layers) for q in ("none", "int8")]


def onnx_graph(
    directory: ModelDir, tokenizer: Any, spec: EncoderSpec, quantize: str, int8_fp32_layers: int
) -> Path:
    """Serving: the graph stored with the model, else one exported into `cache_dir` (never the model dir)."""
    stored = directory.path / ONNX_DIR / graph_name(quantize, int8_fp32_layers)
    if stored.is_file():
        return stored
    return _export(directory, tokenizer, spec, cache_dir(directory), quantize, int8_fp32_layers)


def cache_dir(directory: ModelDir) -> Path:
    """Where serving exports the graphs a model directory lacks: the system's temporary directory, one folder
    per model (its resolved path, model.json and encoder weights' size and time), shared by the processes of
    this machine so that they export once."""
    weights = sorted(p for p in directory.encoder_dir.iterdir() if p.is_file())
    key = json.dumps(
        [
            str(directory.path.resolve()),
            directory.meta,
            [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights],
        ],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "isco-onnx" / f"{directory.version}-{digest}"


def _export(
    directory: ModelDir,
    tokenizer: Any,
    spec: EncoderSpec,
    out_dir: Path,
    quantize: str,
    int8_fp32_layers: int,
) -> Path:
    """The graph for `quantize` in `out_dir`, exported if missing (and the fp32 graph int8 is made from)."""
    fp32 = out_dir / graph_name("none", int8_fp32_layers)
    target = out_dir / graph_name(quantize, int8_fp32_layers)
    if target.is_file():
        return target
    if not fp32.is_file():
        _trace(directory, tokenizer, spec, fp32)
    if quantize == "int8":
        with atomic_path(target) as tmp:
            _quantize_static(directory, tokenizer, spec, fp32, tmp, int8_fp32_layers)
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
    with atomic_path(target) as tmp, torch.no_grad():
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
